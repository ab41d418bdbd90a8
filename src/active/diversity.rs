//! Diversity-based selection over embeddings: greedy k-centre (core-set) and a hybrid that
//! short-lists the most uncertain candidates and spreads the purchase with k-means++ seeding.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::active::select::{rank_order, top_k_of};
use crate::error::{Error, Result};

/// Checks the embedding matrix `[rows, dim]` and returns its number of rows.
fn embedding_rows(op: &'static str, embeddings: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::shape(op, "embedding dim must be at least 1"));
    }
    if embeddings.len() % dim != 0 {
        return Err(Error::shape(
            op,
            format!(
                "{} values are not whole embeddings of dim {dim}",
                embeddings.len()
            ),
        ));
    }
    Ok(embeddings.len() / dim)
}

/// Checks that `indices` are distinct rows of the embedding matrix.
fn check_indices(op: &'static str, what: &str, indices: &[usize], rows: usize) -> Result<()> {
    let mut seen = HashSet::with_capacity(indices.len());
    for &i in indices {
        if i >= rows {
            return Err(Error::InvalidArgument(format!(
                "{op}: {what} index {i} is out of range ({rows} embeddings)"
            )));
        }
        if !seen.insert(i) {
            return Err(Error::InvalidArgument(format!(
                "{op}: {what} index {i} appears twice"
            )));
        }
    }
    Ok(())
}

/// Squared Euclidean distance between rows `a` and `b`. Accumulated in f32: the result only
/// ranks candidates, and each sum runs in a fixed order, so it is the same on every run.
fn squared_distance(embeddings: &[f32], dim: usize, a: usize, b: usize) -> f32 {
    let x = &embeddings[a * dim..(a + 1) * dim];
    let y = &embeddings[b * dim..(b + 1) * dim];
    x.iter().zip(y).map(|(u, v)| (u - v) * (u - v)).sum()
}

/// The smaller of two squared distances, except that NaN (a NaN embedding) sticks, so such a
/// candidate ranks last rather than first (`f32::min` would drop the NaN).
fn nearer(current: f32, new: f32) -> f32 {
    if current.is_nan() || new.is_nan() {
        f32::NAN
    } else {
        current.min(new)
    }
}

/// Lowers each candidate's distance to its nearest centre over `centres`, in parallel over
/// candidates; each candidate's minimum runs over `centres` in order on one thread.
fn update_nearest(
    nearest: &mut [f32],
    candidates: &[usize],
    embeddings: &[f32],
    dim: usize,
    centres: &[usize],
) {
    nearest
        .par_iter_mut()
        .zip(candidates.par_iter())
        .with_min_len(64)
        .for_each(|(d, &c)| {
            for &s in centres {
                *d = nearer(*d, squared_distance(embeddings, dim, c, s));
            }
        });
}

/// Greedy k-centre ("core-set") selection: `min(k, |candidates|)` candidates, each in turn the
/// one farthest from every labelled point and every earlier pick,
/// `x* = argmax_{c in candidates} min_{s in labelled ∪ chosen} ||e_c - e_s||_2`,
/// returned in the order picked. Its covering radius is at most twice the optimal one.
///
/// `embeddings` is `[rows, dim]`; `candidates` and `labelled` are row indices (when training
/// and pool embeddings share one matrix, pool positions must be offset into it, and the result
/// mapped back before [`crate::active::select::Pool::mark_bought`]). Ties go to the
/// lower row index, so the result is deterministic (and independent of the thread count). With
/// no labelled points every distance starts infinite and the first pick is the lowest-index
/// candidate. A candidate whose distance is NaN is picked only after all others.
///
/// Cost: `O((|labelled| + k) |candidates| dim)`, the distance updates running on rayon.
///
/// # Errors
/// [`Error::Shape`] for a bad embedding matrix; [`Error::InvalidArgument`] for an index out of
/// range, repeated, or both labelled and a candidate.
pub fn coreset_greedy(
    embeddings: &[f32],
    dim: usize,
    candidates: &[usize],
    labelled: &[usize],
    k: usize,
) -> Result<Vec<usize>> {
    let op = "coreset_greedy";
    let rows = embedding_rows(op, embeddings, dim)?;
    check_indices(op, "candidate", candidates, rows)?;
    check_indices(op, "labelled", labelled, rows)?;
    let labelled_set: HashSet<usize> = labelled.iter().copied().collect();
    if let Some(c) = candidates.iter().find(|c| labelled_set.contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "{op}: index {c} is both labelled and a candidate"
        )));
    }

    // Squared distances rank exactly as distances do and skip a square root per pair.
    let mut nearest = vec![f32::INFINITY; candidates.len()];
    update_nearest(&mut nearest, candidates, embeddings, dim, labelled);

    let k = k.min(candidates.len());
    let mut taken = vec![false; candidates.len()];
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        // The farthest untaken candidate; `rank_order` puts larger first, NaN last, then the
        // lower index, a total order, so the parallel reduction is deterministic.
        let best = (0..candidates.len())
            .into_par_iter()
            .filter(|&j| !taken[j])
            .min_by(|&a, &b| rank_order((candidates[a], nearest[a]), (candidates[b], nearest[b])));
        let Some(j) = best else { break };
        taken[j] = true;
        chosen.push(candidates[j]);
        update_nearest(&mut nearest, candidates, embeddings, dim, &[candidates[j]]);
    }
    Ok(chosen)
}

