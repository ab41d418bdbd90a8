//! 2-D convolution (NHWC, square kernels) as im2col plus `gemm`, forward and both backwards.

use rayon::prelude::*;

use super::float::Float;
use super::matmul::{matmul, matmul_serial, Layout};
use super::{cpu_tensor, dims};
use crate::backend::Conv2dParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The most elements an im2col buffer may hold at once (16 MiB of f32); larger batches are
/// processed a few images at a time. At 32x32 a whole ResNet18 batch of 32 fits, so the
/// matrix products stay tall; at 224x224 the stem alone would need ~240 MiB.
const COL_BUDGET: usize = 1 << 22;

/// The cache-blocked path ([`conv2d_fwd_kernel`], [`conv2d_bwd_data_kernel`]) works on groups
/// of whole images whose im2col rows take at most this many bytes, about a quarter of a core's
/// L2 on the machines we measure (1-2 MiB), so the matrix product reads its left operand from
/// cache right after im2col wrote it, instead of from memory.
const TILE_COL_BYTES: usize = 512 << 10;

/// The blocked path runs one product per image group, each packing the weights again; past
/// this many weight elements (1 MiB of f32: ResNet18's last two stages) the repacking costs
/// more than the cache saves, and the whole-chunk product, which packs them once, is kept.
const TILE_MAX_WEIGHT: usize = 1 << 18;

/// Every size a convolution needs, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ci: usize,
    pub co: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeometry {
    /// Checks `x [N, H, W, Ci]` against `w [Co, k, k, Ci]` and derives the output size.
    pub(crate) fn new(
        op: &'static str,
        x_shape: &[usize],
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Self> {
        let [n, h, w, ci] = dims::<4>(op, "input", x_shape)?;
        let [co, kh, kw, wci] = dims::<4>(op, "weight", w_shape)?;
        if kh != kw || wci != ci || kh == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "weight {w_shape:?} does not fit input {x_shape:?} (want [Co, k, k, {ci}])"
                ),
            ));
        }
        if p.stride == 0 {
            return Err(Error::shape(op, "stride 0"));
        }
        if h == 0 || w == 0 || ci == 0 || co == 0 {
            return Err(Error::shape(
                op,
                format!("empty input {x_shape:?} or weight {w_shape:?}"),
            ));
        }
        let k = kh;
        if h + 2 * p.padding < k || w + 2 * p.padding < k {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {k} larger than padded input {h}x{w} (padding {})",
                    p.padding
                ),
            ));
        }
        let ho = (h + 2 * p.padding - k) / p.stride + 1;
        let wo = (w + 2 * p.padding - k) / p.stride + 1;
        Ok(ConvGeometry {
            n,
            h,
            w,
            ci,
            co,
            k,
            stride: p.stride,
            padding: p.padding,
            ho,
            wo,
        })
    }

    /// Length of one im2col row, `k * k * Ci`, which is also one weight row.
    pub(crate) fn patch_len(&self) -> usize {
        self.k * self.k * self.ci
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1, stride-1, unpadded convolution: the input already is the im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// Images per im2col chunk: as many as fit in [`COL_BUDGET`], at least one.
    fn images_per_chunk(&self) -> usize {
        let per_image = (self.out_pixels() * self.patch_len()).max(1);
        (COL_BUDGET / per_image).clamp(1, self.n.max(1))
    }

    /// Images per group of the cache-blocked path, or None where that path does not pay: a
    /// pointwise convolution has no im2col to keep in cache, large weights are dear to repack,
    /// and a batch that makes fewer than two groups has nothing to share between threads.
    fn images_per_tile<T>(&self) -> Option<usize> {
        if self.is_pointwise() || self.co * self.patch_len() > TILE_MAX_WEIGHT {
            return None;
        }
        let per_image = self.out_pixels() * self.patch_len() * std::mem::size_of::<T>();
        let images = (TILE_COL_BYTES / per_image.max(1)).clamp(1, self.n);
        (self.n >= 2 * images).then_some(images)
    }

    /// Output shape `[N, Ho, Wo, Co]`.
    pub(crate) fn y_shape(&self) -> [usize; 4] {
        [self.n, self.ho, self.wo, self.co]
    }

    /// The range of kernel offsets `kk` with `0 <= o*stride + kk - padding < len`.
    #[inline(always)]
    fn valid_taps(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = self.padding.saturating_sub(start);
        let hi = (len + self.padding).saturating_sub(start).min(self.k);
        (lo, hi.max(lo))
    }

    /// When some kernel rows and columns only ever meet padding (a 3x3 kernel with padding 1
    /// on ResNet18's 1x1 last stage reads nothing but its centre), the same convolution with
    /// the kernel cropped to the taps that can read input: `(first live tap, geometry)`, with
    /// the output size kept. Only square crops are taken, which square inputs always give.
    fn cropped(&self) -> Option<(usize, ConvGeometry)> {
        // The first window reaches furthest right, the last furthest left.
        let (_, hi_h) = self.valid_taps(0, self.h);
        let (lo_h, _) = self.valid_taps(self.ho - 1, self.h);
        let (_, hi_w) = self.valid_taps(0, self.w);
        let (lo_w, _) = self.valid_taps(self.wo - 1, self.w);
        if (lo_h, hi_h) != (lo_w, hi_w) || hi_h <= lo_h || hi_h - lo_h == self.k {
            return None;
        }
        let k = hi_h - lo_h;
        Some((
            lo_h,
            ConvGeometry {
                k,
                padding: self.padding - lo_h,
                ..*self
            },
        ))
    }
}

