//! Per-row uncertainty scores and class probabilities, computed stably from logits.
//!
//! Softmax rows are handled through the log-sum-exp shift `z - max z`, so no exponential
//! overflows and no logarithm of an underflowed probability is ever taken. Multi-label rows are
//! independent Bernoulli labels: each label goes through its own sigmoid (never a softmax across
//! labels), its binary uncertainty is written in terms of `exp(-|z|)`, and the per-label values
//! are then combined with an [`Aggregate`]. Arithmetic inside a row is f64; scores are f32.

use rayon::prelude::*;

use crate::backend::{Aggregate, ScoreParams, Uncertainty};
use crate::error::{Error, Result};

/// Inputs with at least this many rows are processed in parallel; below it rayon's task overhead
/// costs more than the few microseconds of arithmetic it would spread.
pub(crate) const PARALLEL_MIN_ROWS: usize = 2048;

/// Smallest number of rows one rayon task handles, so tasks stay coarse.
pub(crate) const PARALLEL_ROWS_PER_TASK: usize = 256;

/// Checks that `len` values form whole rows of `num_labels` and returns the number of rows.
pub(crate) fn row_count(op: &'static str, len: usize, num_labels: usize) -> Result<usize> {
    if num_labels == 0 {
        return Err(Error::shape(op, "num_labels must be at least 1"));
    }
    if len % num_labels != 0 {
        return Err(Error::shape(
            op,
            format!("{len} values are not a whole number of rows of {num_labels} labels"),
        ));
    }
    Ok(len / num_labels)
}

