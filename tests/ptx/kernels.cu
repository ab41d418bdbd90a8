// Positive tests for the PTX interpreter: each kernel is checked against a host reference
// in tests/ptx_kernels.rs. Regenerate kernels.ptx with tests/ptx/regen.sh.

#include <stdint.h>

// Parameters as one struct by value, the way labelwise passes them.
struct AxpyParams {
    const float* x;
    const float* y;
    float* out;
    uint32_t n;
    float alpha;
};

extern "C" __global__ void axpy_fwd_f32(AxpyParams p) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.out[i] = p.alpha * p.x[i] + p.y[i];
}

// Block sum through shared memory with barriers, then one atomicAdd per block.
extern "C" __global__ void block_sum_f32(const float* x, float* out, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += x[i];
    s[t] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t == 0) atomicAdd(out, s[0]);
}

// One row per warp: max and sum by butterfly and down shuffles; softmax with expf/logf.
extern "C" __global__ void log_softmax_rows_f32(const float* x, float* y, int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * cols;
    float m = -INFINITY;
    for (int i = lane; i < cols; i += 32) m = fmaxf(m, xr[i]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.0f;
    for (int i = lane; i < cols; i += 32) s += expf(xr[i] - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    s = __shfl_sync(0xffffffffu, s, 0);
    float ls = logf(s);
    for (int i = lane; i < cols; i += 32) y[(size_t)row * cols + i] = xr[i] - m - ls;
}

// Histogram with shared atomics, merged into global with atomicAdd.
extern "C" __global__ void histogram_u32(const uint32_t* v, uint32_t* hist, int n, int bins) {
    extern __shared__ uint32_t local_hist[];
    for (int b = threadIdx.x; b < bins; b += blockDim.x) local_hist[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&local_hist[v[i] % bins], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) atomicAdd(&hist[b], local_hist[b]);
}

// Tiled matmul C[M,N] = A[M,K] * B[K,N] with 16x16 shared tiles.
#define TILE 16
extern "C" __global__ void matmul_tiled_f32(const float* a, const float* b, float* c, int m,
                                            int n, int k) {
    __shared__ float ta[TILE][TILE];
    __shared__ float tb[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t0 = 0; t0 < k; t0 += TILE) {
        int ak = t0 + threadIdx.x, bk = t0 + threadIdx.y;
        ta[threadIdx.y][threadIdx.x] = (row < m && ak < k) ? a[(size_t)row * k + ak] : 0.0f;
        tb[threadIdx.y][threadIdx.x] = (bk < k && col < n) ? b[(size_t)bk * n + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < TILE; ++i) acc = fmaf(ta[threadIdx.y][i], tb[i][threadIdx.x], acc);
        __syncthreads();
    }
    if (row < m && col < n) c[(size_t)row * n + col] = acc;
}

// Divergence inside a warp: different lanes take different paths and loop counts, then
// reconverge for a ballot and a shuffle that need every lane.
extern "C" __global__ void divergent_paths(const int* x, int* out, unsigned* ballots) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[t];
    int r;
    if (v % 3 == 0) {
        r = v * 2;
        for (int i = 0; i < (v & 7); ++i) r += i;
    } else if (v % 3 == 1) {
        r = v;
        while (r < 100) r = r * 2 + 7;
    } else {
        r = v ^ 0x55;
    }
    unsigned b = __ballot_sync(0xffffffffu, r > 50);
    int left = __shfl_up_sync(0xffffffffu, r, 1);
    out[t] = r + ((threadIdx.x % 32) ? left : 0);
    if ((threadIdx.x % 32) == 0) ballots[t / 32] = b;
}

// Conversions and math nvcc lowers to many instruction forms.
extern "C" __global__ void math_mix(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float r = 0.0f;
    r += sqrtf(fabsf(v)) + rsqrtf(fabsf(v) + 1.0f);
    r += __expf(v * 0.1f) + __logf(fabsf(v) + 2.0f);
    r += tanhf(v * 0.25f) + sinf(v) * cosf(v);
    r += (float)(int)(v * 3.7f) + rintf(v) + floorf(v) + ceilf(v) + truncf(v);
    r += (float)__float2int_rn(v * 10.0f) / 10.0f;
    r += (float)((double)v * 1.000001);
    r += fminf(v, 0.5f) + fmaxf(v, -0.5f) + copysignf(1.0f, v);
    r += (float)(__popc(__float_as_uint(v)) + __clz(i + 1) + (__brev(i) >> 20));
    r += v / (fabsf(v) + 3.0f);
    out[i] = r;
}
