// Sinkhorn-Knopp on the CPU, forward and exact finite-k backward (kernels/sinkhorn.py calls it;
// the maths and the conventions are kernels/sinkhorn_reference.py's).
//
// paper mode. The reference keeps log M and normalises by logsumexp, so nothing underflows at
// any logit range. The same map in the linear domain, M⁰ = exp(L - max L) and k rounds of
// [divide each column by its sum, each row by its sum], needs no exp or log per round, only
// sums and products, which the token tiles turn into SIMD. It is exact (no underflow) when the
// matrix's logit range R = max L - min L is small: every iterate is exp(L_ij + u_i + v_j) with
// the spread of u and of v at most R, so entries stay >= e^(-2R) / n and no sum is 0. Tokens
// with R above LINEAR_RANGE (30 in fp32, 300 in fp64: entries >= 1e-27 / 1e-261, far from
// underflow) run the reference's log-domain recursion instead, one at a time; they are rare
// outside learning-rate stress (the log-domain tests' extreme ranges exercise them).
//
// Backward. In the log domain each half-step is y = x - logsumexp(x) along one axis, whose
// derivative is dx = dy - p · Σ dy with p = exp(y): the iterate itself in the linear domain.
// So the backward recomputes the 2k iterates of a tile (forward again, kept in scratch memory
// instead of being saved for autograd) and walks back through them with sums and products
// only; dH -> d log M_final is dH ⊙ H. Nothing is stored between forward and backward but the
// logits, as in the Triton kernels.
//
// kernel mode (DeepSeek's public kernels): row softmax + eps, then columns and rows divided by
// (sum + eps); every entry is >= eps, so it needs no log domain. Its backward recomputes the
// inputs of each normalisation likewise.
#include "cpu_common.h"

