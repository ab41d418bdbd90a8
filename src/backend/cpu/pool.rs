//! Max pooling (padding acts as -inf) and global average pooling, forward and backward.

use rayon::prelude::*;

use super::float::Float;
use super::{cpu_tensor, dims};
use crate::backend::PoolParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Sizes of a max pool, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

impl PoolGeometry {
    pub(crate) fn new(op: &'static str, x_shape: &[usize], p: PoolParams) -> Result<Self> {
        let [n, h, w, c] = dims::<4>(op, "input", x_shape)?;
        if p.kernel == 0 || p.stride == 0 || h == 0 || w == 0 || c == 0 {
            return Err(Error::shape(op, format!("input {x_shape:?} with {p:?}")));
        }
        // Padding below the kernel size keeps at least one real pixel in every window, so no
        // output is -inf.
        if p.padding >= p.kernel || h + 2 * p.padding < p.kernel || w + 2 * p.padding < p.kernel {
            return Err(Error::shape(
                op,
                format!("input {x_shape:?} too small for {p:?}"),
            ));
        }
        let ho = (h + 2 * p.padding - p.kernel) / p.stride + 1;
        let wo = (w + 2 * p.padding - p.kernel) / p.stride + 1;
        Ok(PoolGeometry {
            n,
            h,
            w,
            c,
            k: p.kernel,
            stride: p.stride,
            padding: p.padding,
            ho,
            wo,
        })
    }

    pub(crate) fn y_shape(&self) -> [usize; 4] {
        [self.n, self.ho, self.wo, self.c]
    }

    /// Input rows (or columns) `lo..hi` the window at output `o` covers, clipped to the input.
    #[inline(always)]
    fn window(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.padding);
        let hi = (start + self.k).saturating_sub(self.padding).min(len);
        (lo, hi)
    }
}

pub(crate) fn max_pool_fwd_kernel<T: Float>(g: &PoolGeometry, x: &[T]) -> Vec<T> {
    let c = g.c;
    let mut y = vec![T::NEG_INFINITY; g.n * g.ho * g.wo * c];
    y.par_chunks_mut(g.wo * c)
        .enumerate()
        .for_each(|(r, y_row)| {
            let (n, oh) = (r / g.ho, r % g.ho);
            let (h0, h1) = g.window(oh, g.h);
            for (ow, out) in y_row.chunks_exact_mut(c).enumerate() {
                let (w0, w1) = g.window(ow, g.w);
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        let at = ((n * g.h + ih) * g.w + iw) * c;
                        // An unconditional select (not a conditional store) vectorises; a
                        // NaN input never wins, as before.
                        for (o, &v) in out.iter_mut().zip(&x[at..at + c]) {
                            *o = if v > *o { v } else { *o };
                        }
                    }
                }
            }
        });
    y
}

/// Routes each `dy` to the first input of its window, in row-major order, equal to the forward
/// maximum `y`. Windows overlap when stride < kernel, so threads own whole images of `dx`.
pub(crate) fn max_pool_bwd_kernel<T: Float>(
    g: &PoolGeometry,
    dy: &[T],
    x: &[T],
    y: &[T],
) -> Vec<T> {
    let c = g.c;
    let image_in = g.h * g.w * c;
    let image_out = g.ho * g.wo * c;
    let mut dx = vec![T::ZERO; g.n * image_in];
    dx.par_chunks_mut(image_in)
        .enumerate()
        .for_each(|(n, dx_img)| {
            let x_img = &x[n * image_in..(n + 1) * image_in];
            let mut routed = vec![false; c];
            for oh in 0..g.ho {
                let (h0, h1) = g.window(oh, g.h);
                for ow in 0..g.wo {
                    let (w0, w1) = g.window(ow, g.w);
                    let at = n * image_out + (oh * g.wo + ow) * c;
                    let (dy_px, y_px) = (&dy[at..at + c], &y[at..at + c]);
                    routed.fill(false);
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            let src = (ih * g.w + iw) * c;
                            // Branch-free so the channel loop vectorises: a channel takes
                            // its gradient at the first tap equal to the maximum, then no more.
                            let taps = dx_img[src..src + c]
                                .iter_mut()
                                .zip(&x_img[src..src + c])
                                .zip(y_px.iter().zip(dy_px))
                                .zip(routed.iter_mut());
                            for (((d, &xv), (&yv, &g)), r) in taps {
                                let hit = !*r & (xv == yv);
                                *d += if hit { g } else { T::ZERO };
                                *r |= hit;
                            }
                        }
                    }
                }
            }
        });
    dx
}

