// Runs every kernel of kernels/*.cu on the CPU through cuda_shim.h and compares it with a
// naive double-precision reference written here, using the launch plans of
// src/backend/cuda/ops.rs (block sizes, reduction chunks, backward-filter splits). Outputs
// start as NaN, so unwritten elements fail. Build and run with .ci/emulate-kernels.sh.
#include "cuda_shim.h"

#include <cstdio>
#include <functional>
#include <random>
#include <string>

#include "conv.cu"
#include "elementwise.cu"
#include "head.cu"
#include "pool.cu"
#include "reduce.cu"

using Vec = std::vector<float>;
using Ref = std::vector<double>;

static std::mt19937 rng(7);
static int failures = 0;

static Vec uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    Vec v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

static Vec poisoned(size_t n) { return Vec(n, NAN); }

static unsigned cdiv(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

// Passes when |got - want| <= abs + rel |want| everywhere; prints the worst element otherwise.
static void check(const std::string& what, const Vec& got, const Ref& want, double abs = 1e-4,
                  double rel = 1e-4) {
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double excess = std::fabs(got[i] - want[i]) - (abs + rel * std::fabs(want[i]));
        if (!(excess <= 0.0)) {
            ++bad;
            if (!(excess <= worst_excess)) {
                worst_excess = excess;
                worst = i;
            }
        }
    }
    if (bad == 0) {
        printf("ok   %s (%zu)\n", what.c_str(), want.size());
        return;
    }
    ++failures;
    printf("FAIL %s: %zu of %zu; worst at %zu: got %.9g want %.9g\n", what.c_str(), bad,
           want.size(), worst, got[worst], want[worst]);
}

static const dim3 kReduceBlock{32, 8, 1};
static const dim3 kThreads{256, 1, 1};

static dim3 stride_grid(size_t n) { return {std::min(std::max(cdiv(n, 256), 1u), 4096u), 1, 1}; }

struct Plan {
    int chunks, rows_per_chunk;
};

// ops.rs reduce_plan.
static Plan reduce_plan(int rows, int cols) {
    const int col_blocks = std::max(1u, cdiv(cols, 32));
    const int most = std::max(1u, cdiv(rows, 64));
    const int chunks = std::clamp(int(cdiv(1024, col_blocks)), 1, most);
    const int rows_per_chunk = std::max(1u, cdiv(rows, chunks));
    return {int(std::max(1u, cdiv(rows, rows_per_chunk))), rows_per_chunk};
}

// ops.rs column_sum: out[c] = scale * sum over rows, in one or two stages.
static void column_sum(const float* x, float* out, int rows, int cols, float scale) {
    const Plan plan = reduce_plan(rows, cols);
    if (plan.chunks == 1) {
        launch(channel_sum_fwd_f32, {cdiv(cols, 32), 1, 1}, kReduceBlock,
               ColumnSumParams{x, out, rows, cols, rows, scale});
        return;
    }
    Vec partial = poisoned(size_t(plan.chunks) * cols);
    launch(channel_sum_fwd_f32, {cdiv(cols, 32), unsigned(plan.chunks), 1}, kReduceBlock,
           ColumnSumParams{x, partial.data(), rows, cols, plan.rows_per_chunk, 1.0f});
    launch(channel_sum_fwd_f32, {cdiv(cols, 32), 1, 1}, kReduceBlock,
           ColumnSumParams{partial.data(), out, plan.chunks, cols, plan.chunks, scale});
}