namespace mhc {

template <typename T> struct Range;
template <> struct Range<float> { static constexpr float linear = 30.0f; };
template <> struct Range<double> { static constexpr double linear = 300.0; };

// Entry (a, b) of a line: the b-th element of column a (col) or of row a.
template <bool col, typename N>
inline int entry(int a, int b, N n) { return col ? b * n + a : a * n + b; }

// s = the sum of line a of every lane's matrix
template <bool col, typename T, typename N>
inline void line_sum(T* s, const T* m, int a, N n) {
    for (int v = 0; v < LANES; ++v) s[v] = 0;
    for (int b = 0; b < n; ++b)
        for (int v = 0; v < LANES; ++v) s[v] += m[entry<col>(a, b, n) * LANES + v];
}

// line a of every lane's matrix times s
template <bool col, typename T, typename N>
inline void line_scale(T* m, const T* s, int a, N n) {
    for (int b = 0; b < n; ++b)
        for (int v = 0; v < LANES; ++v) m[entry<col>(a, b, n) * LANES + v] *= s[v];
}

// m <- m / (Σ m + eps) along one axis of every lane's matrix (col: sums over i; else over j);
// eps = 0 in the paper mode
template <bool col, typename T, typename N>
static void normalise(T* m, N n, T eps = 0) {
    T s[LANES];
    for (int a = 0; a < n; ++a) {
        line_sum<col>(s, m, a, n);
        for (int v = 0; v < LANES; ++v) s[v] = T(1) / (s[v] + eps);
        line_scale<col>(m, s, a, n);
    }
}

// -- paper mode, linear domain, on a tile: k rounds of [columns, rows]; trace gets each iterate
template <typename T, typename N>
static void paper_rounds(T* m, N n, int iters, T* trace) {
    const int nn = n * n;
    for (int h = 0; h < 2 * iters; ++h) {
        if (h % 2 == 0) normalise<true>(m, n);
        else normalise<false>(m, n);
        if (trace) std::memcpy(trace + size_t(h) * nn * LANES, m, sizeof(T) * nn * LANES);
    }
}

// One log-domain normalisation of x (token-major n x n) along columns (col = true) or rows,
// exactly as the reference's _log_normalise: (x - max) - log Σ exp(x - max).
template <typename T, typename N>
static void log_normalise(T* x, N n, bool col) {
    for (int a = 0; a < n; ++a) {
        auto at = [&](int b) -> T& { return col ? x[b * n + a] : x[a * n + b]; };
        T mx = at(0);
        for (int b = 1; b < n; ++b) mx = std::max(mx, at(b));
        T s = 0;
        for (int b = 0; b < n; ++b) s += std::exp(at(b) - mx);
        const T ls = std::log(s);
        for (int b = 0; b < n; ++b) at(b) = (at(b) - mx) - ls;
    }
}

// The reference's log-domain recursion for lane v of a tile (a token with a large logit range):
// writes its result into m and, if trace, its iterates exp(x) into the trace.
template <typename T, typename N>
static void paper_log_lane(const T* logits, N n, int iters, T* m, T* trace, int v) {
    const int nn = n * n;
    T x[MAX_ENTRIES];
    for (int e = 0; e < nn; ++e) x[e] = logits[e];
    for (int h = 0; h < 2 * iters; ++h) {
        log_normalise(x, n, h % 2 == 0);
        if (trace)
            for (int e = 0; e < nn; ++e) trace[(size_t(h) * nn + e) * LANES + v] = std::exp(x[e]);
    }
    for (int e = 0; e < nn; ++e) m[e * LANES + v] = std::exp(x[e]);
}

// M⁰ = exp(L - max L) for the tokens of a tile that take the linear path; the others (large
// range, NaN or inf) get a placeholder 1 and are flagged for the log-domain recursion. m holds
// the tile's logits first (load_tile), so every loop below runs over the lanes.
template <typename T>
static void paper_start(T* m, const T* logits, int count, int nn, bool* log_lane) {
    load_tile(m, logits, count, nn, T(0));
    T mx[LANES], mn[LANES];
    for (int v = 0; v < LANES; ++v) mx[v] = mn[v] = m[v];
    for (int e = 1; e < nn; ++e)
        for (int v = 0; v < LANES; ++v) mx[v] = std::max(mx[v], m[e * LANES + v]), mn[v] = std::min(mn[v], m[e * LANES + v]);
    for (int v = 0; v < LANES; ++v) log_lane[v] = !(mx[v] - mn[v] <= Range<T>::linear) && v < count;  // also NaN and inf
    for (int e = 0; e < nn; ++e)
        for (int v = 0; v < LANES; ++v) {
            const T z = m[e * LANES + v] - mx[v];
            m[e * LANES + v] = exp_lane(log_lane[v] ? T(0) : z);
        }
}

template <typename T, typename N>
static void paper_forward(const T* L, T* H, int64_t tokens, N n, int iters) {
    const int nn = n * n;
    if (iters == 0) {  // exp(logits) itself, as the reference
        for (int64_t k = 0; k < tokens * nn; ++k) H[k] = std::exp(L[k]);
        return;
    }
    Scratch<T> s(1, nn);
    T* m = s.at(0, nn);
    bool log_lane[LANES];
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        const T* l = L + t0 * nn;
        paper_start(m, l, count, nn, log_lane);
        paper_rounds(m, n, iters, static_cast<T*>(nullptr));
        for (int v = 0; v < count; ++v)
            if (log_lane[v]) paper_log_lane(l + size_t(v) * nn, n, iters, m, static_cast<T*>(nullptr), v);
        store_tile(H + t0 * nn, m, count, nn);
    }
}

// dx = dy - p Σ dy along the axis a half-step normalised (col: over i; rows: over j)
template <bool col, typename T, typename N>
static void normalise_backward(T* d, const T* p, N n) {
    T s[LANES];
    for (int a = 0; a < n; ++a) {
        line_sum<col>(s, d, a, n);
        for (int b = 0; b < n; ++b) {
            const int e = entry<col>(a, b, n) * LANES;
            for (int v = 0; v < LANES; ++v) d[e + v] -= p[e + v] * s[v];
        }
    }
}

