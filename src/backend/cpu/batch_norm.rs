//! Batch norm over every axis but the last: training statistics, evaluation, backward.

use rayon::prelude::*;

use super::float::Float;
use super::{cpu_tensor, PAR_CHUNK};
use crate::backend::{BatchNormParams, BatchNormTrainOut};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Per-channel sums of `f(x_row, y_row, c)` over the rows of `[M, C]` views, in f64, combined
/// in block order so that results do not depend on the number of threads.
fn channel_reduce<T: Float, const K: usize>(
    a: &[T],
    b: &[T],
    c: usize,
    f: impl Fn(usize, T, T) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let block = (PAR_CHUNK / c).max(1) * c;
    let partials: Vec<Vec<[f64; K]>> = a
        .par_chunks(block)
        .zip(b.par_chunks(block))
        .map(|(a, b)| {
            let mut acc = vec![[0.0f64; K]; c];
            for (a_row, b_row) in a.chunks_exact(c).zip(b.chunks_exact(c)) {
                for (j, ((acc, &a), &b)) in acc.iter_mut().zip(a_row).zip(b_row).enumerate() {
                    let v = f(j, a, b);
                    for q in 0..K {
                        acc[q] += v[q];
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![[0.0f64; K]; c];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            for q in 0..K {
                t[q] += v[q];
            }
        }
    }
    total
}

/// `y = x * scale[c] + shift[c]` over rows of `[M, C]`.
fn affine<T: Float>(x: &[T], scale: &[T], shift: &[T]) -> Vec<T> {
    let c = scale.len();
    let mut y = vec![T::ZERO; x.len()];
    let block = (PAR_CHUNK / c).max(1) * c;
    y.par_chunks_mut(block).zip(x.par_chunks(block)).for_each(|(y, x)| {
        for (y_row, x_row) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for (((y, &x), &s), &t) in y_row.iter_mut().zip(x_row).zip(scale).zip(shift) {
                *y = x * s + t;
            }
        }
    });
    y
}

/// Training-mode batch norm of `x [M, C]`: returns `(y, mean, biased var)`.
///
/// The variance is a second pass over `x - mean` in f64 rather than `E[x²] - mean²`, which
/// cancels catastrophically when a channel's mean is large against its spread.
pub(crate) fn batch_norm_train_kernel<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = gamma.len();
    let m = (x.len() / c) as f64;
    let mean: Vec<f64> =
        channel_reduce(x, x, c, |_, v, _| [v.to_f64()]).iter().map(|s| s[0] / m).collect();
    let var: Vec<f64> = channel_reduce(x, x, c, |j, v, _| {
        let d = v.to_f64() - mean[j];
        [d * d]
    })
    .iter()
    .map(|s| s[0] / m)
    .collect();

    let (scale, shift) = fold_affine(gamma, beta, &mean, &var, eps);
    let y = affine(x, &scale, &shift);
    let to_t = |v: &[f64]| v.iter().map(|&v| T::from_f64(v)).collect();
    (y, to_t(&mean), to_t(&var))
}

/// Folds normalisation and the affine map into `y = x * scale + shift` per channel.
fn fold_affine<T: Float>(
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> (Vec<T>, Vec<T>) {
    let mut scale = Vec::with_capacity(gamma.len());
    let mut shift = Vec::with_capacity(gamma.len());
    for j in 0..gamma.len() {
        let s = gamma[j].to_f64() / (var[j] + eps).sqrt();
        scale.push(T::from_f64(s));
        shift.push(T::from_f64(beta[j].to_f64() - mean[j] * s));
    }
    (scale, shift)
}

/// Evaluation-mode batch norm with the running statistics.
pub(crate) fn batch_norm_eval_kernel<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    eps: f64,
) -> Vec<T> {
    let mean: Vec<f64> = running_mean.iter().map(|v| v.to_f64()).collect();
    let var: Vec<f64> = running_var.iter().map(|v| v.to_f64()).collect();
    let (scale, shift) = fold_affine(gamma, beta, &mean, &var, eps);
    affine(x, &scale, &shift)
}

/// Backward of training-mode batch norm: `(dx, dgamma, dbeta)`.
///
/// With `x̂ = (x - mean) / σ`: `dbeta = Σ dy`, `dgamma = Σ dy x̂`, and
/// `dx = gamma / σ * (dy - dbeta / M - x̂ dgamma / M)`, the mean and variance being functions
/// of every x in the channel.
pub(crate) fn batch_norm_bwd_kernel<T: Float>(
    dy: &[T],
    x: &[T],
    gamma: &[T],
    mean: &[T],
    var: &[T],
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = gamma.len();
    let m = (x.len() / c) as f64;
    let mean: Vec<f64> = mean.iter().map(|v| v.to_f64()).collect();
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v.to_f64() + eps).sqrt()).collect();
    let sums = channel_reduce(dy, x, c, |j, dy, x| {
        let dy = dy.to_f64();
        [dy, dy * (x.to_f64() - mean[j])]
    });
    let dbeta: Vec<f64> = sums.iter().map(|s| s[0]).collect();
    let dgamma: Vec<f64> = sums.iter().zip(&inv_std).map(|(s, is)| s[1] * is).collect();

    // dx = a * dy + b * x + d, per channel, so the last pass is one fused multiply-add chain.
    let mut a = Vec::with_capacity(c);
    let mut b = Vec::with_capacity(c);
    let mut d = Vec::with_capacity(c);
    for j in 0..c {
        let g = gamma[j].to_f64() * inv_std[j];
        let xhat_coef = dgamma[j] / m * inv_std[j];
        a.push(T::from_f64(g));
        b.push(T::from_f64(-g * xhat_coef));
        d.push(T::from_f64(g * (xhat_coef * mean[j] - dbeta[j] / m)));
    }
    let block = (PAR_CHUNK / c).max(1) * c;
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(block).zip(dy.par_chunks(block).zip(x.par_chunks(block))).for_each(
        |(dx, (dy, x))| {
            for ((dx_row, dy_row), x_row) in
                dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(x.chunks_exact(c))
            {
                for j in 0..c {
                    dx_row[j] = a[j] * dy_row[j] + b[j] * x_row[j] + d[j];
                }
            }
        },
    );
    let to_t = |v: &[f64]| v.iter().map(|&v| T::from_f64(v)).collect();
    (dx, to_t(&dgamma), to_t(&dbeta))
}

