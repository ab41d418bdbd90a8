// Max pooling over NHWC images. The backward is a gather (one thread per input element) rather
// than a scatter with atomics, so overlapping windows (3x3, stride 2) sum deterministically.
#include <math.h>

#include "common.cuh"

struct MaxPoolParams {
    const float* x;
    const float* y;
    const float* dy;
    float* out;
    int n;
    int h;
    int w;
    int c;
    int ho;
    int wo;
    int kernel;
    int stride;
    int padding;
    int pad;
};
LW_PARAMS_SIZE(MaxPoolParams, 72);

// out[n, ho, wo, c] = max over the window; padding acts as -inf. Reads x; writes out.
LW_KERNEL void max_pool_fwd_f32(const MaxPoolParams p) {
    const int total = p.n * p.ho * p.wo * p.c;
    LW_FOR_EACH(i, total) {
        const int c = i % p.c;
        const int wo = (i / p.c) % p.wo;
        const int ho = (i / (p.c * p.wo)) % p.ho;
        const int img = i / (p.c * p.wo * p.ho);
        float best = -INFINITY;
        for (int kh = 0; kh < p.kernel; ++kh) {
            const int hi = ho * p.stride - p.padding + kh;
            if (hi < 0 || hi >= p.h) continue;
            for (int kw = 0; kw < p.kernel; ++kw) {
                const int wi = wo * p.stride - p.padding + kw;
                if (wi < 0 || wi >= p.w) continue;
                const float v = p.x[((img * p.h + hi) * p.w + wi) * p.c + c];
                if (v > best) best = v;  // strict: the first maximum in row-major order wins
            }
        }
        p.out[i] = best;
    }
}

// out[n, h, w, c] = sum of dy over the windows whose first maximum (the first element equal to
// the forward output, in row-major window order) is this element. Reads x, y, dy; writes out.
LW_KERNEL void max_pool_bwd_f32(const MaxPoolParams p) {
    const int total = p.n * p.h * p.w * p.c;
    LW_FOR_EACH(i, total) {
        const int c = i % p.c;
        const int wi = (i / p.c) % p.w;
        const int hi = (i / (p.c * p.w)) % p.h;
        const int img = i / (p.c * p.w * p.h);

        // Outputs whose window covers (hi, wi): ho * stride - padding <= hi < that + kernel.
        const int hp = hi + p.padding;
        const int wp = wi + p.padding;
        const int ho_lo = hp >= p.kernel ? (hp - p.kernel) / p.stride + 1 : 0;
        const int ho_hi = min(hp / p.stride, p.ho - 1);
        const int wo_lo = wp >= p.kernel ? (wp - p.kernel) / p.stride + 1 : 0;
        const int wo_hi = min(wp / p.stride, p.wo - 1);

        float acc = 0.0f;
        for (int ho = ho_lo; ho <= ho_hi; ++ho) {
            for (int wo = wo_lo; wo <= wo_hi; ++wo) {
                const int o = ((img * p.ho + ho) * p.wo + wo) * p.c + c;
                const float target = p.y[o];
                // Find the window's first element equal to the output.
                int first = -1;
                for (int kh = 0; kh < p.kernel && first < 0; ++kh) {
                    const int h2 = ho * p.stride - p.padding + kh;
                    if (h2 < 0 || h2 >= p.h) continue;
                    for (int kw = 0; kw < p.kernel; ++kw) {
                        const int w2 = wo * p.stride - p.padding + kw;
                        if (w2 < 0 || w2 >= p.w) continue;
                        if (p.x[((img * p.h + h2) * p.w + w2) * p.c + c] == target) {
                            first = h2 * p.w + w2;
                            break;
                        }
                    }
                }
                if (first == hi * p.w + wi) acc += p.dy[o];
            }
        }
        p.out[i] = acc;
    }
}
