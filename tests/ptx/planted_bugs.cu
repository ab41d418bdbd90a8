// Kernels with planted bugs; tests/ptx_checks.rs asserts the interpreter reports each one.
// Regenerate planted_bugs.ptx with tests/ptx/regen.sh.

#include <cassert>

// Off-by-one bound: `<=` reads and writes one element past the end.
extern "C" __global__ void scale_off_by_one(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 2.0f * x[i];
}

// Missing barrier: thread t reads what thread t+1 wrote without __syncthreads between.
extern "C" __global__ void shift_missing_barrier(const float* x, float* y) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    // __syncthreads() belongs here.
    float right = (t + 1 < blockDim.x) ? s[t + 1] : 0.0f;
    y[blockIdx.x * blockDim.x + t] = right;
}

// The same kernel with its barrier, which must run clean.
extern "C" __global__ void shift_with_barrier(const float* x, float* y) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    float right = (t + 1 < blockDim.x) ? s[t + 1] : 0.0f;
    y[blockIdx.x * blockDim.x + t] = right;
}

// Write-write race: every thread stores its value into one shared slot, then reads it.
extern "C" __global__ void last_writer_race(const int* x, int* y) {
    __shared__ int slot;
    slot = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = slot;
}

// Shared out-of-bounds: the tile has 64 entries but blocks of 128 threads index it.
extern "C" __global__ void tile_overflow(const float* x, float* y) {
    __shared__ float tile[64];
    int t = threadIdx.x;
    tile[t] = x[t];
    __syncthreads();
    y[t] = tile[t];
}

// Reads a shared entry no thread wrote (only even entries are filled).
extern "C" __global__ void reads_unwritten_shared(float* y) {
    __shared__ float s[64];
    int t = threadIdx.x;
    if (t % 2 == 0) s[t] = (float)t;
    __syncthreads();
    y[t] = s[t ^ 1];
}

// A device-side assert that fails for negative inputs.
extern "C" __global__ void asserts_non_negative(const float* x) {
    assert(x[threadIdx.x] >= 0.0f);
}

// Warp-synchronous reduction through shared memory without __syncwarp: relies on lockstep
// lanes, which Volta and later do not guarantee. Flagged only by the strict warp check.
extern "C" __global__ void warp_reduce_no_syncwarp(const float* x, float* y) {
    __shared__ float s[32];
    int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    volatile float* v = s;
    if (t < 16) v[t] += v[t + 16];
    if (t < 8) v[t] += v[t + 8];
    if (t < 4) v[t] += v[t + 4];
    if (t < 2) v[t] += v[t + 2];
    if (t < 1) v[t] += v[t + 1];
    if (t == 0) y[0] = v[0];
}

// The same reduction made correct with __syncwarp between the steps.
extern "C" __global__ void warp_reduce_syncwarp(const float* x, float* y) {
    __shared__ float s[32];
    int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    for (int k = 16; k > 0; k >>= 1) {
        float other = t < k ? s[t + k] : 0.0f;
        __syncwarp();
        if (t < k) s[t] += other;
        __syncwarp();
    }
    if (t == 0) y[0] = s[0];
}
