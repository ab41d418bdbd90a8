// Host emulation of the CUDA subset labelwise's kernels use, so their logic runs on a machine
// without a GPU: one OS thread per CUDA thread, blocks one after another, __syncthreads as a
// block barrier, warp shuffles through a per-warp barrier, __shared__ as function statics.
// Slow (thread creation dominates) and blind to races and memory-model issues: a logic check,
// not a substitute for the GPU run or the PTX interpreter.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* g_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
inline std::vector<float> g_lanes_f;
inline std::vector<unsigned> g_lanes_u;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static

inline int emu_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }

template <class T>
T emu_shfl_xor(std::vector<T>& lanes, T v, int o) {
    const int t = emu_thread();
    auto& warp = *g_warp_barriers[t / 32];
    lanes[t] = v;
    warp.arrive_and_wait();
    const T r = lanes[(t & ~31) | ((t & 31) ^ o)];
    warp.arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_shfl_xor(g_lanes_f, v, o); }
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int o) {
    return emu_shfl_xor(g_lanes_u, v, o);
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    return std::atomic_ref<unsigned>(*p).fetch_add(v);
}
using std::isfinite;
using std::isnan;
using std::max;
using std::min;

// Runs kernel `k` over `grid` x `block` with parameter struct `p`.
template <class P>
void launch(void (*k)(P), dim3 grid, dim3 block, P p) {
    gridDim = grid;
    blockDim = block;
    const int n = block.x * block.y * block.z;
    g_lanes_f.assign(n, 0.0f);
    g_lanes_u.assign(n, 0u);
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> block_barrier(n);
                g_block_barrier = &block_barrier;
                g_warp_barriers.clear();
                for (int w = 0; w < (n + 31) / 32; ++w) {
                    const int lanes = min(32, n - 32 * w);
                    g_warp_barriers.push_back(std::make_unique<std::barrier<>>(lanes));
                }
                std::vector<std::thread> threads;
                for (int t = 0; t < n; ++t) {
                    threads.emplace_back([=] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {unsigned(t % block.x), unsigned((t / block.x) % block.y),
                                     unsigned(t / (block.x * block.y))};
                        k(p);
                    });
                }
                for (auto& t : threads) t.join();
            }
        }
    }
}
