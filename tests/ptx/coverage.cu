// Kernels that make nvcc emit the instruction forms labelwise's kernels are likely to use:
// implicit-GEMM convolution, vector loads, half conversions, doubles, 64-bit integers, stack
// arrays, CAS loops, warp intrinsics and 3D indexing. Checked in tests/ptx_coverage.rs.

#include <stdint.h>
#include <cstdio>

// cuda_fp16.h needs CCCL headers the pip toolkit lacks; these are the conversions it emits.
__device__ __forceinline__ unsigned short f32_to_f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ unsigned short f32_to_bf16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}

struct ConvParams {
    const float* x;  // [n, h, w, c_in]
    const float* w;  // [c_out, 3, 3, c_in]
    float* y;        // [n, h, w, c_out], stride 1, padding 1
    int n, h, w_, c_in, c_out, pad_;
};

// Implicit GEMM: rows are output pixels, columns output channels, the reduction runs over
// (ky, kx, c_in) in tiles of 16 staged through shared memory.
extern "C" __global__ void conv3x3_fwd_f32(ConvParams p) {
    __shared__ float xs[16][17];
    __shared__ float ws[16][17];
    const int rows = p.n * p.h * p.w_;
    const int kdim = 9 * p.c_in;
    const int row = blockIdx.y * 16 + threadIdx.y;
    const int col = blockIdx.x * 16 + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < kdim; k0 += 16) {
        int k = k0 + threadIdx.x;
        float xv = 0.0f;
        if (row < rows && k < kdim) {
            int b = row / (p.h * p.w_), rem = row % (p.h * p.w_);
            int oy = rem / p.w_, ox = rem % p.w_;
            int tap = k / p.c_in, ci = k % p.c_in;
            int iy = oy + tap / 3 - 1, ix = ox + tap % 3 - 1;
            if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w_)
                xv = p.x[((b * p.h + iy) * p.w_ + ix) * p.c_in + ci];
        }
        xs[threadIdx.y][threadIdx.x] = xv;
        int kw = k0 + threadIdx.y;
        int co = blockIdx.x * 16 + threadIdx.x;
        ws[threadIdx.y][threadIdx.x] = (kw < kdim && co < p.c_out) ? p.w[co * kdim + kw] : 0.0f;
        __syncthreads();
        for (int i = 0; i < 16; ++i) acc += xs[threadIdx.y][i] * ws[i][threadIdx.x];
        __syncthreads();
    }
    if (row < rows && col < p.c_out) p.y[row * p.c_out + col] = acc;
}

// float4 loads and stores, read-only cache loads, half and bfloat16 round trips.
extern "C" __global__ void vector_and_half(const float4* x, float4* y, unsigned short* h,
                                           unsigned short* bf, float* back, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    float4 v = __ldg(&x[i]);
    float4 r = make_float4(v.w, v.z * 2.0f, v.y + 1.0f, -v.x);
    y[i] = r;
    h[i] = f32_to_f16_bits(v.x);
    bf[i] = f32_to_bf16_bits(v.y);
    back[i] = f16_bits_to_f32(h[i]);
}

// Doubles, 64-bit integers, unsigned division and a stack array indexed at run time.
extern "C" __global__ void wide_types(const int64_t* a, const double* d, int64_t* out_i,
                                      double* out_d, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t v = a[i];
    uint64_t u = (uint64_t)v;
    int64_t q = v / 7 + v % 7 + (int64_t)(u / 13u) + (int64_t)__umul64hi(u, 0x9E3779B97F4A7C15ull);
    out_i[i] = q + llabs(v) + max(v, (int64_t)-5) + (int64_t)(__popcll(u) + __clzll(u));
    double x = d[i];
    double s = sqrt(fabs(x)) + x / 3.0 + fma(x, 0.5, 1.0) + (double)(int)x + floor(x);
    float stack[8];
    for (int j = 0; j < 8; ++j) stack[j] = (float)(j * j) + (float)x;
    s += stack[(i * 5 + (int)u) & 7];
    out_d[i] = s + (double)(float)x + (double)(uint32_t)(v & 0xffff);
}

// atomicCAS loop for a float max, atomicMax, atomicExch, atomicInc and a 64-bit atomicAdd.
__device__ float atomic_max_float(float* addr, float v) {
    int* a = (int*)addr;
    int old = *a, assumed;
    do {
        assumed = old;
        if (__int_as_float(assumed) >= v) break;
        old = atomicCAS(a, assumed, __float_as_int(v));
    } while (old != assumed);
    return __int_as_float(old);
}

