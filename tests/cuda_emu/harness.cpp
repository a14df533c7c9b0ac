// The checks of tests/cuda_emu/run.py (appended after the shim and the kernel sources).
#include <cstdio>
#include <cstdint>
#include <random>
#include <string>

static int failures = 0;
static std::mt19937_64 rng(7);
static float normal() { static std::normal_distribution<float> d(0.0f, 1.0f); return d(rng); }

static uint3_ dim(unsigned x, unsigned y = 1, unsigned z = 1) { return {x, y, z}; }
static unsigned cdiv(unsigned a, unsigned b) { return (a + b - 1) / b; }
// The launch shapes of the Rust side (bn_cuda.rs, cuda.rs, cudarc's for_num_elems).
static unsigned splits(unsigned n, unsigned c, unsigned hw) {
    unsigned by_gpu = cdiv(1024, c ? c : 1), by_work = std::max(cdiv(n * hw, 256 * 4), 1u);
    return std::max(std::min(by_gpu, by_work), 1u);
}
static unsigned cl_splits(unsigned m, unsigned c) {
    unsigned by_gpu = cdiv(1024, std::max(cdiv(c, 32), 1u)), by_work = std::max(cdiv(m, 32), 1u);
    return std::max(std::min(by_gpu, by_work), 1u);
}
static unsigned cl_elementwise_splits(unsigned m) { return std::min(std::max(cdiv(m, 32), 1u), 1u << 20); }
static void each(unsigned long long n, auto f) {
    unsigned t = (unsigned)std::max((n + 3) / 4, 1ull);
    launch(dim(cdiv(t, 1024)), dim(1024), f);
}

template <typename T> static std::vector<T> of(const std::vector<float>& v) {
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); i++) store(out.data(), i, v[i]);
    return out;
}
template <typename T> static std::vector<float> as_f32(const std::vector<T>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = load(v.data(), i);
    return out;
}
// (N, C, H*W) <-> (N, H*W, C)
static std::vector<float> to_nhwc(const std::vector<float>& x, unsigned n, unsigned c, unsigned hw) {
    std::vector<float> y(x.size());
    for (unsigned a = 0; a < n; a++) for (unsigned k = 0; k < c; k++) for (unsigned p = 0; p < hw; p++)
        y[((size_t)a * hw + p) * c + k] = x[((size_t)a * c + k) * hw + p];
    return y;
}
static std::vector<float> from_nhwc(const std::vector<float>& y, unsigned n, unsigned c, unsigned hw) {
    std::vector<float> x(y.size());
    for (unsigned a = 0; a < n; a++) for (unsigned k = 0; k < c; k++) for (unsigned p = 0; p < hw; p++)
        x[((size_t)a * c + k) * hw + p] = y[((size_t)a * hw + p) * c + k];
    return x;
}
static void expect(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
    float scale = 1e-12f, err = 0.0f;
    for (float v : want) scale = std::max(scale, std::fabs(v));
    bool size_ok = got.size() == want.size();
    for (size_t i = 0; size_ok && i < got.size(); i++) {
        float d = std::fabs(got[i] - want[i]);
        if (std::isnan(got[i]) != std::isnan(want[i])) d = INFINITY;
        if (!(std::isnan(got[i]) && std::isnan(want[i]))) err = std::max(err, d);
    }
    bool ok = size_ok && err / scale <= tol;
    if (!ok) failures++;
    std::printf("%-72s %s (%.1e, tolerance %.0e)\n", what.c_str(), ok ? "ok" : "DIFFERENT", size_ok ? err / scale : INFINITY, tol);
}

