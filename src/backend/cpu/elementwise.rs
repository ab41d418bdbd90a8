//! Elementwise arithmetic, ReLU and the channel sum.

use rayon::prelude::*;

use super::float::Float;
use super::{cpu_tensor, same_shape, slice_mut, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(super) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    same_shape(OP, a, b)?;
    let (a_s, b_s) = (a.cpu_slice(OP)?, b.cpu_slice(OP)?);
    let mut y = vec![0.0f32; a_s.len()];
    y.par_chunks_mut(PAR_CHUNK)
        .zip(a_s.par_chunks(PAR_CHUNK).zip(b_s.par_chunks(PAR_CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                *y = a + b;
            }
        });
    Ok(cpu_tensor(y, a.shape()))
}

pub(super) fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    const OP: &str = "add_assign";
    same_shape(OP, a, b)?;
    let b_s = b.cpu_slice(OP)?;
    let a_s = slice_mut(OP, a)?;
    a_s.par_chunks_mut(PAR_CHUNK).zip(b_s.par_chunks(PAR_CHUNK)).for_each(|(a, b)| {
        for (a, b) in a.iter_mut().zip(b) {
            *a += b;
        }
    });
    Ok(())
}

pub(super) fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let x_s = x.cpu_slice("scale")?;
    let mut y = vec![0.0f32; x_s.len()];
    y.par_chunks_mut(PAR_CHUNK).zip(x_s.par_chunks(PAR_CHUNK)).for_each(|(y, x)| {
        for (y, x) in y.iter_mut().zip(x) {
            *y = alpha * x;
        }
    });
    Ok(cpu_tensor(y, x.shape()))
}

pub(super) fn lerp_assign(a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()> {
    const OP: &str = "lerp_assign";
    same_shape(OP, a, b)?;
    let b_s = b.cpu_slice(OP)?;
    let a_s = slice_mut(OP, a)?;
    let (keep, take) = (1.0 - weight, weight * alpha);
    a_s.par_chunks_mut(PAR_CHUNK).zip(b_s.par_chunks(PAR_CHUNK)).for_each(|(a, b)| {
        for (a, b) in a.iter_mut().zip(b) {
            *a = keep * *a + take * b;
        }
    });
    Ok(())
}

/// `max(x, 0)`.
pub(crate) fn relu_fwd_kernel<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = if x > T::ZERO { x } else { T::ZERO };
        }
    });
    y
}

/// `dy` where `y > 0`: the forward output tells which inputs were positive.
pub(crate) fn relu_bwd_kernel<T: Float>(dy: &[T], y: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; dy.len()];
    dx.par_chunks_mut(PAR_CHUNK)
        .zip(dy.par_chunks(PAR_CHUNK).zip(y.par_chunks(PAR_CHUNK)))
        .for_each(|(dx, (dy, y))| {
            for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
                *dx = if y > T::ZERO { dy } else { T::ZERO };
            }
        });
    dx
}

pub(super) fn relu_fwd(x: &Tensor) -> Result<Tensor> {
    Ok(cpu_tensor(relu_fwd_kernel(x.cpu_slice("relu_fwd")?), x.shape()))
}

pub(super) fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    const OP: &str = "relu_bwd";
    same_shape(OP, dy, y)?;
    Ok(cpu_tensor(relu_bwd_kernel(dy.cpu_slice(OP)?, y.cpu_slice(OP)?), dy.shape()))
}

/// Sums `[M, C]` over rows in f64: partial sums per block of rows, combined in block order
/// so the result does not depend on the thread count.
pub(crate) fn channel_sum_kernel<T: Float>(x: &[T], c: usize) -> Vec<T> {
    let rows_per_block = (PAR_CHUNK / c.max(1)).max(1);
    let partials: Vec<Vec<f64>> = x
        .par_chunks(rows_per_block * c)
        .map(|block| {
            let mut acc = vec![0.0f64; c];
            for row in block.chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; c];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total.into_iter().map(T::from_f64).collect()
}

pub(super) fn channel_sum(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "channel_sum";
    let c = match x.shape().last() {
        Some(&c) if c > 0 => c,
        _ => return Err(Error::shape(OP, format!("{:?} has no channel axis", x.shape()))),
    };
    Ok(cpu_tensor(channel_sum_kernel(x.cpu_slice(OP)?, c), &[c]))
}
