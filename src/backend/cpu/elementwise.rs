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
    a_s.par_chunks_mut(PAR_CHUNK)
        .zip(b_s.par_chunks(PAR_CHUNK))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
    Ok(())
}

pub(super) fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let x_s = x.cpu_slice("scale")?;
    let mut y = vec![0.0f32; x_s.len()];
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x_s.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| {
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
    a_s.par_chunks_mut(PAR_CHUNK)
        .zip(b_s.par_chunks(PAR_CHUNK))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a = keep * *a + take * b;
            }
        });
    Ok(())
}

/// `max(x, 0)`.
pub(crate) fn relu_fwd_kernel<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| {
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
    Ok(cpu_tensor(
        relu_fwd_kernel(x.cpu_slice("relu_fwd")?),
        x.shape(),
    ))
}

pub(super) fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    const OP: &str = "relu_bwd";
    same_shape(OP, dy, y)?;
    Ok(cpu_tensor(
        relu_bwd_kernel(dy.cpu_slice(OP)?, y.cpu_slice(OP)?),
        dy.shape(),
    ))
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
        _ => {
            return Err(Error::shape(
                OP,
                format!("{:?} has no channel axis", x.shape()),
            ))
        }
    };
    Ok(cpu_tensor(channel_sum_kernel(x.cpu_slice(OP)?, c), &[c]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    #[test]
    fn arithmetic_by_hand() {
        let b = CpuBackend;
        let x = tensor(&[1.0, -2.0, 3.5], &[3]);
        let y = tensor(&[0.5, 4.0, -1.5], &[3]);
        assert_eq!(values(&b.add(&x, &y).expect("add")), [1.5, 2.0, 2.0]);
        assert_eq!(
            values(&b.scale(&x, -2.0).expect("scale")),
            [-2.0, 4.0, -7.0]
        );

        let mut acc = tensor(&[1.0, -2.0, 3.5], &[3]);
        b.add_assign(&mut acc, &y).expect("add_assign");
        assert_eq!(values(&acc), [1.5, 2.0, 2.0]);

        // Running statistics: a = 0.9 a + 0.1 * 2 b.
        let mut running = tensor(&[1.0, 0.0, 10.0], &[3]);
        b.lerp_assign(&mut running, &y, 2.0, 0.1)
            .expect("lerp_assign");
        assert_close("lerp", &values(&running), &[1.0, 0.8, 8.7], HAND_F32);
    }

    #[test]
    fn in_place_ops_refuse_shared_tensors_and_bad_shapes() {
        let b = CpuBackend;
        let mut a = tensor(&[1.0, 2.0], &[2]);
        let other = tensor(&[1.0, 2.0, 3.0], &[3]);
        assert!(matches!(
            b.add_assign(&mut a, &other),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(b.add(&a, &other), Err(Error::Shape { .. })));
        let alias = a.clone();
        assert!(matches!(
            b.add_assign(&mut a, &alias),
            Err(Error::SharedTensor { .. })
        ));
        assert!(matches!(
            b.lerp_assign(&mut a, &alias, 1.0, 0.5),
            Err(Error::SharedTensor { .. })
        ));
    }

    #[test]
    fn relu_forward_and_gradient() {
        // Values at least 0.05 from the kink, so central differences never straddle it.
        let x: Vec<f64> = random(1, 3 * 5 * 7, -1.0, 1.0)
            .into_iter()
            .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
            .collect();
        let y = relu_fwd_kernel(&x);
        let want: Vec<f64> = x.iter().map(|v| v.max(0.0)).collect();
        assert_close("relu", &y, &want, HAND_F32);
        let r = random(2, x.len(), -1.0, 1.0);
        let dx = relu_bwd_kernel(&r, &y);
        check_gradient(
            "relu dx",
            &x,
            &dx,
            |x| dot(&r, &relu_fwd_kernel(x)),
            GRAD_F64,
        );

        let yt = CpuBackend
            .relu_fwd(&tensor(&x, &[3, 5, 7]))
            .expect("relu_fwd");
        let dxt = CpuBackend
            .relu_bwd(&tensor(&r, &[3, 5, 7]), &yt)
            .expect("relu_bwd");
        assert_close("relu dx f32", &values(&dxt), &dx, F32_VS_F64);
    }

    #[test]
    fn channel_sum_matches_a_loop() {
        let (m, c) = (3 * 5 * 7, 5);
        let x = random(3, m * c, -1.0, 1.0);
        let mut want = vec![0.0; c];
        for (i, v) in x.iter().enumerate() {
            want[i % c] += v;
        }
        let got = CpuBackend
            .channel_sum(&tensor(&x, &[3, 5, 7, c]))
            .expect("channel_sum");
        assert_eq!(got.shape(), [c]);
        assert_close("channel sum", &values(&got), &want, F32_VS_F64);
    }
}