static void test_conv(int n, int h, int w, int ci, int co, int k, int s, int pad) {
    const int ho = (h + 2 * pad - k) / s + 1, wo = (w + 2 * pad - k) / s + 1;
    const Vec x = uniform(size_t(n) * h * w * ci), wt = uniform(size_t(co) * k * k * ci);
    const Vec bias = uniform(co), dy = uniform(size_t(n) * ho * wo * co);

    // Reference: all three products in one sweep over (output pixel, channel, tap).
    Ref y(dy.size()), dx(x.size(), 0.0), dw(wt.size(), 0.0);
    for (int i = 0; i < n; ++i)
        for (int oh = 0; oh < ho; ++oh)
            for (int ow = 0; ow < wo; ++ow)
                for (int o = 0; o < co; ++o) {
                    const size_t yi = ((size_t(i) * ho + oh) * wo + ow) * co + o;
                    double acc = bias[o];
                    for (int kh = 0; kh < k; ++kh)
                        for (int kw = 0; kw < k; ++kw) {
                            const int ih = oh * s - pad + kh, iw = ow * s - pad + kw;
                            if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
                            for (int c = 0; c < ci; ++c) {
                                const size_t xi = ((size_t(i) * h + ih) * w + iw) * ci + c;
                                const size_t wi = ((size_t(o) * k + kh) * k + kw) * ci + c;
                                acc += double(x[xi]) * wt[wi];
                                dx[xi] += double(dy[yi]) * wt[wi];
                                dw[wi] += double(dy[yi]) * x[xi];
                            }
                        }
                    y[yi] = acc;
                }

    char buf[96];
    snprintf(buf, sizeof buf, "conv x [%d,%d,%d,%d] w [%d,%d,%d,%d] s%d p%d", n, h, w, ci, co, k,
             k, ci, s, pad);
    const std::string tag = buf;
    ConvParams p{x.data(), wt.data(), bias.data(), dy.data(), nullptr, n, h, w, ci, ho, wo, co,
                 k, s, pad, 0, 0};
    Vec gy = poisoned(y.size());
    p.out = gy.data();
    launch(conv2d_fwd_f32, {cdiv(size_t(n) * ho * wo, 64), cdiv(co, 64), 1}, kThreads, p);
    check(tag + " fwd", gy, y);

    Vec gdx = poisoned(dx.size());
    p.out = gdx.data();
    p.bias = nullptr;
    launch(conv2d_data_bwd_f32, {cdiv(size_t(n) * h * w, 64), cdiv(ci, 64), 1}, kThreads, p);
    check(tag + " data", gdx, dx);

    // ops.rs conv2d_bwd_filter's split plan, then the sum of the splits.
    const int cols = k * k * ci, pixels = n * ho * wo;
    const int tiles = cdiv(co, 64) * cdiv(cols, 64);
    const int most = std::min(int(std::max(1u, cdiv(pixels, 256))), 65535);
    const int wanted = std::clamp(int(cdiv(528, tiles)), 1, most);
    const int per_split = cdiv(cdiv(pixels, wanted), 16) * 16;
    const int splits = cdiv(pixels, per_split);
    Vec partial = poisoned(size_t(splits) * co * cols), gdw = poisoned(dw.size());
    p.out = splits > 1 ? partial.data() : gdw.data();
    p.pixels_per_split = per_split;
    launch(conv2d_filter_bwd_f32, {cdiv(co, 64), cdiv(cols, 64), unsigned(splits)}, kThreads, p);
    if (splits > 1) {
        launch(channel_sum_fwd_f32, {cdiv(size_t(co) * cols, 32), 1, 1}, kReduceBlock,
               ColumnSumParams{partial.data(), gdw.data(), splits, co * cols, splits, 1.0f});
    }
    check(tag + " filter, " + std::to_string(splits) + " splits", gdw, dw, 1e-3);
}