// BatchNorm: the channels-last kernels against the NCHW ones on the same data.
template <typename T> static void batch_norm(unsigned n, unsigned c, unsigned h, unsigned w, bool relu, bool residual, const char* tname, float tol) {
    unsigned hw = h * w, m = n * hw;
    size_t len = (size_t)m * c;
    std::vector<float> xf(len), rf(len), dyf(len), gamma(c), beta(c), rm0(c), rv0(c);
    for (auto& v : xf) v = normal() * 2.0f + 0.5f;
    for (auto& v : rf) v = normal() * 0.5f;
    for (auto& v : dyf) v = normal();
    for (unsigned k = 0; k < c; k++) { gamma[k] = 1.0f + 0.2f * normal(); beta[k] = 0.1f * normal(); rm0[k] = 0.1f * normal(); rv0[k] = 1.0f + 0.1f * std::fabs(normal()); }
    // bf16 data: the same values on both sides
    xf = as_f32(of<T>(xf)); rf = as_f32(of<T>(rf)); dyf = as_f32(of<T>(dyf));
    float eps = 1e-5f, momentum = 0.1f;
    std::string tag = std::string(tname) + " " + std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w) + (relu ? " relu" : "") + (residual ? " +residual" : "");

    // NCHW reference
    auto x1 = of<T>(xf), r1 = of<T>(rf), dy1 = of<T>(dyf);
    std::vector<T> y1(len), dx1(len), dres1(len);
    unsigned s1 = splits(n, c, hw);
    std::vector<double> part1(2 * (size_t)c * s1);
    std::vector<float> mean1(c), inv1(c), rm1 = rm0, rv1 = rv0, dwdb1(2 * c);
    long long count1 = 0;
    const T* res1 = residual ? r1.data() : nullptr;
    int relu_i = relu;
    launch(dim(c * s1), dim(256), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_stats_f32((const float*)x1.data(), part1.data(), n, c, hw, s1);
        else bn::bn_stats_bf16((const bf16*)x1.data(), part1.data(), n, c, hw, s1);
    });
    launch(dim(c * s1), dim(256), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_forward_f32((const float*)x1.data(), part1.data(), gamma.data(), beta.data(), (const float*)res1, (float*)y1.data(), mean1.data(), inv1.data(), rm1.data(), rv1.data(), &count1, momentum, n, c, hw, s1, eps, relu_i);
        else bn::bn_forward_bf16((const bf16*)x1.data(), part1.data(), gamma.data(), beta.data(), (const bf16*)res1, (bf16*)y1.data(), mean1.data(), inv1.data(), rm1.data(), rv1.data(), &count1, momentum, n, c, hw, s1, eps, relu_i);
    });
    const T* out1 = relu ? y1.data() : nullptr;
    T* dres1p = residual ? dres1.data() : nullptr;
    launch(dim(c * s1), dim(256), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_back_stats_f32((const float*)x1.data(), (const float*)dy1.data(), (const float*)out1, mean1.data(), part1.data(), n, c, hw, s1);
        else bn::bn_back_stats_bf16((const bf16*)x1.data(), (const bf16*)dy1.data(), (const bf16*)out1, mean1.data(), part1.data(), n, c, hw, s1);
    });
    launch(dim(c * s1), dim(256), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_backward_f32((const float*)x1.data(), (const float*)dy1.data(), (const float*)out1, mean1.data(), inv1.data(), gamma.data(), part1.data(), (float*)dx1.data(), (float*)dres1p, dwdb1.data(), n, c, hw, s1);
        else bn::bn_backward_bf16((const bf16*)x1.data(), (const bf16*)dy1.data(), (const bf16*)out1, mean1.data(), inv1.data(), gamma.data(), part1.data(), (bf16*)dx1.data(), (bf16*)dres1p, dwdb1.data(), n, c, hw, s1);
    });
    std::vector<T> e1(len);
    launch(dim(c * s1), dim(256), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_eval_f32((const float*)x1.data(), rm1.data(), rv1.data(), gamma.data(), beta.data(), (const float*)res1, (float*)e1.data(), n, c, hw, s1, eps, relu_i);
        else bn::bn_eval_bf16((const bf16*)x1.data(), rm1.data(), rv1.data(), gamma.data(), beta.data(), (const bf16*)res1, (bf16*)e1.data(), n, c, hw, s1, eps, relu_i);
    });

    // channels-last
    auto x2 = of<T>(to_nhwc(xf, n, c, hw)), r2 = of<T>(to_nhwc(rf, n, c, hw)), dy2 = of<T>(to_nhwc(dyf, n, c, hw));
    std::vector<T> y2(len), dx2(len), dres2(len), e2(len);
    unsigned s2 = cl_splits(m, c), se = cl_elementwise_splits(m), cy = cdiv(c, 32);
    std::vector<double> part2(2 * (size_t)c * s2);
    std::vector<float> mean2(c), inv2(c), rm2 = rm0, rv2 = rv0, dwdb2(2 * c), coef(3 * c);
    long long count2 = 0;
    const T* res2 = residual ? r2.data() : nullptr;
    int zero = 0, one = 1;
    launch(dim(s2, cy), dim(32, 8), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_cl_stats_f32((const float*)x2.data(), part2.data(), m, c);
        else bn::bn_cl_stats_bf16((const bf16*)x2.data(), part2.data(), m, c);
    });
    launch(dim(c), dim(256), [&] { bn::bn_cl_finalize(part2.data(), s2, mean2.data(), inv2.data(), rm2.data(), rv2.data(), &count2, momentum, m, c, eps); });
    launch(dim(se, cy), dim(32, 8), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_cl_normalize_f32((const float*)x2.data(), mean2.data(), inv2.data(), gamma.data(), beta.data(), (const float*)res2, (float*)y2.data(), m, c, eps, relu_i, zero);
        else bn::bn_cl_normalize_bf16((const bf16*)x2.data(), mean2.data(), inv2.data(), gamma.data(), beta.data(), (const bf16*)res2, (bf16*)y2.data(), m, c, eps, relu_i, zero);
    });
    const T* out2 = relu ? y2.data() : nullptr;
    T* dres2p = residual ? dres2.data() : nullptr;
    launch(dim(s2, cy), dim(32, 8), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_cl_back_stats_f32((const float*)x2.data(), (const float*)dy2.data(), (const float*)out2, mean2.data(), part2.data(), m, c);
        else bn::bn_cl_back_stats_bf16((const bf16*)x2.data(), (const bf16*)dy2.data(), (const bf16*)out2, mean2.data(), part2.data(), m, c);
    });
    launch(dim(c), dim(256), [&] { bn::bn_cl_back_finalize(part2.data(), s2, inv2.data(), gamma.data(), coef.data(), dwdb2.data(), m, c); });
    launch(dim(se, cy), dim(32, 8), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_cl_backward_f32((const float*)x2.data(), (const float*)dy2.data(), (const float*)out2, mean2.data(), coef.data(), (float*)dx2.data(), (float*)dres2p, m, c);
        else bn::bn_cl_backward_bf16((const bf16*)x2.data(), (const bf16*)dy2.data(), (const bf16*)out2, mean2.data(), coef.data(), (bf16*)dx2.data(), (bf16*)dres2p, m, c);
    });
    launch(dim(se, cy), dim(32, 8), [&] {
        if constexpr (sizeof(T) == 4) bn::bn_cl_normalize_f32((const float*)x2.data(), rm2.data(), rv2.data(), gamma.data(), beta.data(), (const float*)res2, (float*)e2.data(), m, c, eps, relu_i, one);
        else bn::bn_cl_normalize_bf16((const bf16*)x2.data(), rm2.data(), rv2.data(), gamma.data(), beta.data(), (const bf16*)res2, (bf16*)e2.data(), m, c, eps, relu_i, one);
    });

    if constexpr (sizeof(T) == 4) {
        // The NCHW kernels (ReLU and residual fused since they last ran on a GPU) against
        // PyTorch's formulas in double; the ReLU's mask is read from the kernel's output, as
        // the kernels define it (a value within rounding of zero may fall either side).
        std::vector<float> ry(len), rdx(len), rdres(len), rdwdb(2 * c), reval(len), rrm(c), rrv(c);
        for (unsigned k = 0; k < c; k++) {
            double sum = 0, sq = 0, M = m;
            for (unsigned a = 0; a < n; a++) for (unsigned p = 0; p < hw; p++) sum += xf[((size_t)a * c + k) * hw + p];
            double mu = sum / M;
            for (unsigned a = 0; a < n; a++) for (unsigned p = 0; p < hw; p++) { double d = xf[((size_t)a * c + k) * hw + p] - mu; sq += d * d; }
            double var = sq / M, is = 1.0 / std::sqrt(var + eps), sg = 0, sgx = 0;
            rrm[k] = 0.9 * rm0[k] + 0.1 * mu;
            rrv[k] = 0.9 * rv0[k] + 0.1 * var * M / (M - 1);
            for (unsigned a = 0; a < n; a++) for (unsigned p = 0; p < hw; p++) {
                size_t i = ((size_t)a * c + k) * hw + p;
                double v = (xf[i] - mu) * is * gamma[k] + beta[k] + (residual ? rf[i] : 0.0);
                ry[i] = relu ? std::max(v, 0.0) : v;
                double g = (relu && load(y1.data(), i) <= 0.0f) ? 0.0 : dyf[i];
                sg += g; sgx += g * (xf[i] - mu);
                double e = (xf[i] - rm1[k]) / std::sqrt((double)rv1[k] + eps) * gamma[k] + beta[k] + (residual ? rf[i] : 0.0);
                reval[i] = relu ? std::max(e, 0.0) : e;
            }
            rdwdb[k] = sgx * is; rdwdb[c + k] = sg;
            for (unsigned a = 0; a < n; a++) for (unsigned p = 0; p < hw; p++) {
                size_t i = ((size_t)a * c + k) * hw + p;
                double g = (relu && load(y1.data(), i) <= 0.0f) ? 0.0 : dyf[i];
                rdx[i] = gamma[k] * is * (g - sg / M - (xf[i] - mu) * is * is * sgx / M);
                rdres[i] = g;
            }
        }
        expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: y", as_f32(y1), ry, 1e-5f);
        expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: dx", as_f32(dx1), rdx, 1e-5f);
        expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: dw, db", dwdb1, rdwdb, 1e-5f);
        expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: running mean, var", [&] { auto v = rm1; v.insert(v.end(), rv1.begin(), rv1.end()); return v; }(),
               [&] { auto v = rrm; v.insert(v.end(), rrv.begin(), rrv.end()); return v; }(), 1e-5f);
        expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: eval", as_f32(e1), reval, 1e-5f);
        if (residual) expect("batch_norm " + tag + " NCHW vs PyTorch's formulas: dresidual", as_f32(dres1), rdres, 0.0f);
    }

    auto back = [&](const std::vector<T>& v) { return from_nhwc(as_f32(v), n, c, hw); };
    expect("batch_norm " + tag + ": y", back(y2), as_f32(y1), tol);
    expect("batch_norm " + tag + ": batch mean, inverse std", [&] { auto v = mean2; v.insert(v.end(), inv2.begin(), inv2.end()); return v; }(),
           [&] { auto v = mean1; v.insert(v.end(), inv1.begin(), inv1.end()); return v; }(), 1e-5f);
    expect("batch_norm " + tag + ": running mean, var, count", [&] { auto v = rm2; v.insert(v.end(), rv2.begin(), rv2.end()); v.push_back(count2); return v; }(),
           [&] { auto v = rm1; v.insert(v.end(), rv1.begin(), rv1.end()); v.push_back(count1); return v; }(), 1e-5f);
    expect("batch_norm " + tag + ": dx", back(dx2), as_f32(dx1), tol);
    expect("batch_norm " + tag + ": dw, db", dwdb2, dwdb1, 1e-5f);
    if (residual) expect("batch_norm " + tag + ": dresidual", back(dres2), as_f32(dres1), 0.0f);
    expect("batch_norm " + tag + ": eval", back(e2), as_f32(e1), tol);
}