/// Maps `f` over the rows of `data` (each `num_labels` wide), in parallel for large inputs.
/// The result does not depend on the thread count: each row is computed by one thread alone.
pub(crate) fn map_rows<T, F>(data: &[f32], num_labels: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(&[f32]) -> T + Sync + Send,
{
    let rows = data.len() / num_labels;
    if rows >= PARALLEL_MIN_ROWS {
        data.par_chunks_exact(num_labels)
            .with_min_len(PARALLEL_ROWS_PER_TASK)
            .map(f)
            .collect()
    } else {
        data.chunks_exact(num_labels).map(f).collect()
    }
}

/// One uncertainty score per row of `logits [N, num_labels]`; higher means more uncertain.
///
/// Softmax rows (`p.multilabel == false`), with `p = softmax(z)`, `s = sum_j exp(z_j - max z)`
/// and `p_(1) >= p_(2)` the two largest probabilities:
/// - least confidence: `1 - p_(1) = (s - 1) / s`;
/// - margin: `1 - (p_(1) - p_(2))` (with one class, `p_(2) = 0`);
/// - entropy: `H = -sum_j p_j ln p_j = ln s - sum_j p_j (z_j - max z)`, in nats.
///
/// Multi-label rows (`p.multilabel == true`), per label with `p = sigmoid(z)` and
/// `q = min(p, 1 - p) = sigmoid(-|z|)`:
/// - least confidence: `1 - max(p, 1 - p) = q`;
/// - margin: `1 - |2p - 1| = 2q` (twice least confidence: with two outcomes the top-two gap is
///   fully determined by the top probability, so the two measures rank rows identically);
/// - entropy: `-p ln p - (1-p) ln(1-p) = ln(1 + e) + |z| e / (1 + e)` with `e = exp(-|z|)`;
///
/// then combined over labels with `p.aggregate` (mean, max or sum).
///
/// Logits of ±1e4 give probabilities of exactly 0 and 1 and a score of exactly 0; `-inf` logits
/// are treated as probability 0. A row holding a NaN logit (or, for softmax, `+inf`) scores
/// NaN, which [`crate::active::select::top_k`] ranks last.
///
/// # Errors
/// [`Error::Shape`] when `num_labels` is 0 or `logits.len()` is not a multiple of it.
pub fn score_rows(logits: &[f32], num_labels: usize, p: ScoreParams) -> Result<Vec<f32>> {
    score_rows_weighted(logits, num_labels, p, None, "score_rows")
}

/// Shared body of [`score_rows`] and [`crate::active::balance::weighted_score_rows`]: with
/// `weights`, each multi-label label's uncertainty is multiplied by its weight before
/// aggregation, and each softmax row's score by the weight of its predicted class.
pub(crate) fn score_rows_weighted(
    logits: &[f32],
    num_labels: usize,
    p: ScoreParams,
    weights: Option<&[f32]>,
    op: &'static str,
) -> Result<Vec<f32>> {
    row_count(op, logits.len(), num_labels)?;
    if let Some(w) = weights {
        if w.len() != num_labels {
            return Err(Error::shape(
                op,
                format!("{} weights for {num_labels} labels", w.len()),
            ));
        }
    }
    let scores = map_rows(logits, num_labels, |row| {
        let score = if p.multilabel {
            multilabel_row(row, p.uncertainty, p.aggregate, weights)
        } else {
            let (score, predicted) = softmax_row(row, p.uncertainty);
            match weights {
                Some(w) => score * f64::from(w[predicted]),
                None => score,
            }
        };
        score as f32
    });
    Ok(scores)
}

/// Uncertainty of one softmax row and its predicted class (first maximum).
fn softmax_row(row: &[f32], uncertainty: Uncertainty) -> (f64, usize) {
    let top = argmax_first(row);
    let z_top = f64::from(row[top]);
    // A NaN anywhere poisons the distribution; `+inf` makes `z - max z` NaN; a row of only
    // `-inf` has no distribution at all. All three are reported as NaN rather than guessed.
    if row.iter().any(|z| z.is_nan()) || !z_top.is_finite() {
        return (f64::NAN, top);
    }

    // With d_j = z_j - z_top <= 0 and e_j = exp(d_j) in [0, 1], s = 1 + rest where rest sums
    // e_j over the non-top classes. Working with `rest` instead of `1 - p_top` avoids the
    // cancellation of subtracting two numbers near 1 when the model is almost certain.
    let mut rest = 0.0f64;
    let mut second = 0.0f64;
    let mut weighted_gap = 0.0f64;
    for (j, &z) in row.iter().enumerate() {
        if j == top {
            continue;
        }
        let d = f64::from(z) - z_top;
        let e = d.exp();
        rest += e;
        second = second.max(e);
        // 0 * (-inf) would be NaN: a class of probability 0 contributes 0 to the entropy.
        if e > 0.0 {
            weighted_gap += e * d;
        }
    }
    let s = 1.0 + rest;
    let score = match uncertainty {
        Uncertainty::LeastConfidence => rest / s,
        // 1 - (p1 - p2) = 1 - (1 - e_2) / s = (rest + e_2) / s.
        Uncertainty::Margin => (rest + second) / s,
        // H = ln s - sum_j p_j d_j, both terms >= 0 since d_j <= 0.
        Uncertainty::Entropy => rest.ln_1p() - weighted_gap / s,
    };
    (score, top)
}

/// Aggregated uncertainty of one multi-label row.
fn multilabel_row(
    row: &[f32],
    uncertainty: Uncertainty,
    aggregate: Aggregate,
    weights: Option<&[f32]>,
) -> f64 {
    let per_label = row.iter().enumerate().map(|(l, &z)| {
        let u = binary_uncertainty(z, uncertainty);
        match weights {
            Some(w) => u * f64::from(w[l]),
            None => u,
        }
    });
    aggregate_values(per_label, row.len(), aggregate)
}

/// Uncertainty of one Bernoulli label with logit `z`, through `e = exp(-|z|)` in `[0, 1]`,
/// which never overflows and makes the symmetry `H(z) = H(-z)` explicit.
pub(crate) fn binary_uncertainty(z: f32, uncertainty: Uncertainty) -> f64 {
    let a = f64::from(z).abs();
    let e = (-a).exp();
    // sigmoid(-|z|) = min(p, 1 - p), computed without forming 1 - p.
    let q = e / (1.0 + e);
    match uncertainty {
        Uncertainty::LeastConfidence => q,
        Uncertainty::Margin => 2.0 * q,
        Uncertainty::Entropy => {
            // With p = sigmoid(|z|): ln p = -ln(1 + e) and ln(1 - p) = -|z| - ln(1 + e), so
            // H = ln(1 + e) + |z| q. For |z| = inf, e = 0 and the product inf * 0 is skipped.
            if e > 0.0 {
                e.ln_1p() + a * q
            } else if a.is_nan() {
                f64::NAN
            } else {
                0.0
            }
        }
    }
}

/// Combines per-label values; a NaN value makes the result NaN for every aggregate
/// (`f64::max` alone would silently drop it).
pub(crate) fn aggregate_values(
    values: impl Iterator<Item = f64>,
    count: usize,
    aggregate: Aggregate,
) -> f64 {
    match aggregate {
        Aggregate::Sum => values.sum(),
        Aggregate::Mean => values.sum::<f64>() / count as f64,
        Aggregate::Max => values.fold(f64::NEG_INFINITY, |acc, v| {
            if v.is_nan() || acc.is_nan() {
                f64::NAN
            } else {
                acc.max(v)
            }
        }),
    }
}

/// Index of the first maximum of `row`, NaN entries never winning (0 if all are NaN).
pub(crate) fn argmax_first(row: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// Probabilities from logits `[N, num_labels]`: a row softmax
/// `p_j = exp(z_j - max z) / sum_k exp(z_k - max z)`, or for multi-label data the elementwise
/// sigmoid `p = 1 / (1 + exp(-z))`, evaluated as `exp(z) / (1 + exp(z))` for `z < 0` so that
/// neither branch overflows.
///
/// A softmax row with a NaN or `+inf` logit, or only `-inf` logits, comes out all NaN.
///
/// # Errors
/// [`Error::Shape`] when `num_labels` is 0 or `logits.len()` is not a multiple of it.
pub fn probabilities(logits: &[f32], num_labels: usize, multilabel: bool) -> Result<Vec<f32>> {
    row_count("probabilities", logits.len(), num_labels)?;
    if multilabel {
        return Ok(logits
            .iter()
            .map(|&z| sigmoid(f64::from(z)) as f32)
            .collect());
    }
    let rows = map_rows(logits, num_labels, |row| {
        let z_max = f64::from(row[argmax_first(row)]);
        if row.iter().any(|z| z.is_nan()) || !z_max.is_finite() {
            return vec![f32::NAN; row.len()];
        }
        let exps: Vec<f64> = row.iter().map(|&z| (f64::from(z) - z_max).exp()).collect();
        // s >= 1 because the maximum contributes exp(0) = 1.
        let s: f64 = exps.iter().sum();
        exps.into_iter()
            .map(|e| (e / s) as f32)
            .collect::<Vec<f32>>()
    });
    Ok(rows.concat())
}

/// The logistic function, without overflow for either sign of `z`.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;

    fn params(u: Uncertainty, a: Aggregate, multilabel: bool) -> ScoreParams {
        ScoreParams {
            uncertainty: u,
            aggregate: a,
            multilabel,
        }
    }

    fn softmax(u: Uncertainty) -> ScoreParams {
        params(u, Aggregate::Mean, false)
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(g) - w).abs();
            assert!(
                err <= tol * (1.0 + w.abs()),
                "index {i}: got {g}, want {w}, error {err}"
            );
        }
    }

    // Row [ln 1, ln 2, ln 3] = p (1/6, 2/6, 3/6) after softmax.
    fn ln123() -> Vec<f32> {
        vec![0.0, 2f32.ln(), 3f32.ln()]
    }

    #[test]
    fn softmax_hand_values() {
        let z = ln123();
        // least confidence: 1 - 3/6 = 0.5.
        let lc = score_rows(&z, 3, softmax(Uncertainty::LeastConfidence)).unwrap();
        assert_close(&lc, &[0.5], 1e-6);
        // margin: 1 - (3/6 - 2/6) = 5/6.
        let m = score_rows(&z, 3, softmax(Uncertainty::Margin)).unwrap();
        assert_close(&m, &[5.0 / 6.0], 1e-6);
        // entropy: -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2)
        //        = (1/6) ln 6 + (1/3) ln 3 + (1/2) ln 2 = 0.298627 + 0.366204 + 0.346574.
        let want = 6f64.ln() / 6.0 + 3f64.ln() / 3.0 + LN2 / 2.0;
        assert!((want - 1.011404).abs() < 1e-6);
        let h = score_rows(&z, 3, softmax(Uncertainty::Entropy)).unwrap();
        assert_close(&h, &[want], 1e-6);
    }

    #[test]
    fn softmax_all_equal_and_saturated() {
        // Row 0: four equal logits, p = 1/4 each. LC = 3/4, margin = 1 - 0 = 1, H = ln 4.
        // Row 1: [1e4, -1e4, 0, 0]: p = (1, 0, 0, 0) exactly in f64, all scores 0.
        // Row 2: [0, 0, -1e4, -1e4]: p = (1/2, 1/2, 0, 0): LC 1/2, margin 1, H = ln 2.
        let z = [
            3.0, 3.0, 3.0, 3.0, 1e4, -1e4, 0.0, 0.0, 0.0, 0.0, -1e4, -1e4,
        ];
        let lc = score_rows(&z, 4, softmax(Uncertainty::LeastConfidence)).unwrap();
        assert_close(&lc, &[0.75, 0.0, 0.5], 1e-7);
        let m = score_rows(&z, 4, softmax(Uncertainty::Margin)).unwrap();
        assert_close(&m, &[1.0, 0.0, 1.0], 1e-7);
        let h = score_rows(&z, 4, softmax(Uncertainty::Entropy)).unwrap();
        assert_close(&h, &[4f64.ln(), 0.0, LN2], 1e-7);
        assert_eq!(h[1], 0.0, "a certain row must score exactly 0");
    }

    #[test]
    fn softmax_tiny_uncertainty_keeps_precision() {
        // [20, 0]: 1 - p1 = e^-20 / (1 + e^-20) = 2.0611536e-9, which 1 - p1 in f32 would
        // round to 0. The margin is twice that (p2 = 1 - p1).
        let z = [20.0, 0.0];
        let lc = score_rows(&z, 2, softmax(Uncertainty::LeastConfidence)).unwrap();
        let e = (-20f64).exp();
        assert_close(&lc, &[e / (1.0 + e)], 1e-6);
        let m = score_rows(&z, 2, softmax(Uncertainty::Margin)).unwrap();
        assert_close(&m, &[2.0 * e / (1.0 + e)], 1e-6);
        // H = ln(1 + e) + 20 e / (1 + e) ~= 21 e.
        let h = score_rows(&z, 2, softmax(Uncertainty::Entropy)).unwrap();
        assert_close(&h, &[e.ln_1p() + 20.0 * e / (1.0 + e)], 1e-6);
        assert!(h[0] > 0.0);
    }

    #[test]
    fn softmax_ties_and_single_class() {
        // Two tied maxima and one -inf class: p = (1/2, 1/2, 0).
        let z = [1.0, f32::NEG_INFINITY, 1.0];
        let h = score_rows(&z, 3, softmax(Uncertainty::Entropy)).unwrap();
        assert_close(&h, &[LN2], 1e-7);
        let m = score_rows(&z, 3, softmax(Uncertainty::Margin)).unwrap();
        assert_close(&m, &[1.0], 1e-7);
        // One class: p = 1, nothing is uncertain.
        for u in [
            Uncertainty::LeastConfidence,
            Uncertainty::Margin,
            Uncertainty::Entropy,
        ] {
            assert_eq!(
                score_rows(&[5.0, -7.0], 1, softmax(u)).unwrap(),
                vec![0.0, 0.0]
            );
        }
    }

    #[test]
    fn softmax_is_shift_invariant_and_huge_logits_do_not_overflow() {
        let z = ln123();
        let shifted: Vec<f32> = z.iter().map(|v| v + 1000.0).collect();
        for u in [
            Uncertainty::LeastConfidence,
            Uncertainty::Margin,
            Uncertainty::Entropy,
        ] {
            let a = score_rows(&z, 3, softmax(u)).unwrap();
            let b = score_rows(&shifted, 3, softmax(u)).unwrap();
            // 1000 + ln 2 rounds in f32 (spacing 6e-5), so allow that much.
            assert_close(&b, &[f64::from(a[0])], 1e-4);
        }
    }

    #[test]
    fn non_finite_rows_score_nan() {
        let z = [0.0, f32::NAN, 1.0, 2.0, f32::INFINITY, 0.0];
        let h = score_rows(&z, 3, softmax(Uncertainty::Entropy)).unwrap();
        assert!(h[0].is_nan() && h[1].is_nan());
        let ml = params(Uncertainty::Entropy, Aggregate::Max, true);
        let h = score_rows(&z, 3, ml).unwrap();
        assert!(h[0].is_nan(), "max must not drop a NaN label");
        // Multi-label +inf is a legitimate certainty (p = 1): labels ln 2, 0, 0 -> max ln 2.
        assert_close(&h[1..], &[LN2], 1e-7);
    }

    #[test]
    fn multilabel_hand_values() {
        // Labels z = (0, ln 3, -ln 3, 1e4, -1e4): p = (1/2, 3/4, 1/4, 1, 0),
        // q = min(p, 1-p) = (1/2, 1/4, 1/4, 0, 0).
        let z = [0.0, 3f32.ln(), -(3f32.ln()), 1e4, -1e4];
        let lc: [f64; 5] = [0.5, 0.25, 0.25, 0.0, 0.0];
        let margin: Vec<f64> = lc.iter().map(|q| 2.0 * q).collect();
        // H(1/4) = -(1/4) ln(1/4) - (3/4) ln(3/4) = ln 4 - (3/4) ln 3 = 0.5623351.
        let h14 = 4f64.ln() - 0.75 * 3f64.ln();
        assert!((h14 - 0.5623351).abs() < 1e-7);
        let h: [f64; 5] = [LN2, h14, h14, 0.0, 0.0];

        for (u, per_label) in [
            (Uncertainty::LeastConfidence, lc.to_vec()),
            (Uncertainty::Margin, margin),
            (Uncertainty::Entropy, h.to_vec()),
        ] {
            let sum: f64 = per_label.iter().sum();
            let max = per_label.iter().cloned().fold(f64::MIN, f64::max);
            for (agg, want) in [
                (Aggregate::Sum, sum),
                (Aggregate::Mean, sum / 5.0),
                (Aggregate::Max, max),
            ] {
                let got = score_rows(&z, 5, params(u, agg, true)).unwrap();
                assert_close(&got, &[want], 1e-6);
            }
        }
    }

    #[test]
    fn multilabel_all_equal_logits() {
        // Three labels at logit 0: p = 1/2 each, so per label LC 1/2, margin 1, H = ln 2.
        // Mean and max are the per-label value, sum is three times it.
        let z = [0.0; 3];
        for (u, per_label) in [
            (Uncertainty::LeastConfidence, 0.5),
            (Uncertainty::Margin, 1.0),
            (Uncertainty::Entropy, LN2),
        ] {
            for (agg, factor) in [
                (Aggregate::Mean, 1.0),
                (Aggregate::Max, 1.0),
                (Aggregate::Sum, 3.0),
            ] {
                let got = score_rows(&z, 3, params(u, agg, true)).unwrap();
                assert_close(&got, &[per_label * factor], 1e-7);
            }
        }
    }

    #[test]
    fn multilabel_is_not_a_softmax_across_labels() {
        // Two labels both at logit 10 are both confidently positive: entropy ~ 0, whereas a
        // softmax across them would call the row maximally uncertain (ln 2).
        let p = params(Uncertainty::Entropy, Aggregate::Max, true);
        let h = score_rows(&[10.0, 10.0], 2, p).unwrap();
        assert!(h[0] < 1e-3, "got {}", h[0]);
        let hs = score_rows(&[10.0, 10.0], 2, softmax(Uncertainty::Entropy)).unwrap();
        assert_close(&hs, &[LN2], 1e-7);
    }

    #[test]
    fn multilabel_entropy_matches_the_direct_formula_in_the_safe_range() {
        for i in -60..=60 {
            let z = i as f32 * 0.25;
            let p = sigmoid(f64::from(z));
            let direct = -p * p.ln() - (1.0 - p) * (1.0 - p).ln();
            let got = binary_uncertainty(z, Uncertainty::Entropy);
            assert!((got - direct).abs() < 1e-12, "z = {z}: {got} vs {direct}");
        }
    }

    #[test]
    fn shape_errors() {
        let p = softmax(Uncertainty::Entropy);
        assert!(matches!(
            score_rows(&[1.0; 5], 2, p),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            score_rows(&[1.0; 4], 0, p),
            Err(Error::Shape { .. })
        ));
        assert!(probabilities(&[1.0; 3], 2, false).is_err());
        assert_eq!(score_rows(&[], 3, p).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn probabilities_are_stable() {
        let p = probabilities(&[1e4, -1e4, 0.0, 1000.0, 1000.0, 1000.0], 3, false).unwrap();
        assert_eq!(&p[..3], &[1.0, 0.0, 0.0]);
        assert_close(&p[3..], &[1.0 / 3.0; 3], 1e-7);
        let s = probabilities(&[0.0, 1e4, -1e4, 3f32.ln(), -200.0], 5, true).unwrap();
        assert_close(&s[..4], &[0.5, 1.0, 0.0, 0.75], 1e-7);
        // sigmoid(-200) = 1.4e-87 underflows f32 to 0, but is never NaN.
        assert_eq!(s[4], 0.0);
        assert!(probabilities(&[f32::NAN, 0.0], 2, false)
            .unwrap()
            .iter()
            .all(|v| v.is_nan()));
    }

    #[test]
    fn parallel_path_matches_serial_rows() {
        // Enough rows to take the rayon path; every row must equal the same row scored alone.
        let rows = PARALLEL_MIN_ROWS + 37;
        let z: Vec<f32> = (0..rows * 3)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 5.0)
            .collect();
        for multilabel in [false, true] {
            let p = params(Uncertainty::Entropy, Aggregate::Mean, multilabel);
            let all = score_rows(&z, 3, p).unwrap();
            for r in [0, 1, rows / 2, rows - 1] {
                let one = score_rows(&z[r * 3..r * 3 + 3], 3, p).unwrap();
                assert_eq!(all[r], one[0]);
            }
        }
    }
}