/// `w [Co, k, k, Ci]` restricted to taps `lo..lo + k'` in both directions.
fn crop_weight<T: Float>(g: &ConvGeometry, w: &[T], lo: usize, cropped_k: usize) -> Vec<T> {
    let ci = g.ci;
    let mut out = Vec::with_capacity(g.co * cropped_k * cropped_k * ci);
    for filter in w.chunks_exact(g.patch_len()) {
        for kh in lo..lo + cropped_k {
            let row = (kh * g.k + lo) * ci;
            out.extend_from_slice(&filter[row..row + cropped_k * ci]);
        }
    }
    out
}

/// The inverse of [`crop_weight`] for gradients: zeros at the dead taps.
fn uncrop_weight<T: Float>(g: &ConvGeometry, dw: &[T], lo: usize, cropped_k: usize) -> Vec<T> {
    let ci = g.ci;
    let mut out = vec![T::ZERO; g.co * g.patch_len()];
    let cropped_len = cropped_k * cropped_k * ci;
    for (full, part) in out
        .chunks_exact_mut(g.patch_len())
        .zip(dw.chunks_exact(cropped_len))
    {
        for (i, kh) in (lo..lo + cropped_k).enumerate() {
            let row = (kh * g.k + lo) * ci;
            full[row..row + cropped_k * ci]
                .copy_from_slice(&part[i * cropped_k * ci..(i + 1) * cropped_k * ci]);
        }
    }
    out
}

