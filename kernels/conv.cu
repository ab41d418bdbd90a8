// Convolution as implicit GEMM over NHWC images and [Co, k, k, Ci] weights: no im2col buffer,
// the tile loaders gather the patches straight from the image.
//
//   forward:         y[M = N Ho Wo, Co]   = patches(x)[M, k k Ci] . w[Co, k k Ci]^T
//   backward data:   dx[M = N H W, Ci]    = taps(dy)[M, k k Co]   . w as [k k Co, Ci]
//   backward filter: dw[Co, k k Ci]       = dy^T[Co, P = N Ho Wo] . patches(x)[P, k k Ci]
//
// Each block computes a 64 x 64 output tile with 256 threads (4 x 4 outputs per thread, rows
// ty + 16 i and columns tx + 16 j so shared-memory reads and global writes are consecutive
// across a half warp), stepping through K in slices of 16 staged in shared memory. The next
// slice is fetched into registers while the current one is multiplied. Shared rows are padded
// by one float so the transposing stores do not conflict on banks. Out-of-range rows, columns
// and taps load zeros, so every shape works (channels not multiples of the tile, batch 1).
// The backward filter splits P across gridDim.z; the host sums the partial tiles with
// channel_sum_fwd_f32, keeping the result deterministic.
//
// TODO: tile sizes are a first choice, not yet from a measured sweep on the H200; backward
// data with stride 2 multiplies the 3 of 4 taps that are zero.
#include "common.cuh"

#define LW_BM 64
#define LW_BN 64
#define LW_BK 16
#define LW_THREADS 256
// A row or tap index far enough below zero that adding a kernel offset keeps it negative.
#define LW_INVALID (-(1 << 24))

// Each kernel's comment lists the fields it reads; in_* is the image x, out_* the output of
// the forward convolution (y, dy).
struct ConvParams {
    const float* x;
    const float* w;
    const float* bias;   // forward only; 0 for none
    const float* dy;
    float* out;          // y, dx, or dw partials [gridDim.z, Co, k k Ci]
    int n;
    int in_h;
    int in_w;
    int ci;
    int out_h;
    int out_w;
    int co;
    int kernel;
    int stride;
    int padding;
    int pixels_per_split;  // backward filter: a multiple of LW_BK
    int pad;
};
LW_PARAMS_SIZE(ConvParams, 88);

typedef float LwTile[LW_BK][LW_BM + 1];

// acc[i][j] += sum over the slice of a[ty + 16 i][k] * b[k][tx + 16 j].
__device__ __forceinline__ void lw_tile_mma(const LwTile& as, const LwTile& bs, float acc[4][4],
                                            int tx, int ty) {
#pragma unroll
    for (int k = 0; k < LW_BK; ++k) {
        float a[4];
        float b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = as[k][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = bs[k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
    }
}

// Forward. Reads x, w, bias and the shapes; writes out = y.
LW_KERNEL void __launch_bounds__(LW_THREADS) conv2d_fwd_f32(const ConvParams p) {
    __shared__ LwTile as;
    __shared__ LwTile bs;
    const int tx = threadIdx.x % 16;
    const int ty = threadIdx.x / 16;
    const int m0 = blockIdx.x * LW_BM;
    const int n0 = blockIdx.y * LW_BN;
    const int rows = p.n * p.out_h * p.out_w;
    const int depth = p.kernel * p.kernel * p.ci;

    // Both operands are loaded k-fastest (the channel axis is contiguous): thread (tx, ty)
    // loads tap k0 + tx of rows ty + 16 j. The row geometry is fixed for the whole kernel.
    int img_base[4];
    int h0[4];
    int w0[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int m = m0 + ty + 16 * j;
        const int wo = m % p.out_w;
        const int ho = (m / p.out_w) % p.out_h;
        img_base[j] = (m / (p.out_w * p.out_h)) * p.in_h * p.in_w * p.ci;
        h0[j] = m < rows ? ho * p.stride - p.padding : LW_INVALID;
        w0[j] = wo * p.stride - p.padding;
    }

    float ra[4];
    float rb[4];
    auto load = [&](int k0) {
        const int kk = k0 + tx;
        const int cin = kk % p.ci;
        const int tap = kk / p.ci;
        const int kw = tap % p.kernel;
        const int kh = kk < depth ? tap / p.kernel : LW_INVALID;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int hi = h0[j] + kh;
            const int wi = w0[j] + kw;
            const bool ok = hi >= 0 && hi < p.in_h && wi >= 0 && wi < p.in_w;
            ra[j] = ok ? p.x[img_base[j] + (hi * p.in_w + wi) * p.ci + cin] : 0.0f;
            const int co = n0 + ty + 16 * j;
            rb[j] = (co < p.co && kk < depth) ? p.w[co * depth + kk] : 0.0f;
        }
    };

    float acc[4][4] = {};
    load(0);
    for (int k0 = 0; k0 < depth; k0 += LW_BK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            as[tx][ty + 16 * j] = ra[j];
            bs[tx][ty + 16 * j] = rb[j];
        }
        __syncthreads();
        if (k0 + LW_BK < depth) load(k0 + LW_BK);
        lw_tile_mma(as, bs, acc, tx, ty);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= rows) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = n0 + tx + 16 * j;
            if (co < p.co) p.out[m * p.co + co] = acc[i][j] + (p.bias ? p.bias[co] : 0.0f);
        }
    }
}

