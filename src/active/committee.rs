//! Query-by-committee disagreement (vote entropy, consensus entropy, mean KL divergence) over
//! the probabilities of several models, per class distribution or per independent label.

use rayon::prelude::*;

use crate::active::uncertainty::{aggregate_values, row_count, PARALLEL_MIN_ROWS};
use crate::backend::Aggregate;
use crate::error::{Error, Result};

/// Which disagreement measure a committee uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disagreement {
    /// Entropy of the members' hard votes: [`vote_entropy`].
    Vote,
    /// Entropy of the members' mean probability: [`consensus_entropy`].
    Consensus,
    /// Mean divergence of each member from the mean probability: [`mean_kl`].
    MeanKl,
}

/// How the committee's rows are read: `num_labels` values per row, one softmax distribution per
/// row or `num_labels` independent Bernoulli labels combined with `aggregate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitteeParams {
    pub num_labels: usize,
    pub multilabel: bool,
    pub aggregate: Aggregate,
}

/// Entropy in nats of a distribution, with `0 ln 0 = 0` so a zero probability never reaches a
/// logarithm.
fn entropy(probabilities: impl Iterator<Item = f64>) -> f64 {
    -probabilities
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>()
}

/// `p ln(p / q)`, 0 when `p = 0`. Callers pass a `q` that is the mean of `p` with other
/// non-negative numbers, so `q >= p / K > 0` whenever `p > 0` and the ratio is finite.
fn kl_term(p: f64, q: f64) -> f64 {
    if p > 0.0 {
        p * (p / q).ln()
    } else {
        0.0
    }
}

/// Checks the committee's shapes and values and returns the number of rows.
fn validate<M: AsRef<[f32]>>(op: &'static str, members: &[M], c: CommitteeParams) -> Result<usize> {
    let first = members.first().ok_or_else(|| {
        Error::InvalidArgument(format!("{op}: a committee needs at least one member"))
    })?;
    let len = first.as_ref().len();
    let rows = row_count(op, len, c.num_labels)?;
    for (k, m) in members.iter().enumerate() {
        let m = m.as_ref();
        if m.len() != len {
            return Err(Error::shape(
                op,
                format!("member {k} has {} values, member 0 has {len}", m.len()),
            ));
        }
        if let Some(i) = m.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::InvalidArgument(format!(
                "{op}: member {k}, value {i} is {}, not a probability in [0, 1]",
                m[i]
            )));
        }
    }
    Ok(rows)
}

/// Runs `f(row)` for every row, in parallel for large inputs (each row by one thread, so the
/// result does not depend on the thread count).
fn per_row<F: Fn(usize) -> f64 + Sync + Send>(rows: usize, f: F) -> Vec<f32> {
    if rows >= PARALLEL_MIN_ROWS {
        (0..rows)
            .into_par_iter()
            .with_min_len(256)
            .map(|r| f(r) as f32)
            .collect()
    } else {
        (0..rows).map(|r| f(r) as f32).collect()
    }
}

/// Vote entropy: each member casts hard votes and the score is the entropy of the vote shares.
///
/// Softmax rows: member `k` votes for `argmax_c p_kc` (ties to the lowest class); with `V_c`
/// the share of the `K` votes for class `c`, the score is `-sum_c V_c ln V_c`, from 0 (unanimous)
/// to `ln min(K, L)`.
///
/// Multi-label rows: per label, member `k` votes positive when `p_kl >= 0.5` (the rule of
/// [`crate::active::metrics::predict`]); with `v_l` the positive share, the label's score is the
/// binary entropy `-v_l ln v_l - (1 - v_l) ln(1 - v_l)`, then aggregated over labels.
///
/// `members[k]` holds member `k`'s probabilities `[N, L]`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty committee or a value outside `[0, 1]` (NaN too);
/// [`Error::Shape`] when members differ in length or rows are not whole.
pub fn vote_entropy<M: AsRef<[f32]> + Sync>(members: &[M], c: CommitteeParams) -> Result<Vec<f32>> {
    let rows = validate("vote_entropy", members, c)?;
    let k = members.len() as f64;
    let l = c.num_labels;
    Ok(per_row(rows, |r| {
        if c.multilabel {
            let per_label = (0..l).map(|j| {
                let positive = members
                    .iter()
                    .filter(|m| member_row(m, r, l)[j] >= 0.5)
                    .count() as f64;
                let v = positive / k;
                entropy([v, 1.0 - v].into_iter())
            });
            aggregate_values(per_label, l, c.aggregate)
        } else {
            let mut votes = vec![0u32; l];
            for m in members {
                let mut best = 0;
                for (j, &p) in member_row(m, r, l).iter().enumerate() {
                    if p > member_row(m, r, l)[best] {
                        best = j;
                    }
                }
                votes[best] += 1;
            }
            entropy(votes.into_iter().map(|v| f64::from(v) / k))
        }
    }))
}