/// `[N, H, W, C] -> [N, C]`, summing in f64.
pub(crate) fn avg_pool_global_fwd_kernel<T: Float>(
    x: &[T],
    n: usize,
    hw: usize,
    c: usize,
) -> Vec<T> {
    let mut y = vec![T::ZERO; n * c];
    y.par_chunks_mut(c)
        .zip(x.par_chunks(hw * c))
        .for_each(|(y_row, img)| {
            let mut acc = vec![0.0f64; c];
            for px in img.chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += v.to_f64();
                }
            }
            for (y, a) in y_row.iter_mut().zip(acc) {
                *y = T::from_f64(a / hw as f64);
            }
        });
    y
}

/// Spreads `dy [N, C]` evenly over each image's `H * W` pixels.
pub(crate) fn avg_pool_global_bwd_kernel<T: Float>(dy: &[T], hw: usize, c: usize) -> Vec<T> {
    let inv = T::ONE / T::from_usize(hw);
    let mut dx = vec![T::ZERO; dy.len() * hw];
    dx.par_chunks_mut(hw * c)
        .zip(dy.par_chunks(c))
        .for_each(|(img, dy_row)| {
            for px in img.chunks_exact_mut(c) {
                for (d, &g) in px.iter_mut().zip(dy_row) {
                    *d = g * inv;
                }
            }
        });
    dx
}

pub(super) fn max_pool_fwd(x: &Tensor, p: PoolParams) -> Result<Tensor> {
    const OP: &str = "max_pool_fwd";
    let g = PoolGeometry::new(OP, x.shape(), p)?;
    Ok(cpu_tensor(
        max_pool_fwd_kernel(&g, x.cpu_slice(OP)?),
        &g.y_shape(),
    ))
}

pub(super) fn max_pool_bwd(dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor> {
    const OP: &str = "max_pool_bwd";
    let g = PoolGeometry::new(OP, x.shape(), p)?;
    if dy.shape() != g.y_shape() || y.shape() != g.y_shape() {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} and y {:?}, expected {:?}",
                dy.shape(),
                y.shape(),
                g.y_shape()
            ),
        ));
    }
    let dx = max_pool_bwd_kernel(&g, dy.cpu_slice(OP)?, x.cpu_slice(OP)?, y.cpu_slice(OP)?);
    Ok(cpu_tensor(dx, x.shape()))
}

pub(super) fn avg_pool_global_fwd(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "avg_pool_global_fwd";
    let [n, h, w, c] = dims::<4>(OP, "input", x.shape())?;
    if h * w == 0 || c == 0 {
        return Err(Error::shape(OP, format!("empty images {:?}", x.shape())));
    }
    Ok(cpu_tensor(
        avg_pool_global_fwd_kernel(x.cpu_slice(OP)?, n, h * w, c),
        &[n, c],
    ))
}