template <typename T, typename N>
static void paper_backward(const T* L, const T* G, T* dL, int64_t tokens, N n, int iters) {
    const int nn = n * n;
    if (iters == 0) {
        for (int64_t k = 0; k < tokens * nn; ++k) dL[k] = G[k] * std::exp(L[k]);
        return;
    }
    Scratch<T> s(2 + 2 * size_t(iters), nn);
    T *m = s.at(0, nn), *d = s.at(1, nn), *trace = s.at(2, nn);
    bool log_lane[LANES];
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        const T* l = L + t0 * nn;
        paper_start(m, l, count, nn, log_lane);
        paper_rounds(m, n, iters, trace);
        for (int v = 0; v < count; ++v)
            if (log_lane[v]) paper_log_lane(l + size_t(v) * nn, n, iters, m, trace, v);
        load_tile(d, G + t0 * nn, count, nn, T(0));
        for (int e = 0; e < nn * LANES; ++e) d[e] *= m[e];  // H = exp(x): dx = dH ⊙ H
        for (int h = 2 * iters - 1; h >= 0; --h) {
            const T* p = trace + size_t(h) * nn * LANES;
            if (h % 2 == 0) normalise_backward<true>(d, p, n);
            else normalise_backward<false>(d, p, n);
        }
        store_tile(dL + t0 * nn, d, count, nn);
    }
}

// -- kernel mode ---------------------------------------------------------------------------
// (d in: dy, out: dm) for y = m / (s + eps), s = Σ m along the axis:
// dm = dy / (s + eps) - Σ (dy ⊙ m) / (s + eps)²
template <bool col, typename T, typename N>
static void eps_normalise_backward(T* d, const T* m, N n, T eps) {
    T s[LANES], q[LANES];
    for (int a = 0; a < n; ++a) {
        line_sum<col>(s, m, a, n);
        for (int v = 0; v < LANES; ++v) q[v] = 0, s[v] += eps;
        for (int b = 0; b < n; ++b)
            for (int v = 0; v < LANES; ++v) q[v] += d[entry<col>(a, b, n) * LANES + v] * m[entry<col>(a, b, n) * LANES + v];
        for (int b = 0; b < n; ++b) {
            const int e = entry<col>(a, b, n) * LANES;
            for (int v = 0; v < LANES; ++v) d[e + v] = d[e + v] / s[v] - q[v] / (s[v] * s[v]);
        }
    }
}

// Row softmax of a tile (p), exactly as torch.softmax: exp(x - max) / Σ
template <typename T, typename N>
static void softmax_rows(T* p, const T* logits, int count, N n) {
    const int nn = n * n;
    for (int v = 0; v < LANES; ++v) {
        for (int i = 0; i < n; ++i) {
            if (v >= count) {
                for (int j = 0; j < n; ++j) p[(i * n + j) * LANES + v] = T(1) / n;
                continue;
            }
            const T* row = logits + size_t(v) * nn + i * n;
            T mx = row[0];
            for (int j = 1; j < n; ++j) mx = std::max(mx, row[j]);
            T s = 0;
            for (int j = 0; j < n; ++j) s += (p[(i * n + j) * LANES + v] = std::exp(row[j] - mx));
            for (int j = 0; j < n; ++j) p[(i * n + j) * LANES + v] /= s;
        }
    }
}

// The kernel-mode steps after the softmax: column, then (iters - 1) x [row, column]; `trace`
// gets the input of every step (2 iters - 1 of them).
template <typename T, typename N>
static void kernel_steps(T* m, N n, int iters, T eps, T* trace) {
    const int nn = n * n;
    for (int h = 0; h < 2 * iters - 1; ++h) {
        if (trace) std::memcpy(trace + size_t(h) * nn * LANES, m, sizeof(T) * nn * LANES);
        if (h % 2 == 0) normalise<true>(m, n, eps);
        else normalise<false>(m, n, eps);
    }
}