static void test_batch_norm(int rows, int c) {
    const float eps = 1e-5f;
    const Vec x = uniform(size_t(rows) * c, 2.0f, 4.0f), gamma = uniform(c, 0.5f, 1.5f);
    const Vec beta = uniform(c), dy = uniform(x.size());
    Ref mean(c, 0.0), var(c, 0.0), y(x.size()), dx(x.size()), dgamma(c, 0.0), dbeta(c, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < c; ++j) mean[j] += x[size_t(r) * c + j] / double(rows);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < c; ++j) var[j] += std::pow(x[size_t(r) * c + j] - mean[j], 2) / rows;
    auto xhat = [&](size_t i) { return (x[i] - mean[i % c]) / std::sqrt(var[i % c] + eps); };
    for (size_t i = 0; i < x.size(); ++i) {
        y[i] = xhat(i) * gamma[i % c] + beta[i % c];
        dbeta[i % c] += dy[i];
        dgamma[i % c] += dy[i] * xhat(i);
    }
    for (size_t i = 0; i < x.size(); ++i) {
        const int j = i % c;
        dx[i] = gamma[j] / std::sqrt(var[j] + eps) *
                (dy[i] - dbeta[j] / rows - xhat(i) * dgamma[j] / rows);
    }

    const std::string tag = "batch_norm [" + std::to_string(rows) + ", " + std::to_string(c) + "]";
    Vec gmean = poisoned(c), gvar = poisoned(c), gy = poisoned(x.size());
    column_sum(x.data(), gmean.data(), rows, c, 1.0f / rows);
    const Plan plan = reduce_plan(rows, c);
    Vec partial = poisoned(2 * size_t(plan.chunks) * c);
    BatchNormParams p{x.data(), dy.data(), gmean.data(), gvar.data(), gamma.data(), beta.data(),
                      nullptr, nullptr, partial.data(), rows, c, plan.rows_per_chunk, eps};
    const dim3 chunk_grid{cdiv(c, 32), unsigned(plan.chunks), 1};
    launch(batch_norm_sqdev_fwd_f32, chunk_grid, kReduceBlock, p);
    launch(channel_sum_fwd_f32, {cdiv(c, 32), 1, 1}, kReduceBlock,
           ColumnSumParams{partial.data(), gvar.data(), plan.chunks, c, plan.chunks, 1.0f / rows});
    p.out = gy.data();
    launch(batch_norm_apply_fwd_f32, stride_grid(x.size()), kThreads, p);
    check(tag + " mean", gmean, mean);
    check(tag + " var", gvar, var);
    check(tag + " y", gy, y);

    Vec gdgamma = poisoned(c), gdbeta = poisoned(c), gdx = poisoned(x.size());
    p.out = partial.data();
    launch(batch_norm_reduce_bwd_f32, chunk_grid, kReduceBlock, p);
    const float* planes[2] = {partial.data(), partial.data() + size_t(plan.chunks) * c};
    float* sums[2] = {gdbeta.data(), gdgamma.data()};
    for (int k = 0; k < 2; ++k) {
        launch(channel_sum_fwd_f32, {cdiv(c, 32), 1, 1}, kReduceBlock,
               ColumnSumParams{planes[k], sums[k], plan.chunks, c, plan.chunks, 1.0f});
    }
    p.dgamma = gdgamma.data();
    p.dbeta = gdbeta.data();
    p.out = gdx.data();
    launch(batch_norm_apply_bwd_f32, stride_grid(x.size()), kThreads, p);
    check(tag + " dbeta", gdbeta, dbeta);
    check(tag + " dgamma", gdgamma, dgamma, 1e-3);
    check(tag + " dx", gdx, dx, 1e-3, 1e-3);
}

static void test_max_pool(int n, int h, int w, int c, int k, int s, int pad, bool ties) {
    Vec x = uniform(size_t(n) * h * w * c);
    if (ties) {
        for (auto& v : x) v = std::round(v * 1.5f);  // three levels: many equal maxima
    }
    const int ho = (h + 2 * pad - k) / s + 1, wo = (w + 2 * pad - k) / s + 1;
    const Vec dy = uniform(size_t(n) * ho * wo * c);
    Ref y(dy.size()), dx(x.size(), 0.0);
    for (int i = 0; i < n; ++i)
        for (int a = 0; a < ho; ++a)
            for (int b = 0; b < wo; ++b)
                for (int j = 0; j < c; ++j) {
                    float best = -INFINITY;
                    size_t arg = 0;
                    for (int kh = 0; kh < k; ++kh)
                        for (int kw = 0; kw < k; ++kw) {
                            const int ih = a * s - pad + kh, iw = b * s - pad + kw;
                            if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
                            const size_t xi = ((size_t(i) * h + ih) * w + iw) * c + j;
                            if (x[xi] > best) {
                                best = x[xi];
                                arg = xi;
                            }
                        }
                    const size_t o = ((size_t(i) * ho + a) * wo + b) * c + j;
                    y[o] = best;
                    dx[arg] += dy[o];
                }
    char buf[80];
    snprintf(buf, sizeof buf, "max_pool [%d,%d,%d,%d] k%d s%d p%d%s", n, h, w, c, k, s, pad,
             ties ? " ties" : "");
    const std::string tag = buf;
    Vec gy = poisoned(y.size()), gdx = poisoned(dx.size());
    MaxPoolParams p{x.data(), gy.data(), dy.data(), gy.data(), n, h, w, c, ho, wo, k, s, pad, 0};
    launch(max_pool_fwd_f32, stride_grid(y.size()), kThreads, p);
    check(tag + " fwd", gy, y, 0.0, 0.0);
    p.out = gdx.data();
    launch(max_pool_bwd_f32, stride_grid(dx.size()), kThreads, p);
    check(tag + " bwd", gdx, dx, 1e-6, 1e-6);
}