pub(super) fn avg_pool_global_bwd(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "avg_pool_global_bwd";
    let [n, h, w, c] = dims::<4>(OP, "input", x_shape)?;
    if h * w == 0 || c == 0 || dy.shape() != [n, c] {
        return Err(Error::shape(
            OP,
            format!("dy {:?} for input {x_shape:?}", dy.shape()),
        ));
    }
    Ok(cpu_tensor(
        avg_pool_global_bwd_kernel(dy.cpu_slice(OP)?, h * w, c),
        x_shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// `(input shape, kernel, stride, padding)`.
    fn cases() -> Vec<([usize; 4], PoolParams)> {
        let pp = |kernel, stride, padding| PoolParams {
            kernel,
            stride,
            padding,
        };
        vec![
            ([3, 5, 7, 3], pp(3, 2, 1)),
            ([1, 5, 7, 5], pp(2, 2, 0)),
            ([3, 5, 7, 3], pp(3, 1, 1)),
            ([1, 7, 5, 2], pp(3, 3, 2)),
        ]
    }

    #[test]
    fn max_pool_matches_direct_loops() {
        for (i, (shape, p)) in cases().into_iter().enumerate() {
            let g = PoolGeometry::new("test", &shape, p).expect("valid geometry");
            // All inputs negative: a zero from padding would win if padding were not -inf.
            let x = to_f64(&to_f32(&random(
                i as u64,
                shape.iter().product(),
                -2.0,
                -1.0,
            )));
            let mut want = vec![f64::NEG_INFINITY; g.n * g.ho * g.wo * g.c];
            for n in 0..g.n {
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        for kh in 0..g.k {
                            for kw in 0..g.k {
                                let ih = (oh * g.stride + kh).wrapping_sub(g.padding);
                                let iw = (ow * g.stride + kw).wrapping_sub(g.padding);
                                if ih >= g.h || iw >= g.w {
                                    continue;
                                }
                                for c in 0..g.c {
                                    let o = &mut want[((n * g.ho + oh) * g.wo + ow) * g.c + c];
                                    *o = o.max(x[((n * g.h + ih) * g.w + iw) * g.c + c]);
                                }
                            }
                        }
                    }
                }
            }
            let y = CpuBackend
                .max_pool_fwd(&tensor(&x, &shape), p)
                .expect("max_pool_fwd");
            assert_eq!(y.shape(), g.y_shape());
            assert_close(
                &format!("max pool {shape:?} {p:?}"),
                &values(&y),
                &want,
                HAND_F32,
            );
        }
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        for (i, (shape, p)) in cases().into_iter().enumerate() {
            let g = PoolGeometry::new("test", &shape, p).expect("valid geometry");
            // Distinct random values: no two within a window are closer than the FD step.
            let x = random(10 + i as u64, shape.iter().product(), -1.0, 1.0);
            let r = random(20 + i as u64, g.n * g.ho * g.wo * g.c, -1.0, 1.0);
            let y = max_pool_fwd_kernel(&g, &x);
            let dx = max_pool_bwd_kernel(&g, &r, &x, &y);
            let loss = |x: &[f64]| dot(&r, &max_pool_fwd_kernel(&g, x));
            check_gradient(
                &format!("max pool dx {shape:?} {p:?}"),
                &x,
                &dx,
                loss,
                GRAD_F64,
            );
        }
    }

    #[test]
    fn max_pool_ties_go_to_the_first_maximum() {
        // One 2x2 window of equal values: the whole gradient lands on the top-left element.
        let x = tensor(&[5.0, 5.0, 5.0, 5.0], &[1, 2, 2, 1]);
        let p = PoolParams {
            kernel: 2,
            stride: 1,
            padding: 0,
        };
        let y = CpuBackend.max_pool_fwd(&x, p).expect("max_pool_fwd");
        let dy = tensor(&[3.0], &[1, 1, 1, 1]);
        let dx = CpuBackend
            .max_pool_bwd(&dy, &x, &y, p)
            .expect("max_pool_bwd");
        assert_eq!(values(&dx), [3.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn global_average_pool_forward_and_gradient() {
        let (n, h, w, c) = (3, 5, 7, 5);
        let x = random(30, n * h * w * c, -1.0, 1.0);
        let y = CpuBackend
            .avg_pool_global_fwd(&tensor(&x, &[n, h, w, c]))
            .expect("fwd");
        let mut want = vec![0.0; n * c];
        for (i, v) in x.iter().enumerate() {
            want[(i / (h * w * c)) * c + i % c] += v / (h * w) as f64;
        }
        assert_close("average pool", &values(&y), &want, F32_VS_F64);

        let r = random(31, n * c, -1.0, 1.0);
        let dx = avg_pool_global_bwd_kernel(&r, h * w, c);
        let loss = |x: &[f64]| dot(&r, &avg_pool_global_fwd_kernel(x, n, h * w, c));
        check_gradient("average pool dx", &x, &dx, loss, GRAD_F64);
        let dx32 = CpuBackend
            .avg_pool_global_bwd(&tensor(&r, &[n, c]), &[n, h, w, c])
            .expect("bwd");
        assert_close("average pool dx f32", &values(&dx32), &dx, F32_VS_F64);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = tensor(&random(1, 2 * 4 * 4 * 3, -1.0, 1.0), &[2, 4, 4, 3]);
        let pad_too_wide = PoolParams {
            kernel: 2,
            stride: 1,
            padding: 2,
        };
        assert!(matches!(
            CpuBackend.max_pool_fwd(&x, pad_too_wide),
            Err(Error::Shape { .. })
        ));
        let flat = tensor(&random(2, 6, -1.0, 1.0), &[2, 3]);
        assert!(matches!(
            CpuBackend.avg_pool_global_fwd(&flat),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            CpuBackend.avg_pool_global_bwd(&flat, &[2, 4, 4, 4]),
            Err(Error::Shape { .. })
        ));
    }
}