// Max-pool: channels-last against NCHW.
template <typename T> static void max_pool(unsigned n, unsigned c, unsigned h, unsigned w, unsigned k, unsigned s, unsigned p, const char* tname) {
    unsigned oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1, nc = n * c;
    size_t ins = (size_t)nc * h * w, outs = (size_t)nc * oh * ow;
    std::vector<float> xf(ins), dyf(outs);
    for (auto& v : xf) v = normal();
    for (auto& v : dyf) v = normal();
    xf = as_f32(of<T>(xf)); dyf = as_f32(of<T>(dyf));
    auto x1 = of<T>(xf), dy1 = of<T>(dyf);
    std::vector<T> y1(outs), dx1(ins);
    std::vector<unsigned char> a1(outs), a2(outs);
    each(outs, [&] {
        if constexpr (sizeof(T) == 4) pool::max_pool_forward_f32((const float*)x1.data(), (float*)y1.data(), a1.data(), nc, h, w, oh, ow, k, s, p);
        else pool::max_pool_forward_bf16((const bf16*)x1.data(), (bf16*)y1.data(), a1.data(), nc, h, w, oh, ow, k, s, p);
    });
    each(ins, [&] {
        if constexpr (sizeof(T) == 4) pool::max_pool_backward_f32((const float*)dy1.data(), a1.data(), (float*)dx1.data(), nc, h, w, oh, ow, k, s, p);
        else pool::max_pool_backward_bf16((const bf16*)dy1.data(), a1.data(), (bf16*)dx1.data(), nc, h, w, oh, ow, k, s, p);
    });
    auto x2 = of<T>(to_nhwc(xf, n, c, h * w)), dy2 = of<T>(to_nhwc(dyf, n, c, oh * ow));
    std::vector<T> y2(outs), dx2(ins);
    each(outs, [&] {
        if constexpr (sizeof(T) == 4) pool::max_pool_cl_forward_f32((const float*)x2.data(), (float*)y2.data(), a2.data(), n, c, h, w, oh, ow, k, s, p);
        else pool::max_pool_cl_forward_bf16((const bf16*)x2.data(), (bf16*)y2.data(), a2.data(), n, c, h, w, oh, ow, k, s, p);
    });
    each(ins, [&] {
        if constexpr (sizeof(T) == 4) pool::max_pool_cl_backward_f32((const float*)dy2.data(), a2.data(), (float*)dx2.data(), n, c, h, w, oh, ow, k, s, p);
        else pool::max_pool_cl_backward_bf16((const bf16*)dy2.data(), a2.data(), (bf16*)dx2.data(), n, c, h, w, oh, ow, k, s, p);
    });
    std::string tag = std::string(tname) + " " + std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w) + " k" + std::to_string(k) + " s" + std::to_string(s) + " p" + std::to_string(p);
    // PyTorch's max_pool2d, directly: padding never wins, the first maximum in row-major
    // order takes the gradient (NaN-free data here)
    std::vector<float> ry(outs), rdx(ins, 0.0f);
    for (unsigned pl = 0; pl < nc; pl++) for (unsigned oy = 0; oy < oh; oy++) for (unsigned ox = 0; ox < ow; ox++) {
        float best = -INFINITY; long at = -1;
        for (unsigned ky = 0; ky < k; ky++) for (unsigned kx = 0; kx < k; kx++) {
            long iy = (long)(oy * s + ky) - p, ix = (long)(ox * s + kx) - p;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            float v = xf[((size_t)pl * h + iy) * w + ix];
            if (at < 0 || v > best) { best = v; at = ((size_t)pl * h + iy) * w + ix; }
        }
        size_t o = ((size_t)pl * oh + oy) * ow + ox;
        ry[o] = best;
        rdx[at] += dyf[o];
    }
    expect("max_pool " + tag + " NCHW vs PyTorch's definition: y", as_f32(y1), ry, 0.0f);
    expect("max_pool " + tag + " NCHW vs PyTorch's definition: dx", as_f32(dx1), as_f32(of<T>(rdx)), 1e-6f);
    expect("max_pool " + tag + ": y", from_nhwc(as_f32(y2), n, c, oh * ow), as_f32(y1), 0.0f);
    expect("max_pool " + tag + ": dx", from_nhwc(as_f32(dx2), n, c, h * w), as_f32(dx1), 0.0f);
}