/// Fills `col [images * Ho * Wo, k*k*Ci]` with the patches of `x` (the chunk's images).
fn im2col<T: Float>(g: &ConvGeometry, x: &[T], col: &mut [T]) {
    let (ci, k, kc) = (g.ci, g.k, g.k * g.ci);
    let row_len = g.patch_len();
    let image_len = g.h * g.w * ci;

    // One task per output row (n, oh): its patches are contiguous in `col`.
    col.par_chunks_mut(g.wo * row_len)
        .enumerate()
        .for_each(|(r, out)| {
            let (n, oh) = (r / g.ho, r % g.ho);
            let image = &x[n * image_len..(n + 1) * image_len];
            let (kh_lo, kh_hi) = g.valid_taps(oh, g.h);
            for (ow, patch) in out.chunks_exact_mut(row_len).enumerate() {
                let (kw_lo, kw_hi) = g.valid_taps(ow, g.w);
                for kh in 0..k {
                    let dst = &mut patch[kh * kc..(kh + 1) * kc];
                    if kh < kh_lo || kh >= kh_hi || kw_lo == kw_hi {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    // For a fixed input row the valid taps are adjacent pixels, one slice of x.
                    let ih = oh * g.stride + kh - g.padding;
                    let iw0 = ow * g.stride + kw_lo - g.padding;
                    let src = &image[(ih * g.w + iw0) * ci..(ih * g.w + iw0 + kw_hi - kw_lo) * ci];
                    dst[..kw_lo * ci].fill(T::ZERO);
                    dst[kw_lo * ci..kw_hi * ci].copy_from_slice(src);
                    dst[kw_hi * ci..].fill(T::ZERO);
                }
            }
        });
}

/// `dx` for the chunk's images from `dcol [images * Ho * Wo, k*k*Ci]`, the transpose of
/// [`im2col`]. One task per input row `(n, ih)`: it gathers the kernel rows `kh` that read it,
/// and within each patch the taps that land on this row are adjacent pixels, so each patch adds
/// one contiguous slice into the row. Tasks write disjoint rows and need no atomics.
fn col2im<T: Float>(g: &ConvGeometry, dcol: &[T], dx: &mut [T]) {
    let (ci, kc) = (g.ci, g.k * g.ci);
    let row_len = g.patch_len();

    dx.par_chunks_mut(g.w * ci)
        .enumerate()
        .for_each(|(r, dx_row)| {
            let (n, ih) = (r / g.h, r % g.h);
            dx_row.fill(T::ZERO);
            for kh in 0..g.k {
                // Output row oh reads this input row through kernel row kh iff oh*s + kh - p = ih.
                let Some(t) = (ih + g.padding).checked_sub(kh) else {
                    break;
                };
                if t % g.stride != 0 || t / g.stride >= g.ho {
                    continue;
                }
                let oh = t / g.stride;
                for ow in 0..g.wo {
                    let (kw_lo, kw_hi) = g.valid_taps(ow, g.w);
                    if kw_lo == kw_hi {
                        continue;
                    }
                    let patch = ((n * g.ho + oh) * g.wo + ow) * row_len + kh * kc;
                    let src = &dcol[patch + kw_lo * ci..patch + kw_hi * ci];
                    let iw0 = ow * g.stride + kw_lo - g.padding;
                    let dst = &mut dx_row[iw0 * ci..(iw0 + kw_hi - kw_lo) * ci];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        });
}

/// `y = conv(x, w) + bias`, all buffers sized by `g`.
pub(crate) fn conv2d_fwd_kernel<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
) -> Result<Vec<T>> {
    if let Some((lo, cropped)) = g.cropped() {
        return conv2d_fwd_kernel(&cropped, x, &crop_weight(g, w, lo, cropped.k), bias);
    }
    match g.images_per_tile::<T>() {
        Some(images) => conv2d_fwd_blocked(g, x, w, bias, images),
        None => conv2d_fwd_chunked(g, x, w, bias),
    }
}

/// The forward pass over groups of `images` images, one thread per group (see
/// [`TILE_COL_BYTES`]).
fn conv2d_fwd_blocked<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    images: usize,
) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let mut y = vec![T::ZERO; g.n * g.out_pixels() * g.co];
    {
        // Each image group on one thread: im2col into this thread's scratch, then a serial
        // product into the group's own rows of y.
        let tile = g.with_images(images);
        let image_in = g.h * g.w * g.ci;
        y.par_chunks_mut(images * g.out_pixels() * g.co)
            .zip(x.par_chunks(images * image_in))
            .try_for_each(|(y_tile, x_tile)| {
                let tile = tile.with_images(x_tile.len() / image_in);
                let rows = tile.n * tile.out_pixels();
                if let Some(b) = bias {
                    y_tile
                        .chunks_exact_mut(g.co)
                        .for_each(|r| r.copy_from_slice(b));
                }
                let mut col = T::take_scratch();
                col.resize(rows * kl, T::ZERO);
                im2col(&tile, x_tile, &mut col);
                let done = matmul_serial(
                    y_tile,
                    &col,
                    Layout::Plain,
                    w,
                    Layout::Transposed,
                    rows,
                    g.co,
                    kl,
                    bias.is_some(),
                );
                T::keep_scratch(col);
                done
            })?;
    }
    Ok(y)
}

/// The forward pass over chunks of up to [`COL_BUDGET`] im2col elements, each product
/// threaded by `gemm`.
fn conv2d_fwd_chunked<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let mut y = vec![T::ZERO; g.n * g.out_pixels() * g.co];
    let chunk = g.images_per_chunk();
    let mut col = T::take_scratch();

    for n0 in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - n0);
        let rows = images * g.out_pixels();
        let y_chunk = &mut y[n0 * g.out_pixels() * g.co..][..rows * g.co];
        if let Some(b) = bias {
            y_chunk
                .par_chunks_mut(g.co)
                .for_each(|row| row.copy_from_slice(b));
        }
        let x_chunk = &x[n0 * g.h * g.w * g.ci..][..images * g.h * g.w * g.ci];
        let a: &[T] = if g.is_pointwise() {
            x_chunk
        } else {
            col.resize(rows * kl, T::ZERO);
            im2col(&g.with_images(images), x_chunk, &mut col);
            &col
        };
        // y [rows, Co] = col [rows, K] · wᵀ, with w stored [Co, K].
        matmul(
            y_chunk,
            a,
            Layout::Plain,
            w,
            Layout::Transposed,
            rows,
            g.co,
            kl,
            bias.is_some(),
        )?;
    }
    T::keep_scratch(col);
    Ok(y)
}