// Backward data. Reads dy, w and the shapes; writes out = dx. Input pixel (h, w) receives tap
// (kh, kw) from output pixel ((h + padding - kh) / stride, ...) when that division is exact
// and in range.
LW_KERNEL void __launch_bounds__(LW_THREADS) conv2d_data_bwd_f32(const ConvParams p) {
    __shared__ LwTile as;
    __shared__ LwTile bs;
    const int tx = threadIdx.x % 16;
    const int ty = threadIdx.x / 16;
    const int m0 = blockIdx.x * LW_BM;
    const int n0 = blockIdx.y * LW_BN;
    const int rows = p.n * p.in_h * p.in_w;
    const int depth = p.kernel * p.kernel * p.co;

    // A (taps of dy) loads k-fastest like the forward; B (w seen as [k k Co, Ci]) loads
    // column-fastest: thread t loads column t % 64 of slice rows t / 64 + 4 j.
    int img_base[4];
    int hp[4];
    int wp[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int m = m0 + ty + 16 * j;
        const int wi = m % p.in_w;
        const int hi = (m / p.in_w) % p.in_h;
        img_base[j] = (m / (p.in_w * p.in_h)) * p.out_h * p.out_w * p.co;
        hp[j] = m < rows ? hi + p.padding : LW_INVALID;
        wp[j] = wi + p.padding;
    }
    const int b_col = threadIdx.x % LW_BN;
    const int b_row = threadIdx.x / LW_BN;

    float ra[4];
    float rb[4];
    auto load = [&](int k0) {
        const int kk = k0 + tx;
        const int cout = kk % p.co;
        const int tap = kk / p.co;
        const int kw = tap % p.kernel;
        const int kh = kk < depth ? tap / p.kernel : -LW_INVALID;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int th = hp[j] - kh;
            const int tw = wp[j] - kw;
            const int ho = th / p.stride;
            const int wo = tw / p.stride;
            const bool ok = th >= 0 && tw >= 0 && ho * p.stride == th && wo * p.stride == tw
                            && ho < p.out_h && wo < p.out_w;
            ra[j] = ok ? p.dy[img_base[j] + (ho * p.out_w + wo) * p.co + cout] : 0.0f;
        }
        const int c = n0 + b_col;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kb = k0 + b_row + 4 * j;
            const int bcout = kb % p.co;
            const int btap = kb / p.co;
            // w[cout, kh, kw, ci] sits at (cout * k * k + tap) * Ci + ci.
            const int off = (bcout * p.kernel * p.kernel + btap) * p.ci + c;
            rb[j] = (kb < depth && c < p.ci) ? p.w[off] : 0.0f;
        }
    };

    float acc[4][4] = {};
    load(0);
    for (int k0 = 0; k0 < depth; k0 += LW_BK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            as[tx][ty + 16 * j] = ra[j];
            bs[b_row + 4 * j][b_col] = rb[j];
        }
        __syncthreads();
        if (k0 + LW_BK < depth) load(k0 + LW_BK);
        lw_tile_mma(as, bs, acc, tx, ty);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= rows) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n0 + tx + 16 * j;
            if (c < p.ci) p.out[m * p.ci + c] = acc[i][j];
        }
    }
}

// Backward filter, one split of the output pixels per blockIdx.z. Reads x, dy, the shapes and
// pixels_per_split; writes out[z, co, (kh, kw, ci)].
LW_KERNEL void __launch_bounds__(LW_THREADS) conv2d_filter_bwd_f32(const ConvParams p) {
    __shared__ LwTile as;
    __shared__ LwTile bs;
    const int tx = threadIdx.x % 16;
    const int ty = threadIdx.x / 16;
    const int m0 = blockIdx.x * LW_BM;  // output channels
    const int n0 = blockIdx.y * LW_BN;  // (kh, kw, ci) columns
    const int cols = p.kernel * p.kernel * p.ci;
    const int pixels = p.n * p.out_h * p.out_w;
    const int p_begin = blockIdx.z * p.pixels_per_split;
    const int p_end = min(p_begin + p.pixels_per_split, pixels);

    // Both operands load column-fastest: thread t loads column t % 64 of slice rows
    // t / 64 + 4 j. Its column of the patch matrix, hence (kh, kw, ci), is fixed.
    const int l_col = threadIdx.x % LW_BM;
    const int l_row = threadIdx.x / LW_BM;
    const int cout = m0 + l_col;
    const int col = n0 + l_col;
    const int cin = col % p.ci;
    const int kw = (col / p.ci) % p.kernel;
    const int kh = col < cols ? col / (p.ci * p.kernel) : LW_INVALID;

    float ra[4];
    float rb[4];
    auto load = [&](int k0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int pix = k0 + l_row + 4 * j;
            const bool in = pix < p_end;
            ra[j] = (in && cout < p.co) ? p.dy[pix * p.co + cout] : 0.0f;
            const int wo = pix % p.out_w;
            const int ho = (pix / p.out_w) % p.out_h;
            const int img = pix / (p.out_w * p.out_h);
            const int hi = ho * p.stride - p.padding + kh;
            const int wi = wo * p.stride - p.padding + kw;
            const bool ok = in && hi >= 0 && hi < p.in_h && wi >= 0 && wi < p.in_w;
            rb[j] = ok ? p.x[((img * p.in_h + hi) * p.in_w + wi) * p.ci + cin] : 0.0f;
        }
    };

    float acc[4][4] = {};
    load(p_begin);
    for (int k0 = p_begin; k0 < p_end; k0 += LW_BK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            as[l_row + 4 * j][l_col] = ra[j];
            bs[l_row + 4 * j][l_col] = rb[j];
        }
        __syncthreads();
        if (k0 + LW_BK < p_end) load(k0 + LW_BK);
        lw_tile_mma(as, bs, acc, tx, ty);
        __syncthreads();
    }

    float* out = p.out + blockIdx.z * p.co * cols;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int co = m0 + ty + 16 * i;
        if (co >= p.co) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n0 + tx + 16 * j;
            if (c < cols) out[co * cols + c] = acc[i][j];
        }
    }
}