// The weight's KRSC filter and its gradient back, against the index definition.
static void krsc(unsigned k, unsigned c, unsigned r, unsigned s) {
    unsigned rs = r * s;
    size_t len = (size_t)k * c * rs;
    std::vector<float> w(len), want(len), f32out(len);
    for (auto& v : w) v = normal();
    for (unsigned a = 0; a < k; a++) for (unsigned b = 0; b < c; b++) for (unsigned q = 0; q < rs; q++)
        want[((size_t)a * rs + q) * c + b] = w[((size_t)a * c + b) * rs + q];
    std::vector<bf16> bout(len);
    each(len, [&] { conv::to_krsc_f32(w.data(), f32out.data(), k, c, rs); });
    each(len, [&] { conv::to_krsc_bf16(w.data(), bout.data(), k, c, rs); });
    std::string tag = std::to_string(k) + "x" + std::to_string(c) + "x" + std::to_string(r) + "x" + std::to_string(s);
    expect("to_krsc " + tag + " f32", f32out, want, 0.0f);
    expect("to_krsc " + tag + " bf16", as_f32(bout), as_f32(of<bf16>(want)), 0.0f);
    std::vector<float> back(len), back_b(len);
    each(len, [&] { conv::from_krsc_f32(f32out.data(), back.data(), k, c, rs); });
    each(len, [&] { conv::from_krsc_bf16(bout.data(), back_b.data(), k, c, rs); });
    expect("from_krsc " + tag + " f32", back, w, 0.0f);
    expect("from_krsc " + tag + " bf16", back_b, as_f32(of<bf16>(w)), 0.0f);
}

