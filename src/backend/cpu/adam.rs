//! The fused Adam / AdamW parameter update.

use rayon::prelude::*;

use super::{slice_mut, PAR_CHUNK};
use crate::backend::AdamParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One Adam step over `param`, `grad`, `m`, `v` in place, as PyTorch's `Adam`/`AdamW`
/// (non-amsgrad): `denom = sqrt(v) / sqrt(1 - β2^t) + eps`, `p -= lr / (1 - β1^t) * m / denom`.
pub(crate) fn adam_kernel(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], p: AdamParams) {
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
        return Err(Error::InvalidArgument(format!("{OP}: step counts from 1, got 0")));
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
