//! The purchase pool (one index space from pool position to file name, with bought flags) and
//! the rules that turn scores into a purchase within a budget.

use std::cmp::Ordering;
use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// The unlabelled images on offer. Position `i` names one file for the whole run; every score,
/// embedding row and purchase refers to images by this position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    files: Vec<String>,
    bought_flags: Vec<bool>,
    bought_order: Vec<usize>,
}

impl Pool {
    /// A pool in which nothing is bought yet.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a file name appears twice: two positions for one image
    /// would let the same label be bought twice.
    pub fn new(files: Vec<String>) -> Result<Self> {
        let mut seen = HashSet::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            if !seen.insert(f.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "pool: file {f:?} appears twice (second time at position {i})"
                )));
            }
        }
        let n = files.len();
        Ok(Pool {
            files,
            bought_flags: vec![false; n],
            bought_order: Vec::new(),
        })
    }

    /// Number of images in the pool, bought or not.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the pool holds no image at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Positions not bought yet, ascending.
    pub fn available(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| !self.bought_flags[i]).collect()
    }

    /// Number of positions not bought yet.
    pub fn available_count(&self) -> usize {
        self.len() - self.bought_order.len()
    }

    /// Whether position `i` is bought; `false` for a position outside the pool.
    pub fn is_bought(&self, i: usize) -> bool {
        self.bought_flags.get(i).copied().unwrap_or(false)
    }

    /// Records a purchase. All or nothing: when any position is invalid nothing is marked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a position is out of range, already bought, or listed
    /// twice in `items`.
    pub fn mark_bought(&mut self, items: &[usize]) -> Result<()> {
        let mut in_this_call = HashSet::with_capacity(items.len());
        for &i in items {
            if i >= self.len() {
                return Err(Error::InvalidArgument(format!(
                    "pool: position {i} is out of range (pool of {})",
                    self.len()
                )));
            }
            if self.bought_flags[i] {
                return Err(Error::InvalidArgument(format!(
                    "pool: position {i} ({}) is already bought",
                    self.files[i]
                )));
            }
            if !in_this_call.insert(i) {
                return Err(Error::InvalidArgument(format!(
                    "pool: position {i} ({}) appears twice in one purchase",
                    self.files[i]
                )));
            }
        }
        for &i in items {
            self.bought_flags[i] = true;
        }
        self.bought_order.extend_from_slice(items);
        Ok(())
    }

    /// Bought positions in purchase order.
    pub fn bought(&self) -> Vec<usize> {
        self.bought_order.clone()
    }

    /// File name at position `i`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `i` is out of range.
    pub fn file(&self, i: usize) -> Result<&str> {
        self.files.get(i).map(String::as_str).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "pool: position {i} is out of range (pool of {})",
                self.len()
            ))
        })
    }

    /// All file names, indexed by position.
    pub fn files(&self) -> &[String] {
        &self.files
    }
}

/// Ranking order of `(index, score)` pairs: larger score first, NaN after every number, and on
/// equal scores (including `-0.0 == 0.0`, and NaN against NaN) the lower index first.
pub(crate) fn rank_order(a: (usize, f32), b: (usize, f32)) -> Ordering {
    let by_score = match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (true, true) => Ordering::Equal,
    };
    by_score.then(a.0.cmp(&b.0))
}

/// The `k` best of `indices` by `score(index)`, best first, in [`rank_order`].
pub(crate) fn top_k_of(indices: &[usize], scores: &[f32], k: usize) -> Vec<usize> {
    let mut ranked: Vec<(usize, f32)> = indices.iter().map(|&i| (i, scores[i])).collect();
    let k = k.min(ranked.len());
    if k == 0 {
        return Vec::new();
    }
    // Partition first so only the k winners are sorted: O(n + k log k) instead of O(n log n).
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, |&a, &b| rank_order(a, b));
        ranked.truncate(k);
    }
    // The order is total (the index breaks every tie), so an unstable sort is deterministic.
    ranked.sort_unstable_by(|&a, &b| rank_order(a, b));
    ranked.into_iter().map(|(i, _)| i).collect()
}

/// Indices of the `min(k, n)` largest scores, largest first.
///
/// Order: `i` before `j` when `s_i > s_j`, or `s_i == s_j` and `i < j`. NaN scores rank after
/// every number (they are never preferred over a real score), `-0.0` ties with `0.0`.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let all: Vec<usize> = (0..scores.len()).collect();
    top_k_of(&all, scores, k)
}

/// The purchase for one round: the best `min(budget, available)` positions of `pool` by
/// `scores` (indexed by pool position; higher is better), never a bought one, best first, in
/// the [`top_k`] order. Bought positions are skipped whatever their score; NaN-scored positions
/// are bought only when the budget exceeds the positions with real scores.
///
/// # Errors
/// [`Error::Shape`] when `scores.len() != pool.len()`.
pub fn choose(pool: &Pool, scores: &[f32], budget: usize) -> Result<Vec<usize>> {
    if scores.len() != pool.len() {
        return Err(Error::shape(
            "choose",
            format!("{} scores for a pool of {}", scores.len(), pool.len()),
        ));
    }
    Ok(top_k_of(&pool.available(), scores, budget))
}