/// The channel count of `x`, checked against each per-channel tensor in `per_channel`.
fn channels(op: &'static str, x: &Tensor, per_channel: &[(&str, &Tensor)]) -> Result<usize> {
    let c = match x.shape().last() {
        Some(&c) if c > 0 && x.len() > 0 => c,
        _ => return Err(Error::shape(op, format!("input {:?} is empty", x.shape()))),
    };
    for (name, t) in per_channel {
        if t.shape() != [c] {
            return Err(Error::shape(op, format!("{name} {:?}, expected [{c}]", t.shape())));
        }
    }
    Ok(c)
}

pub(super) fn batch_norm_fwd_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: BatchNormParams,
) -> Result<BatchNormTrainOut> {
    const OP: &str = "batch_norm_fwd_train";
    let c = channels(OP, x, &[("gamma", gamma), ("beta", beta)])?;
    let (y, mean, var) = batch_norm_train_kernel(
        x.cpu_slice(OP)?,
        gamma.cpu_slice(OP)?,
        beta.cpu_slice(OP)?,
        f64::from(p.eps),
    );
    Ok(BatchNormTrainOut {
        y: cpu_tensor(y, x.shape()),
        mean: cpu_tensor(mean, &[c]),
        var: cpu_tensor(var, &[c]),
    })
}

pub(super) fn batch_norm_fwd_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    p: BatchNormParams,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_fwd_eval";
    channels(
        OP,
        x,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    )?;
    let y = batch_norm_eval_kernel(
        x.cpu_slice(OP)?,
        gamma.cpu_slice(OP)?,
        beta.cpu_slice(OP)?,
        running_mean.cpu_slice(OP)?,
        running_var.cpu_slice(OP)?,
        f64::from(p.eps),
    );
    Ok(cpu_tensor(y, x.shape()))
}

pub(super) fn batch_norm_bwd(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    p: BatchNormParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "batch_norm_bwd";
    let c = channels(OP, x, &[("gamma", gamma), ("mean", mean), ("var", var)])?;
    if dy.shape() != x.shape() {
        return Err(Error::shape(OP, format!("dy {:?} vs x {:?}", dy.shape(), x.shape())));
    }
    let (dx, dgamma, dbeta) = batch_norm_bwd_kernel(
        dy.cpu_slice(OP)?,
        x.cpu_slice(OP)?,
        gamma.cpu_slice(OP)?,
        mean.cpu_slice(OP)?,
        var.cpu_slice(OP)?,
        f64::from(p.eps),
    );
    Ok((cpu_tensor(dx, x.shape()), cpu_tensor(dgamma, &[c]), cpu_tensor(dbeta, &[c])))
}
