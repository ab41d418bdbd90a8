// The CosFace head, the losses, probabilities, pool scoring and top-k selection. Row kernels
// give one warp to each row (256-thread blocks, 8 rows per block): label counts are small.
#include <math.h>

#include "common.cuh"

#define LW_ROWS_PER_BLOCK 8

__device__ __forceinline__ int lw_warp_row() {
    return blockIdx.x * LW_ROWS_PER_BLOCK + (threadIdx.x >> 5);
}

// ---- CosFace -------------------------------------------------------------------------------

// inv_norm[r] = 1 / max(||x[r]||, eps), as PyTorch's F.normalize: a zero row normalises to
// zero, so its cosine with anything is 0.
struct RowNormParams {
    const float* x;
    float* inv_norm;
    int rows;
    int cols;
    float eps;
    int pad;
};
LW_PARAMS_SIZE(RowNormParams, 32);

LW_KERNEL void cosface_norm_fwd_f32(const RowNormParams p) {
    const int row = lw_warp_row();
    if (row >= p.rows) return;
    const int lane = threadIdx.x & 31;
    float ss = 0.0f;
    for (int d = lane; d < p.cols; d += 32) {
        const float v = p.x[row * p.cols + d];
        ss += v * v;
    }
    ss = lw_warp_sum(ss);
    if (lane == 0) p.inv_norm[row] = 1.0f / fmaxf(sqrtf(ss), p.eps);
}

// logits[n, l] = scale * (cos(emb[n], weight[l]) - margin * t[n, l]), t = targets (softmax),
// 2 targets - 1 (multi-label), or 0 without targets (targets == 0).
struct CosFaceParams {
    const float* emb;
    const float* weight;
    const float* emb_inv;
    const float* weight_inv;
    const float* targets;
    float* logits;
    int n;
    int l;
    int d;
    float margin;
    float scale;
    int multilabel;
};
LW_PARAMS_SIZE(CosFaceParams, 72);

LW_KERNEL void cosface_fwd_f32(const CosFaceParams p) {
    const int idx = lw_warp_row();  // one warp per logit
    if (idx >= p.n * p.l) return;
    const int row = idx / p.l;
    const int cls = idx % p.l;
    const int lane = threadIdx.x & 31;
    float dot = 0.0f;
    for (int d = lane; d < p.d; d += 32) dot += p.emb[row * p.d + d] * p.weight[cls * p.d + d];
    dot = lw_warp_sum(dot);
    if (lane != 0) return;
    const float cosine = dot * p.emb_inv[row] * p.weight_inv[cls];
    float t = 0.0f;
    if (p.targets) t = p.multilabel ? 2.0f * p.targets[idx] - 1.0f : p.targets[idx];
    p.logits[idx] = p.scale * (cosine - p.margin * t);
}

// Gradient of rows x[i] through the normalisation, given the other operand (for d_emb the
// class weights, for d_weight the embeddings): with u = x inv, g = sum_j coef(i, j) û_j and
// coef = scale * dlogits[i * coef_row_stride + j * coef_col_stride],
//   dx = inv * (g - (g . x) inv^2 x)  when ||x|| > eps (projection off the unit sphere),
//   dx = 0                             otherwise: a clamped row is treated as a constant, as
//                                      the CPU reference does (the clamp's slope, 1/eps, is
//                                      a useless 1e12).
// One block per row; dx holds g between the two passes (each thread rereads its own writes).
struct CosFaceBwdParams {
    const float* x;
    const float* x_inv;
    const float* other;
    const float* other_inv;
    const float* dlogits;
    float* dx;
    int rows;
    int others;
    int cols;
    int coef_row_stride;
    int coef_col_stride;
    float scale;
    float eps;
    int pad;
};
LW_PARAMS_SIZE(CosFaceBwdParams, 80);

LW_KERNEL void cosface_bwd_f32(const CosFaceBwdParams p) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    const float* x = p.x + row * p.cols;
    float* dx = p.dx + row * p.cols;
    float dot = 0.0f;
    for (int d = threadIdx.x; d < p.cols; d += blockDim.x) {
        float g = 0.0f;
        for (int j = 0; j < p.others; ++j) {
            const float coef = p.dlogits[row * p.coef_row_stride + j * p.coef_col_stride];
            g += coef * p.other[j * p.cols + d] * p.other_inv[j];
        }
        g *= p.scale;
        dx[d] = g;
        dot += g * x[d];
    }
    dot = lw_block_sum(dot, scratch);
    const float inv = p.x_inv[row];
    const bool clamped = inv * p.eps >= 1.0f;
    const float proj = dot * inv * inv;
    for (int d = threadIdx.x; d < p.cols; d += blockDim.x) {
        dx[d] = clamped ? 0.0f : inv * (dx[d] - proj * x[d]);
    }
}

