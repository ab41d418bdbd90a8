//! Evaluation metrics on label indicator matrices (macro F1, subset accuracy, Hamming loss), as
//! scikit-learn computes them, and the decision rule from probabilities to predicted labels.

use crate::active::uncertainty::{argmax_first, map_rows, row_count};
use crate::error::{Error, Result};

/// Scores of a prediction against the truth over `N` rows and `L` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Unweighted mean of `per_label_f1` over all `L` labels.
    pub macro_f1: f64,
    /// Fraction of rows whose whole label row is predicted exactly (subset accuracy).
    pub exact_match: f64,
    /// Fraction of the `N * L` label decisions that are wrong.
    pub hamming_loss: f64,
    /// `F1_l = 2 TP / (2 TP + FP + FN)` for each label, 0 where undefined.
    pub per_label_f1: Vec<f64>,
    /// Labels with no true and no predicted positive: their F1 is 0/0, counted as 0.
    pub undefined_f1_labels: Vec<usize>,
}

/// Scores the indicator matrix `y_pred [N, L]` against `y_true [N, L]` (entries 0 or 1).
///
/// The numbers equal scikit-learn's on indicator matrices:
/// - `per_label_f1[l] = 2 TP_l / (2 TP_l + FP_l + FN_l)`; when the denominator is 0 (label `l`
///   is neither present nor predicted) the F1 is 0 and `l` is listed in `undefined_f1_labels`,
///   as `f1_score(.., average=None, zero_division=0)`;
/// - `macro_f1 = (1/L) sum_l per_label_f1[l]`, as `f1_score(.., average="macro",
///   zero_division=0)`; undefined labels stay in the average as zeros;
/// - `exact_match = (1/N) sum_i [y_true_i == y_pred_i]` over whole rows, as `accuracy_score`;
/// - `hamming_loss = (1/(N L)) sum_{i,l} [y_true_il != y_pred_il]`, as `hamming_loss`.
///
/// For single-label data passed one-hot, every class column counts in the macro average. This is
/// scikit-learn's result with class indices and `labels=range(L)`; with class indices and no
/// `labels` argument scikit-learn would instead drop classes absent from both vectors. There
/// `exact_match` is the plain accuracy and `hamming_loss = 2 (1 - accuracy) / L`.
///
/// With `num_labels = 1` the single column is scored as one label. scikit-learn would read a
/// one-column matrix as binary targets and macro-average over the two classes 0 and 1 instead.
///
/// # Errors
/// [`Error::Shape`] when the lengths differ or are not whole rows of `num_labels`;
/// [`Error::InvalidArgument`] when there are no rows or an entry is not 0 or 1.
pub fn evaluate(y_true: &[u8], y_pred: &[u8], num_labels: usize) -> Result<Metrics> {
    if y_true.len() != y_pred.len() {
        return Err(Error::shape(
            "evaluate",
            format!(
                "y_true has {} values, y_pred {}",
                y_true.len(),
                y_pred.len()
            ),
        ));
    }
    let rows = row_count("evaluate", y_true.len(), num_labels)?;
    if rows == 0 {
        return Err(Error::InvalidArgument("evaluate: no rows to score".into()));
    }
    if let Some(pos) = y_true.iter().chain(y_pred).position(|&v| v > 1) {
        let which = if pos < y_true.len() {
            "y_true"
        } else {
            "y_pred"
        };
        let i = pos % y_true.len();
        return Err(Error::InvalidArgument(format!(
            "evaluate: {which}[{i}] (row {}, label {}) is not 0 or 1",
            i / num_labels,
            i % num_labels
        )));
    }

    // Integer counts per label; the divisions happen once at the end in f64.
    let mut true_pos = vec![0u64; num_labels];
    let mut false_pos = vec![0u64; num_labels];
    let mut false_neg = vec![0u64; num_labels];
    let mut exact_rows = 0u64;
    let mut wrong_labels = 0u64;
    for (t_row, p_row) in y_true
        .chunks_exact(num_labels)
        .zip(y_pred.chunks_exact(num_labels))
    {
        let mut row_exact = true;
        for (l, (&t, &p)) in t_row.iter().zip(p_row).enumerate() {
            match (t, p) {
                (1, 1) => true_pos[l] += 1,
                (0, 1) => false_pos[l] += 1,
                (1, 0) => false_neg[l] += 1,
                _ => {}
            }
            if t != p {
                row_exact = false;
                wrong_labels += 1;
            }
        }
        exact_rows += u64::from(row_exact);
    }

    let mut per_label_f1 = Vec::with_capacity(num_labels);
    let mut undefined_f1_labels = Vec::new();
    for l in 0..num_labels {
        let denominator = 2 * true_pos[l] + false_pos[l] + false_neg[l];
        if denominator == 0 {
            undefined_f1_labels.push(l);
            per_label_f1.push(0.0);
        } else {
            per_label_f1.push((2 * true_pos[l]) as f64 / denominator as f64);
        }
    }
    let macro_f1 = per_label_f1.iter().sum::<f64>() / num_labels as f64;
    Ok(Metrics {
        macro_f1,
        exact_match: exact_rows as f64 / rows as f64,
        hamming_loss: wrong_labels as f64 / (rows * num_labels) as f64,
        per_label_f1,
        undefined_f1_labels,
    })
}