/// `dx` given `dy [N, Ho, Wo, Co]` and `w`.
pub(crate) fn conv2d_bwd_data_kernel<T: Float>(
    g: &ConvGeometry,
    dy: &[T],
    w: &[T],
) -> Result<Vec<T>> {
    if let Some((lo, cropped)) = g.cropped() {
        return conv2d_bwd_data_kernel(&cropped, dy, &crop_weight(g, w, lo, cropped.k));
    }
    match g.images_per_tile::<T>() {
        Some(images) => conv2d_bwd_data_blocked(g, dy, w, images),
        None => conv2d_bwd_data_chunked(g, dy, w),
    }
}

/// The data gradient over groups of `images` images, one thread per group.
fn conv2d_bwd_data_blocked<T: Float>(
    g: &ConvGeometry,
    dy: &[T],
    w: &[T],
    images: usize,
) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let image_len = g.h * g.w * g.ci;
    let mut dx = vec![T::ZERO; g.n * image_len];
    {
        // Image groups own disjoint images of dx, so each runs on one thread: a serial product
        // into this thread's scratch, then the scatter back while it is still in cache.
        let out_len = g.out_pixels() * g.co;
        dx.par_chunks_mut(images * image_len)
            .zip(dy.par_chunks(images * out_len))
            .try_for_each(|(dx_tile, dy_tile)| {
                let tile = g.with_images(dy_tile.len() / out_len);
                let rows = tile.n * tile.out_pixels();
                let mut dcol = T::take_scratch();
                dcol.resize(rows * kl, T::ZERO);
                let done = matmul_serial(
                    &mut dcol,
                    dy_tile,
                    Layout::Plain,
                    w,
                    Layout::Plain,
                    rows,
                    kl,
                    g.co,
                    false,
                );
                if done.is_ok() {
                    col2im(&tile, &dcol, dx_tile);
                }
                T::keep_scratch(dcol);
                done
            })?;
    }
    Ok(dx)
}

/// The data gradient over chunks of up to [`COL_BUDGET`] im2col elements.
fn conv2d_bwd_data_chunked<T: Float>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let image_len = g.h * g.w * g.ci;
    let mut dx = vec![T::ZERO; g.n * image_len];
    let chunk = g.images_per_chunk();
    let mut dcol = T::take_scratch();

    for n0 in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - n0);
        let rows = images * g.out_pixels();
        let dy_chunk = &dy[n0 * g.out_pixels() * g.co..][..rows * g.co];
        let dx_chunk = &mut dx[n0 * image_len..][..images * image_len];
        // dcol [rows, K] = dy [rows, Co] · w [Co, K]; a pointwise conv's dcol is dx itself.
        if g.is_pointwise() {
            matmul(
                dx_chunk,
                dy_chunk,
                Layout::Plain,
                w,
                Layout::Plain,
                rows,
                kl,
                g.co,
                false,
            )?;
        } else {
            dcol.resize(rows * kl, T::ZERO);
            matmul(
                &mut dcol,
                dy_chunk,
                Layout::Plain,
                w,
                Layout::Plain,
                rows,
                kl,
                g.co,
                false,
            )?;
            col2im(&g.with_images(images), &dcol, dx_chunk);
        }
    }
    T::keep_scratch(dcol);
    Ok(dx)
}

/// `dw [Co, k, k, Ci]` given `x` and `dy`.
pub(crate) fn conv2d_bwd_filter_kernel<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
) -> Result<Vec<T>> {
    if let Some((lo, cropped)) = g.cropped() {
        let dw = conv2d_bwd_filter_kernel(&cropped, x, dy)?;
        return Ok(uncrop_weight(g, &dw, lo, cropped.k));
    }
    match g.images_per_tile::<T>() {
        Some(images) => conv2d_bwd_filter_blocked(g, x, dy, images),
        None => conv2d_bwd_filter_chunked(g, x, dy),
    }
}

/// Partial filter gradients of the blocked path: each sums a fixed share of the image groups,
/// and they are added in order, so the result does not depend on the thread count; eight keep
/// two to four cores busy while holding at most 8 x [`TILE_MAX_WEIGHT`] elements.
const FILTER_PARTIALS: usize = 8;