template <typename T, typename N>
static void kernel_forward(const T* L, T* H, int64_t tokens, N n, int iters, T eps) {
    const int nn = n * n;
    Scratch<T> s(1, nn);
    T* m = s.at(0, nn);
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        softmax_rows(m, L + t0 * nn, count, n);
        for (int e = 0; e < nn * LANES; ++e) m[e] += eps;
        kernel_steps(m, n, iters, eps, static_cast<T*>(nullptr));
        store_tile(H + t0 * nn, m, count, nn);
    }
}

template <typename T, typename N>
static void kernel_backward(const T* L, const T* G, T* dL, int64_t tokens, N n, int iters, T eps) {
    const int nn = n * n;
    const size_t steps = iters > 0 ? 2 * size_t(iters) - 1 : 0;
    Scratch<T> s(3 + steps, nn);
    T *p = s.at(0, nn), *m = s.at(1, nn), *d = s.at(2, nn), *trace = s.at(3, nn);
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        softmax_rows(p, L + t0 * nn, count, n);
        for (int e = 0; e < nn * LANES; ++e) m[e] = p[e] + eps;
        kernel_steps(m, n, iters, eps, trace);
        load_tile(d, G + t0 * nn, count, nn, T(0));
        for (int h = int(steps) - 1; h >= 0; --h) {
            const T* m_in = trace + size_t(h) * nn * LANES;
            if (h % 2 == 0) eps_normalise_backward<true>(d, m_in, n, eps);
            else eps_normalise_backward<false>(d, m_in, n, eps);
        }
        // softmax: dL = p ⊙ (dp - Σ_j dp p), per row
        for (int i = 0; i < n; ++i) {
            T q[LANES];
            for (int v = 0; v < LANES; ++v) q[v] = 0;
            for (int j = 0; j < n; ++j)
                for (int v = 0; v < LANES; ++v) q[v] += d[(i * n + j) * LANES + v] * p[(i * n + j) * LANES + v];
            for (int j = 0; j < n; ++j)
                for (int v = 0; v < LANES; ++v) {
                    const int e = (i * n + j) * LANES + v;
                    d[e] = p[e] * (d[e] - q[v]);
                }
        }
        store_tile(dL + t0 * nn, d, count, nn);
    }
}

}  // namespace mhc

// mode: 0 = paper, 1 = kernel (kernels/sinkhorn.py's CPU_MODES order). with_streams passes the
// common stream counts as constants, so the compiler unrolls the n x n loops for them.
#define MHC_SINKHORN(T, SUFFIX)                                                                                   \
    extern "C" void mhc_sinkhorn_forward_##SUFFIX(const T* L, T* H, int64_t tokens, int n, int iters, int mode,   \
                                                  double eps) {                                                   \
        mhc::with_streams(n, [&](auto nc) {                                                                       \
            if (mode == 0) mhc::paper_forward<T>(L, H, tokens, nc, iters);                                        \
            else mhc::kernel_forward<T>(L, H, tokens, nc, iters, T(eps));                                         \
        });                                                                                                       \
    }                                                                                                             \
    extern "C" void mhc_sinkhorn_backward_##SUFFIX(const T* L, const T* G, T* dL, int64_t tokens, int n, int iters, \
                                                   int mode, double eps) {                                        \
        mhc::with_streams(n, [&](auto nc) {                                                                       \
            if (mode == 0) mhc::paper_backward<T>(L, G, dL, tokens, nc, iters);                                   \
            else mhc::kernel_backward<T>(L, G, dL, tokens, nc, iters, T(eps));                                    \
        });                                                                                                       \
    }

MHC_SINKHORN(float, f32)
MHC_SINKHORN(double, f64)
