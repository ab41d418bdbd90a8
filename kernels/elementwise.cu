// Elementwise kernels, the Adam update and the non-finite counter. All are memory bound and
// use grid-stride loops; the host launches 256 threads per block.
#include "common.cuh"

// Shared by the simple elementwise kernels; each kernel's comment lists the fields it reads.
struct EwParams {
    float* out;
    const float* a;
    const float* b;
    int n;
    float alpha;
    float weight;
    int pad;
};
LW_PARAMS_SIZE(EwParams, 40);

// out = a + b
LW_KERNEL void add_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) p.out[i] = p.a[i] + p.b[i];
}

// out += b (out may not alias b)
LW_KERNEL void add_assign_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) p.out[i] += p.b[i];
}

// out = alpha * a
LW_KERNEL void scale_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) p.out[i] = p.alpha * p.a[i];
}

// out = (1 - weight) * out + weight * alpha * b (running statistics)
LW_KERNEL void lerp_assign_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) {
        p.out[i] = (1.0f - p.weight) * p.out[i] + p.weight * (p.alpha * p.b[i]);
    }
}

// out = max(a, 0); like Rust's f32::max, a NaN input gives 0.
LW_KERNEL void relu_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) p.out[i] = fmaxf(p.a[i], 0.0f);
}

// out = a (the upstream gradient) where b (the forward output) is positive, else 0.
LW_KERNEL void relu_bwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) p.out[i] = p.b[i] > 0.0f ? p.a[i] : 0.0f;
}

// out = 1 / (1 + exp(-a)), written so neither branch overflows.
LW_KERNEL void sigmoid_fwd_f32(const EwParams p) {
    LW_FOR_EACH(i, p.n) {
        const float x = p.a[i];
        const float e = expf(-fabsf(x));
        p.out[i] = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
}

// Global average pool backward: dx[n, hw, c] = dy[n, c] * scale, with scale = 1 / (H W).
struct BroadcastParams {
    float* dx;
    const float* dy;
    int n;       // elements of dx
    int hw;      // H * W
    int c;
    float scale;
};
LW_PARAMS_SIZE(BroadcastParams, 32);

LW_KERNEL void avg_pool_global_bwd_f32(const BroadcastParams p) {
    LW_FOR_EACH(i, p.n) {
        const int c = i % p.c;
        const int img = i / (p.hw * p.c);
        p.dx[i] = p.dy[img * p.c + c] * p.scale;
    }
}

// Adam / AdamW with PyTorch's update order. The host computes the bias corrections in double:
// step_size = lr / (1 - beta1^t), bias2_sqrt = sqrt(1 - beta2^t).
struct AdamParams {
    float* param;
    const float* grad;
    float* m;
    float* v;
    int n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float step_size;
    float bias2_sqrt;
    int decoupled;
    int pad;
};
LW_PARAMS_SIZE(AdamParams, 72);

LW_KERNEL void adam_update_fwd_f32(const AdamParams p) {
    LW_FOR_EACH(i, p.n) {
        float w = p.param[i];
        float g = p.grad[i];
        if (p.decoupled) {
            w *= 1.0f - p.lr * p.weight_decay;
        } else {
            g += p.weight_decay * w;
        }
        // PyTorch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
        const float m = p.m[i] + (1.0f - p.beta1) * (g - p.m[i]);
        const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
        const float denom = sqrtf(v) / p.bias2_sqrt + p.eps;
        p.m[i] = m;
        p.v[i] = v;
        p.param[i] = w - p.step_size * (m / denom);
    }
}

// Counts NaN and infinite elements into *count (an unsigned int the host zeroes first). The
// integer atomics make the result exact and order independent.
struct CountParams {
    const float* x;
    unsigned int* count;
    int n;
    int pad;
};
LW_PARAMS_SIZE(CountParams, 24);

LW_KERNEL void non_finite_count_fwd_f32(const CountParams p) {
    unsigned int local = 0;
    LW_FOR_EACH(i, p.n) local += isfinite(p.x[i]) ? 0u : 1u;
    for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
    if ((threadIdx.x & 31) == 0 && local != 0) atomicAdd(p.count, local);
}
