//! A checked, safe wrapper over the `gemm` crate's row-/column-stride matrix product.

use gemm::Parallelism;

use super::float::Float;
use crate::error::{Error, Result};

/// How an operand is stored in its row-major buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The `r x c` operand is stored as a row-major `[r, c]` buffer.
    Plain,
    /// The `r x c` operand is the transpose of a row-major `[c, r]` buffer.
    Transposed,
}

impl Layout {
    /// `(row stride, column stride)` of an `rows x cols` operand stored this way.
    fn strides(self, rows: usize, cols: usize) -> (isize, isize) {
        match self {
            Layout::Plain => (cols as isize, 1),
            Layout::Transposed => (1, rows as isize),
        }
    }
}

/// Below this many multiply-adds a product runs on the calling thread: waking rayon workers
/// costs more than the arithmetic.
const PARALLEL_MIN_FLOPS: usize = 1 << 16;

/// `dst [m, n] = (accumulate ? dst : 0) + a [m, k] · b [k, n]`, `dst` row-major and contiguous,
/// using rayon's threads when the product is large enough to pay for them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Float>(
    dst: &mut [T],
    a: &[T],
    a_layout: Layout,
    b: &[T],
    b_layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> Result<()> {
    let threaded = m * n * k >= PARALLEL_MIN_FLOPS;
    matmul_on(dst, a, a_layout, b, b_layout, m, n, k, accumulate, threaded)
}

/// [`matmul`] on the calling thread only, for callers that parallelise around it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_serial<T: Float>(
    dst: &mut [T],
    a: &[T],
    a_layout: Layout,
    b: &[T],
    b_layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> Result<()> {
    matmul_on(dst, a, a_layout, b, b_layout, m, n, k, accumulate, false)
}

#[allow(clippy::too_many_arguments)]
fn matmul_on<T: Float>(
    dst: &mut [T],
    a: &[T],
    a_layout: Layout,
    b: &[T],
    b_layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    threaded: bool,
) -> Result<()> {
    if dst.len() != m * n || a.len() != m * k || b.len() != k * n {
        return Err(Error::shape(
            "matmul",
            format!(
                "buffers of {}, {}, {} elements for m={m}, n={n}, k={k}",
                dst.len(),
                a.len(),
                b.len()
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::ZERO);
        }
        return Ok(());
    }

    let (a_rs, a_cs) = a_layout.strides(m, k);
    let (b_rs, b_cs) = b_layout.strides(k, n);
    let parallelism = if threaded {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the three buffers hold exactly m*n, m*k and k*n elements (checked above) and the
    // strides address every element of each inside its buffer; `dst` is borrowed mutably so it
    // aliases neither input; `T` is f32 or f64 (the `Float` trait is sealed), the types `gemm`
    // accepts. gemm computes dst = alpha*dst + beta*a*b, reading dst only when `accumulate`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