// ReLU, its backward (from the output), relu(a + b): PyTorch's (relu(NaN) = NaN; the gradient
// passes where the output is not <= 0).
static void relus() {
    size_t n = 1000;
    std::vector<float> a(n), b(n), dy(n);
    for (auto& v : a) v = normal();
    for (auto& v : b) v = normal();
    for (auto& v : dy) v = normal();
    a[3] = NAN; a[4] = 0.0f;
    std::vector<float> y(n), dx(n), s(n), ry(n), rdx(n), rs(n);
    for (size_t i = 0; i < n; i++) {
        ry[i] = std::isnan(a[i]) ? a[i] : std::max(a[i], 0.0f);
        rdx[i] = ry[i] <= 0.0f ? 0.0f : dy[i];
        float t = a[i] + b[i];
        rs[i] = std::isnan(t) ? t : std::max(t, 0.0f);
    }
    unsigned long long nn = n;
    each(n, [&] { relu::relu_fwd_f32(a.data(), y.data(), nn); });
    each(n, [&] { relu::relu_bwd_f32(y.data(), dy.data(), dx.data(), nn); });
    each(n, [&] { relu::add_relu_fwd_f32(a.data(), b.data(), s.data(), nn); });
    expect("relu f32: y", y, ry, 0.0f);
    expect("relu f32: dx", dx, rdx, 0.0f);
    expect("relu(a + b) f32", s, rs, 0.0f);
    auto ab = of<bf16>(a), bb = of<bf16>(b), dyb = of<bf16>(dy);
    std::vector<bf16> yb(n), dxb(n), sb(n);
    each(n, [&] { relu::relu_fwd_bf16(ab.data(), yb.data(), nn); });
    each(n, [&] { relu::relu_bwd_bf16(yb.data(), dyb.data(), dxb.data(), nn); });
    each(n, [&] { relu::add_relu_fwd_bf16(ab.data(), bb.data(), sb.data(), nn); });
    std::vector<float> ryb(n), rdxb(n), rsb(n);
    auto af = as_f32(ab), bf = as_f32(bb), dyf = as_f32(dyb);
    for (size_t i = 0; i < n; i++) {
        ryb[i] = std::isnan(af[i]) ? af[i] : std::max(af[i], 0.0f);
        rdxb[i] = ryb[i] <= 0.0f ? 0.0f : dyf[i];
        float t = af[i] + bf[i];
        rsb[i] = std::isnan(t) ? t : std::max(t, 0.0f);
    }
    expect("relu bf16: y", as_f32(yb), ryb, 0.0f);
    expect("relu bf16: dx", as_f32(dxb), rdxb, 0.0f);
    expect("relu(a + b) bf16", as_f32(sb), as_f32(of<bf16>(rsb)), 0.0f);
}