// ---- Losses and probabilities ---------------------------------------------------------------

// Each kernel's comment lists the fields it reads and what `scale` means.
struct RowParams {
    const float* logits;
    const float* targets;
    float* out;
    int rows;
    int cols;
    float scale;
    int pad;
};
LW_PARAMS_SIZE(RowParams, 40);

// Row max and sum of exp(z - max): the stable pieces of softmax and log-sum-exp.
__device__ __forceinline__ void lw_row_softmax_stats(const float* z, int cols, float* max_out,
                                                     float* sum_out) {
    const int lane = threadIdx.x & 31;
    float m = -INFINITY;
    for (int c = lane; c < cols; c += 32) m = fmaxf(m, z[c]);
    m = lw_warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < cols; c += 32) s += expf(z[c] - m);
    *max_out = m;
    *sum_out = lw_warp_sum(s);
}

// out[r] = -sum_c t[r, c] log softmax(z[r])_c = sum_c t (lse - z); the host averages the rows.
LW_KERNEL void softmax_xent_fwd_f32(const RowParams p) {
    const int row = lw_warp_row();
    if (row >= p.rows) return;
    const float* z = p.logits + row * p.cols;
    const float* t = p.targets + row * p.cols;
    float m, s;
    lw_row_softmax_stats(z, p.cols, &m, &s);
    const float lse = m + logf(s);
    float loss = 0.0f;
    for (int c = (threadIdx.x & 31); c < p.cols; c += 32) loss += t[c] * (lse - z[c]);
    loss = lw_warp_sum(loss);
    if ((threadIdx.x & 31) == 0) p.out[row] = loss;
}

// out = scale * (softmax(z) * sum_c t - t), scale = dloss / rows.
LW_KERNEL void softmax_xent_bwd_f32(const RowParams p) {
    const int row = lw_warp_row();
    if (row >= p.rows) return;
    const float* z = p.logits + row * p.cols;
    const float* t = p.targets + row * p.cols;
    float m, s;
    lw_row_softmax_stats(z, p.cols, &m, &s);
    float t_sum = 0.0f;
    for (int c = (threadIdx.x & 31); c < p.cols; c += 32) t_sum += t[c];
    t_sum = lw_warp_sum(t_sum);
    for (int c = (threadIdx.x & 31); c < p.cols; c += 32) {
        p.out[row * p.cols + c] = p.scale * (expf(z[c] - m) / s * t_sum - t[c]);
    }
}

// out[r, c] = softmax(z[r])_c (probabilities for softmax data).
LW_KERNEL void softmax_fwd_f32(const RowParams p) {
    const int row = lw_warp_row();
    if (row >= p.rows) return;
    const float* z = p.logits + row * p.cols;
    float m, s;
    lw_row_softmax_stats(z, p.cols, &m, &s);
    for (int c = (threadIdx.x & 31); c < p.cols; c += 32) {
        p.out[row * p.cols + c] = expf(z[c] - m) / s;
    }
}

// Elementwise over rows * cols: out = softplus(z) - z t, the stable form of
// -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))); the host averages.
LW_KERNEL void sigmoid_xent_fwd_f32(const RowParams p) {
    LW_FOR_EACH(i, p.rows * p.cols) {
        const float z = p.logits[i];
        p.out[i] = lw_softplus(z) - z * p.targets[i];
    }
}

// Elementwise: out = scale * (sigmoid(z) - t), scale = dloss / (rows * cols).
LW_KERNEL void sigmoid_xent_bwd_f32(const RowParams p) {
    LW_FOR_EACH(i, p.rows * p.cols) {
        const float z = p.logits[i];
        const float e = expf(-fabsf(z));
        const float sig = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        p.out[i] = p.scale * (sig - p.targets[i]);
    }
}

// ---- Pool scoring -----------------------------------------------------------------------------

// uncertainty: 0 least confidence, 1 margin, 2 entropy; aggregate (multi-label only): 0 mean,
// 1 max, 2 sum. Matches the Rust enums `Uncertainty` and `Aggregate` in declaration order.
struct ScoreParams {
    const float* logits;
    float* scores;
    int rows;
    int cols;
    int uncertainty;
    int aggregate;
    int multilabel;
    int pad;
};
LW_PARAMS_SIZE(ScoreParams, 40);