/// Consensus entropy: the entropy of the committee's mean probability `q = (1/K) sum_k p_k`.
///
/// Softmax rows: `-sum_c q_c ln q_c`. Multi-label rows: per label
/// `-q_l ln q_l - (1 - q_l) ln(1 - q_l)`, aggregated over labels. Zero probabilities contribute 0.
///
/// # Errors
/// As [`vote_entropy`].
pub fn consensus_entropy<M: AsRef<[f32]> + Sync>(
    members: &[M],
    c: CommitteeParams,
) -> Result<Vec<f32>> {
    let rows = validate("consensus_entropy", members, c)?;
    let l = c.num_labels;
    Ok(per_row(rows, |r| {
        let (q, q_neg) = consensus(members, r, l);
        if c.multilabel {
            let per_label = (0..l).map(|j| entropy([q[j], q_neg[j]].into_iter()));
            aggregate_values(per_label, l, c.aggregate)
        } else {
            entropy(q.into_iter())
        }
    }))
}

/// Mean KL divergence of the members from their consensus:
/// `(1/K) sum_k KL(p_k || q)` with `q = (1/K) sum_k p_k`, high when members disagree even if each
/// is confident (where consensus entropy alone cannot tell disagreement from shared doubt).
///
/// Softmax rows: `KL(p || q) = sum_c p_c ln(p_c / q_c)`. Multi-label rows: per label the
/// Bernoulli divergence `p ln(p/q) + (1-p) ln((1-p)/(1-q))`, averaged over members, then
/// aggregated over labels. Terms with `p = 0` are 0, and `q >= p/K` keeps every ratio finite, so
/// no logarithm of 0 is taken. Rounding can leave a result a hair below 0; it is clamped to 0.
///
/// # Errors
/// As [`vote_entropy`].
pub fn mean_kl<M: AsRef<[f32]> + Sync>(members: &[M], c: CommitteeParams) -> Result<Vec<f32>> {
    let rows = validate("mean_kl", members, c)?;
    let k = members.len() as f64;
    let l = c.num_labels;
    Ok(per_row(rows, |r| {
        let (q, q_neg) = consensus(members, r, l);
        let score = if c.multilabel {
            let per_label = (0..l).map(|j| {
                let total: f64 = members
                    .iter()
                    .map(|m| {
                        let p = f64::from(member_row(m, r, l)[j]);
                        kl_term(p, q[j]) + kl_term(1.0 - p, q_neg[j])
                    })
                    .sum();
                total / k
            });
            aggregate_values(per_label, l, c.aggregate)
        } else {
            let total: f64 = members
                .iter()
                .map(|m| {
                    member_row(m, r, l)
                        .iter()
                        .zip(&q)
                        .map(|(&p, &qc)| kl_term(f64::from(p), qc))
                        .sum::<f64>()
                })
                .sum();
            total / k
        };
        score.max(0.0)
    }))
}

/// Any of the three measures, by name.
///
/// # Errors
/// As [`vote_entropy`].
pub fn disagreement<M: AsRef<[f32]> + Sync>(
    members: &[M],
    measure: Disagreement,
    c: CommitteeParams,
) -> Result<Vec<f32>> {
    match measure {
        Disagreement::Vote => vote_entropy(members, c),
        Disagreement::Consensus => consensus_entropy(members, c),
        Disagreement::MeanKl => mean_kl(members, c),
    }
}

/// Member `m`'s probabilities for row `r` of width `l`.
fn member_row<M: AsRef<[f32]>>(m: &M, r: usize, l: usize) -> &[f32] {
    &m.as_ref()[r * l..(r + 1) * l]
}