/// The filter gradient over groups of `images` images: each of up to [`FILTER_PARTIALS`]
/// tasks walks its groups, im2col into this thread's scratch and a serial product
/// accumulating into its own partial gradient.
fn conv2d_bwd_filter_blocked<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    images: usize,
) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let image_in = g.h * g.w * g.ci;
    let out_len = g.out_pixels() * g.co;
    let groups = g.n.div_ceil(images);
    let images_per_part = groups.div_ceil(groups.min(FILTER_PARTIALS)) * images;
    let partials: Vec<Vec<T>> = x
        .par_chunks(images_per_part * image_in)
        .zip(dy.par_chunks(images_per_part * out_len))
        .map(|(x_part, dy_part)| {
            let mut dw = vec![T::ZERO; g.co * kl];
            let mut col = T::take_scratch();
            let tiles = x_part
                .chunks(images * image_in)
                .zip(dy_part.chunks(images * out_len));
            let mut done = Ok(());
            for (i, (x_tile, dy_tile)) in tiles.enumerate() {
                let tile = g.with_images(x_tile.len() / image_in);
                let rows = tile.n * tile.out_pixels();
                col.resize(rows * kl, T::ZERO);
                im2col(&tile, x_tile, &mut col);
                // dw [Co, K] (+)= dyᵀ [Co, rows] · col [rows, K]
                done = matmul_serial(
                    &mut dw,
                    dy_tile,
                    Layout::Transposed,
                    &col,
                    Layout::Plain,
                    g.co,
                    kl,
                    rows,
                    i > 0,
                );
                if done.is_err() {
                    break;
                }
            }
            T::keep_scratch(col);
            done.map(|()| dw)
        })
        .collect::<Result<_>>()?;
    let mut parts = partials.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![T::ZERO; g.co * kl]);
    for part in parts {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    Ok(dw)
}

/// The filter gradient over chunks of up to [`COL_BUDGET`] im2col elements.
fn conv2d_bwd_filter_chunked<T: Float>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Result<Vec<T>> {
    let kl = g.patch_len();
    let mut dw = vec![T::ZERO; g.co * kl];
    let chunk = g.images_per_chunk();
    let mut col = T::take_scratch();

    for (i, n0) in (0..g.n).step_by(chunk).enumerate() {
        let images = chunk.min(g.n - n0);
        let rows = images * g.out_pixels();
        let dy_chunk = &dy[n0 * g.out_pixels() * g.co..][..rows * g.co];
        let x_chunk = &x[n0 * g.h * g.w * g.ci..][..images * g.h * g.w * g.ci];
        let b: &[T] = if g.is_pointwise() {
            x_chunk
        } else {
            col.resize(rows * kl, T::ZERO);
            im2col(&g.with_images(images), x_chunk, &mut col);
            &col
        };
        // dw [Co, K] += dyᵀ [Co, rows] · col [rows, K], summing the chunks.
        filter_product(&mut dw, dy_chunk, b, g.co, kl, rows, i > 0)?;
    }
    T::keep_scratch(col);
    Ok(dw)
}

/// Rows per partial filter gradient when the reduction is split (see [`filter_product`]).
const FILTER_SPLIT_ROWS: usize = 512;

