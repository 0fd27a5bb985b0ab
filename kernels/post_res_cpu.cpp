// Post + residual merge x' = H_res·x + H_post^T·y on the CPU, forward and backward
// (kernels/post_res.py calls it). Token-major: per token the loops over C vectorise, and the
// n² + n sums over C of the backward (dH_res = g xᵀ, dH_post = g·y) use 16 partial sums.
// post = nullptr is the fixed mapping 1, res = nullptr the identity.
#include "cpu_common.h"

namespace mhc {

template <typename T>
static void post_res_forward(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ post,
                             const T* __restrict__ res, T* __restrict__ out, int64_t tokens, int n, int64_t C) {
    for (int64_t t = 0; t < tokens; ++t) {
        const T* xt = x + t * n * C;
        const T* yt = y + t * C;
        for (int i = 0; i < n; ++i) {
            T* o = out + (t * n + i) * C;
            const T p = post ? post[t * n + i] : T(1);
            if (res) {
                const T* r = res + (t * n + i) * n;
                const T r0 = r[0];
                for (int64_t c = 0; c < C; ++c) o[c] = r0 * xt[c];
                for (int j = 1; j < n; ++j) {
                    const T rj = r[j];
                    const T* xj = xt + j * C;
                    for (int64_t c = 0; c < C; ++c) o[c] += rj * xj[c];
                }
            } else {
                for (int64_t c = 0; c < C; ++c) o[c] = xt[i * C + c];
            }
            for (int64_t c = 0; c < C; ++c) o[c] += p * yt[c];
        }
    }
}

// dx_j = Σ_i H_res[i, j] g_i;  dy = Σ_i H_post[i] g_i;  dH_post[i] = g_i·y;  dH_res[i, j] = g_i·x_j
template <typename T>
static void post_res_backward(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ post,
                              const T* __restrict__ res, const T* __restrict__ g, T* __restrict__ dx, T* __restrict__ dy,
                              T* __restrict__ dpost, T* __restrict__ dres, int64_t tokens, int n, int64_t C) {
    for (int64_t t = 0; t < tokens; ++t) {
        const T* xt = x + t * n * C;
        const T* gt = g + t * n * C;
        const T* yt = y + t * C;
        for (int j = 0; j < n; ++j) {
            T* d = dx + (t * n + j) * C;
            if (res) {
                const T r0 = res[(t * n) * n + j];
                for (int64_t c = 0; c < C; ++c) d[c] = r0 * gt[c];
                for (int i = 1; i < n; ++i) {
                    const T r = res[(t * n + i) * n + j];
                    const T* gi = gt + i * C;
                    for (int64_t c = 0; c < C; ++c) d[c] += r * gi[c];
                }
            } else {
                for (int64_t c = 0; c < C; ++c) d[c] = gt[j * C + c];
            }
        }
        T* dyt = dy + t * C;
        const T p0 = post ? post[t * n] : T(1);
        for (int64_t c = 0; c < C; ++c) dyt[c] = p0 * gt[c];
        for (int i = 1; i < n; ++i) {
            const T p = post ? post[t * n + i] : T(1);
            const T* gi = gt + i * C;
            for (int64_t c = 0; c < C; ++c) dyt[c] += p * gi[c];
        }
        for (int i = 0; i < n; ++i) {
            const T* gi = gt + i * C;
            if (dpost) dpost[t * n + i] = dot(gi, yt, C);
            if (dres)
                for (int j = 0; j < n; ++j) dres[(t * n + i) * n + j] = dot(gi, xt + j * C, C);
        }
    }
}

}  // namespace mhc

#define MHC_POST_RES(T, SUFFIX)                                                                                   \
    extern "C" void mhc_post_res_forward_##SUFFIX(const T* x, const T* y, const T* post, const T* res, T* out,    \
                                                  int64_t tokens, int n, int64_t C) {                             \
        mhc::post_res_forward<T>(x, y, post, res, out, tokens, n, C);                                             \
    }                                                                                                             \
    extern "C" void mhc_post_res_backward_##SUFFIX(const T* x, const T* y, const T* post, const T* res, const T* g, \
                                                   T* dx, T* dy, T* dpost, T* dres, int64_t tokens, int n,        \
                                                   int64_t C) {                                                   \
        mhc::post_res_backward<T>(x, y, post, res, g, dx, dy, dpost, dres, tokens, n, C);                         \
    }

MHC_POST_RES(float, f32)
MHC_POST_RES(double, f64)