/// Predicted indicator matrix `[N, L]` from probabilities `[N, L]`.
///
/// Softmax rows: one-hot at `argmax_j p_j`, ties going to the lowest index (NaN never wins; an
/// all-NaN row predicts class 0). Multi-label rows: label `l` is predicted when `p_l >= 0.5`
/// (a NaN probability predicts 0).
///
/// # Errors
/// [`Error::Shape`] when `num_labels` is 0 or the length is not a multiple of it.
pub fn predict(probabilities: &[f32], num_labels: usize, multilabel: bool) -> Result<Vec<u8>> {
    row_count("predict", probabilities.len(), num_labels)?;
    if multilabel {
        return Ok(probabilities.iter().map(|&p| u8::from(p >= 0.5)).collect());
    }
    let rows = map_rows(probabilities, num_labels, |row| {
        let mut one_hot = vec![0u8; row.len()];
        one_hot[argmax_first(row)] = 1;
        one_hot
    });
    Ok(rows.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_multilabel() {
        // y_true      y_pred
        // 1 0         1 1
        // 1 1         0 1
        // 0 1         0 0
        // 0 0         0 0
        // label 0: TP 1 (row 0), FN 1 (row 1), FP 0     -> F1 = 2/(2+0+1) = 2/3
        // label 1: TP 1 (row 1), FP 1 (row 0), FN 1 (row 2) -> F1 = 2/(2+1+1) = 1/2
        // macro = (2/3 + 1/2) / 2 = 7/12
        // exact rows: only row 3 -> 1/4
        // wrong cells: (0,1), (1,0), (2,1) -> 3/8
        let t = [1, 0, 1, 1, 0, 1, 0, 0];
        let p = [1, 1, 0, 1, 0, 0, 0, 0];
        let m = evaluate(&t, &p, 2).unwrap();
        assert!(close(m.per_label_f1[0], 2.0 / 3.0));
        assert!(close(m.per_label_f1[1], 0.5));
        assert!(close(m.macro_f1, 7.0 / 12.0));
        assert!(close(m.exact_match, 0.25));
        assert!(close(m.hamming_loss, 3.0 / 8.0));
        assert!(m.undefined_f1_labels.is_empty());
    }

    #[test]
    fn label_without_positives_counts_zero_and_is_listed() {
        // 3 rows x 4 labels; label 3 is never true nor predicted (F1 = 0/0 -> 0).
        // y_true       y_pred
        // 1 0 1 0      1 0 0 0
        // 0 1 0 0      0 1 1 0
        // 1 0 0 0      1 0 0 0
        // label 0: TP 2 -> 4/4 = 1; label 1: TP 1 -> 2/2 = 1;
        // label 2: TP 0, FN 1 (row 0), FP 1 (row 1) -> 0/2 = 0 (defined, just wrong);
        // macro = (1 + 1 + 0 + 0) / 4 = 0.5; exact: row 2 only -> 1/3;
        // wrong cells: (0,2), (1,2) -> 2/12.
        let t = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0];
        let p = [1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0];
        let m = evaluate(&t, &p, 4).unwrap();
        assert_eq!(m.per_label_f1, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(m.undefined_f1_labels, vec![3]);
        assert!(close(m.macro_f1, 0.5));
        assert!(close(m.exact_match, 1.0 / 3.0));
        assert!(close(m.hamming_loss, 2.0 / 12.0));
    }

    #[test]
    fn label_predicted_but_never_true_is_defined_zero() {
        // One label, truth all 0, one false positive: F1 = 0 / (0 + 1 + 0) = 0, defined.
        // (scikit-learn would read this one-column matrix as binary targets; see `evaluate`.)
        let m = evaluate(&[0, 0], &[1, 0], 1).unwrap();
        assert_eq!(m.per_label_f1, vec![0.0]);
        assert!(m.undefined_f1_labels.is_empty());
        assert!(close(m.exact_match, 0.5) && close(m.hamming_loss, 0.5));
    }

    #[test]
    fn one_hot_softmax_data() {
        // Classes true (0, 1, 2, 2), predicted (0, 2, 2, 2) over L = 4 (class 3 unused).
        // class 0: TP 1 -> 1; class 1: FN 1 -> 0; class 2: TP 2, FP 1 -> 4/5; class 3: 0/0.
        // macro over all 4 columns = (1 + 0 + 0.8 + 0) / 4 = 0.45;
        // accuracy 3/4; Hamming = 2 wrong cells / 16 = 2 (1 - 3/4) / 4 = 0.125.
        let one_hot = |c: &[usize]| {
            let mut v = vec![0u8; c.len() * 4];
            for (i, &k) in c.iter().enumerate() {
                v[i * 4 + k] = 1;
            }
            v
        };
        let m = evaluate(&one_hot(&[0, 1, 2, 2]), &one_hot(&[0, 2, 2, 2]), 4).unwrap();
        assert!(close(m.macro_f1, 0.45));
        assert!(close(m.exact_match, 0.75));
        assert!(close(m.hamming_loss, 0.125));
        assert_eq!(m.undefined_f1_labels, vec![3]);
    }

    #[test]
    fn matches_scikit_learn_on_a_random_matrix() {
        // A 9 x 5 matrix drawn once with numpy (label 4 forced to all zeros), scored by
        // scikit-learn 1.9.1: f1_score(average=None / "macro", zero_division=0) gives
        // [6/7, 0, 0, 0, 0] and 0.17142857142857143, accuracy_score 0.0, hamming_loss
        // 0.37777777777777777 (17 wrong cells of 45). By hand, label 0: true rows {2, 4, 7, 8},
        // predicted {2, 4, 7} -> TP 3, FN 1 -> 6/7; labels 1-3 have no TP; label 4 is 0/0.
        #[rustfmt::skip]
        let t = [
            0, 0, 0, 1, 0,  0, 1, 0, 0, 0,  1, 1, 1, 0, 0,  0, 0, 0, 0, 0,  1, 1, 0, 1, 0,
            0, 0, 0, 0, 0,  0, 1, 1, 1, 0,  1, 0, 1, 0, 0,  1, 0, 0, 0, 0,
        ];
        #[rustfmt::skip]
        let p = [
            0, 1, 0, 0, 0,  0, 0, 1, 0, 0,  1, 0, 0, 0, 0,  0, 0, 0, 1, 0,  1, 0, 1, 0, 0,
            0, 1, 0, 0, 0,  0, 0, 0, 0, 0,  1, 0, 0, 1, 0,  0, 0, 0, 0, 0,
        ];
        let m = evaluate(&t, &p, 5).unwrap();
        assert!(close(m.per_label_f1[0], 0.8571428571428571));
        assert_eq!(&m.per_label_f1[1..], &[0.0; 4]);
        assert!(close(m.macro_f1, 0.17142857142857143));
        assert_eq!(m.exact_match, 0.0);
        assert!(close(m.hamming_loss, 0.37777777777777777));
        assert_eq!(m.undefined_f1_labels, vec![4]);
    }

    #[test]
    fn perfect_prediction() {
        let t = [1, 0, 0, 1, 1, 1];
        let m = evaluate(&t, &t, 3).unwrap();
        assert_eq!((m.macro_f1, m.exact_match, m.hamming_loss), (1.0, 1.0, 0.0));
    }

    #[test]
    fn invalid_inputs() {
        assert!(matches!(
            evaluate(&[0, 1], &[0], 1),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            evaluate(&[0, 1, 1], &[0, 1, 1], 2),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            evaluate(&[], &[], 2),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            evaluate(&[0, 2], &[0, 1], 2),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            evaluate(&[0, 1], &[0, 1], 0),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn predict_rules() {
        // Softmax: ties go to the lowest index; NaN never wins.
        let p = [0.4, 0.4, 0.2, 0.1, 0.2, 0.7, f32::NAN, 0.3, 0.3];
        assert_eq!(
            predict(&p, 3, false).unwrap(),
            vec![1, 0, 0, 0, 0, 1, 0, 1, 0]
        );
        // Multi-label: threshold 0.5 inclusive.
        let p = [0.5, 0.4999, 1.0, 0.0, f32::NAN];
        assert_eq!(predict(&p, 5, true).unwrap(), vec![1, 0, 1, 0, 0]);
        assert!(predict(&[0.5; 3], 2, true).is_err());
    }
}