/// `dw [co, kl] (+)= dyᵀ · col` over `rows` rows. In the early layers `dw` is small (64 x 147
/// in the stem) and the reduction long (8192 rows), which gives `gemm` too little output to
/// share between threads; there the rows are split into blocks whose partial products run on
/// separate threads and are summed in block order (so the result does not depend on the
/// thread count).
fn filter_product<T: Float>(
    dw: &mut [T],
    dy: &[T],
    col: &[T],
    co: usize,
    kl: usize,
    rows: usize,
    accumulate: bool,
) -> Result<()> {
    let blocks = (rows / FILTER_SPLIT_ROWS).min(16);
    if blocks < 2 || co * kl >= rows * 4 {
        return matmul(
            dw,
            dy,
            Layout::Transposed,
            col,
            Layout::Plain,
            co,
            kl,
            rows,
            accumulate,
        );
    }
    let block_rows = rows.div_ceil(blocks);
    let partials: Vec<Vec<T>> = dy
        .par_chunks(block_rows * co)
        .zip(col.par_chunks(block_rows * kl))
        .map(|(dy, col)| {
            let mut part = vec![T::ZERO; co * kl];
            let r = dy.len() / co;
            matmul_serial(
                &mut part,
                dy,
                Layout::Transposed,
                col,
                Layout::Plain,
                co,
                kl,
                r,
                false,
            )
            .map(|()| part)
        })
        .collect::<Result<_>>()?;
    if !accumulate {
        dw.fill(T::ZERO);
    }
    for part in &partials {
        for (d, &v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    Ok(())
}

impl ConvGeometry {
    /// The same convolution over a chunk of `images` images.
    fn with_images(&self, images: usize) -> ConvGeometry {
        ConvGeometry { n: images, ..*self }
    }
}

pub(super) fn conv2d_fwd(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_fwd";
    let g = ConvGeometry::new(OP, x.shape(), w.shape(), p)?;
    let bias = match bias {
        Some(b) if b.shape() != [g.co] => {
            return Err(Error::shape(
                OP,
                format!("bias {:?}, expected [{}]", b.shape(), g.co),
            ))
        }
        Some(b) => Some(b.cpu_slice(OP)?),
        None => None,
    };
    let y = conv2d_fwd_kernel(&g, x.cpu_slice(OP)?, w.cpu_slice(OP)?, bias)?;
    Ok(cpu_tensor(y, &g.y_shape()))
}

pub(super) fn conv2d_bwd_data(
    dy: &Tensor,
    w: &Tensor,
    x_shape: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_bwd_data";
    let g = ConvGeometry::new(OP, x_shape, w.shape(), p)?;
    check_dy(OP, &g, dy)?;
    let dx = conv2d_bwd_data_kernel(&g, dy.cpu_slice(OP)?, w.cpu_slice(OP)?)?;
    Ok(cpu_tensor(dx, x_shape))
}

pub(super) fn conv2d_bwd_filter(
    x: &Tensor,
    dy: &Tensor,
    w_shape: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_bwd_filter";
    let g = ConvGeometry::new(OP, x.shape(), w_shape, p)?;
    check_dy(OP, &g, dy)?;
    let dw = conv2d_bwd_filter_kernel(&g, x.cpu_slice(OP)?, dy.cpu_slice(OP)?)?;
    Ok(cpu_tensor(dw, w_shape))
}

fn check_dy(op: &'static str, g: &ConvGeometry, dy: &Tensor) -> Result<()> {
    if dy.shape() != g.y_shape() {
        return Err(Error::shape(
            op,
            format!(
                "output gradient {:?}, expected {:?}",
                dy.shape(),
                g.y_shape()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// `(N, H, W, Ci, Co, k, stride, padding)`.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// Odd sizes, every kernel/stride/padding mix
    /// ResNet18 uses plus padding wider than it needs.
    const CASES: [Case; 12] = [
        (1, 5, 7, 3, 5, 3, 1, 1),
        (3, 5, 7, 3, 4, 3, 2, 0),
        (3, 7, 5, 5, 7, 7, 2, 3),
        (1, 5, 7, 7, 3, 1, 1, 0),
        (3, 5, 7, 5, 3, 1, 2, 0),
        (3, 6, 6, 3, 5, 3, 2, 1),
        (1, 9, 9, 2, 3, 7, 1, 3),
        (3, 4, 5, 3, 2, 3, 3, 3),
        // Kernels cropped to their live taps: to a pointwise 1x1, to 3x3, to 5x5 at stride 2,
        // and a non-square input whose live rows and columns differ (no crop).
        (3, 1, 1, 5, 4, 3, 1, 1),
        (2, 2, 2, 3, 4, 7, 1, 3),
        (3, 3, 3, 2, 3, 7, 2, 3),
        (1, 1, 5, 3, 2, 3, 1, 1),
    ];

    fn geometry(case: Case) -> ConvGeometry {
        let (n, h, w, ci, co, k, stride, padding) = case;
        ConvGeometry::new(
            "test",
            &[n, h, w, ci],
            &[co, k, k, ci],
            Conv2dParams { stride, padding },
        )
        .expect("valid test geometry")
    }

    /// Input pixel `(ih, iw)` read by output `(oh, ow)` through tap `(kh, kw)`, if not padding.
    fn tap(g: &ConvGeometry, oh: usize, ow: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let ih = (oh * g.stride + kh).checked_sub(g.padding)?;
        let iw = (ow * g.stride + kw).checked_sub(g.padding)?;
        (ih < g.h && iw < g.w).then_some((ih, iw))
    }

    /// Calls `f(y index, x index, w index)` for every multiply-add of the direct 7-loop
    /// convolution.
    fn direct(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..g.n {
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    for co in 0..g.co {
                        for kh in 0..g.k {
                            for kw in 0..g.k {
                                let Some((ih, iw)) = tap(g, oh, ow, kh, kw) else {
                                    continue;
                                };
                                for ci in 0..g.ci {
                                    let yi = ((n * g.ho + oh) * g.wo + ow) * g.co + co;
                                    let xi = ((n * g.h + ih) * g.w + iw) * g.ci + ci;
                                    let wi = ((co * g.k + kh) * g.k + kw) * g.ci + ci;
                                    f(yi, xi, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forward and both backwards of the f32 backend against direct loops in f64.
    fn check_against_direct(case_index: usize, g: &ConvGeometry) {
        let p = Conv2dParams {
            stride: g.stride,
            padding: g.padding,
        };
        let seed = 100 + case_index as u64;
        let x = random(seed, g.n * g.h * g.w * g.ci, -1.0, 1.0);
        let w = random(seed + 1, g.co * g.patch_len(), -1.0, 1.0);
        let b = random(seed + 2, g.co, -1.0, 1.0);
        let dy = random(seed + 3, g.n * g.ho * g.wo * g.co, -1.0, 1.0);
        let (x, w, b, dy) = (
            to_f64(&to_f32(&x)),
            to_f64(&to_f32(&w)),
            to_f64(&to_f32(&b)),
            to_f64(&to_f32(&dy)),
        );

        let mut y = vec![0.0; dy.len()];
        for (i, yv) in y.iter_mut().enumerate() {
            *yv = b[i % g.co];
        }
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        direct(g, |yi, xi, wi| {
            y[yi] += x[xi] * w[wi];
            dx[xi] += dy[yi] * w[wi];
            dw[wi] += dy[yi] * x[xi];
        });

        let cpu = CpuBackend;
        let (xt, wt, bt) = (
            tensor(&x, &[g.n, g.h, g.w, g.ci]),
            tensor(&w, &[g.co, g.k, g.k, g.ci]),
            tensor(&b, &[g.co]),
        );
        let dyt = tensor(&dy, &g.y_shape());
        let got_y = cpu.conv2d_fwd(&xt, &wt, Some(&bt), p).expect("conv2d_fwd");
        assert_eq!(got_y.shape(), g.y_shape());
        let got_dx = cpu
            .conv2d_bwd_data(&dyt, &wt, xt.shape(), p)
            .expect("conv2d_bwd_data");
        let got_dw = cpu
            .conv2d_bwd_filter(&xt, &dyt, wt.shape(), p)
            .expect("conv2d_bwd_filter");
        let name = |what| format!("{what} {g:?}");
        assert_close(&name("forward"), &values(&got_y), &y, F32_VS_F64);
        assert_close(&name("backward data"), &values(&got_dx), &dx, F32_VS_F64);
        assert_close(&name("backward filter"), &values(&got_dw), &dw, F32_VS_F64);
    }

    #[test]
    fn matches_direct_loops() {
        for (i, &case) in CASES.iter().enumerate() {
            check_against_direct(i, &geometry(case));
        }
    }

    #[test]
    fn crops_kernels_to_live_taps() {
        let crop = |case| geometry(case).cropped().map(|(lo, g)| (lo, g.k, g.padding));
        assert_eq!(crop(CASES[8]), Some((1, 1, 0)));
        assert_eq!(crop(CASES[9]), Some((2, 3, 1)));
        assert_eq!(crop(CASES[10]), Some((1, 5, 2)));
        assert_eq!(crop(CASES[11]), None);
        assert_eq!(crop(CASES[0]), None);
    }

    #[test]
    fn matches_direct_loops_when_chunked() {
        // 48x48x64 with a 3x3 kernel needs 2304 * 576 col elements per image: 3 fit one
        // COL_BUDGET, so 5 images run as chunks of 3 and 2, exercising the chunk loop, a
        // partial last chunk and the filter-gradient summation across chunks. The dispatch
        // would take the blocked path here, so the chunked kernels are called directly too.
        let g = geometry((5, 48, 48, 64, 4, 3, 1, 1));
        assert_eq!(g.images_per_chunk(), 3);
        check_against_direct(99, &g);
        let x = random(7, g.n * g.h * g.w * g.ci, -1.0, 1.0);
        let w = random(8, g.co * g.patch_len(), -1.0, 1.0);
        let b = random(9, g.co, -1.0, 1.0);
        let dy = random(10, g.n * g.ho * g.wo * g.co, -1.0, 1.0);
        let y_chunked = conv2d_fwd_chunked(&g, &x, &w, Some(&b)).expect("chunked forward");
        let y_blocked = conv2d_fwd_blocked(&g, &x, &w, Some(&b), 2).expect("blocked forward");
        assert_close(
            "forward, chunked vs blocked",
            &y_chunked,
            &y_blocked,
            REORDERED_F64,
        );
        let dx_chunked = conv2d_bwd_data_chunked(&g, &dy, &w).expect("chunked data gradient");
        let dx_blocked = conv2d_bwd_data_blocked(&g, &dy, &w, 2).expect("blocked data gradient");
        assert_close(
            "data gradient, chunked vs blocked",
            &dx_chunked,
            &dx_blocked,
            REORDERED_F64,
        );
        let dw_chunked = conv2d_bwd_filter_chunked(&g, &x, &dy).expect("chunked filter gradient");
        let dw_blocked =
            conv2d_bwd_filter_blocked(&g, &x, &dy, 2).expect("blocked filter gradient");
        assert_close(
            "filter gradient, chunked vs blocked",
            &dw_chunked,
            &dw_blocked,
            REORDERED_F64,
        );
    }

    #[test]
    fn blocked_path_matches_direct_loops() {
        // 8x8x64 with a 3x3 kernel: 147 KiB of col per image, so groups of 3 images, and 7
        // images leave a partial last group of 1 (three filter partials of one group each).
        let g = geometry((7, 8, 8, 64, 5, 3, 1, 1));
        assert_eq!(g.images_per_tile::<f32>(), Some(3));
        check_against_direct(98, &g);
        // Large weights and pointwise convolutions keep the chunked path.
        assert_eq!(
            geometry((7, 8, 8, 64, 512, 3, 1, 1)).images_per_tile::<f32>(),
            None
        );
        assert_eq!(
            geometry((7, 8, 8, 64, 5, 1, 1, 0)).images_per_tile::<f32>(),
            None
        );
    }

    #[test]
    fn without_bias_is_bias_free() {
        let g = geometry(CASES[0]);
        let x = tensor(
            &random(1, g.n * g.h * g.w * g.ci, -1.0, 1.0),
            &[g.n, g.h, g.w, g.ci],
        );
        let w = tensor(
            &random(2, g.co * g.patch_len(), -1.0, 1.0),
            &[g.co, g.k, g.k, g.ci],
        );
        let b = tensor(&vec![0.0; g.co], &[g.co]);
        let p = Conv2dParams {
            stride: g.stride,
            padding: g.padding,
        };
        let with = CpuBackend
            .conv2d_fwd(&x, &w, Some(&b), p)
            .expect("with bias");
        let without = CpuBackend
            .conv2d_fwd(&x, &w, None, p)
            .expect("without bias");
        assert_close("zero bias", &values(&with), &values(&without), HAND_F32);
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (i, &case) in CASES.iter().enumerate() {
            let g = geometry(case);
            let seed = 200 + 10 * i as u64;
            let x = random(seed, g.n * g.h * g.w * g.ci, -1.0, 1.0);
            let w = random(seed + 1, g.co * g.patch_len(), -1.0, 1.0);
            let r = random(seed + 2, g.n * g.ho * g.wo * g.co, -1.0, 1.0);
            let loss = |x: &[f64], w: &[f64]| {
                dot(&r, &conv2d_fwd_kernel(&g, x, w, None).expect("forward"))
            };

            let dx = conv2d_bwd_data_kernel(&g, &r, &w).expect("backward data");
            check_gradient(&format!("dx {g:?}"), &x, &dx, |x| loss(x, &w), GRAD_F64);
            let dw = conv2d_bwd_filter_kernel(&g, &x, &r).expect("backward filter");
            check_gradient(&format!("dw {g:?}"), &w, &dw, |w| loss(&x, w), GRAD_F64);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = tensor(&random(1, 2 * 5 * 5 * 3, -1.0, 1.0), &[2, 5, 5, 3]);
        let p = Conv2dParams {
            stride: 1,
            padding: 0,
        };
        let wrong_ci = tensor(&random(2, 4 * 9 * 2, -1.0, 1.0), &[4, 3, 3, 2]);
        let too_big = tensor(&random(3, 4 * 49 * 3, -1.0, 1.0), &[4, 7, 7, 3]);
        let not_square = tensor(&random(4, 4 * 6 * 3, -1.0, 1.0), &[4, 3, 2, 3]);
        for w in [&wrong_ci, &too_big, &not_square] {
            assert!(matches!(
                CpuBackend.conv2d_fwd(&x, w, None, p),
                Err(Error::Shape { .. })
            ));
        }
        let w = tensor(&random(5, 4 * 9 * 3, -1.0, 1.0), &[4, 3, 3, 3]);
        let zero_stride = Conv2dParams {
            stride: 0,
            padding: 0,
        };
        assert!(matches!(
            CpuBackend.conv2d_fwd(&x, &w, None, zero_stride),
            Err(Error::Shape { .. })
        ));
        let bad_dy = tensor(&random(6, 2 * 4 * 4 * 4, -1.0, 1.0), &[2, 4, 4, 4]);
        assert!(matches!(
            CpuBackend.conv2d_bwd_data(&bad_dy, &w, x.shape(), p),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            CpuBackend.conv2d_bwd_filter(&x, &bad_dy, w.shape(), p),
            Err(Error::Shape { .. })
        ));
    }
}
