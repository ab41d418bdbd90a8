//! `impl Backend for CudaBackend`: shape checks, launch sizes and kernel launches.

use bytemuck::Pod;

use super::device::{DevPtr, LaunchDims};
use super::kernels::{self, Kernel};
use super::params::*;
use super::CudaBackend;
use crate::backend::*;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Threads per block of the elementwise and grid-stride kernels.
const THREADS: u32 = 256;
/// Grid-stride kernels use at most this many blocks (about 32 per SM on an H100/H200).
const MAX_BLOCKS: usize = 4096;
/// Row kernels in `head.cu` give one warp to each row: 8 rows per 256-thread block.
const ROWS_PER_BLOCK: usize = 8;
/// Column reductions: 32 columns x 8 row threads per block (see `reduce.cu`).
const REDUCE_BLOCK: [u32; 3] = [32, 8, 1];
/// Column reductions aim for this many blocks in stage one, and at least this many rows per
/// chunk so each thread sums a handful of values before the block combines them.
const REDUCE_TARGET_BLOCKS: usize = 1024;
const REDUCE_MIN_ROWS_PER_CHUNK: usize = 64;
/// Convolution tile (see `conv.cu`).
const CONV_TILE: usize = 64;
const CONV_TILE_K: usize = 16;
/// Backward filter: split the pixels until this many blocks run, with at least this many
/// pixels per split.
const CONV_TARGET_BLOCKS: usize = 528;
const CONV_MIN_PIXELS_PER_SPLIT: usize = 256;
/// `F.normalize`'s epsilon, used by the CosFace row normalisation.
const COSFACE_NORM_EPS: f32 = 1e-12;

/// Kernels index with `i32`; refuse anything that could overflow it.
fn index(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::Unsupported(format!(
            "cuda {op}: {n} elements exceed the 32-bit kernel indexing"
        ))
    })
}

fn grid_u32(op: &'static str, blocks: usize) -> Result<u32> {
    u32::try_from(blocks).map_err(|_| Error::Unsupported(format!("cuda {op}: grid too large")))
}

fn dev_ptr(op: &'static str, t: &Tensor) -> Result<DevPtr> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s.ptr()),
        other => Err(Error::Device {
            op,
            expected: "cuda",
            found: other.device_name(),
        }),
    }
}