// Per-label score of a multi-label logit, from sigmoid(-|z|) = min(p, 1 - p).
__device__ __forceinline__ float lw_binary_score(float z, int uncertainty) {
    const float e = expf(-fabsf(z));
    const float low = e / (1.0f + e);
    if (uncertainty == 0) return low;         // 1 - max(p, 1 - p)
    if (uncertainty == 1) return 2.0f * low;  // 1 - |2p - 1|
    // Binary entropy: p softplus(-z) + (1 - p) softplus(z), p = sigmoid(z).
    const float p = z >= 0.0f ? 1.0f - low : low;
    return p * lw_softplus(-z) + (1.0f - p) * lw_softplus(z);
}

LW_KERNEL void score_pool_fwd_f32(const ScoreParams p) {
    const int row = lw_warp_row();
    if (row >= p.rows) return;
    const int lane = threadIdx.x & 31;
    const float* z = p.logits + row * p.cols;
    float score;
    if (p.multilabel) {
        float acc = p.aggregate == 1 ? -INFINITY : 0.0f;
        for (int c = lane; c < p.cols; c += 32) {
            const float s = lw_binary_score(z[c], p.uncertainty);
            acc = p.aggregate == 1 ? fmaxf(acc, s) : acc + s;
        }
        acc = p.aggregate == 1 ? lw_warp_max(acc) : lw_warp_sum(acc);
        score = p.aggregate == 0 ? acc / (float)p.cols : acc;
    } else {
        // The two largest logits of the row (equal maxima count twice), merged across lanes.
        float top1 = -INFINITY;
        float top2 = -INFINITY;
        for (int c = lane; c < p.cols; c += 32) {
            const float v = z[c];
            if (v > top1) {
                top2 = top1;
                top1 = v;
            } else if (v > top2) {
                top2 = v;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float a = __shfl_xor_sync(0xffffffffu, top1, o);
            const float b = __shfl_xor_sync(0xffffffffu, top2, o);
            top2 = fmaxf(fminf(top1, a), fmaxf(top2, b));
            top1 = fmaxf(top1, a);
        }
        // With e_c = exp(z_c - max) and s = sum e_c: p_max = 1 / s, and the entropy is
        // log s - sum e_c (z_c - max) / s, free of overflow and of log(0).
        float s = 0.0f;
        float ez = 0.0f;
        for (int c = lane; c < p.cols; c += 32) {
            const float d = z[c] - top1;
            const float e = expf(d);
            s += e;
            ez += e * d;
        }
        s = lw_warp_sum(s);
        ez = lw_warp_sum(ez);
        if (p.uncertainty == 0) {
            score = 1.0f - 1.0f / s;
        } else if (p.uncertainty == 1) {
            score = 1.0f - (1.0f - expf(top2 - top1)) / s;
        } else {
            score = logf(s) - ez / s;
        }
    }
    if (lane == 0) p.scores[row] = score;
}

// ---- Top-k ----------------------------------------------------------------------------------

// Writes order[rank] = i for every i whose rank is below k, where the rank counts the elements
// that come first in the order "larger score first, then lower index" (NaN counts as -inf).
// Ranks are a permutation, so every slot below min(k, n) is written exactly once.
// Limitation: O(n^2) comparisons (one pass over all scores per element, staged through shared
// memory); fine for pools up to a few hundred thousand images.
// TODO: a radix select for pools of millions.
struct TopKParams {
    const float* scores;
    unsigned int* order;
    int n;
    int k;
};
LW_PARAMS_SIZE(TopKParams, 24);

#define LW_TOPK_THREADS 256

__device__ __forceinline__ float lw_rank_key(float v) {
    return isnan(v) ? -INFINITY : v;
}

LW_KERNEL void __launch_bounds__(LW_TOPK_THREADS) top_k_fwd_f32(const TopKParams p) {
    __shared__ float tile[LW_TOPK_THREADS];
    const int i = blockIdx.x * LW_TOPK_THREADS + threadIdx.x;
    const float key = i < p.n ? lw_rank_key(p.scores[i]) : -INFINITY;
    int rank = 0;
    for (int base = 0; base < p.n; base += LW_TOPK_THREADS) {
        const int j = base + threadIdx.x;
        tile[threadIdx.x] = j < p.n ? lw_rank_key(p.scores[j]) : -INFINITY;
        __syncthreads();
        const int count = min(LW_TOPK_THREADS, p.n - base);
        for (int t = 0; t < count; ++t) {
            const float other = tile[t];
            rank += (other > key || (other == key && base + t < i)) ? 1 : 0;
        }
        __syncthreads();
    }
    if (i < p.n && rank < p.k) p.order[rank] = (unsigned int)i;
}