/// Uncertain-then-diverse purchase: short-list the `min(pre_factor * k, |candidates|)`
/// candidates with the highest `scores` (in [`crate::active::select::top_k`] order), then pick
/// `k` of them spread out in embedding space by k-means++ seeding, returned in the order picked.
///
/// Seeding: the first pick is the most uncertain candidate (so the single best-scored image is
/// always bought); each further pick is drawn from the untaken short-list with probability
/// `D(x)^2 / sum_y D(y)^2`, where `D` is the Euclidean distance to the nearest pick so far. We use
/// k-means++ rather than greedy k-centre here because greedy k-centre always reaches for the most
/// isolated points, which in a short-list of uncertain images are often outliers or corrupt
/// images; D² sampling still favours far points but also draws from dense uncertain regions.
/// When every remaining distance is zero (duplicates) or not finite, the next most uncertain
/// untaken candidate is taken instead. The draw uses `StdRng::seed_from_u64(seed)`, so the same
/// inputs and seed give the same purchase.
///
/// `scores` are indexed by embedding row (one per row, higher = more uncertain).
///
/// # Errors
/// As [`coreset_greedy`], plus [`Error::Shape`] when `scores.len()` differs from the number of
/// embedding rows and [`Error::InvalidArgument`] when `pre_factor` is 0.
pub fn uncertain_diverse(
    scores: &[f32],
    embeddings: &[f32],
    dim: usize,
    candidates: &[usize],
    k: usize,
    pre_factor: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    let op = "uncertain_diverse";
    let rows = embedding_rows(op, embeddings, dim)?;
    if scores.len() != rows {
        return Err(Error::shape(
            op,
            format!("{} scores for {rows} embeddings", scores.len()),
        ));
    }
    if pre_factor == 0 {
        return Err(Error::InvalidArgument(format!(
            "{op}: pre_factor must be at least 1"
        )));
    }
    check_indices(op, "candidate", candidates, rows)?;

    // The short-list, most uncertain first.
    let shortlist = top_k_of(candidates, scores, pre_factor.saturating_mul(k));
    let k = k.min(shortlist.len());
    if k == shortlist.len() {
        return Ok(shortlist);
    }
    if k == 0 {
        return Ok(Vec::new());
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut nearest = vec![f32::INFINITY; shortlist.len()];
    let mut taken = vec![false; shortlist.len()];
    let mut chosen = Vec::with_capacity(k);
    let mut pick = 0;
    loop {
        taken[pick] = true;
        chosen.push(shortlist[pick]);
        if chosen.len() == k {
            break;
        }
        update_nearest(
            &mut nearest,
            &shortlist,
            embeddings,
            dim,
            &[shortlist[pick]],
        );

        // D² weights of the untaken candidates, summed in f64 in short-list order (fixed, so
        // the draw is reproducible). NaN distances weigh 0.
        let weight = |j: usize| -> f64 {
            let d = f64::from(nearest[j]);
            if taken[j] || d.is_nan() {
                0.0
            } else {
                d
            }
        };
        let total: f64 = (0..shortlist.len()).map(weight).sum();
        let next_uncertain = || (0..shortlist.len()).find(|&j| !taken[j]);
        pick = if total > 0.0 && total.is_finite() {
            let target = rng.random::<f64>() * total;
            let mut cumulative = 0.0;
            let mut last_positive = None;
            let mut drawn = None;
            for j in 0..shortlist.len() {
                let w = weight(j);
                if w > 0.0 {
                    cumulative += w;
                    last_positive = Some(j);
                    if cumulative > target {
                        drawn = Some(j);
                        break;
                    }
                }
            }
            // Rounding can leave `cumulative` a hair below `target` at the end.
            match drawn.or(last_positive).or_else(next_uncertain) {
                Some(j) => j,
                None => break,
            }
        } else {
            match next_uncertain() {
                Some(j) => j,
                None => break,
            }
        };
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eleven points on a line, x = 0, 1, ..., 10, dim 1; row i sits at x = i.
    fn line() -> Vec<f32> {
        (0..=10).map(|i| i as f32).collect()
    }

    #[test]
    fn coreset_on_a_line() {
        let e = line();
        let candidates: Vec<usize> = (1..=10).collect();
        // Labelled {0}: farthest is 10 (distance 10). Then nearest-centre distances to {0, 10}
        // peak at x = 5 (5). Then with {0, 5, 10}: x = 2, 3, 7, 8 all at distance 2, and the
        // tie goes to the lowest index, 2. Then {0, 2, 5, 10}: x = 8 and x = 7 at 2 -> 7.
        assert_eq!(
            coreset_greedy(&e, 1, &candidates, &[0], 4).unwrap(),
            vec![10, 5, 2, 7]
        );
        // Labelled at both ends: the middle first.
        let mid: Vec<usize> = (1..10).collect();
        assert_eq!(coreset_greedy(&e, 1, &mid, &[0, 10], 1).unwrap(), vec![5]);
        // No labelled points: all distances infinite, the lowest index goes first (1), then
        // the farthest from it (10), then the middle of [1, 10]: x = 5 and 6 at distance 4 -> 5.
        assert_eq!(
            coreset_greedy(&e, 1, &candidates, &[], 3).unwrap(),
            vec![1, 10, 5]
        );
    }

    #[test]
    fn coreset_in_two_dimensions_and_limits() {
        // Rows: 0 (0,0) labelled; 1 (1,0); 2 (0,3); 3 (4,4); 4 (4,4.5).
        // Distances to (0,0): 1, 3, 5.657, 6.021 -> pick 4; then row 3 is 0.5 from row 4,
        // row 2 is min(3, 4.272) = 3 -> pick 2; then row 1 (1) beats row 3 (0.5).
        let e = [0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 4.0, 4.0, 4.0, 4.5];
        assert_eq!(
            coreset_greedy(&e, 2, &[1, 2, 3, 4], &[0], 3).unwrap(),
            vec![4, 2, 1]
        );
        // k beyond the candidates returns them all, each once; duplicates of a point still go.
        let dup = [1.0, 1.0, 1.0];
        assert_eq!(
            coreset_greedy(&dup, 1, &[2, 1], &[0], 9).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            coreset_greedy(&e, 2, &[], &[0], 3).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn coreset_rejects_bad_input() {
        let e = line();
        assert!(matches!(
            coreset_greedy(&e, 0, &[1], &[], 1),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            coreset_greedy(&e[..10], 3, &[1], &[], 1),
            Err(Error::Shape { .. })
        ));
        for (c, l) in [
            (&[11][..], &[][..]),
            (&[1, 1], &[]),
            (&[1, 2], &[2]),
            (&[1], &[12]),
        ] {
            assert!(matches!(
                coreset_greedy(&e, 1, c, l, 1),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn coreset_nan_embedding_goes_last() {
        let e = [0.0, f32::NAN, 5.0, 1.0];
        assert_eq!(
            coreset_greedy(&e, 1, &[1, 2, 3], &[0], 3).unwrap(),
            vec![2, 3, 1]
        );
    }

    fn random_embeddings(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rows * dim)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn coreset_is_deterministic_and_valid_on_random_data() {
        let (rows, dim) = (3000, 16);
        let e = random_embeddings(rows, dim, 5);
        let labelled: Vec<usize> = (0..rows).step_by(10).collect();
        let candidates: Vec<usize> = (0..rows).filter(|i| i % 10 != 0).collect();
        let a = coreset_greedy(&e, dim, &candidates, &labelled, 40).unwrap();
        let b = coreset_greedy(&e, dim, &candidates, &labelled, 40).unwrap();
        assert_eq!(a, b);
        let unique: HashSet<usize> = a.iter().copied().collect();
        assert_eq!(unique.len(), 40);
        assert!(a.iter().all(|i| i % 10 != 0));
        // Farthest-first: each pick's distance to the earlier centres never increases.
        let mut centres = labelled.clone();
        let mut previous = f32::INFINITY;
        for &c in &a {
            let d = centres
                .iter()
                .map(|&s| squared_distance(&e, dim, c, s))
                .fold(f32::MAX, f32::min);
            assert!(d <= previous, "pick {c} at {d} after {previous}");
            previous = d;
            centres.push(c);
        }
    }

    #[test]
    fn hybrid_is_seeded_and_stays_in_the_shortlist() {
        let (rows, dim) = (500, 8);
        let e = random_embeddings(rows, dim, 11);
        let mut rng = StdRng::seed_from_u64(3);
        let scores: Vec<f32> = (0..rows).map(|_| rng.random()).collect();
        let candidates: Vec<usize> = (0..rows).filter(|i| i % 3 != 0).collect();
        let (k, pre) = (10, 4);
        let a = uncertain_diverse(&scores, &e, dim, &candidates, k, pre, 99).unwrap();
        assert_eq!(
            a,
            uncertain_diverse(&scores, &e, dim, &candidates, k, pre, 99).unwrap()
        );
        let shortlist = top_k_of(&candidates, &scores, k * pre);
        assert_eq!(a[0], shortlist[0], "first pick is the most uncertain");
        assert_eq!(a.len(), k);
        assert!(a.iter().all(|i| shortlist.contains(i)));
        assert_eq!(a.iter().copied().collect::<HashSet<_>>().len(), k);
        // Some other seed draws differently (40 choose 9 orders make a collision unlikely).
        let differs = (0..5)
            .any(|s| uncertain_diverse(&scores, &e, dim, &candidates, k, pre, s).unwrap() != a);
        assert!(differs);
        // pre_factor 1: the short-list is the purchase, in uncertainty order.
        assert_eq!(
            uncertain_diverse(&scores, &e, dim, &candidates, k, 1, 0).unwrap(),
            top_k_of(&candidates, &scores, k)
        );
    }

    #[test]
    fn hybrid_spreads_over_clusters() {
        // Rows 0..5 at x ~ 0, rows 5..10 at x ~ 100, all equally uncertain but the first
        // slightly more. Picking 2 should take one from each cluster: a same-cluster second
        // pick has D² <= 0.04^2 against 100^2 for each far point.
        let e: Vec<f32> = (0..10)
            .map(|i| {
                if i < 5 {
                    i as f32 * 0.01
                } else {
                    100.0 + i as f32 * 0.01
                }
            })
            .collect();
        let mut scores = vec![0.5f32; 10];
        scores[0] = 0.6;
        let candidates: Vec<usize> = (0..10).collect();
        for seed in 0..20 {
            let got = uncertain_diverse(&scores, &e, 1, &candidates, 2, 5, seed).unwrap();
            assert_eq!(got[0], 0);
            assert!(got[1] >= 5, "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn hybrid_duplicates_fall_back_to_uncertainty() {
        // All embeddings identical: every D² is 0, picks follow the scores.
        let e = vec![1.0f32; 6];
        let scores = [0.1, 0.9, 0.3, 0.8, 0.2, 0.7];
        let all: Vec<usize> = (0..6).collect();
        assert_eq!(
            uncertain_diverse(&scores, &e, 1, &all, 3, 2, 7).unwrap(),
            vec![1, 3, 5]
        );
        assert!(uncertain_diverse(&scores, &e, 1, &all, 3, 0, 7).is_err());
        assert!(uncertain_diverse(&scores[..5], &e, 1, &all, 3, 2, 7).is_err());
    }
}