extern "C" __global__ void atomics_mix(const float* x, float* fmax_out, int* imax_out,
                                       unsigned* inc_out, unsigned long long* sum64, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomic_max_float(fmax_out, x[i]);
    atomicMax(imax_out, (int)(x[i] * 1000.0f));
    atomicInc(inc_out, 0xffffffffu);
    atomicAdd(sum64, (unsigned long long)i);
}

// Warp intrinsics: activemask inside a branch, reduce/match, syncwarp, segments of 8 lanes.
extern "C" __global__ void warp_intrinsics(const int* x, int* out) {
    int t = threadIdx.x;
    int v = x[t];
    int r = 0;
    if (v & 1) {
        r = __popc(__activemask());
    }
    __syncwarp();
    r += __reduce_add_sync(0xffffffffu, v);
    r += __popc(__match_any_sync(0xffffffffu, v & 3));
    r += __shfl_down_sync(0xffffffffu, v, 2, 8);
    r += __shfl_xor_sync(0xffffffffu, v, 1, 8);
    r += __shfl_sync(0xffffffffu, v, 3, 8);
    r += __any_sync(0xffffffffu, v > 90) + 2 * __all_sync(0xffffffffu, v >= 0);
    out[t] = r;
}

// 3D grid and block indices; the output holds each thread's flattened coordinates.
extern "C" __global__ void index_3d(int* out) {
    int bx = blockIdx.x, by = blockIdx.y, bz = blockIdx.z;
    int block = (bz * gridDim.y + by) * gridDim.x + bx;
    int tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int nthreads = blockDim.x * blockDim.y * blockDim.z;
    out[block * nthreads + tid] = (bx << 24) | (by << 16) | (bz << 12) | (threadIdx.z << 8) |
                                  (threadIdx.y << 4) | threadIdx.x;
}

// Library math that expands into long instruction sequences.
extern "C" __global__ void libm_mix(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    out[4 * i + 0] = powf(fabsf(v) + 0.5f, 1.7f);
    out[4 * i + 1] = erff(v) + log1pf(fabsf(v));
    out[4 * i + 2] = fmodf(v, 1.3f) + __saturatef(v) + __fdividef(v, 3.0f);
    out[4 * i + 3] = expf(v) + exp2f(v * 0.5f) + log2f(fabsf(v) + 1.0f);
}

// Barrier reductions (bar.red) and device printf (a vprintf call).
extern "C" __global__ void barrier_reductions(const float* x, int* out) {
    float v = x[threadIdx.x];
    int count = __syncthreads_count(v > 0.0f);
    int all = __syncthreads_and(v > -100.0f);
    int any = __syncthreads_or(v > 50.0f);
    out[threadIdx.x] = count * 4 + all * 2 + any;
    if (threadIdx.x == 3)
        printf("thread %d of %u: count %d, v=%.2f %s\n", threadIdx.x, blockDim.x, count, v, "ok");
}

// Device functions nvcc keeps out of line: nested calls, early returns, a local array in the
// callee, and calls from divergent code.
__device__ __noinline__ int collatz_steps(int v) {
    int steps = 0;
    while (v > 1) {
        if (steps > 200) return -1;
        v = (v & 1) ? 3 * v + 1 : v / 2;
        ++steps;
    }
    return steps;
}

__device__ __noinline__ float weighted(const float* x, int i, float w) {
    float window[4];
    for (int j = 0; j < 4; ++j) window[j] = x[i + j] * (w + (float)j);
    return window[i & 3] + (float)collatz_steps(i + 1);
}

extern "C" __global__ void calls_noinline(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float r = (i % 3 == 0) ? weighted(x, i, 0.5f) : (float)collatz_steps(i + 7);
    out[i] = r;
}

// 128-bit integers: nvcc lowers them to carry chains (add.cc/addc, mad.lo.cc/madc).
extern "C" __global__ void wide_u128(const unsigned long long* a, unsigned long long* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned __int128 x = (unsigned __int128)a[i] * a[(i + 1) % n] + a[i];
    x += (unsigned __int128)a[i] << 64;
    x -= (unsigned __int128)a[(i + 2) % n] * 3u;
    out[2 * i] = (unsigned long long)x;
    out[2 * i + 1] = (unsigned long long)(x >> 64);
}
