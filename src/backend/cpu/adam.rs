//! The fused Adam / AdamW parameter update.

use rayon::prelude::*;

use super::{slice_mut, PAR_CHUNK};
use crate::backend::AdamParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One Adam step over `param`, `grad`, `m`, `v` in place, as PyTorch's `Adam`/`AdamW`
/// (non-amsgrad): `denom = sqrt(v) / sqrt(1 - β2^t) + eps`, `p -= lr / (1 - β1^t) * m / denom`.
pub(crate) fn adam_kernel(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    p: AdamParams,
) {
    // Bias corrections in f64, as PyTorch computes them in Python floats: `1 - β^t` subtracts
    // nearly equal numbers at small t, where f32 would keep only a few digits.
    let t = f64::from(p.step);
    let bias1 = 1.0 - f64::from(p.beta1).powf(t);
    let bias2 = 1.0 - f64::from(p.beta2).powf(t);
    let step_size = (f64::from(p.lr) / bias1) as f32;
    let inv_sqrt_bias2 = (1.0 / bias2.sqrt()) as f32;
    let (b1, b2, eps) = (p.beta1, p.beta2, p.eps);
    let (coupled_wd, decay) = if p.decoupled {
        (0.0, 1.0 - p.lr * p.weight_decay)
    } else {
        (p.weight_decay, 1.0)
    };

    param
        .par_chunks_mut(PAR_CHUNK)
        .zip(m.par_chunks_mut(PAR_CHUNK))
        .zip(v.par_chunks_mut(PAR_CHUNK))
        .zip(grad.par_chunks(PAR_CHUNK))
        .for_each(|(((param, m), v), grad)| {
            for (((p, m), v), &g) in param.iter_mut().zip(m).zip(v).zip(grad) {
                let g = g + coupled_wd * *p;
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() * inv_sqrt_bias2 + eps;
                *p -= step_size * *m / denom;
            }
        });
}

pub(super) fn adam_update(
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    p: AdamParams,
) -> Result<()> {
    const OP: &str = "adam_update";
    if p.step == 0 {
        return Err(Error::InvalidArgument(format!(
            "{OP}: step counts from 1, got 0"
        )));
    }
    for (name, t) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        if t.shape() != param.shape() {
            return Err(Error::shape(
                OP,
                format!("{name} {:?} vs param {:?}", t.shape(), param.shape()),
            ));
        }
    }
    let grad = grad.cpu_slice(OP)?;
    let param = slice_mut(OP, param)?;
    let m = slice_mut(OP, m)?;
    let v = slice_mut(OP, v)?;
    adam_kernel(param, grad, m, v, p);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    fn params(decoupled: bool, weight_decay: f32, step: u32) -> AdamParams {
        AdamParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled,
            step,
        }
    }

    /// Runs steps 1 and 2 on `p = [1, -2]` with gradients `g1` then `g2`.
    fn two_steps(decoupled: bool, weight_decay: f32) -> (Vec<f64>, Vec<f64>) {
        let mut param = tensor(&[1.0, -2.0], &[2]);
        let mut m = tensor(&[0.0, 0.0], &[2]);
        let mut v = tensor(&[0.0, 0.0], &[2]);
        let g1 = tensor(&[0.5, -0.25], &[2]);
        let g2 = tensor(&[-1.0, 0.5], &[2]);
        let b = CpuBackend;
        b.adam_update(
            &mut param,
            &g1,
            &mut m,
            &mut v,
            params(decoupled, weight_decay, 1),
        )
        .expect("step 1");
        let after1 = values(&param);
        b.adam_update(
            &mut param,
            &g2,
            &mut m,
            &mut v,
            params(decoupled, weight_decay, 2),
        )
        .expect("step 2");
        (after1, values(&param))
    }

    /// `p - lr * m̂ / (sqrt(v̂) + eps)` for one element after steps with gradients `gs`.
    fn by_hand(mut p: f64, gs: &[f64], wd: f64, decoupled: bool) -> f64 {
        let (lr, b1, b2, eps) = (0.1, 0.9f32 as f64, 0.999f32 as f64, 1e-8f32 as f64);
        let (mut m, mut v) = (0.0, 0.0);
        for (t, &g) in gs.iter().enumerate() {
            let t = t as i32 + 1;
            let g = if decoupled { g } else { g + wd * p };
            if decoupled {
                p *= 1.0 - lr * wd;
            }
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let m_hat = m / (1.0 - b1.powi(t));
            let v_hat = v / (1.0 - b2.powi(t));
            p -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        p
    }

    #[test]
    fn first_step_moves_by_learning_rate() {
        // Step 1: m̂ = g and v̂ = g², so every parameter moves by lr against its gradient's sign.
        let (after1, _) = two_steps(false, 0.0);
        assert_close("adam step 1", &after1, &[0.9, -1.9], HAND_F32);
        // AdamW with decay 0.1 first shrinks p by 1 - lr * wd = 0.99.
        let (after1, _) = two_steps(true, 0.1);
        assert_close("adamw step 1", &after1, &[0.89, -1.88], HAND_F32);
    }

    #[test]
    fn two_steps_match_the_formula() {
        for (decoupled, wd) in [(false, 0.0), (false, 0.1), (true, 0.1)] {
            let (after1, after2) = two_steps(decoupled, wd);
            let wd = f64::from(wd);
            let want1 = [
                by_hand(1.0, &[0.5], wd, decoupled),
                by_hand(-2.0, &[-0.25], wd, decoupled),
            ];
            let want2 = [
                by_hand(1.0, &[0.5, -1.0], wd, decoupled),
                by_hand(-2.0, &[-0.25, 0.5], wd, decoupled),
            ];
            let what = format!("decoupled {decoupled}, weight decay {wd}");
            assert_close(&format!("{what}, step 1"), &after1, &want1, HAND_F32);
            assert_close(&format!("{what}, step 2"), &after2, &want2, HAND_F32);
        }
    }

    #[test]
    fn rejects_shared_tensors_bad_shapes_and_step_zero() {
        let mut param = tensor(&[1.0, 2.0], &[2]);
        let grad = tensor(&[1.0, 2.0], &[2]);
        let mut m = tensor(&[0.0, 0.0], &[2]);
        let mut v = tensor(&[0.0, 0.0], &[2]);
        let b = CpuBackend;
        assert!(matches!(
            b.adam_update(&mut param, &grad, &mut m, &mut v, params(false, 0.0, 0)),
            Err(Error::InvalidArgument(_))
        ));
        let mut short = tensor(&[0.0], &[1]);
        assert!(matches!(
            b.adam_update(&mut param, &grad, &mut short, &mut v, params(false, 0.0, 1)),
            Err(Error::Shape { .. })
        ));
        let _alias = m.clone();
        assert!(matches!(
            b.adam_update(&mut param, &grad, &mut m, &mut v, params(false, 0.0, 1)),
            Err(Error::SharedTensor { .. })
        ));
    }
}