// CosFace, softmax losses, probabilities and every scoring mode on one set of logits.
static void test_head(int n, int l, int d, bool multilabel) {
    const float margin = 0.35f, scale = 30.0f, eps = 1e-12f;
    Vec emb = uniform(size_t(n) * d);
    const Vec wt = uniform(size_t(l) * d), dlogits = uniform(size_t(n) * l);
    if (n > 1) std::fill(emb.begin() + d, emb.begin() + 2 * d, 0.0f);  // a zero row
    Vec t(size_t(n) * l, 0.0f);
    for (int i = 0; i < n; ++i) {
        if (multilabel) {
            for (int j = 0; j < l; ++j) t[size_t(i) * l + j] = rng() % 3 == 0;
        } else {
            t[size_t(i) * l + rng() % l] = 1.0f;
        }
    }

    auto inv_norms = [&](const Vec& m, int rows) {
        Ref inv(rows);
        for (int r = 0; r < rows; ++r) {
            double ss = 0;
            for (int j = 0; j < d; ++j) ss += double(m[size_t(r) * d + j]) * m[size_t(r) * d + j];
            inv[r] = 1.0 / std::max(std::sqrt(ss), double(eps));
        }
        return inv;
    };
    const Ref ie = inv_norms(emb, n), iw = inv_norms(wt, l);
    Ref logits(size_t(n) * l), demb(emb.size(), 0.0), dw(wt.size(), 0.0);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < l; ++c) {
            double dot = 0;
            const float* er = &emb[size_t(i) * d];
            const float* wr = &wt[size_t(c) * d];
            for (int j = 0; j < d; ++j) dot += double(er[j]) * wr[j];
            const double cosine = dot * ie[i] * iw[c];
            const double target = multilabel ? 2.0 * t[i * l + c] - 1.0 : t[i * l + c];
            logits[i * l + c] = scale * (cosine - margin * target);
            // d cos / d e = (w^ - cos e^) / |e|; a clamped (zero) row is a constant: gradient 0.
            const double g = scale * dlogits[i * l + c];
            const bool zero_row = ie[i] * eps >= 1.0;
            for (int j = 0; j < d; ++j) {
                const double eh = er[j] * ie[i], wh = wr[j] * iw[c];
                if (!zero_row) demb[size_t(i) * d + j] += g * ie[i] * (wh - cosine * eh);
                dw[size_t(c) * d + j] += g * iw[c] * (eh - cosine * wh);
            }
        }

    std::string tag = "head n" + std::to_string(n) + " l" + std::to_string(l) + " d" +
                      std::to_string(d) + (multilabel ? " multilabel" : "");
    Vec gie = poisoned(n), giw = poisoned(l), gl = poisoned(logits.size());
    launch(cosface_norm_fwd_f32, {cdiv(n, 8), 1, 1}, kThreads,
           RowNormParams{emb.data(), gie.data(), n, d, eps, 0});
    launch(cosface_norm_fwd_f32, {cdiv(l, 8), 1, 1}, kThreads,
           RowNormParams{wt.data(), giw.data(), l, d, eps, 0});
    launch(cosface_fwd_f32, {cdiv(size_t(n) * l, 8), 1, 1}, kThreads,
           CosFaceParams{emb.data(), wt.data(), gie.data(), giw.data(), t.data(), gl.data(), n, l,
                         d, margin, scale, multilabel});
    check(tag + " cosface_fwd", gl, logits);
    Vec gdemb = poisoned(emb.size()), gdw = poisoned(wt.size());
    launch(cosface_bwd_f32, {unsigned(n), 1, 1}, kThreads,
           CosFaceBwdParams{emb.data(), gie.data(), wt.data(), giw.data(), dlogits.data(),
                            gdemb.data(), n, l, d, l, 1, scale, eps, 0});
    launch(cosface_bwd_f32, {unsigned(l), 1, 1}, kThreads,
           CosFaceBwdParams{wt.data(), giw.data(), emb.data(), gie.data(), dlogits.data(),
                            gdw.data(), l, n, d, 1, l, scale, eps, 0});
    check(tag + " cosface_bwd d_emb", gdemb, demb, 1e-3, 1e-3);
    check(tag + " cosface_bwd d_weight", gdw, dw, 1e-3, 1e-3);

    // Softmax losses and probabilities on logits / 10.
    Vec z(logits.size());
    for (size_t i = 0; i < z.size(); ++i) z[i] = float(logits[i] / 10.0);
    Ref row_loss(n), grad(z.size()), prob(z.size());
    for (int i = 0; i < n; ++i) {
        double m = -INFINITY, s = 0.0, t_sum = 0.0, loss = 0.0;
        for (int c = 0; c < l; ++c) m = std::max(m, double(z[i * l + c]));
        for (int c = 0; c < l; ++c) s += std::exp(z[i * l + c] - m);
        for (int c = 0; c < l; ++c) {
            t_sum += t[i * l + c];
            loss += t[i * l + c] * (m + std::log(s) - z[i * l + c]);
        }
        row_loss[i] = loss;
        for (int c = 0; c < l; ++c) {
            prob[i * l + c] = std::exp(z[i * l + c] - m) / s;
            grad[i * l + c] = 0.5 / n * (prob[i * l + c] * t_sum - t[i * l + c]);
        }
    }
    Vec grl = poisoned(n), gg = poisoned(z.size()), gp = poisoned(z.size());
    const dim3 rows_grid{cdiv(n, 8), 1, 1};
    launch(softmax_xent_fwd_f32, rows_grid, kThreads,
           RowParams{z.data(), t.data(), grl.data(), n, l, 1.0f, 0});
    launch(softmax_xent_bwd_f32, rows_grid, kThreads,
           RowParams{z.data(), t.data(), gg.data(), n, l, 0.5f / n, 0});
    launch(softmax_fwd_f32, rows_grid, kThreads,
           RowParams{z.data(), nullptr, gp.data(), n, l, 1.0f, 0});
    check(tag + " softmax_xent_fwd rows", grl, row_loss, 1e-5, 1e-5);
    check(tag + " softmax_xent_bwd", gg, grad, 1e-6, 1e-5);
    check(tag + " softmax_fwd", gp, prob, 1e-6, 1e-5);

    // Sigmoid losses and probabilities, elementwise.
    Ref sig(z.size()), sig_loss(z.size()), sig_grad(z.size());
    for (size_t i = 0; i < z.size(); ++i) {
        sig[i] = 1.0 / (1.0 + std::exp(-double(z[i])));
        sig_loss[i] = -(t[i] * std::log(sig[i]) + (1 - t[i]) * std::log(1 - sig[i]));
        sig_grad[i] = 0.5 / z.size() * (sig[i] - t[i]);
    }
    Vec gsl = poisoned(z.size()), gsg = poisoned(z.size()), gs = poisoned(z.size());
    launch(sigmoid_xent_fwd_f32, stride_grid(z.size()), kThreads,
           RowParams{z.data(), t.data(), gsl.data(), n, l, 1.0f, 0});
    launch(sigmoid_xent_bwd_f32, stride_grid(z.size()), kThreads,
           RowParams{z.data(), t.data(), gsg.data(), n, l, 0.5f / z.size(), 0});
    launch(sigmoid_fwd_f32, stride_grid(z.size()), kThreads,
           EwParams{gs.data(), z.data(), nullptr, int(z.size()), 0.0f, 0.0f, 0});
    check(tag + " sigmoid_xent_fwd elements", gsl, sig_loss, 1e-5, 1e-4);
    check(tag + " sigmoid_xent_bwd", gsg, sig_grad, 1e-7, 1e-5);
    check(tag + " sigmoid_fwd", gs, sig, 1e-6, 1e-5);

    // Every scoring mode, against the definitions on `Uncertainty` in src/backend/mod.rs.
    for (int ml = 0; ml < 2; ++ml)
        for (int u = 0; u < 3; ++u)
            for (int a = 0; a < 3; ++a) {
                Ref want(n);
                for (int i = 0; i < n; ++i) {
                    if (ml) {
                        double acc = a == 1 ? -INFINITY : 0.0;
                        for (int c = 0; c < l; ++c) {
                            const double p = sig[i * l + c];
                            const double v = u == 0   ? 1 - std::max(p, 1 - p)
                                             : u == 1 ? 1 - std::fabs(2 * p - 1)
                                                      : -(p > 0 ? p * std::log(p) : 0) -
                                                            (p < 1 ? (1 - p) * std::log(1 - p) : 0);
                            acc = a == 1 ? std::max(acc, v) : acc + v;
                        }
                        want[i] = a == 0 ? acc / l : acc;
                    } else {
                        Ref row(prob.begin() + i * l, prob.begin() + (i + 1) * l), sorted = row;
                        std::sort(sorted.begin(), sorted.end(), std::greater<double>());
                        double h = 0.0;
                        for (double v : row) h -= v > 0 ? v * std::log(v) : 0.0;
                        const double second = l > 1 ? sorted[1] : 0.0;
                        want[i] = u == 0 ? 1 - sorted[0] : u == 1 ? 1 - (sorted[0] - second) : h;
                    }
                }
                Vec got = poisoned(n);
                launch(score_pool_fwd_f32, rows_grid, kThreads,
                       ScoreParams{z.data(), got.data(), n, l, u, a, ml, 0});
                check(tag + " score_pool multilabel " + std::to_string(ml) + " uncertainty " +
                          std::to_string(u) + " aggregate " + std::to_string(a),
                      got, want, 1e-5, 1e-4);
            }
}