/// Mean probability `q` and mean complement `1 - q` of row `r` over the members, in f64. The
/// complement is averaged from each member's own `1 - p` rather than formed as `1 - q`, so it is
/// at least `(1 - p_k) / K` for every member and the Bernoulli ratios stay finite.
fn consensus<M: AsRef<[f32]>>(members: &[M], r: usize, l: usize) -> (Vec<f64>, Vec<f64>) {
    let k = members.len() as f64;
    let mut q = vec![0.0f64; l];
    let mut q_neg = vec![0.0f64; l];
    for m in members {
        for (j, &p) in m.as_ref()[r * l..(r + 1) * l].iter().enumerate() {
            q[j] += f64::from(p);
            q_neg[j] += 1.0 - f64::from(p);
        }
    }
    q.iter_mut().chain(q_neg.iter_mut()).for_each(|v| *v /= k);
    (q, q_neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;

    fn softmax3() -> CommitteeParams {
        CommitteeParams {
            num_labels: 3,
            multilabel: false,
            aggregate: Aggregate::Mean,
        }
    }

    fn multi2(aggregate: Aggregate) -> CommitteeParams {
        CommitteeParams {
            num_labels: 2,
            multilabel: true,
            aggregate,
        }
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() < 1e-6,
                "row {i}: got {g}, want {w}"
            );
        }
    }

    // Two members, softmax over 3 classes, two rows.
    // Row 0: A = (1/2, 1/2, 0), B = (1/4, 1/4, 1/2): they disagree.
    // Row 1: A = B = (1, 0, 0): unanimous and certain.
    fn softmax_members() -> Vec<Vec<f32>> {
        vec![
            vec![0.5, 0.5, 0.0, 1.0, 0.0, 0.0],
            vec![0.25, 0.25, 0.5, 1.0, 0.0, 0.0],
        ]
    }

    #[test]
    fn softmax_two_members_by_hand() {
        let m = softmax_members();
        // Votes: A -> class 0 (tie 0/1 goes low), B -> class 2: shares (1/2, 0, 1/2), VE = ln 2.
        assert_close(&vote_entropy(&m, softmax3()).unwrap(), &[LN2, 0.0]);

        // q = (3/8, 3/8, 1/4): H = 2 (3/8) ln(8/3) + (1/4) ln 4
        //   = 0.75 * 0.9808293 + 0.25 * 1.3862944 = 0.7356220 + 0.3465736 = 1.0821956.
        let h_q = 0.75 * (8.0f64 / 3.0).ln() + 0.25 * 4f64.ln();
        assert!((h_q - 1.0821956).abs() < 1e-7);
        assert_close(&consensus_entropy(&m, softmax3()).unwrap(), &[h_q, 0.0]);

        // KL(A || q) = 2 (1/2) ln((1/2)/(3/8)) = ln(4/3) = 0.2876821 (the 0 term skipped);
        // KL(B || q) = 2 (1/4) ln((1/4)/(3/8)) + (1/2) ln((1/2)/(1/4))
        //            = (1/2) ln(2/3) + (1/2) ln 2 = (1/2) ln(4/3) = 0.1438410;
        // mean = (3/4) ln(4/3) = 0.2157616. Check: H(q) - mean H(p_k)
        //      = 1.0821956 - (ln 2 + 1.5 ln 2) / 2 = 1.0821956 - 0.8664340 = 0.2157616.
        let kl = 0.75 * (4.0f64 / 3.0).ln();
        assert!((kl - 0.2157616).abs() < 1e-7);
        assert_close(&mean_kl(&m, softmax3()).unwrap(), &[kl, 0.0]);
    }

    // Two members, two independent labels, one row.
    // Label 0: A = 0.9, B = 0.2. Label 1: A = 1, B = 0 (certain and opposite).
    fn multilabel_members() -> Vec<Vec<f32>> {
        vec![vec![0.9, 1.0], vec![0.2, 0.0]]
    }

    #[test]
    fn multilabel_two_members_by_hand() {
        let m = multilabel_members();

        // Votes: label 0 one of two positive (0.9 >= 0.5 > 0.2) -> ln 2; label 1 likewise.
        for (agg, want) in [
            (Aggregate::Mean, LN2),
            (Aggregate::Max, LN2),
            (Aggregate::Sum, 2.0 * LN2),
        ] {
            assert_close(&vote_entropy(&m, multi2(agg)).unwrap(), &[want]);
        }

        // Consensus: label 0 q = 0.55, H = 0.55 ln(1/0.55) + 0.45 ln(1/0.45)
        //          = 0.55 * 0.5978370 + 0.45 * 0.7985077 = 0.3288104 + 0.3593285 = 0.6881388;
        //          label 1 q = 0.5, H = ln 2 = 0.6931472. Mean 0.6906430, max ln 2.
        let h0 = -0.55f64 * 0.55f64.ln() - 0.45 * 0.45f64.ln();
        assert!((h0 - 0.6881388).abs() < 1e-7);
        assert_close(
            &consensus_entropy(&m, multi2(Aggregate::Mean)).unwrap(),
            &[(h0 + LN2) / 2.0],
        );
        assert_close(
            &consensus_entropy(&m, multi2(Aggregate::Max)).unwrap(),
            &[LN2],
        );

        // Mean KL, label 0 (q = 0.55):
        //   KL(0.9 || 0.55) = 0.9 ln(0.9/0.55) + 0.1 ln(0.1/0.45)
        //                   = 0.4432287 - 0.1504077 = 0.2928210
        //   KL(0.2 || 0.55) = 0.2 ln(0.2/0.55) + 0.8 ln(0.8/0.45)
        //                   = -0.2023202 + 0.4602914 = 0.2579712
        //   mean 0.2753961.
        // Label 1 (q = 0.5): KL(1 || 0.5) = 1 ln 2 + 0 (0 ln 0 guarded) = ln 2;
        //   KL(0 || 0.5) = ln 2.
        let kl0 = 0.5
            * (0.9 * (0.9f64 / 0.55).ln()
                + 0.1 * (0.1f64 / 0.45).ln()
                + 0.2 * (0.2f64 / 0.55).ln()
                + 0.8 * (0.8f64 / 0.45).ln());
        assert!((kl0 - 0.2753961).abs() < 1e-6);
        assert_close(
            &mean_kl(&m, multi2(Aggregate::Mean)).unwrap(),
            &[(kl0 + LN2) / 2.0],
        );
        assert_close(&mean_kl(&m, multi2(Aggregate::Sum)).unwrap(), &[kl0 + LN2]);
        assert_close(&mean_kl(&m, multi2(Aggregate::Max)).unwrap(), &[LN2]);
    }

    #[test]
    fn agreement_scores_zero_and_extremes_stay_finite() {
        // Identical members, including exact 0 and 1 probabilities: no disagreement at all.
        let same = vec![vec![1.0f32, 0.0, 0.3, 0.7]; 3];
        let c = CommitteeParams {
            num_labels: 2,
            multilabel: true,
            aggregate: Aggregate::Sum,
        };
        assert_close(&vote_entropy(&same, c).unwrap(), &[0.0, 0.0]);
        assert_close(&mean_kl(&same, c).unwrap(), &[0.0, 0.0]);
        let h = consensus_entropy(&same, c).unwrap();
        assert!(h.iter().all(|v| v.is_finite()));
        assert_eq!(h[0], 0.0);
    }

    #[test]
    fn single_member_and_dispatch() {
        let one = [vec![0.2f32, 0.8]];
        let c = CommitteeParams {
            num_labels: 2,
            multilabel: false,
            aggregate: Aggregate::Mean,
        };
        assert_close(&disagreement(&one, Disagreement::Vote, c).unwrap(), &[0.0]);
        assert_close(
            &disagreement(&one, Disagreement::MeanKl, c).unwrap(),
            &[0.0],
        );
        let h = -0.2f64 * 0.2f64.ln() - 0.8 * 0.8f64.ln();
        assert_close(
            &disagreement(&one, Disagreement::Consensus, c).unwrap(),
            &[h],
        );
        // Borrowed slices work as members too.
        let borrowed: Vec<&[f32]> = one.iter().map(|v| v.as_slice()).collect();
        assert_close(&consensus_entropy(&borrowed, c).unwrap(), &[h]);
    }

    #[test]
    fn invalid_committees() {
        let c = softmax3();
        let empty: Vec<Vec<f32>> = Vec::new();
        assert!(matches!(
            vote_entropy(&empty, c),
            Err(Error::InvalidArgument(_))
        ));
        let ragged = vec![vec![0.5f32; 3], vec![0.5; 6]];
        assert!(matches!(mean_kl(&ragged, c), Err(Error::Shape { .. })));
        let not_prob = vec![vec![0.5f32, 1.5, 0.0]];
        assert!(matches!(
            consensus_entropy(&not_prob, c),
            Err(Error::InvalidArgument(_))
        ));
        let nan = vec![vec![0.5f32, f32::NAN, 0.0]];
        assert!(matches!(mean_kl(&nan, c), Err(Error::InvalidArgument(_))));
    }
}
