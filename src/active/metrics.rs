//! PROVISIONAL stand-in (branch `active`).
use crate::error::Result;
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics { pub macro_f1: f64, pub exact_match: f64, pub hamming_loss: f64, pub per_label_f1: Vec<f64>, pub undefined_f1_labels: Vec<usize> }
pub fn evaluate(y_true: &[u8], y_pred: &[u8], num_labels: usize) -> Result<Metrics> {
    let n = y_true.len() / num_labels.max(1);
    let exact = (0..n).filter(|&i| y_true[i*num_labels..(i+1)*num_labels] == y_pred[i*num_labels..(i+1)*num_labels]).count();
    let wrong = y_true.iter().zip(y_pred).filter(|(a, b)| a != b).count();
    Ok(Metrics { macro_f1: 0.0, exact_match: exact as f64 / n.max(1) as f64, hamming_loss: wrong as f64 / y_true.len().max(1) as f64, per_label_f1: vec![], undefined_f1_labels: vec![] })
}
pub fn predict(p: &[f32], l: usize, multilabel: bool) -> Result<Vec<u8>> { Ok(
    p.chunks(l).flat_map(|r| { if multilabel { r.iter().map(|&x| (x >= 0.5) as u8).collect::<Vec<_>>() } else { let m = r.iter().enumerate().fold(0, |b, (i, &x)| if x > r[b] { i } else { b }); (0..l).map(|i| (i == m) as u8).collect() } }).collect())
}
