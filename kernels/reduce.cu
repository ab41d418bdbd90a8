// Column reductions over [rows, cols] row-major data (every axis but the channels) and the
// batch norm kernels built on them.
//
// A reduction runs in two deterministic stages, never with float atomics: stage one gives each
// block 32 columns and one chunk of rows and writes one partial sum per (chunk, column); stage
// two is channel_sum_fwd_f32 again over the [chunks, cols] partials with a single chunk. Blocks
// are 32 x 8 threads: a warp reads 32 consecutive floats of one row (one 128-byte line) and
// the 8 warps stride the rows, then combine through shared memory.
#include "common.cuh"

#define LW_COLS_PER_BLOCK 32
#define LW_ROW_THREADS 8

struct ColumnSumParams {
    const float* x;
    float* out;          // [chunks, cols], chunks = gridDim.y
    int rows;
    int cols;
    int rows_per_chunk;
    float scale;         // applied to each sum
};
LW_PARAMS_SIZE(ColumnSumParams, 32);

// Sums v over threadIdx.y; the result is valid in threads with threadIdx.y == 0.
__device__ __forceinline__ float lw_sum_over_y(float v, float (*s)[LW_COLS_PER_BLOCK + 1]) {
    s[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0) {
        for (int k = 1; k < LW_ROW_THREADS; ++k) v += s[k][threadIdx.x];
    }
    __syncthreads();
    return v;
}

// out[g, c] = scale * sum of x[r, c] over the rows r of chunk g.
// Also the global average pool: chunk = H * W rows of one image, scale = 1 / (H W).
LW_KERNEL void channel_sum_fwd_f32(const ColumnSumParams p) {
    __shared__ float s[LW_ROW_THREADS][LW_COLS_PER_BLOCK + 1];
    const int c = blockIdx.x * LW_COLS_PER_BLOCK + threadIdx.x;
    const int r0 = blockIdx.y * p.rows_per_chunk;
    const int r1 = min(r0 + p.rows_per_chunk, p.rows);
    float acc = 0.0f;
    if (c < p.cols) {
        for (int r = r0 + threadIdx.y; r < r1; r += LW_ROW_THREADS) acc += p.x[r * p.cols + c];
    }
    acc = lw_sum_over_y(acc, s);
    if (threadIdx.y == 0 && c < p.cols) p.out[blockIdx.y * p.cols + c] = p.scale * acc;
}

// Shared by the batch norm kernels; each kernel's comment lists the fields it reads. `rows` is
// the number of elements per channel (N H W), `cols` the channel count.
struct BatchNormParams {
    const float* x;
    const float* dy;
    const float* mean;
    const float* var;
    const float* gamma;
    const float* beta;
    const float* dgamma;
    const float* dbeta;
    float* out;
    int rows;
    int cols;
    int rows_per_chunk;
    float eps;
};
LW_PARAMS_SIZE(BatchNormParams, 88);

// Stage one of the variance, after the mean (the exact two-pass formula: no cancellation).
// Reads x, mean; writes out[g, c] = sum of (x - mean)^2 over chunk g.
LW_KERNEL void batch_norm_sqdev_fwd_f32(const BatchNormParams p) {
    __shared__ float s[LW_ROW_THREADS][LW_COLS_PER_BLOCK + 1];
    const int c = blockIdx.x * LW_COLS_PER_BLOCK + threadIdx.x;
    const int r0 = blockIdx.y * p.rows_per_chunk;
    const int r1 = min(r0 + p.rows_per_chunk, p.rows);
    float acc = 0.0f;
    if (c < p.cols) {
        const float mu = p.mean[c];
        for (int r = r0 + threadIdx.y; r < r1; r += LW_ROW_THREADS) {
            const float d = p.x[r * p.cols + c] - mu;
            acc += d * d;
        }
    }
    acc = lw_sum_over_y(acc, s);
    if (threadIdx.y == 0 && c < p.cols) p.out[blockIdx.y * p.cols + c] = acc;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta, for training (batch statistics) and
// evaluation (running statistics). Reads x, mean, var, gamma, beta, eps; writes out.
LW_KERNEL void batch_norm_apply_fwd_f32(const BatchNormParams p) {
    const int n = p.rows * p.cols;
    LW_FOR_EACH(i, n) {
        const int c = i % p.cols;
        const float inv_std = 1.0f / sqrtf(p.var[c] + p.eps);
        p.out[i] = (p.x[i] - p.mean[c]) * inv_std * p.gamma[c] + p.beta[c];
    }
}

// Stage one of dbeta = sum dy and dgamma = sum dy * xhat. Reads dy, x, mean, var, eps; writes
// out[0, g, c] (dy sums) and out[1, g, c] (dy * xhat sums), with gridDim.y chunks.
LW_KERNEL void batch_norm_reduce_bwd_f32(const BatchNormParams p) {
    __shared__ float s[LW_ROW_THREADS][LW_COLS_PER_BLOCK + 1];
    const int c = blockIdx.x * LW_COLS_PER_BLOCK + threadIdx.x;
    const int r0 = blockIdx.y * p.rows_per_chunk;
    const int r1 = min(r0 + p.rows_per_chunk, p.rows);
    float sum_dy = 0.0f;
    float sum_dy_xhat = 0.0f;
    if (c < p.cols) {
        const float mu = p.mean[c];
        const float inv_std = 1.0f / sqrtf(p.var[c] + p.eps);
        for (int r = r0 + threadIdx.y; r < r1; r += LW_ROW_THREADS) {
            const int i = r * p.cols + c;
            const float g = p.dy[i];
            sum_dy += g;
            sum_dy_xhat += g * (p.x[i] - mu) * inv_std;
        }
    }
    sum_dy = lw_sum_over_y(sum_dy, s);
    sum_dy_xhat = lw_sum_over_y(sum_dy_xhat, s);
    if (threadIdx.y == 0 && c < p.cols) {
        const int plane = gridDim.y * p.cols;
        p.out[blockIdx.y * p.cols + c] = sum_dy;
        p.out[plane + blockIdx.y * p.cols + c] = sum_dy_xhat;
    }
}

// dx = gamma / sqrt(var + eps) * (dy - dbeta / R - xhat * dgamma / R), R = rows.
// Reads x, dy, mean, var, gamma, dgamma, dbeta, eps; writes out.
LW_KERNEL void batch_norm_apply_bwd_f32(const BatchNormParams p) {
    const int n = p.rows * p.cols;
    const float inv_rows = 1.0f / (float)p.rows;
    LW_FOR_EACH(i, n) {
        const int c = i % p.cols;
        const float inv_std = 1.0f / sqrtf(p.var[c] + p.eps);
        const float xhat = (p.x[i] - p.mean[c]) * inv_std;
        const float g = p.dy[i] - (p.dbeta[c] + xhat * p.dgamma[c]) * inv_rows;
        p.out[i] = p.gamma[c] * inv_std * g;
    }
}