static void test_top_k(int n, int k) {
    Vec s = uniform(n, 0.0f, 1.0f);
    for (auto& v : s) v = std::floor(v * 20.0f);  // ties: the lower index must win
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[a] > s[b]; });
    std::vector<unsigned> got(k, 0xffffffffu);
    launch(top_k_fwd_f32, {cdiv(n, 256), 1, 1}, kThreads, TopKParams{s.data(), got.data(), n, k});
    bool ok = true;
    for (int i = 0; i < k; ++i) ok = ok && got[i] == unsigned(order[i]);
    printf("%s top_k n %d k %d\n", ok ? "ok  " : "FAIL", n, k);
    failures += !ok;
}

static void test_elementwise_and_adam(int n) {
    const std::string tag = "elementwise n " + std::to_string(n);
    const Vec a = uniform(n), b = uniform(n);
    Ref add(n), scaled(n), lerp(n), relu(n), relu_bwd(n);
    for (int i = 0; i < n; ++i) {
        add[i] = double(a[i]) + b[i];
        scaled[i] = -0.37 * a[i];
        lerp[i] = 0.9 * a[i] + 0.1 * 0.75 * b[i];
        relu[i] = std::max(a[i], 0.0f);
        relu_bwd[i] = b[i] > 0 ? a[i] : 0.0;
    }
    Vec out = poisoned(n);
    auto run = [&](void (*k)(EwParams), float* o, float alpha, float weight) {
        launch(k, stride_grid(n), kThreads, EwParams{o, a.data(), b.data(), n, alpha, weight, 0});
    };
    run(add_fwd_f32, out.data(), 0, 0), check(tag + " add", out, add, 0, 1e-7);
    run(scale_fwd_f32, out.data(), -0.37f, 0), check(tag + " scale", out, scaled, 0, 1e-6);
    run(relu_fwd_f32, out.data(), 0, 0), check(tag + " relu_fwd", out, relu, 0, 0);
    run(relu_bwd_f32, out.data(), 0, 0), check(tag + " relu_bwd", out, relu_bwd, 0, 0);
    out = a;
    run(add_assign_fwd_f32, out.data(), 0, 0), check(tag + " add_assign", out, add, 0, 1e-7);
    out = a;
    run(lerp_assign_fwd_f32, out.data(), 0.75f, 0.1f), check(tag + " lerp_assign", out, lerp, 1e-7);

    // Global average pool backward: images of 3 x 4 pixels, n / 12 channels... of 1 image.
    const int hw = 12, c = std::max(1, n / hw);
    Vec dx = poisoned(size_t(hw) * c);
    Ref want(dx.size());
    for (size_t i = 0; i < dx.size(); ++i) want[i] = a[i % c] / double(hw);
    launch(avg_pool_global_bwd_f32, stride_grid(dx.size()), kThreads,
           BroadcastParams{dx.data(), a.data(), int(dx.size()), hw, c, 1.0f / hw});
    check(tag + " avg_pool_global_bwd", dx, want, 1e-7, 1e-6);

    // Non-finite count.
    Vec x = a;
    int planted = 0;
    for (int i = 0; i < n; i += 97, ++planted) x[i] = planted % 2 ? INFINITY : NAN;
    unsigned count = 0;
    launch(non_finite_count_fwd_f32, stride_grid(n), kThreads, CountParams{x.data(), &count, n, 0});
    printf("%s non_finite_count n %d: %u of %d\n", int(count) == planted ? "ok  " : "FAIL", n,
           count, planted);
    failures += int(count) != planted;

    // Adam and AdamW (PyTorch order), step 3.
    for (int decoupled = 0; decoupled < 2; ++decoupled) {
        const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.05f;
        const double bias1 = 1 - std::pow(double(b1), 3), bias2 = 1 - std::pow(double(b2), 3);
        Vec w = a, m = uniform(n, -0.1f, 0.1f), v = uniform(n, 0.0f, 0.01f);
        Ref w2(n), m2(n), v2(n);
        for (int i = 0; i < n; ++i) {
            double wi = w[i], g = b[i];
            if (decoupled) wi *= 1 - double(lr) * wd;
            else g += double(wd) * wi;
            m2[i] = b1 * m[i] + (1 - b1) * g;
            v2[i] = b2 * v[i] + (1 - b2) * g * g;
            w2[i] = wi - lr / bias1 * m2[i] / (std::sqrt(v2[i]) / std::sqrt(bias2) + eps);
        }
        launch(adam_update_fwd_f32, stride_grid(n), kThreads,
               AdamParams{w.data(), b.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd,
                          float(lr / bias1), float(std::sqrt(bias2)), decoupled, 0});
        const std::string at = tag + (decoupled ? " adamw" : " adam");
        check(at + " param", w, w2, 1e-6, 1e-5);
        check(at + " m", m, m2, 1e-7, 1e-5);
        check(at + " v", v, v2, 1e-8, 1e-5);
    }
}