fn dev_ptr_mut(op: &'static str, t: &mut Tensor) -> Result<DevPtr> {
    match t.storage_mut(op)? {
        Storage::Cuda(s) => Ok(s.ptr()),
        other => Err(Error::Device {
            op,
            expected: "cuda",
            found: other.device_name(),
        }),
    }
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

fn rank(op: &'static str, t: &Tensor, r: usize, what: &str) -> Result<()> {
    if t.shape().len() != r {
        return Err(Error::shape(
            op,
            format!("{what} must have {r} axes, got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// `[C]` vectors of a per-channel op.
fn channel_vector(op: &'static str, t: &Tensor, c: usize, what: &str) -> Result<()> {
    if t.shape() != [c] {
        return Err(Error::shape(
            op,
            format!("{what} must be [{c}], got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Output size of a window sweep, or a shape error if the window does not fit.
fn out_size(
    op: &'static str,
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<usize> {
    if stride == 0 || kernel == 0 || input + 2 * pad < kernel {
        return Err(Error::shape(
            op,
            format!("window {kernel} stride {stride} padding {pad} does not fit {input}"),
        ));
    }
    Ok((input + 2 * pad - kernel) / stride + 1)
}

/// Blocks for a grid-stride launch over `n` elements.
fn stride_blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32
}

/// How stage one of a column reduction splits the rows.
struct ReducePlan {
    chunks: usize,
    rows_per_chunk: usize,
}

fn reduce_plan(rows: usize, cols: usize) -> ReducePlan {
    let col_blocks = cols.div_ceil(32).max(1);
    let wanted = REDUCE_TARGET_BLOCKS.div_ceil(col_blocks);
    let most = rows.div_ceil(REDUCE_MIN_ROWS_PER_CHUNK).max(1);
    let chunks = wanted.clamp(1, most);
    let rows_per_chunk = rows.div_ceil(chunks).max(1);
    ReducePlan {
        chunks: rows.div_ceil(rows_per_chunk).max(1),
        rows_per_chunk,
    }
}

/// Geometry of a convolution, checked.
struct ConvShape {
    n: usize,
    h: usize,
    w: usize,
    ci: usize,
    ho: usize,
    wo: usize,
    co: usize,
    k: usize,
}

impl ConvShape {
    fn new(op: &'static str, x: &[usize], w: &[usize], p: Conv2dParams) -> Result<Self> {
        let ([n, h, wd, ci], [co, kh, kw, wci]) = (x, w) else {
            return Err(Error::shape(
                op,
                format!("x {x:?} must be NHWC, w {w:?} [Co, k, k, Ci]"),
            ));
        };
        if kh != kw || ci != wci {
            return Err(Error::shape(
                op,
                format!("x {x:?} and w {w:?} do not match"),
            ));
        }
        let ho = out_size(op, *h, *kh, p.stride, p.padding)?;
        let wo = out_size(op, *wd, *kw, p.stride, p.padding)?;
        Ok(ConvShape {
            n: *n,
            h: *h,
            w: *wd,
            ci: *ci,
            ho,
            wo,
            co: *co,
            k: *kh,
        })
    }

    fn params(&self, op: &'static str, p: Conv2dParams) -> Result<ConvParams> {
        index(op, self.n * self.h * self.w * self.ci)?;
        index(op, self.n * self.ho * self.wo * self.co)?;
        index(op, self.co * self.k * self.k * self.ci)?;
        Ok(ConvParams {
            n: self.n as i32,
            in_h: self.h as i32,
            in_w: self.w as i32,
            ci: self.ci as i32,
            out_h: self.ho as i32,
            out_w: self.wo as i32,
            co: self.co as i32,
            kernel: self.k as i32,
            stride: index(op, p.stride)?,
            padding: index(op, p.padding)?,
            ..Default::default()
        })
    }
}

impl CudaBackend {
    /// Launches `kernel` with the bytes of `params`.
    ///
    /// # Safety
    /// As [`super::device::DeviceApi::launch`]: the pointers in `params` cover every element
    /// the kernel touches at `dims`.
    unsafe fn launch<P: Pod>(&self, kernel: &Kernel, dims: LaunchDims, params: &P) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.device.launch(kernel, dims, bytemuck::bytes_of(params)) }
    }

    /// A simple elementwise kernel over `n` elements.
    fn elementwise(&self, op: &'static str, kernel: &Kernel, p: EwParams, n: usize) -> Result<()> {
        let p = EwParams {
            n: index(op, n)?,
            ..p
        };
        if n == 0 {
            return Ok(());
        }
        // SAFETY: callers pass buffers of `n` elements for every pointer the kernel reads.
        unsafe { self.launch(kernel, LaunchDims::linear(stride_blocks(n), THREADS), &p) }
    }

    /// `out[g, c] = scale * sum of x[r, c]` over row chunks of `rows_per_chunk`, for
    /// `chunks` chunks (a single launch of stage one; see `reduce.cu`).
    fn column_sum_launch(
        &self,
        op: &'static str,
        x: DevPtr,
        out: DevPtr,
        [rows, cols]: [usize; 2],
        rows_per_chunk: usize,
        scale: f32,
    ) -> Result<()> {
        let chunks = rows.div_ceil(rows_per_chunk.max(1)).max(1);
        if chunks > 65_535 {
            return Err(Error::Unsupported(format!(
                "cuda {op}: {chunks} row chunks"
            )));
        }
        let p = ColumnSumParams {
            x,
            out,
            rows: index(op, rows)?,
            cols: index(op, cols)?,
            rows_per_chunk: index(op, rows_per_chunk.max(1))?,
            scale,
        };
        let dims = LaunchDims {
            grid: [grid_u32(op, cols.div_ceil(32))?, chunks as u32, 1],
            block: REDUCE_BLOCK,
            shared_bytes: 0,
        };
        if cols == 0 {
            return Ok(());
        }
        // SAFETY: x holds rows * cols elements and out chunks * cols.
        unsafe { self.launch(&kernels::CHANNEL_SUM_FWD, dims, &p) }
    }

    /// `out[c] = scale * sum over rows of x[r, c]`, in two deterministic stages when the rows
    /// are many.
    fn column_sum(
        &self,
        op: &'static str,
        x: DevPtr,
        out: DevPtr,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> Result<()> {
        let plan = reduce_plan(rows, cols);
        if plan.chunks == 1 {
            return self.column_sum_launch(op, x, out, [rows, cols], rows.max(1), scale);
        }
        let partial = self.scratch(plan.chunks * cols * 4)?;
        self.column_sum_launch(op, x, partial.ptr(), [rows, cols], plan.rows_per_chunk, 1.0)?;
        self.column_sum_launch(
            op,
            partial.ptr(),
            out,
            [plan.chunks, cols],
            plan.chunks,
            scale,
        )
    }

    /// Launches one of the batch norm kernels over [rows, cols].
    fn batch_norm_launch(
        &self,
        op: &'static str,
        kernel: &Kernel,
        p: BatchNormKernelParams,
        chunks: usize,
    ) -> Result<()> {
        let rows = p.rows as usize;
        let cols = p.cols as usize;
        let dims = if p.rows_per_chunk > 0 {
            LaunchDims {
                grid: [grid_u32(op, cols.div_ceil(32))?, chunks as u32, 1],
                block: REDUCE_BLOCK,
                shared_bytes: 0,
            }
        } else {
            LaunchDims::linear(stride_blocks(rows * cols), THREADS)
        };
        if rows * cols == 0 {
            return Ok(());
        }
        // SAFETY: callers fill every pointer the kernel reads with a buffer of rows * cols
        // (x, dy, out) or cols (statistics) elements, or chunks * cols for partial sums.
        unsafe { self.launch(kernel, dims, &p) }
    }

    /// One warp per row of [rows, cols] (`head.cu`).
    fn row_launch<P: Pod>(
        &self,
        op: &'static str,
        kernel: &Kernel,
        rows: usize,
        p: &P,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let blocks = grid_u32(op, rows.div_ceil(ROWS_PER_BLOCK))?;
        // SAFETY: callers size every buffer in `p` for `rows` rows.
        unsafe { self.launch(kernel, LaunchDims::linear(blocks, THREADS), p) }
    }

    fn logits_and_targets(
        &self,
        op: &'static str,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<(usize, usize)> {
        rank(op, logits, 2, "logits")?;
        same_shape(op, logits, targets)?;
        index(op, logits.len())?;
        Ok((logits.shape()[0], logits.shape()[1]))
    }

    /// Inverse row norms `1 / max(||row||, eps)` of a [rows, cols] matrix.
    fn inverse_norms(&self, op: &'static str, x: &Tensor) -> Result<super::memory::DeviceBuffer> {
        let (rows, cols) = (x.shape()[0], x.shape()[1]);
        let inv = self.scratch(rows * 4)?;
        let p = RowNormParams {
            x: dev_ptr(op, x)?,
            inv_norm: inv.ptr(),
            rows: index(op, rows)?,
            cols: index(op, cols)?,
            eps: COSFACE_NORM_EPS,
            pad: 0,
        };
        self.row_launch(op, &kernels::COSFACE_NORM_FWD, rows, &p)?;
        Ok(inv)
    }

    fn cosface_shapes(
        &self,
        op: &'static str,
        emb: &Tensor,
        weight: &Tensor,
    ) -> Result<[usize; 3]> {
        rank(op, emb, 2, "embeddings")?;
        rank(op, weight, 2, "class weights")?;
        let (n, d, l) = (emb.shape()[0], emb.shape()[1], weight.shape()[0]);
        if weight.shape()[1] != d {
            return Err(Error::shape(
                op,
                format!("emb {:?}, weight {:?}", emb.shape(), weight.shape()),
            ));
        }
        index(op, n * d)?;
        index(op, l * d)?;
        index(op, n * l)?;
        Ok([n, l, d])
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "from_host",
                format!("{} elements for {shape:?}", data.len()),
            ));
        }
        index("from_host", n)?;
        let t = self.empty(shape)?;
        if n > 0 {
            self.device
                .copy_h2d(dev_ptr("from_host", &t)?, bytemuck::cast_slice(data))?;
        }
        Ok(t)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        let ptr = dev_ptr("to_host", x)?;
        let mut out = vec![0f32; x.len()];
        if !out.is_empty() {
            self.device
                .copy_d2h(ptr, bytemuck::cast_slice_mut(&mut out))?;
        }
        Ok(out)
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        index("zeros", n)?;
        let t = self.empty(shape)?;
        if n > 0 {
            self.device.fill_u32(dev_ptr("zeros", &t)?, 0, n)?;
        }
        Ok(t)
    }

    fn peak_device_bytes(&self) -> Option<usize> {
        Some(self.peak_bytes())
    }

    fn non_finite_count(&self, x: &Tensor) -> Result<usize> {
        const OP: &str = "non_finite_count";
        let n = x.len();
        let count = self.scratch(4)?;
        self.device.fill_u32(count.ptr(), 0, 1)?;
        let p = CountParams {
            x: dev_ptr(OP, x)?,
            count: count.ptr(),
            n: index(OP, n)?,
            pad: 0,
        };
        if n > 0 {
            // SAFETY: x holds n elements, count one u32.
            unsafe {
                self.launch(
                    &kernels::NON_FINITE_COUNT_FWD,
                    LaunchDims::linear(stride_blocks(n), THREADS),
                    &p,
                )?
            };
        }
        let mut bytes = [0u8; 4];
        self.device.copy_d2h(count.ptr(), &mut bytes)?;
        Ok(u32::from_ne_bytes(bytes) as usize)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "add";
        same_shape(OP, a, b)?;
        let out = self.empty(a.shape())?;
        let p = EwParams {
            out: dev_ptr(OP, &out)?,
            a: dev_ptr(OP, a)?,
            b: dev_ptr(OP, b)?,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::ADD_FWD, p, a.len())?;
        Ok(out)
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        const OP: &str = "add_assign";
        same_shape(OP, a, b)?;
        let n = a.len();
        let p = EwParams {
            out: dev_ptr_mut(OP, a)?,
            b: dev_ptr(OP, b)?,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::ADD_ASSIGN_FWD, p, n)
    }

    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        const OP: &str = "scale";
        let out = self.empty(x.shape())?;
        let p = EwParams {
            out: dev_ptr(OP, &out)?,
            a: dev_ptr(OP, x)?,
            alpha,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::SCALE_FWD, p, x.len())?;
        Ok(out)
    }

    fn lerp_assign(&self, a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()> {
        const OP: &str = "lerp_assign";
        same_shape(OP, a, b)?;
        let n = a.len();
        let p = EwParams {
            out: dev_ptr_mut(OP, a)?,
            b: dev_ptr(OP, b)?,
            alpha,
            weight,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::LERP_ASSIGN_FWD, p, n)
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_fwd";
        let out = self.empty(x.shape())?;
        let p = EwParams {
            out: dev_ptr(OP, &out)?,
            a: dev_ptr(OP, x)?,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::RELU_FWD, p, x.len())?;
        Ok(out)
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_bwd";
        same_shape(OP, dy, y)?;
        let out = self.empty(dy.shape())?;
        let p = EwParams {
            out: dev_ptr(OP, &out)?,
            a: dev_ptr(OP, dy)?,
            b: dev_ptr(OP, y)?,
            ..Default::default()
        };
        self.elementwise(OP, &kernels::RELU_BWD, p, dy.len())?;
        Ok(out)
    }

    fn channel_sum(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "channel_sum";
        let Some(&c) = x.shape().last() else {
            return Err(Error::shape(OP, "a scalar has no channel axis"));
        };
        index(OP, x.len())?;
        let rows = x.len().checked_div(c).unwrap_or(0);
        let out = self.zeros(&[c])?;
        if rows > 0 {
            self.column_sum(OP, dev_ptr(OP, x)?, dev_ptr(OP, &out)?, rows, c, 1.0)?;
        }
        Ok(out)
    }

    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_fwd";
        let s = ConvShape::new(OP, x.shape(), w.shape(), p)?;
        if let Some(b) = bias {
            channel_vector(OP, b, s.co, "bias")?;
        }
        let y = self.empty(&[s.n, s.ho, s.wo, s.co])?;
        let params = ConvParams {
            x: dev_ptr(OP, x)?,
            w: dev_ptr(OP, w)?,
            bias: bias.map(|b| dev_ptr(OP, b)).transpose()?.unwrap_or(0),
            out: dev_ptr(OP, &y)?,
            ..s.params(OP, p)?
        };
        let rows = s.n * s.ho * s.wo;
        if rows * s.co == 0 {
            return Ok(y);
        }
        let dims = LaunchDims {
            grid: [
                grid_u32(OP, rows.div_ceil(CONV_TILE))?,
                grid_u32(OP, s.co.div_ceil(CONV_TILE))?,
                1,
            ],
            block: [THREADS, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: x, w, bias and y have the sizes ConvShape checked and the kernel bounds
        // every row, column and tap by them.
        unsafe { self.launch(&kernels::CONV2D_FWD, dims, &params)? };
        Ok(y)
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_bwd_data";
        let s = ConvShape::new(OP, x_shape, w.shape(), p)?;
        if dy.shape() != [s.n, s.ho, s.wo, s.co] {
            return Err(Error::shape(
                OP,
                format!("dy {:?} for x {x_shape:?}", dy.shape()),
            ));
        }
        let dx = self.empty(x_shape)?;
        let params = ConvParams {
            dy: dev_ptr(OP, dy)?,
            w: dev_ptr(OP, w)?,
            out: dev_ptr(OP, &dx)?,
            ..s.params(OP, p)?
        };
        let rows = s.n * s.h * s.w;
        if rows * s.ci == 0 {
            return Ok(dx);
        }
        let dims = LaunchDims {
            grid: [
                grid_u32(OP, rows.div_ceil(CONV_TILE))?,
                grid_u32(OP, s.ci.div_ceil(CONV_TILE))?,
                1,
            ],
            block: [THREADS, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: dy, w and dx have the checked sizes; the kernel bounds every index by them.
        unsafe { self.launch(&kernels::CONV2D_DATA_BWD, dims, &params)? };
        Ok(dx)
    }

    fn conv2d_bwd_filter(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_bwd_filter";
        let s = ConvShape::new(OP, x.shape(), w_shape, p)?;
        if dy.shape() != [s.n, s.ho, s.wo, s.co] {
            return Err(Error::shape(
                OP,
                format!("dy {:?} for x {:?}", dy.shape(), x.shape()),
            ));
        }
        let cols = s.k * s.k * s.ci;
        let pixels = s.n * s.ho * s.wo;
        if pixels == 0 {
            return self.zeros(w_shape);
        }
        let dw = self.empty(w_shape)?;

        // Split the pixel sum until the grid fills the GPU; the splits' partial weights are
        // then summed by a column reduction (deterministic, unlike atomics).
        let tiles = s.co.div_ceil(CONV_TILE) * cols.div_ceil(CONV_TILE);
        let most = pixels.div_ceil(CONV_MIN_PIXELS_PER_SPLIT).max(1);
        let wanted = CONV_TARGET_BLOCKS
            .div_ceil(tiles)
            .clamp(1, most.min(65_535));
        let per_split = pixels.div_ceil(wanted).div_ceil(CONV_TILE_K) * CONV_TILE_K;
        let splits = pixels.div_ceil(per_split);
        index(OP, splits * s.co * cols)?;
        let partial = if splits > 1 {
            Some(self.scratch(splits * s.co * cols * 4)?)
        } else {
            None
        };
        let params = ConvParams {
            x: dev_ptr(OP, x)?,
            dy: dev_ptr(OP, dy)?,
            out: partial
                .as_ref()
                .map(|b| b.ptr())
                .unwrap_or(dev_ptr(OP, &dw)?),
            pixels_per_split: index(OP, per_split)?,
            ..s.params(OP, p)?
        };
        let dims = LaunchDims {
            grid: [
                grid_u32(OP, s.co.div_ceil(CONV_TILE))?,
                grid_u32(OP, cols.div_ceil(CONV_TILE))?,
                splits as u32,
            ],
            block: [THREADS, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: x and dy have the checked sizes; out holds splits * Co * k * k * Ci floats.
        unsafe { self.launch(&kernels::CONV2D_FILTER_BWD, dims, &params)? };
        if let Some(partial) = partial {
            let total = s.co * cols;
            self.column_sum_launch(
                OP,
                partial.ptr(),
                dev_ptr(OP, &dw)?,
                [splits, total],
                splits,
                1.0,
            )?;
        }
        Ok(dw)
    }

    fn batch_norm_fwd_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        p: BatchNormParams,
    ) -> Result<BatchNormTrainOut> {
        const OP: &str = "batch_norm_fwd_train";
        let Some(&c) = x.shape().last() else {
            return Err(Error::shape(OP, "a scalar has no channel axis"));
        };
        channel_vector(OP, gamma, c, "gamma")?;
        channel_vector(OP, beta, c, "beta")?;
        index(OP, x.len())?;
        let rows = x.len().checked_div(c).unwrap_or(0);
        if rows == 0 {
            return Err(Error::shape(
                OP,
                format!("no elements per channel in {:?}", x.shape()),
            ));
        }
        let mean = self.empty(&[c])?;
        let var = self.empty(&[c])?;
        let y = self.empty(x.shape())?;
        let inv_rows = 1.0 / rows as f32;

        // Mean first, then the mean squared deviation (two passes: no cancellation).
        let xp = dev_ptr(OP, x)?;
        self.column_sum(OP, xp, dev_ptr(OP, &mean)?, rows, c, inv_rows)?;
        let plan = reduce_plan(rows, c);
        let partial = self.scratch(plan.chunks * c * 4)?;
        let base = BatchNormKernelParams {
            x: xp,
            mean: dev_ptr(OP, &mean)?,
            var: dev_ptr(OP, &var)?,
            gamma: dev_ptr(OP, gamma)?,
            beta: dev_ptr(OP, beta)?,
            rows: index(OP, rows)?,
            cols: index(OP, c)?,
            eps: p.eps,
            ..Default::default()
        };
        let sqdev = BatchNormKernelParams {
            out: partial.ptr(),
            rows_per_chunk: index(OP, plan.rows_per_chunk)?,
            ..base
        };
        self.batch_norm_launch(OP, &kernels::BATCH_NORM_SQDEV_FWD, sqdev, plan.chunks)?;
        self.column_sum_launch(
            OP,
            partial.ptr(),
            base.var,
            [plan.chunks, c],
            plan.chunks,
            inv_rows,
        )?;

        let apply = BatchNormKernelParams {
            out: dev_ptr(OP, &y)?,
            ..base
        };
        self.batch_norm_launch(OP, &kernels::BATCH_NORM_APPLY_FWD, apply, 0)?;
        Ok(BatchNormTrainOut { y, mean, var })
    }

    fn batch_norm_fwd_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        p: BatchNormParams,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm_fwd_eval";
        let Some(&c) = x.shape().last() else {
            return Err(Error::shape(OP, "a scalar has no channel axis"));
        };
        for (t, what) in [
            (gamma, "gamma"),
            (beta, "beta"),
            (running_mean, "mean"),
            (running_var, "var"),
        ] {
            channel_vector(OP, t, c, what)?;
        }
        index(OP, x.len())?;
        let y = self.empty(x.shape())?;
        let params = BatchNormKernelParams {
            x: dev_ptr(OP, x)?,
            mean: dev_ptr(OP, running_mean)?,
            var: dev_ptr(OP, running_var)?,
            gamma: dev_ptr(OP, gamma)?,
            beta: dev_ptr(OP, beta)?,
            out: dev_ptr(OP, &y)?,
            rows: index(OP, x.len().checked_div(c).unwrap_or(0))?,
            cols: index(OP, c)?,
            eps: p.eps,
            ..Default::default()
        };
        self.batch_norm_launch(OP, &kernels::BATCH_NORM_APPLY_FWD, params, 0)?;
        Ok(y)
    }

    fn batch_norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        p: BatchNormParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "batch_norm_bwd";
        same_shape(OP, dy, x)?;
        let Some(&c) = x.shape().last() else {
            return Err(Error::shape(OP, "a scalar has no channel axis"));
        };
        for (t, what) in [(gamma, "gamma"), (mean, "mean"), (var, "var")] {
            channel_vector(OP, t, c, what)?;
        }
        index(OP, x.len())?;
        let rows = x.len().checked_div(c).unwrap_or(0);
        if rows == 0 {
            return Err(Error::shape(
                OP,
                format!("no elements per channel in {:?}", x.shape()),
            ));
        }
        let dx = self.empty(x.shape())?;
        let dgamma = self.empty(&[c])?;
        let dbeta = self.empty(&[c])?;

        // Stage one: per-chunk sums of dy and dy * xhat; stage two: the column sums.
        let plan = reduce_plan(rows, c);
        let partial = self.scratch(2 * plan.chunks * c * 4)?;
        let base = BatchNormKernelParams {
            x: dev_ptr(OP, x)?,
            dy: dev_ptr(OP, dy)?,
            mean: dev_ptr(OP, mean)?,
            var: dev_ptr(OP, var)?,
            gamma: dev_ptr(OP, gamma)?,
            dgamma: dev_ptr(OP, &dgamma)?,
            dbeta: dev_ptr(OP, &dbeta)?,
            rows: index(OP, rows)?,
            cols: index(OP, c)?,
            eps: p.eps,
            ..Default::default()
        };
        let reduce = BatchNormKernelParams {
            out: partial.ptr(),
            rows_per_chunk: index(OP, plan.rows_per_chunk)?,
            ..base
        };
        self.batch_norm_launch(OP, &kernels::BATCH_NORM_REDUCE_BWD, reduce, plan.chunks)?;
        let plane = (plan.chunks * c * 4) as u64;
        self.column_sum_launch(
            OP,
            partial.ptr(),
            base.dbeta,
            [plan.chunks, c],
            plan.chunks,
            1.0,
        )?;
        self.column_sum_launch(
            OP,
            partial.ptr() + plane,
            base.dgamma,
            [plan.chunks, c],
            plan.chunks,
            1.0,
        )?;

        let apply = BatchNormKernelParams {
            out: dev_ptr(OP, &dx)?,
            ..base
        };
        self.batch_norm_launch(OP, &kernels::BATCH_NORM_APPLY_BWD, apply, 0)?;
        Ok((dx, dgamma, dbeta))
    }

    fn max_pool_fwd(&self, x: &Tensor, p: PoolParams) -> Result<Tensor> {
        const OP: &str = "max_pool_fwd";
        rank(OP, x, 4, "x")?;
        let [n, h, w, c] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
        let ho = out_size(OP, h, p.kernel, p.stride, p.padding)?;
        let wo = out_size(OP, w, p.kernel, p.stride, p.padding)?;
        index(OP, x.len())?;
        let total = index(OP, n * ho * wo * c)? as usize;
        let y = self.empty(&[n, ho, wo, c])?;
        let params = MaxPoolParams {
            x: dev_ptr(OP, x)?,
            out: dev_ptr(OP, &y)?,
            n: n as i32,
            h: h as i32,
            w: w as i32,
            c: c as i32,
            ho: ho as i32,
            wo: wo as i32,
            kernel: index(OP, p.kernel)?,
            stride: index(OP, p.stride)?,
            padding: index(OP, p.padding)?,
            ..Default::default()
        };
        if total > 0 {
            // SAFETY: x holds N H W C and y N Ho Wo C elements, the bounds the kernel uses.
            unsafe {
                self.launch(
                    &kernels::MAX_POOL_FWD,
                    LaunchDims::linear(stride_blocks(total), THREADS),
                    &params,
                )?
            };
        }
        Ok(y)
    }

    fn max_pool_bwd(&self, dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor> {
        const OP: &str = "max_pool_bwd";
        rank(OP, x, 4, "x")?;
        let [n, h, w, c] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
        let ho = out_size(OP, h, p.kernel, p.stride, p.padding)?;
        let wo = out_size(OP, w, p.kernel, p.stride, p.padding)?;
        if y.shape() != [n, ho, wo, c] {
            return Err(Error::shape(
                OP,
                format!("y {:?} for x {:?}", y.shape(), x.shape()),
            ));
        }
        same_shape(OP, dy, y)?;
        let total = index(OP, x.len())? as usize;
        let dx = self.empty(x.shape())?;
        let params = MaxPoolParams {
            x: dev_ptr(OP, x)?,
            y: dev_ptr(OP, y)?,
            dy: dev_ptr(OP, dy)?,
            out: dev_ptr(OP, &dx)?,
            n: n as i32,
            h: h as i32,
            w: w as i32,
            c: c as i32,
            ho: ho as i32,
            wo: wo as i32,
            kernel: index(OP, p.kernel)?,
            stride: index(OP, p.stride)?,
            padding: index(OP, p.padding)?,
            pad: 0,
        };
        if total > 0 {
            // SAFETY: x and dx hold N H W C, y and dy N Ho Wo C elements.
            unsafe {
                self.launch(
                    &kernels::MAX_POOL_BWD,
                    LaunchDims::linear(stride_blocks(total), THREADS),
                    &params,
                )?
            };
        }
        Ok(dx)
    }

    fn avg_pool_global_fwd(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "avg_pool_global_fwd";
        rank(OP, x, 4, "x")?;
        let [n, h, w, c] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
        index(OP, x.len())?;
        if h * w == 0 {
            return Err(Error::shape(OP, format!("empty image {:?}", x.shape())));
        }
        let y = self.empty(&[n, c])?;
        if n > 0 {
            // Each image is one chunk of H W rows of the [N H W, C] matrix.
            let (xp, yp) = (dev_ptr(OP, x)?, dev_ptr(OP, &y)?);
            self.column_sum_launch(OP, xp, yp, [n * h * w, c], h * w, 1.0 / (h * w) as f32)?;
        }
        Ok(y)
    }

    fn avg_pool_global_bwd(&self, dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "avg_pool_global_bwd";
        let &[n, h, w, c] = x_shape else {
            return Err(Error::shape(
                OP,
                format!("x shape {x_shape:?} must be NHWC"),
            ));
        };
        if dy.shape() != [n, c] || h * w == 0 {
            return Err(Error::shape(
                OP,
                format!("dy {:?} for x {x_shape:?}", dy.shape()),
            ));
        }
        let total = index(OP, n * h * w * c)? as usize;
        let dx = self.empty(x_shape)?;
        let p = BroadcastParams {
            dx: dev_ptr(OP, &dx)?,
            dy: dev_ptr(OP, dy)?,
            n: total as i32,
            hw: (h * w) as i32,
            c: c as i32,
            scale: 1.0 / (h * w) as f32,
        };
        if total > 0 {
            // SAFETY: dx holds N H W C and dy N C elements.
            unsafe {
                self.launch(
                    &kernels::AVG_POOL_GLOBAL_BWD,
                    LaunchDims::linear(stride_blocks(total), THREADS),
                    &p,
                )?
            };
        }
        Ok(dx)
    }

    fn cosface_fwd(
        &self,
        emb: &Tensor,
        weight: &Tensor,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Tensor> {
        const OP: &str = "cosface_fwd";
        let [n, l, d] = self.cosface_shapes(OP, emb, weight)?;
        if let Some(t) = targets {
            if t.shape() != [n, l] {
                return Err(Error::shape(
                    OP,
                    format!("targets {:?}, logits [{n}, {l}]", t.shape()),
                ));
            }
        }
        let logits = self.empty(&[n, l])?;
        let emb_inv = self.inverse_norms(OP, emb)?;
        let weight_inv = self.inverse_norms(OP, weight)?;
        let params = CosFaceKernelParams {
            emb: dev_ptr(OP, emb)?,
            weight: dev_ptr(OP, weight)?,
            emb_inv: emb_inv.ptr(),
            weight_inv: weight_inv.ptr(),
            targets: targets.map(|t| dev_ptr(OP, t)).transpose()?.unwrap_or(0),
            logits: dev_ptr(OP, &logits)?,
            n: n as i32,
            l: l as i32,
            d: d as i32,
            margin: p.margin,
            scale: p.scale,
            multilabel: p.multilabel as i32,
        };
        self.row_launch(OP, &kernels::COSFACE_FWD, n * l, &params)?;
        Ok(logits)
    }

    fn cosface_bwd(
        &self,
        dlogits: &Tensor,
        emb: &Tensor,
        weight: &Tensor,
        p: CosFaceParams,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "cosface_bwd";
        let [n, l, d] = self.cosface_shapes(OP, emb, weight)?;
        if dlogits.shape() != [n, l] {
            return Err(Error::shape(
                OP,
                format!("dlogits {:?}, logits [{n}, {l}]", dlogits.shape()),
            ));
        }
        let d_emb = self.empty(&[n, d])?;
        let d_weight = self.empty(&[l, d])?;
        let emb_inv = self.inverse_norms(OP, emb)?;
        let weight_inv = self.inverse_norms(OP, weight)?;
        let (e, w, g) = (
            dev_ptr(OP, emb)?,
            dev_ptr(OP, weight)?,
            dev_ptr(OP, dlogits)?,
        );

        // The margin is a constant shift: only the cosine carries gradient, times the scale.
        let for_emb = CosFaceBwdParams {
            x: e,
            x_inv: emb_inv.ptr(),
            other: w,
            other_inv: weight_inv.ptr(),
            dlogits: g,
            dx: dev_ptr(OP, &d_emb)?,
            rows: n as i32,
            others: l as i32,
            cols: d as i32,
            coef_row_stride: l as i32,
            coef_col_stride: 1,
            scale: p.scale,
            eps: COSFACE_NORM_EPS,
            pad: 0,
        };
        let for_weight = CosFaceBwdParams {
            x: w,
            x_inv: weight_inv.ptr(),
            other: e,
            other_inv: emb_inv.ptr(),
            dx: dev_ptr(OP, &d_weight)?,
            rows: l as i32,
            others: n as i32,
            coef_row_stride: 1,
            coef_col_stride: l as i32,
            ..for_emb
        };
        for (rows, params) in [(n, for_emb), (l, for_weight)] {
            if rows > 0 {
                let dims = LaunchDims::linear(grid_u32(OP, rows)?, THREADS);
                // SAFETY: x and dx hold rows * D, other others * D, the norms one per row,
                // dlogits N * L elements; the strides address dlogits within N * L.
                unsafe { self.launch(&kernels::COSFACE_BWD, dims, &params)? };
            }
        }
        Ok((d_emb, d_weight))
    }

    fn softmax_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax_xent_fwd";
        let (n, l) = self.logits_and_targets(OP, logits, targets)?;
        let loss = self.zeros(&[1])?;
        if n == 0 {
            return Ok(loss);
        }
        let per_row = self.scratch(n * 4)?;
        let p = RowParams {
            logits: dev_ptr(OP, logits)?,
            targets: dev_ptr(OP, targets)?,
            out: per_row.ptr(),
            rows: n as i32,
            cols: l as i32,
            scale: 1.0,
            pad: 0,
        };
        self.row_launch(OP, &kernels::SOFTMAX_XENT_FWD, n, &p)?;
        self.column_sum(OP, per_row.ptr(), dev_ptr(OP, &loss)?, n, 1, 1.0 / n as f32)?;
        Ok(loss)
    }

    fn softmax_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        const OP: &str = "softmax_xent_bwd";
        let (n, l) = self.logits_and_targets(OP, logits, targets)?;
        let grad = self.empty(&[n, l])?;
        let p = RowParams {
            logits: dev_ptr(OP, logits)?,
            targets: dev_ptr(OP, targets)?,
            out: dev_ptr(OP, &grad)?,
            rows: n as i32,
            cols: l as i32,
            scale: dloss / n.max(1) as f32,
            pad: 0,
        };
        self.row_launch(OP, &kernels::SOFTMAX_XENT_BWD, n, &p)?;
        Ok(grad)
    }

    fn sigmoid_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "sigmoid_xent_fwd";
        let (n, l) = self.logits_and_targets(OP, logits, targets)?;
        let loss = self.zeros(&[1])?;
        let total = n * l;
        if total == 0 {
            return Ok(loss);
        }
        let per_element = self.scratch(total * 4)?;
        let p = RowParams {
            logits: dev_ptr(OP, logits)?,
            targets: dev_ptr(OP, targets)?,
            out: per_element.ptr(),
            rows: n as i32,
            cols: l as i32,
            scale: 1.0,
            pad: 0,
        };
        // SAFETY: logits, targets and the scratch hold N * L elements.
        unsafe {
            self.launch(
                &kernels::SIGMOID_XENT_FWD,
                LaunchDims::linear(stride_blocks(total), THREADS),
                &p,
            )?
        };
        self.column_sum(
            OP,
            per_element.ptr(),
            dev_ptr(OP, &loss)?,
            total,
            1,
            1.0 / total as f32,
        )?;
        Ok(loss)
    }

    fn sigmoid_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        const OP: &str = "sigmoid_xent_bwd";
        let (n, l) = self.logits_and_targets(OP, logits, targets)?;
        let total = n * l;
        let grad = self.empty(&[n, l])?;
        let p = RowParams {
            logits: dev_ptr(OP, logits)?,
            targets: dev_ptr(OP, targets)?,
            out: dev_ptr(OP, &grad)?,
            rows: n as i32,
            cols: l as i32,
            scale: dloss / total.max(1) as f32,
            pad: 0,
        };
        if total > 0 {
            // SAFETY: logits, targets and grad hold N * L elements.
            unsafe {
                self.launch(
                    &kernels::SIGMOID_XENT_BWD,
                    LaunchDims::linear(stride_blocks(total), THREADS),
                    &p,
                )?
            };
        }
        Ok(grad)
    }

    fn probabilities(&self, logits: &Tensor, multilabel: bool) -> Result<Tensor> {
        const OP: &str = "probabilities";
        rank(OP, logits, 2, "logits")?;
        let (n, l) = (logits.shape()[0], logits.shape()[1]);
        index(OP, n * l)?;
        let out = self.empty(&[n, l])?;
        if multilabel {
            let p = EwParams {
                out: dev_ptr(OP, &out)?,
                a: dev_ptr(OP, logits)?,
                ..Default::default()
            };
            self.elementwise(OP, &kernels::SIGMOID_FWD, p, n * l)?;
        } else {
            let p = RowParams {
                logits: dev_ptr(OP, logits)?,
                out: dev_ptr(OP, &out)?,
                rows: n as i32,
                cols: l as i32,
                ..Default::default()
            };
            self.row_launch(OP, &kernels::SOFTMAX_FWD, n, &p)?;
        }
        Ok(out)
    }

    fn adam_update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamParams,
    ) -> Result<()> {
        const OP: &str = "adam_update";
        same_shape(OP, param, grad)?;
        same_shape(OP, param, m)?;
        same_shape(OP, param, v)?;
        if p.step == 0 {
            return Err(Error::InvalidArgument(
                "adam_update: step counts from 1".into(),
            ));
        }
        let n = param.len();
        // Bias corrections in f64: beta2^t for t in the thousands loses digits in f32.
        let t = i32::try_from(p.step).unwrap_or(i32::MAX);
        let bias1 = 1.0 - f64::from(p.beta1).powi(t);
        let bias2 = 1.0 - f64::from(p.beta2).powi(t);
        let params = AdamKernelParams {
            param: dev_ptr_mut(OP, param)?,
            grad: dev_ptr(OP, grad)?,
            m: dev_ptr_mut(OP, m)?,
            v: dev_ptr_mut(OP, v)?,
            n: index(OP, n)?,
            lr: p.lr,
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            weight_decay: p.weight_decay,
            step_size: (f64::from(p.lr) / bias1) as f32,
            bias2_sqrt: bias2.sqrt() as f32,
            decoupled: p.decoupled as i32,
            pad: 0,
        };
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the four buffers hold n elements each; param, m and v are uniquely held.
        unsafe {
            self.launch(
                &kernels::ADAM_UPDATE_FWD,
                LaunchDims::linear(stride_blocks(n), THREADS),
                &params,
            )
        }
    }

    fn score_pool(&self, logits: &Tensor, p: ScoreParams) -> Result<Tensor> {
        const OP: &str = "score_pool";
        rank(OP, logits, 2, "logits")?;
        let (n, l) = (logits.shape()[0], logits.shape()[1]);
        index(OP, n * l)?;
        if l == 0 {
            return Err(Error::shape(OP, "logits have no labels"));
        }
        let scores = self.empty(&[n])?;
        let params = ScoreKernelParams {
            logits: dev_ptr(OP, logits)?,
            scores: dev_ptr(OP, &scores)?,
            rows: n as i32,
            cols: l as i32,
            uncertainty: match p.uncertainty {
                Uncertainty::LeastConfidence => 0,
                Uncertainty::Margin => 1,
                Uncertainty::Entropy => 2,
            },
            aggregate: match p.aggregate {
                Aggregate::Mean => 0,
                Aggregate::Max => 1,
                Aggregate::Sum => 2,
            },
            multilabel: p.multilabel as i32,
            pad: 0,
        };
        self.row_launch(OP, &kernels::SCORE_POOL_FWD, n, &params)?;
        Ok(scores)
    }

    fn top_k(&self, scores: &Tensor, k: usize) -> Result<Vec<usize>> {
        const OP: &str = "top_k";
        let n = scores.len();
        let k = k.min(n);
        if k == 0 {
            return Ok(Vec::new());
        }
        let order = self.scratch(k * 4)?;
        let p = TopKParams {
            scores: dev_ptr(OP, scores)?,
            order: order.ptr(),
            n: index(OP, n)?,
            k: k as i32,
        };
        let blocks = grid_u32(OP, n.div_ceil(THREADS as usize))?;
        // SAFETY: scores holds n elements; order k slots, and the kernel writes only ranks < k.
        unsafe { self.launch(&kernels::TOP_K_FWD, LaunchDims::linear(blocks, THREADS), &p)? };
        let mut out = vec![0u32; k];
        self.device
            .copy_d2h(order.ptr(), bytemuck::cast_slice_mut(&mut out))?;
        Ok(out.into_iter().map(|i| i as usize).collect())
    }
}
