//! Softmax and sigmoid cross-entropy (forward, backward) and the probabilities they model.

use rayon::prelude::*;

use super::float::Float;
use super::{cpu_tensor, dims, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `ln Σ exp(z)`, shifted by the row maximum so no exponent overflows.
fn log_sum_exp<T: Float>(z: &[T]) -> f64 {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.to_f64()));
    max + z
        .iter()
        .map(|&v| (v.to_f64() - max).exp())
        .sum::<f64>()
        .ln()
}

/// Mean over rows of `Σ_j y_ij (lse_i - z_ij)`: `-Σ y log softmax(z)`, never evaluating a
/// logarithm of an underflowed probability.
pub(crate) fn softmax_xent_fwd_kernel<T: Float>(z: &[T], y: &[T], l: usize) -> T {
    let n = z.len() / l;
    let total: f64 = z
        .par_chunks(l)
        .zip(y.par_chunks(l))
        .map(|(z, y)| {
            let lse = log_sum_exp(z);
            z.iter()
                .zip(y)
                .map(|(&z, &y)| y.to_f64() * (lse - z.to_f64()))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    T::from_f64(total / n as f64)
}

/// `dloss * (Σ_j y_ij · softmax(z)_i - y_i) / N`, the exact gradient of the forward; for
/// one-hot (or any normalised) target rows this is the familiar `(softmax - y) / N`.
pub(crate) fn softmax_xent_bwd_kernel<T: Float>(z: &[T], y: &[T], l: usize, dloss: f64) -> Vec<T> {
    let n = z.len() / l;
    let coef = dloss / n as f64;
    let mut dz = vec![T::ZERO; z.len()];
    dz.par_chunks_mut(l)
        .zip(z.par_chunks(l).zip(y.par_chunks(l)))
        .for_each(|(dz, (z, y))| {
            let lse = log_sum_exp(z);
            let mass: f64 = y.iter().map(|v| v.to_f64()).sum();
            for ((dz, &z), &y) in dz.iter_mut().zip(z).zip(y) {
                let p = (z.to_f64() - lse).exp();
                *dz = T::from_f64(coef * (mass * p - y.to_f64()));
            }
        });
    dz
}

/// Binary cross-entropy with logits, `max(z, 0) - z y + ln(1 + exp(-|z|))`: the exponent is
/// never positive, so ±100 logits give exact finite losses.
#[inline]
fn bce_with_logits(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(-z))`, written so the exponent is never positive.
#[inline]
fn sigmoid<T: Float>(z: T) -> T {
    if z >= T::ZERO {
        T::ONE / (T::ONE + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::ONE + e)
    }
}

/// Mean over all `N * L` elements of the binary cross-entropy with logits.
pub(crate) fn sigmoid_xent_fwd_kernel<T: Float>(z: &[T], y: &[T]) -> T {
    let total: f64 = z
        .par_chunks(PAR_CHUNK)
        .zip(y.par_chunks(PAR_CHUNK))
        .map(|(z, y)| {
            z.iter()
                .zip(y)
                .map(|(&z, &y)| bce_with_logits(z.to_f64(), y.to_f64()))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    T::from_f64(total / z.len() as f64)
}

/// `dloss * (sigmoid(z) - y) / (N * L)`.
pub(crate) fn sigmoid_xent_bwd_kernel<T: Float>(z: &[T], y: &[T], dloss: f64) -> Vec<T> {
    let coef = T::from_f64(dloss / z.len() as f64);
    let mut dz = vec![T::ZERO; z.len()];
    dz.par_chunks_mut(PAR_CHUNK)
        .zip(z.par_chunks(PAR_CHUNK).zip(y.par_chunks(PAR_CHUNK)))
        .for_each(|(dz, (z, y))| {
            for ((dz, &z), &y) in dz.iter_mut().zip(z).zip(y) {
                *dz = coef * (sigmoid(z) - y);
            }
        });
    dz
}

/// Row softmax of `[N, L]`, or the elementwise sigmoid.
pub(crate) fn probabilities_kernel<T: Float>(z: &[T], l: usize, multilabel: bool) -> Vec<T> {
    let mut p = vec![T::ZERO; z.len()];
    if multilabel {
        p.par_iter_mut()
            .zip(z.par_iter())
            .for_each(|(p, &z)| *p = sigmoid(z));
    } else {
        p.par_chunks_mut(l).zip(z.par_chunks(l)).for_each(|(p, z)| {
            let lse = log_sum_exp(z);
            for (p, &z) in p.iter_mut().zip(z) {
                *p = T::from_f64((z.to_f64() - lse).exp());
            }
        });
    }
    p
}

/// `L` after checking that `logits [N, L]` and `targets` agree and are not empty.
fn loss_dims(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let [n, l] = dims::<2>(op, "logits", logits.shape())?;
    if targets.shape() != logits.shape() || n == 0 || l == 0 {
        return Err(Error::shape(
            op,
            format!(
                "logits {:?} vs targets {:?}",
                logits.shape(),
                targets.shape()
            ),
        ));
    }
    Ok(l)
}

pub(super) fn softmax_xent_fwd(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "softmax_xent_fwd";
    let l = loss_dims(OP, logits, targets)?;
    let loss = softmax_xent_fwd_kernel(logits.cpu_slice(OP)?, targets.cpu_slice(OP)?, l);
    Ok(cpu_tensor(vec![loss], &[1]))
}

pub(super) fn softmax_xent_bwd(logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
    const OP: &str = "softmax_xent_bwd";
    let l = loss_dims(OP, logits, targets)?;
    let dz = softmax_xent_bwd_kernel(
        logits.cpu_slice(OP)?,
        targets.cpu_slice(OP)?,
        l,
        f64::from(dloss),
    );
    Ok(cpu_tensor(dz, logits.shape()))
}

pub(super) fn sigmoid_xent_fwd(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "sigmoid_xent_fwd";
    loss_dims(OP, logits, targets)?;
    let loss = sigmoid_xent_fwd_kernel(logits.cpu_slice(OP)?, targets.cpu_slice(OP)?);
    Ok(cpu_tensor(vec![loss], &[1]))
}

pub(super) fn sigmoid_xent_bwd(logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
    const OP: &str = "sigmoid_xent_bwd";
    loss_dims(OP, logits, targets)?;
    let dz = sigmoid_xent_bwd_kernel(
        logits.cpu_slice(OP)?,
        targets.cpu_slice(OP)?,
        f64::from(dloss),
    );
    Ok(cpu_tensor(dz, logits.shape()))
}

pub(super) fn probabilities(logits: &Tensor, multilabel: bool) -> Result<Tensor> {
    const OP: &str = "probabilities";
    let [_, l] = dims::<2>(OP, "logits", logits.shape())?;
    if l == 0 {
        return Err(Error::shape(
            OP,
            format!("logits {:?} have no labels", logits.shape()),
        ));
    }
    Ok(cpu_tensor(
        probabilities_kernel(logits.cpu_slice(OP)?, l, multilabel),
        logits.shape(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    #[test]
    fn softmax_xent_by_hand_and_at_extreme_logits() {
        // Two equal logits: ln 2. ±100 logits: 0 for the right class, 200 for the wrong one.
        let z = tensor(&[0.0, 0.0, 100.0, -100.0, 100.0, -100.0], &[3, 2]);
        let y = tensor(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], &[3, 2]);
        let loss = CpuBackend.softmax_xent_fwd(&z, &y).expect("fwd");
        assert_eq!(loss.shape(), [1]);
        assert_close(
            "softmax xent",
            &values(&loss),
            &[(2f64.ln() + 200.0) / 3.0],
            HAND_F32,
        );

        let dz = values(&CpuBackend.softmax_xent_bwd(&z, &y, 3.0).expect("bwd"));
        assert_close(
            "softmax xent grad",
            &dz,
            &[-0.5, 0.5, 0.0, 0.0, 1.0, -1.0],
            HAND_F32,
        );
    }

    #[test]
    fn sigmoid_xent_by_hand_and_at_extreme_logits() {
        // z = 100, y = 0 costs 100; z = -100, y = 0 costs ln(1 + e^-100) ≈ 4e-44; z = 0 costs ln 2.
        let z = tensor(&[100.0, -100.0, 0.0, -100.0], &[2, 2]);
        let y = tensor(&[0.0, 0.0, 1.0, 1.0], &[2, 2]);
        let loss = CpuBackend.sigmoid_xent_fwd(&z, &y).expect("fwd");
        assert_eq!(loss.shape(), [1]);
        assert_close(
            "sigmoid xent",
            &values(&loss),
            &[(200.0 + 2f64.ln()) / 4.0],
            HAND_F32,
        );

        let dz = values(&CpuBackend.sigmoid_xent_bwd(&z, &y, 4.0).expect("bwd"));
        assert_close("sigmoid xent grad", &dz, &[1.0, 0.0, -0.5, -1.0], HAND_F32);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, l) = (3, 5);
        let z = random(1, n * l, -4.0, 4.0);
        let multi_hot: Vec<f64> = random(2, n * l, 0.0, 1.0)
            .iter()
            .map(|v| if *v < 0.4 { 1.0 } else { 0.0 })
            .collect();
        for (name, y) in [
            ("one-hot", one_hot(3, n, l)),
            ("multi-hot", multi_hot.clone()),
        ] {
            let dz = softmax_xent_bwd_kernel(&z, &y, l, 1.7);
            let loss = |z: &[f64]| 1.7 * softmax_xent_fwd_kernel(z, &y, l);
            check_gradient(&format!("softmax xent {name}"), &z, &dz, loss, GRAD_F64);
        }
        let dz = sigmoid_xent_bwd_kernel(&z, &multi_hot, 0.6);
        let loss = |z: &[f64]| 0.6 * sigmoid_xent_fwd_kernel(z, &multi_hot);
        check_gradient("sigmoid xent", &z, &dz, loss, GRAD_F64);
    }

    #[test]
    fn probabilities_are_softmax_rows_or_sigmoids() {
        let z = tensor(&[0.0, 2f64.ln(), 100.0, -100.0], &[2, 2]);
        let p = values(&CpuBackend.probabilities(&z, false).expect("softmax"));
        assert_close("softmax", &p, &[1.0 / 3.0, 2.0 / 3.0, 1.0, 0.0], HAND_F32);
        let p = values(&CpuBackend.probabilities(&z, true).expect("sigmoid"));
        assert_close("sigmoid", &p, &[0.5, 2.0 / 3.0, 1.0, 0.0], HAND_F32);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let z = tensor(&[0.0; 6], &[2, 3]);
        let y = tensor(&[0.0; 6], &[3, 2]);
        assert!(matches!(
            CpuBackend.softmax_xent_fwd(&z, &y),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            CpuBackend.sigmoid_xent_bwd(&z, &y, 1.0),
            Err(Error::Shape { .. })
        ));
        let flat = tensor(&[0.0; 6], &[6]);
        assert!(matches!(
            CpuBackend.probabilities(&flat, false),
            Err(Error::Shape { .. })
        ));
    }
}