// The optimisers' one-launch steps over two parameters of different lengths, three steps,
// against torch.optim's update rules (the table's layout as optim_cuda.rs builds it).
static void optimizers() {
    std::vector<unsigned> lens = {3000, 77};
    for (int kind = 0; kind < 5; kind++) {
        // 0 sgd momentum + wd, 1 nesterov, 2 plain sgd, 3 adam + wd, 4 adamw + amsgrad
        bool adam = kind >= 3;
        float lr = adam ? 1e-3f : 0.1f, momentum = kind == 2 ? 0.0f : 0.9f, dampening = 0.0f, wd = kind == 2 ? 0.0f : (kind == 4 ? 1e-2f : 5e-4f);
        float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
        std::vector<std::vector<float>> w(2), rw(2), st1(2), st2(2), st3(2), r1(2), r2(2), r3(2);
        for (int p = 0; p < 2; p++) {
            w[p].resize(lens[p]); for (auto& v : w[p]) v = normal();
            rw[p] = w[p];
            st1[p].assign(lens[p], 0.0f); st2[p].assign(lens[p], 0.0f); st3[p].assign(lens[p], 0.0f);
            r1[p] = st1[p]; r2[p] = st2[p]; r3[p] = st3[p];
        }
        for (int step = 1; step <= 3; step++) {
            std::vector<std::vector<float>> g(2);
            for (int p = 0; p < 2; p++) { g[p].resize(lens[p]); for (auto& v : g[p]) v = normal(); }
            unsigned T = 2, first = step == 1;
            unsigned long long longest = 3000;
            unsigned blocks = std::min(std::max((unsigned)((longest + 256 * 8 - 1) / (256 * 8)), 1u), 256u);
            unsigned wdbits; std::memcpy(&wdbits, &wd, 4);
            if (!adam) {
                std::vector<u64> table(6 * T);
                for (unsigned p = 0; p < T; p++) {
                    table[p] = (u64)w[p].data(); table[T + p] = (u64)g[p].data(); table[2 * T + p] = (u64)st1[p].data();
                    table[3 * T + p] = lens[p]; table[4 * T + p] = wdbits; table[5 * T + p] = first;
                }
                int nesterov = kind == 1, use_buf = momentum != 0.0f;
                launch(dim(blocks, T), dim(256), [&] { optim::sgd_all(table.data(), T, lr, momentum, dampening, nesterov, use_buf); });
                for (unsigned p = 0; p < T; p++) for (unsigned i = 0; i < lens[p]; i++) {
                    float d = g[p][i] + wd * rw[p][i], s = d;
                    if (use_buf) { r1[p][i] = first ? d : momentum * r1[p][i] + (1 - dampening) * d; s = nesterov ? d + momentum * r1[p][i] : r1[p][i]; }
                    rw[p][i] = rw[p][i] - lr * s;
                }
            } else {
                bool decoupled = kind == 4; int amsgrad = kind == 4;
                double bc1 = 1.0 - std::pow((double)b1, step), bc2 = 1.0 - std::pow((double)b2, step);
                float step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2);
                std::vector<u64> table(8 * T);
                for (unsigned p = 0; p < T; p++) {
                    table[p] = (u64)w[p].data(); table[T + p] = (u64)g[p].data(); table[2 * T + p] = (u64)st1[p].data();
                    table[3 * T + p] = (u64)st2[p].data(); table[4 * T + p] = (u64)st3[p].data(); table[5 * T + p] = lens[p];
                    table[6 * T + p] = wdbits; table[7 * T + p] = first;
                }
                int dec = decoupled;
                launch(dim(blocks, T), dim(256), [&] { optim::adam_all(table.data(), T, b1, b2, lr, step_size, bc2_sqrt, eps, dec, amsgrad); });
                for (unsigned p = 0; p < T; p++) for (unsigned i = 0; i < lens[p]; i++) {
                    double x = rw[p][i], d = decoupled ? g[p][i] : g[p][i] + wd * x;
                    if (decoupled) x *= 1.0 - lr * wd;
                    r1[p][i] = b1 * r1[p][i] + (1 - b1) * d;
                    r2[p][i] = b2 * r2[p][i] + (1 - b2) * d * d;
                    double second = r2[p][i];
                    if (amsgrad) { r3[p][i] = std::max((double)r3[p][i], second); second = r3[p][i]; }
                    rw[p][i] = x - lr / bc1 * r1[p][i] / (std::sqrt(second) / std::sqrt(bc2) + eps);
                }
            }
        }
        const char* names[] = {"sgd momentum wd", "sgd nesterov", "sgd plain", "adam wd", "adamw amsgrad"};
        std::vector<float> got, want;
        for (int p = 0; p < 2; p++) { got.insert(got.end(), w[p].begin(), w[p].end()); want.insert(want.end(), rw[p].begin(), rw[p].end()); }
        expect(std::string("optimizer ") + names[kind] + ": 3 steps, 2 parameters", got, want, 1e-5f);
    }
}

