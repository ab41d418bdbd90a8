//! Label balancing: weights that favour the labels the model handles worst, and uncertainty
//! scores weighted by them.

use crate::active::uncertainty::score_rows_weighted;
use crate::backend::ScoreParams;
use crate::error::{Error, Result};

/// Smallest weight a label can get. A label at F1 = 1 on the validation set is not perfectly
/// learned in general (the set is small), so its uncertainty keeps a twentieth of full weight
/// instead of vanishing; that also keeps rows whose only doubt lies on such labels ordered among
/// themselves rather than all tied at 0.
pub const MIN_LABEL_WEIGHT: f32 = 0.05;

/// Per-label weights `w_l = max(1 - F1_l, MIN_LABEL_WEIGHT)`, from validation F1 scores
/// (e.g. [`crate::active::metrics::Metrics::per_label_f1`]).
///
/// F1 values are clamped to `[0, 1]`, and a NaN F1 (nothing known) counts as 0, i.e. full
/// weight 1. The weights are not normalised: with [`crate::backend::Aggregate::Mean`] a row's
/// score is `(1/L) sum_l w_l u_l`, which ranks rows the same as the weighted mean
/// `sum_l w_l u_l / sum_l w_l`.
pub fn label_weights(per_label_f1: &[f64]) -> Vec<f32> {
    per_label_f1
        .iter()
        .map(|&f1| {
            let f1 = if f1.is_nan() { 0.0 } else { f1.clamp(0.0, 1.0) };
            ((1.0 - f1) as f32).max(MIN_LABEL_WEIGHT)
        })
        .collect()
}

/// Uncertainty scores with per-label weights, from logits `[N, L]`.
///
/// Multi-label rows: `score = aggregate_l (w_l u_l)`, where `u_l` is label `l`'s uncertainty as
/// in [`crate::active::uncertainty::score_rows`]; so doubt on a poorly learned label counts more.
///
/// Softmax rows have one uncertainty per row, not per label, so the row's score is multiplied by
/// the weight of its predicted class: `score = w_{argmax z} u(row)` (ties to the lowest class).
/// Uncertain images the model currently assigns to its weakest classes go first.
///
/// # Errors
/// [`Error::Shape`] when the logits are not whole rows or `weights.len() != num_labels`;
/// [`Error::InvalidArgument`] when a weight is negative or not finite.
pub fn weighted_score_rows(
    logits: &[f32],
    num_labels: usize,
    weights: &[f32],
    p: ScoreParams,
) -> Result<Vec<f32>> {
    if let Some(l) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
        return Err(Error::InvalidArgument(format!(
            "weighted_score_rows: weight {l} is {}, expected a finite value >= 0",
            weights[l]
        )));
    }
    score_rows_weighted(logits, num_labels, p, Some(weights), "weighted_score_rows")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::active::uncertainty::score_rows;
    use crate::backend::{Aggregate, Uncertainty};

    const LN2: f64 = std::f64::consts::LN_2;

    #[test]
    fn weights_from_f1() {
        let w = label_weights(&[0.0, 0.25, 1.0, 0.99, f64::NAN, 1.5, -0.2]);
        assert_eq!(
            w,
            vec![
                1.0,
                0.75,
                MIN_LABEL_WEIGHT,
                MIN_LABEL_WEIGHT,
                1.0,
                MIN_LABEL_WEIGHT,
                1.0
            ]
        );
        assert!(w.iter().all(|&v| v > 0.0));
    }

    #[test]
    fn multilabel_weighted_by_hand() {
        // Labels z = (0, 0, 1e4): per-label entropy (ln 2, ln 2, 0).
        // Weights (1, 0.5, 0.05): weighted (ln 2, ln 2 / 2, 0).
        let z = [0.0, 0.0, 1e4];
        let w = [1.0, 0.5, 0.05];
        let p = |aggregate| ScoreParams {
            uncertainty: Uncertainty::Entropy,
            aggregate,
            multilabel: true,
        };
        let sum = weighted_score_rows(&z, 3, &w, p(Aggregate::Sum)).unwrap();
        assert!((f64::from(sum[0]) - 1.5 * LN2).abs() < 1e-6);
        let mean = weighted_score_rows(&z, 3, &w, p(Aggregate::Mean)).unwrap();
        assert!((f64::from(mean[0]) - 0.5 * LN2).abs() < 1e-6);
        let max = weighted_score_rows(&z, 3, &w, p(Aggregate::Max)).unwrap();
        assert!((f64::from(max[0]) - LN2).abs() < 1e-6);
        // Unit weights reproduce the unweighted scores.
        let plain = score_rows(&z, 3, p(Aggregate::Mean)).unwrap();
        assert_eq!(
            weighted_score_rows(&z, 3, &[1.0; 3], p(Aggregate::Mean)).unwrap(),
            plain
        );
    }

    #[test]
    fn balancing_reorders_rows_towards_weak_labels() {
        // Row 0 doubts label 0 (well learned), row 1 doubts label 1 (poorly learned), equally.
        let z = [0.0, 10.0, 10.0, 0.0];
        let p = ScoreParams {
            uncertainty: Uncertainty::LeastConfidence,
            aggregate: Aggregate::Max,
            multilabel: true,
        };
        let w = label_weights(&[0.95, 0.3]);
        let s = weighted_score_rows(&z, 2, &w, p).unwrap();
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn softmax_rows_weighted_by_predicted_class() {
        // Row 0: z = (0, 1), predicted class 1: LC = 1 - e/(1+e) = 1/(1+e) = 0.2689414,
        // weight w_1 = 0.5.
        // Row 1: z = (2, 2): tie -> class 0, LC = 1/2, weight w_0 = 0.2.
        let z = [0.0, 1.0, 2.0, 2.0];
        let p = ScoreParams {
            uncertainty: Uncertainty::LeastConfidence,
            aggregate: Aggregate::Mean,
            multilabel: false,
        };
        let s = weighted_score_rows(&z, 2, &[0.2, 0.5], p).unwrap();
        let e = std::f64::consts::E;
        assert!((f64::from(s[0]) - 0.5 / (1.0 + e)).abs() < 1e-7);
        assert!((f64::from(s[1]) - 0.1).abs() < 1e-7);
    }

    #[test]
    fn bad_weights() {
        let p = ScoreParams {
            uncertainty: Uncertainty::Entropy,
            aggregate: Aggregate::Mean,
            multilabel: true,
        };
        assert!(matches!(
            weighted_score_rows(&[0.0; 4], 2, &[1.0], p),
            Err(Error::Shape { .. })
        ));
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let r = weighted_score_rows(&[0.0; 4], 2, &[1.0, bad], p);
            assert!(matches!(r, Err(Error::InvalidArgument(_))));
        }
    }
}
