//! Batch norm over every axis but the last: training statistics, evaluation, backward.

use rayon::prelude::*;

use super::float::Float;
use super::{cpu_tensor, PAR_CHUNK};
use crate::backend::{BatchNormParams, BatchNormTrainOut};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Per-channel sums of `f(a, b, per_channel)` over the rows of two `[M, C]` views, in f64,
/// combined in block order so that results do not depend on the number of threads.
///
/// Each block keeps one accumulator row per output (`K` rows of `C`), the loops zipping
/// slices without indexing, so they run along channels with unit stride and vectorise; two
/// outputs are filled in one sweep, more one at a time (`f` inlined and recomputed). The first version, an `[f64; K]` per channel and `f` indexing per-channel
/// tables itself, ran 4-5x slower than its memory traffic.
fn channel_reduce<T: Float, const K: usize>(
    a: &[T],
    b: &[T],
    per_channel: &[f64],
    f: impl Fn(T, T, f64) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let c = per_channel.len();
    let block = (PAR_CHUNK / c).max(1) * c;
    let partials: Vec<Vec<f64>> = a
        .par_chunks(block)
        .zip(b.par_chunks(block))
        .map(|(a, b)| {
            let mut acc = vec![0.0f64; K * c];
            for (a_row, b_row) in a.chunks_exact(c).zip(b.chunks_exact(c)) {
                if K == 2 {
                    // Both outputs in one sweep (the backward's sums of dy and dy * x̂).
                    let (acc0, acc1) = acc.split_at_mut(c);
                    let lanes = acc0.iter_mut().zip(acc1).zip(a_row).zip(b_row);
                    for ((((s0, s1), &a), &b), &p) in lanes.zip(per_channel) {
                        let v = f(a, b, p);
                        *s0 += v[0];
                        *s1 += v[K - 1];
                    }
                    continue;
                }
                for (q, acc) in acc.chunks_exact_mut(c).enumerate() {
                    let lanes = acc.iter_mut().zip(a_row).zip(b_row).zip(per_channel);
                    for (((s, &a), &b), &p) in lanes {
                        *s += f(a, b, p)[q];
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![[0.0f64; K]; c];
    for p in &partials {
        for (j, t) in total.iter_mut().enumerate() {
            for (q, t) in t.iter_mut().enumerate() {
                *t += p[q * c + j];
            }
        }
    }
    total
}

/// `y = (x - center[c]) * scale[c] + shift[c]` over rows of `[M, C]`.
///
/// Centring first keeps `x - mean` exact when a channel's mean is large against its spread;
/// folding into `x * s + (beta - mean * s)` would subtract two large products and lose the
/// low digits of y (an error of 3e-4 at mean 1000, std 0.3 in f32).
fn affine<T: Float>(x: &[T], center: &[T], scale: &[T], shift: &[T]) -> Vec<T> {
    let c = scale.len();
    let mut y = vec![T::ZERO; x.len()];
    let block = (PAR_CHUNK / c).max(1) * c;
    y.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .for_each(|(y, x)| {
            for (y_row, x_row) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                // Zipped, not indexed: no bounds checks, so the channel loop vectorises.
                let lanes = y_row
                    .iter_mut()
                    .zip(x_row)
                    .zip(center)
                    .zip(scale)
                    .zip(shift);
                for ((((y, &x), &m), &s), &b) in lanes {
                    *y = (x - m) * s + b;
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
    let mean: Vec<f64> = channel_reduce(x, x, &vec![0.0; c], |v, _, _| [v.to_f64()])
        .iter()
        .map(|s| s[0] / m)
        .collect();
    let var: Vec<f64> = channel_reduce(x, x, &mean, |v, _, mean| {
        let d = v.to_f64() - mean;
        [d * d]
    })
    .iter()
    .map(|s| s[0] / m)
    .collect();

    let y = normalise(x, gamma, beta, &mean, &var, eps);
    let to_t = |v: &[f64]| v.iter().map(|&v| T::from_f64(v)).collect();
    (y, to_t(&mean), to_t(&var))
}

/// `gamma * (x - mean) / sqrt(var + eps) + beta` per channel.
fn normalise<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> Vec<T> {
    let center: Vec<T> = mean.iter().map(|&m| T::from_f64(m)).collect();
    let scale: Vec<T> = gamma
        .iter()
        .zip(var)
        .map(|(g, v)| T::from_f64(g.to_f64() / (v + eps).sqrt()))
        .collect();
    affine(x, &center, &scale, beta)
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
    normalise(x, gamma, beta, &mean, &var, eps)
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
    let inv_std: Vec<f64> = var
        .iter()
        .map(|v| 1.0 / (v.to_f64() + eps).sqrt())
        .collect();
    let sums = channel_reduce(dy, x, &mean, |dy, x, mean| {
        let dy = dy.to_f64();
        [dy, dy * (x.to_f64() - mean)]
    });
    let dbeta: Vec<f64> = sums.iter().map(|s| s[0]).collect();
    let dgamma: Vec<f64> = sums.iter().zip(&inv_std).map(|(s, is)| s[1] * is).collect();

    // dx = a * dy + b * (x - mean) + d per channel, centred for the reason `affine` gives.
    let mut a = Vec::with_capacity(c);
    let mut b = Vec::with_capacity(c);
    let mut d = Vec::with_capacity(c);
    for j in 0..c {
        let g = gamma[j].to_f64() * inv_std[j];
        a.push(T::from_f64(g));
        b.push(T::from_f64(-g * dgamma[j] / m * inv_std[j]));
        d.push(T::from_f64(-g * dbeta[j] / m));
    }
    let center: Vec<T> = mean.iter().map(|&v| T::from_f64(v)).collect();
    let block = (PAR_CHUNK / c).max(1) * c;
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(block)
        .zip(dy.par_chunks(block).zip(x.par_chunks(block)))
        .for_each(|(dx, (dy, x))| {
            for ((dx_row, dy_row), x_row) in dx
                .chunks_exact_mut(c)
                .zip(dy.chunks_exact(c))
                .zip(x.chunks_exact(c))
            {
                let lanes = dx_row.iter_mut().zip(dy_row).zip(x_row).zip(&center);
                for ((((dx, &dy), &x), &m), ((&a, &b), &d)) in lanes.zip(a.iter().zip(&b).zip(&d)) {
                    *dx = a * dy + b * (x - m) + d;
                }
            }
        });
    let to_t = |v: &[f64]| v.iter().map(|&v| T::from_f64(v)).collect();
    (dx, to_t(&dgamma), to_t(&dbeta))
}

/// The channel count of `x`, checked against each per-channel tensor in `per_channel`.
fn channels(op: &'static str, x: &Tensor, per_channel: &[(&str, &Tensor)]) -> Result<usize> {
    let c = match x.shape().last() {
        Some(&c) if c > 0 && !x.is_empty() => c,
        _ => return Err(Error::shape(op, format!("input {:?} is empty", x.shape()))),
    };
    for (name, t) in per_channel {
        if t.shape() != [c] {
            return Err(Error::shape(
                op,
                format!("{name} {:?}, expected [{c}]", t.shape()),
            ));
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
        return Err(Error::shape(
            OP,
            format!("dy {:?} vs x {:?}", dy.shape(), x.shape()),
        ));
    }
    let (dx, dgamma, dbeta) = batch_norm_bwd_kernel(
        dy.cpu_slice(OP)?,
        x.cpu_slice(OP)?,
        gamma.cpu_slice(OP)?,
        mean.cpu_slice(OP)?,
        var.cpu_slice(OP)?,
        f64::from(p.eps),
    );
    Ok((
        cpu_tensor(dx, x.shape()),
        cpu_tensor(dgamma, &[c]),
        cpu_tensor(dbeta, &[c]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    const EPS: f64 = 1e-5;

    #[test]
    fn gradients_match_finite_differences() {
        for (seed, shape) in [
            (1u64, vec![3usize, 5, 7, 5]),
            (2, vec![1, 5, 7, 3]),
            (3, vec![4, 7]),
        ] {
            let c = shape[shape.len() - 1];
            let len: usize = shape.iter().product();
            let x = random(seed, len, -2.0, 3.0);
            let gamma = random(seed + 10, c, 0.5, 1.5);
            let beta = random(seed + 20, c, -1.0, 1.0);
            let r = random(seed + 30, len, -1.0, 1.0);
            let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
                dot(&r, &batch_norm_train_kernel(x, gamma, beta, EPS).0)
            };

            let (_, mean, var) = batch_norm_train_kernel(&x, &gamma, &beta, EPS);
            let (dx, dgamma, dbeta) = batch_norm_bwd_kernel(&r, &x, &gamma, &mean, &var, EPS);
            let what = |name| format!("{name} {shape:?}");
            check_gradient(&what("dx"), &x, &dx, |x| loss(x, &gamma, &beta), GRAD_F64);
            check_gradient(
                &what("dgamma"),
                &gamma,
                &dgamma,
                |g| loss(&x, g, &beta),
                GRAD_F64,
            );
            check_gradient(
                &what("dbeta"),
                &beta,
                &dbeta,
                |b| loss(&x, &gamma, b),
                GRAD_F64,
            );
        }
    }

    #[test]
    fn train_statistics_are_accurate_for_offset_data() {
        // Channel j has mean 1000 * j and standard deviation ~0.3: E[x²] - mean² in f32 would
        // lose every digit of the variance.
        let (m, c) = (64 * 16 * 16, 3);
        let noise = random(7, m * c, -0.5, 0.5);
        let x: Vec<f64> = to_f64(&to_f32(
            &noise
                .iter()
                .enumerate()
                .map(|(i, v)| 1000.0 * (i % c) as f64 + v)
                .collect::<Vec<_>>(),
        ));
        let mut mean = vec![0.0; c];
        for (i, v) in x.iter().enumerate() {
            mean[i % c] += v / m as f64;
        }
        let mut var = vec![0.0; c];
        for (i, v) in x.iter().enumerate() {
            var[i % c] += (v - mean[i % c]).powi(2) / m as f64;
        }

        let gamma = [1.0, 2.0, 0.5];
        let beta = [0.0, -1.0, 3.0];
        let out = CpuBackend
            .batch_norm_fwd_train(
                &tensor(&x, &[64, 16, 16, c]),
                &tensor(&gamma, &[c]),
                &tensor(&beta, &[c]),
                BatchNormParams { eps: EPS as f32 },
            )
            .expect("batch_norm_fwd_train");
        assert_close("mean", &values(&out.mean), &mean, HAND_F32);
        assert_close("biased var", &values(&out.var), &var, F32_VS_F64);

        // y per channel has mean beta and (biased) variance gamma² var / (var + eps).
        let y = values(&out.y);
        for j in 0..c {
            let ch: Vec<f64> = y.iter().skip(j).step_by(c).copied().collect();
            let y_mean = ch.iter().sum::<f64>() / m as f64;
            let y_var = ch.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / m as f64;
            let want_var = gamma[j] * gamma[j] * var[j] / (var[j] + EPS);
            assert_close("y mean", &[y_mean], &[beta[j]], F32_VS_F64);
            assert_close("y var", &[y_var], &[want_var], F32_VS_F64);
        }
    }

    #[test]
    fn eval_uses_running_statistics() {
        let x = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0];
        let (gamma, beta) = ([2.0, 0.5], [1.0, -1.0]);
        let (rm, rv) = ([1.0, 2.0], [4.0, 0.25]);
        let y = CpuBackend
            .batch_norm_fwd_eval(
                &tensor(&x, &[3, 2]),
                &tensor(&gamma, &[2]),
                &tensor(&beta, &[2]),
                &tensor(&rm, &[2]),
                &tensor(&rv, &[2]),
                BatchNormParams { eps: 0.0 },
            )
            .expect("batch_norm_fwd_eval");
        // Channel 0: 2 (x - 1) / 2 + 1 = x; channel 1: 0.5 (x - 2) / 0.5 - 1 = x - 3.
        assert_close(
            "eval",
            &values(&y),
            &[1.0, -1.0, 3.0, 1.0, -1.0, -3.0],
            HAND_F32,
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = tensor(&random(1, 12, -1.0, 1.0), &[4, 3]);
        let g3 = tensor(&[1.0; 3], &[3]);
        let g2 = tensor(&[1.0; 2], &[2]);
        let p = BatchNormParams { eps: 1e-5 };
        assert!(matches!(
            CpuBackend.batch_norm_fwd_train(&x, &g2, &g3, p),
            Err(Error::Shape { .. })
        ));
        let empty = tensor(&[], &[0, 3]);
        assert!(matches!(
            CpuBackend.batch_norm_fwd_train(&empty, &g3, &g3, p),
            Err(Error::Shape { .. })
        ));
        let dy = tensor(&random(2, 9, -1.0, 1.0), &[3, 3]);
        assert!(matches!(
            CpuBackend.batch_norm_bwd(&dy, &x, &g3, &g3, &g3, p),
            Err(Error::Shape { .. })
        ));
    }
}