// The cross-entropy's loss, gradient and per-batch numbers (ce_cuda.rs) against PyTorch's
// definitions in double: F.cross_entropy(x, y, label_smoothing=eps) (the mean), its gradient
// scaled by the incoming g, argmax (the first maximum) and "fewer than 5 logits larger".
static void cross_entropies() {
    for (auto [n, c] : std::vector<std::array<unsigned, 2>>{{50, 10}, {300, 7}, {4, 1000}, {1, 3}}) {
        for (float eps : {0.0f, 0.1f}) {
            std::vector<float> x((size_t)n * c);
            std::vector<u32> y(n);
            for (auto& v : x) v = normal() * 3.0f;
            for (unsigned i = 0; i < n; i++) y[i] = (unsigned)(rng() % c);
            // ties: a row whose maximum appears twice (argmax takes the first)
            if (c > 3) { x[2] = x[3] = 40.0f; }
            double loss = 0.0, hits = 0.0, top = 0.0;
            std::vector<float> rdx(x.size()), rpred(n);
            float g = 0.5f;
            for (unsigned i = 0; i < n; i++) {
                const float* row = &x[(size_t)i * c];
                double m = row[0]; unsigned arg = 0;
                for (unsigned k = 1; k < c; k++) if (row[k] > m) { m = row[k]; arg = k; }
                double s = 0.0;
                for (unsigned k = 0; k < c; k++) s += std::exp((double)row[k] - m);
                double lse = m + std::log(s), nll = lse - row[y[i]], uniform = 0.0;
                for (unsigned k = 0; k < c; k++) uniform += (lse - row[k]) / c;
                loss += (1.0 - eps) * nll + eps * uniform;
                hits += arg == y[i];
                unsigned above = 0;
                for (unsigned k = 0; k < c; k++) above += row[k] > row[y[i]];
                top += above < 5;
                rpred[i] = (float)arg;
                for (unsigned k = 0; k < c; k++)
                    rdx[(size_t)i * c + k] = (float)((double)g / n * (std::exp(row[k] - lse) - (eps / c + (k == y[i] ? 1.0 - eps : 0.0))));
            }
            std::string tag = "cross-entropy " + std::to_string(n) + "x" + std::to_string(c) + " smoothing " + std::to_string(eps).substr(0, 3);
            std::vector<float> out(1), dx(x.size()), stats(3 + n);
            launch(dim(1), dim(256), [&] { ce::ce_loss(x.data(), y.data(), out.data(), n, c, eps); });
            launch(dim(cdiv(n, 256)), dim(256), [&] { ce::ce_backward(x.data(), y.data(), &g, dx.data(), n, c, eps); });
            launch(dim(1), dim(256), [&] { ce::ce_stats(x.data(), y.data(), stats.data(), n, c, eps); });
            expect(tag + ": loss", out, {(float)(loss / n)}, 1e-6f);
            expect(tag + ": dx", dx, rdx, 1e-6f);
            expect(tag + ": loss sum, top-1, top-5", {stats[0], stats[1], stats[2]}, {(float)loss, (float)hits, (float)top}, 1e-6f);
            expect(tag + ": predictions", std::vector<float>(stats.begin() + 3, stats.end()), rpred, 0.0f);
        }
    }
    // a label out of range: a NaN loss, and no read outside the row
    std::vector<float> x = {1.0f, 2.0f, 3.0f, 0.5f, 0.5f, 0.5f}, out(1);
    std::vector<u32> y = {1, 3};
    launch(dim(1), dim(256), [&] { ce::ce_loss(x.data(), y.data(), out.data(), 2, 3, 0.0f); });
    bool nan = std::isnan(out[0]);
    if (!nan) failures++;
    std::printf("%-72s %s\n", "cross-entropy: a label out of range gives a NaN loss", nan ? "ok" : "DIFFERENT");
}

// geometry::aa_taps (torchvision's antialiased bilinear weights), zero-padded to k per output.
static void aa_taps(unsigned inp, unsigned out, std::vector<u32>& start, std::vector<float>& weights, unsigned& k) {
    double scale = (double)inp / out, support = scale >= 1.0 ? scale : 1.0, invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    std::vector<std::vector<float>> all;
    start.clear();
    k = 1;
    for (unsigned i = 0; i < out; i++) {
        double center = scale * (i + 0.5);
        long long xmin = std::max((long long)(center - support + 0.5), 0ll), xmax = std::min((long long)(center + support + 0.5), (long long)inp);
        std::vector<double> w;
        double total = 0.0;
        for (long long j = xmin; j < xmax; j++) { double x = ((double)(j - xmin) + xmin - center + 0.5) * invscale; w.push_back(std::max(1.0 - std::fabs(x), 0.0)); total += w.back(); }
        std::vector<float> wf;
        for (double v : w) wf.push_back((float)(total != 0.0 ? v / total : v));
        start.push_back((u32)xmin);
        k = std::max(k, (unsigned)wf.size());
        all.push_back(wf);
    }
    weights.assign((size_t)out * k, 0.0f);
    for (unsigned i = 0; i < out; i++) for (size_t t = 0; t < all[i].size(); t++) weights[(size_t)i * k + t] = all[i][t];
}