int main() {
    test_conv(2, 8, 8, 64, 128, 3, 2, 1);   // layer2's first convolution
    test_conv(2, 8, 8, 64, 128, 1, 2, 0);   // downsample
    test_conv(2, 16, 16, 3, 64, 7, 2, 3);   // stem
    test_conv(1, 5, 7, 3, 5, 3, 1, 0);      // no padding, odd sizes
    test_conv(3, 9, 6, 17, 70, 3, 2, 1);    // channels not multiples of the tile
    test_conv(1, 1, 1, 1, 1, 1, 1, 0);
    test_conv(2, 11, 10, 5, 3, 5, 3, 2);
    test_conv(4, 14, 14, 8, 8, 3, 1, 1);    // several backward-filter splits
    test_batch_norm(50, 3);
    test_batch_norm(1, 7);
    test_batch_norm(4096, 33);              // two-stage reductions
    test_max_pool(2, 9, 9, 5, 3, 2, 1, false);
    test_max_pool(2, 9, 9, 5, 3, 2, 1, true);
    test_max_pool(1, 7, 5, 4, 3, 1, 1, true);
    test_max_pool(1, 8, 8, 3, 2, 2, 0, true);
    test_head(4, 10, 512, false);
    test_head(3, 7, 33, true);
    test_head(37, 3, 40, false);
    test_head(5, 1, 8, true);
    test_top_k(10, 10);
    test_top_k(1000, 37);
    test_top_k(700, 1);
    test_elementwise_and_adam(1000);
    test_elementwise_and_adam(7);
    printf("%d failures\n", failures);
    return failures != 0;
}
