// Shared conventions and helpers for every labelwise kernel.
//
// Parameter convention (mirrored on the Rust side in src/backend/cuda/params.rs):
// - every kernel takes exactly one argument, a struct passed by value, declared here or at the
//   top of its .cu file; the Rust side declares the same struct #[repr(C)] with u64 device
//   pointers, i32 sizes and f32 scalars, pointers first, padded by hand to a multiple of 8;
// - both sides check the struct size (LW_PARAMS_SIZE here, a const assert in Rust), and a test
//   compares the size against the `.param` declaration in the PTX;
// - a pointer a kernel does not use is 0; a kernel's comment lists the fields it reads;
// - indices are 32-bit: the host refuses tensors of 2^31 elements or more, so `int` arithmetic
//   on element offsets cannot overflow (the largest ResNet18 activation at 224 px, batch 128,
//   is about 1e8 elements).
// - entry points are extern "C" and named <op>_<fwd|bwd>_f32.
#pragma once

#define LW_PARAMS_SIZE(T, bytes) \
    static_assert(sizeof(T) == (bytes), #T " must match its #[repr(C)] mirror in params.rs")

#define LW_KERNEL extern "C" __global__

// Grid-stride loop over [0, n): launches may use fewer blocks than elements.
#define LW_FOR_EACH(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

__device__ __forceinline__ float lw_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float lw_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a whole block of at most 1024 threads (a multiple of 32); every thread gets the
// result. `scratch` holds 32 floats; the call synchronises the block twice.
__device__ __forceinline__ float lw_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = lw_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    v = lw_warp_sum(v);
    __syncthreads();
    return v;
}

// log(1 + exp(x)) without overflow for large x or loss of precision for very negative x.
__device__ __forceinline__ float lw_softplus(float x) {
    return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}