// A resident split's batch (pixels_cuda.rs): picks, row and column maps (crops with the fill,
// flips), the resize's taps and the normalisation, against the definition in double.
static void resident_batch(unsigned count, unsigned h0, unsigned w0, std::vector<u32> picks, bool maps, unsigned h, unsigned w,
                           unsigned oh, unsigned ow, bool normalize, const char* what) {
    std::vector<unsigned char> images((size_t)count * 3 * h0 * w0);
    for (auto& v : images) v = (unsigned char)(rng() % 256);
    unsigned batch = picks.size(), fill_byte = 37;
    std::vector<u32> plan = picks;
    if (maps) {
        for (unsigned b = 0; b < batch; b++) for (unsigned r = 0; r < h; r++) {
            long long src = (long long)r - 2 + b;  // a crop shifted per image: rows above and below are the fill
            plan.push_back(src < 0 || src >= h0 ? h0 : (u32)src);
        }
        for (unsigned b = 0; b < batch; b++) for (unsigned c = 0; c < w; c++) {
            long long src = b % 2 ? (long long)w - 1 - c - 1 : (long long)c - 1;  // every other image flipped
            plan.push_back(src < 0 || src >= w0 ? w0 : (u32)src);
        }
    }
    plan.push_back(9); plan.push_back(9);  // labels after the maps: ignored
    bool resize = (oh != h || ow != w);
    std::vector<u32> ys, xs;
    std::vector<float> yw, xw;
    unsigned ky = 0, kx = 0;
    if (resize) { aa_taps(h, oh, ys, yw, ky); aa_taps(w, ow, xs, xw, kx); }
    float mean[3] = {0.4914f, 0.4822f, 0.4465f}, sd[3] = {0.2470f, 0.2435f, 0.2616f};
    auto pix = [&](unsigned b, unsigned ch, unsigned r, unsigned c) -> double {
        unsigned sr = maps ? plan[batch + b * h + r] : r, sc = maps ? plan[batch + batch * h + b * w + c] : c;
        if (sr >= h0 || sc >= w0) return fill_byte / 255.0;
        return images[(((size_t)picks[b] * 3 + ch) * h0 + sr) * w0 + sc] / 255.0;
    };
    std::vector<float> want((size_t)batch * 3 * oh * ow), got(want.size());
    for (unsigned b = 0; b < batch; b++) for (unsigned ch = 0; ch < 3; ch++) for (unsigned y = 0; y < oh; y++) for (unsigned x = 0; x < ow; x++) {
        double v = 0.0;
        if (resize) {
            for (unsigned ty = 0; ty < ky; ty++) for (unsigned tx = 0; tx < kx; tx++) {
                double wgt = (double)yw[(size_t)y * ky + ty] * xw[(size_t)x * kx + tx];
                if (wgt != 0.0) v += wgt * pix(b, ch, ys[y] + ty, xs[x] + tx);
            }
        } else {
            v = pix(b, ch, y, x);
        }
        if (normalize) v = (v - mean[ch]) / sd[ch];
        want[(((size_t)b * 3 + ch) * oh + y) * ow + x] = (float)v;
    }
    unsigned long long n = want.size();
    int imaps = maps, iresize = resize, inorm = normalize;
    float fill = fill_byte / 255.0f;
    each(n, [&] {
        pixels::resident_batch((u64)images.data(), h0, w0, plan.data(), batch, h, w, imaps, fill, iresize, (u64)ys.data(), (u64)yw.data(), ky,
                               (u64)xs.data(), (u64)xw.data(), kx, oh, ow, inorm, mean[0], mean[1], mean[2], sd[0], sd[1], sd[2], got.data(), n);
    });
    expect(std::string("resident batch: ") + what, got, want, 1e-6f);
}

int main() {
    resident_batch(5, 6, 7, {4, 0, 2}, true, 8, 9, 13, 17, true, "crops, fill, flips, resize up, normalize");
    resident_batch(5, 6, 7, {1, 1, 3}, true, 8, 9, 8, 9, false, "crops, fill, flips only");
    resident_batch(4, 12, 10, {3, 0}, false, 12, 10, 5, 4, true, "resize down, normalize");
    resident_batch(3, 32, 32, {2}, false, 32, 32, 224, 224, true, "32 -> 224, normalize (the term report's)");
    cross_entropies();
    relus();
    optimizers();
    // channel counts below, at and across the kernels' groups of 32; row counts that leave
    // partial row shares; several row shares (M = 1024)
    for (auto [n, c, h, w] : std::vector<std::array<unsigned, 4>>{{3, 5, 3, 7}, {2, 40, 5, 7}, {4, 64, 16, 16}}) {
        for (int mode = 0; mode < 3; mode++) {
            bool relu = mode > 0, residual = mode == 2;
            batch_norm<float>(n, c, h, w, relu, residual, "f32", 1e-5f);
            batch_norm<bf16>(n, c, h, w, relu, residual, "bf16", 1e-2f);
        }
    }
    max_pool<float>(2, 5, 9, 11, 3, 2, 1, "f32");
    max_pool<bf16>(2, 40, 12, 12, 3, 2, 1, "bf16");
    max_pool<float>(1, 33, 15, 15, 2, 2, 0, "f32");
    krsc(64, 3, 7, 7);
    krsc(5, 40, 3, 3);
    krsc(7, 9, 1, 1);
    std::printf(failures ? "cuda_emu: %d DIFFERENT\n" : "cuda_emu: all kernels agree\n", failures);
    return failures ? 1 : 0;
}