/// A uniformly random purchase of `min(budget, available)` positions not bought yet, the same
/// for the same `seed` and pool state (the baseline every strategy is measured against).
pub fn choose_random(pool: &Pool, budget: usize, seed: u64) -> Vec<usize> {
    let mut available = pool.available();
    let mut rng = StdRng::seed_from_u64(seed);
    // `partial_shuffle` draws only the `budget` items it keeps, a uniform sample in random order.
    let budget = budget.min(available.len());
    let (chosen, _) = available.partial_shuffle(&mut rng, budget);
    chosen.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn pool(n: usize) -> Pool {
        Pool::new((0..n).map(|i| format!("img_{i:04}.png")).collect()).unwrap()
    }

    #[test]
    fn top_k_order_ties_and_nan() {
        let s = [0.5, f32::NAN, 0.9, 0.5, -1.0, 0.9, f32::NAN];
        assert_eq!(top_k(&s, 3), vec![2, 5, 0]);
        assert_eq!(top_k(&s, 100), vec![2, 5, 0, 3, 4, 1, 6]);
        assert_eq!(top_k(&s, 0), Vec::<usize>::new());
        assert_eq!(top_k(&[], 3), Vec::<usize>::new());
        // NaN never first, even when it is the first element; -0.0 ties with 0.0 by index.
        assert_eq!(top_k(&[f32::NAN, 0.0, -0.0], 3), vec![1, 2, 0]);
        assert_eq!(top_k(&[-0.0, 0.0], 1), vec![0]);
        assert_eq!(top_k(&[f32::NEG_INFINITY, f32::INFINITY], 1), vec![1]);
    }

    #[test]
    fn top_k_matches_a_full_sort_on_random_inputs() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(0..60);
            // Few distinct values so ties are common; some NaN.
            let s: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..6) {
                    0 => f32::NAN,
                    v => v as f32 * 0.25,
                })
                .collect();
            let k = rng.random_range(0..n + 3);
            let mut want: Vec<usize> = (0..n).collect();
            want.sort_by(|&a, &b| rank_order((a, s[a]), (b, s[b])));
            want.truncate(k);
            assert_eq!(top_k(&s, k), want, "scores {s:?}, k {k}");
        }
    }

    #[test]
    fn pool_bookkeeping() {
        let mut p = pool(5);
        assert_eq!((p.len(), p.available_count()), (5, 5));
        p.mark_bought(&[3, 1]).unwrap();
        p.mark_bought(&[4]).unwrap();
        assert_eq!(p.bought(), vec![3, 1, 4]);
        assert_eq!(p.available(), vec![0, 2]);
        assert!(p.is_bought(3) && !p.is_bought(0) && !p.is_bought(99));
        assert_eq!(p.file(3).unwrap(), "img_0003.png");
        assert!(p.file(5).is_err());
        // Already bought, out of range, or repeated: rejected, and nothing is marked.
        for bad in [&[0, 3][..], &[0, 5], &[0, 0], &[2, 0, 2]] {
            assert!(
                matches!(p.mark_bought(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
            assert_eq!(p.available(), vec![0, 2], "partial purchase after {bad:?}");
        }
        assert!(Pool::new(vec!["a".into(), "b".into(), "a".into()]).is_err());
    }

    #[test]
    fn choose_skips_bought_and_respects_budget() {
        let mut p = pool(6);
        p.mark_bought(&[2, 5]).unwrap();
        // The two highest scores belong to bought items.
        let s = [0.1, 0.4, 9.0, 0.4, 0.2, 8.0];
        assert_eq!(choose(&p, &s, 2).unwrap(), vec![1, 3]);
        assert_eq!(choose(&p, &s, 10).unwrap(), vec![1, 3, 4, 0]);
        assert_eq!(choose(&p, &s, 0).unwrap(), Vec::<usize>::new());
        assert!(matches!(choose(&p, &s[..5], 2), Err(Error::Shape { .. })));
    }

    #[test]
    fn random_is_seeded_and_valid() {
        let mut p = pool(50);
        p.mark_bought(&[0, 10, 20]).unwrap();
        let a = choose_random(&p, 7, 42);
        assert_eq!(a, choose_random(&p, 7, 42));
        assert_ne!(a, choose_random(&p, 7, 43));
        assert_eq!(a.len(), 7);
        assert_eq!(choose_random(&p, 1000, 1).len(), 47);
    }

    /// Many random rounds of buying: a purchase never exceeds the budget, never repeats an
    /// item, never returns a bought item, and `mark_bought` accepts every purchase.
    #[test]
    fn purchases_are_always_valid_property() {
        let mut rng = StdRng::seed_from_u64(2022);
        for trial in 0..200 {
            let n = rng.random_range(0..40);
            let mut p = pool(n);
            let mut everything_bought = Vec::new();
            for round in 0..6 {
                let budget = rng.random_range(0..12);
                let scores: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f32>() < 0.1 {
                            f32::NAN
                        } else {
                            rng.random()
                        }
                    })
                    .collect();
                let chosen = if (trial + round) % 3 == 0 {
                    choose_random(&p, budget, rng.random())
                } else {
                    choose(&p, &scores, budget).unwrap()
                };
                assert_eq!(chosen.len(), budget.min(p.available_count()));
                let unique: HashSet<usize> = chosen.iter().copied().collect();
                assert_eq!(unique.len(), chosen.len(), "duplicate in {chosen:?}");
                assert!(chosen.iter().all(|&i| i < n && !p.is_bought(i)));
                p.mark_bought(&chosen).unwrap();
                everything_bought.extend(chosen);
            }
            assert_eq!(p.bought(), everything_bought);
            assert_eq!(p.available_count() + everything_bought.len(), n);
        }
    }
}
