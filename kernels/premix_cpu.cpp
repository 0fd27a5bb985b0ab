// Pre-mix h = Σ_i H_pre[i] x_i on the CPU, forward and backward (kernels/premix.py calls it).
// Token-major: per token the n streams of C values are read once, the loops over C vectorise.
// w = nullptr is the fixed mapping 1/n (the streams' mean).
#include "cpu_common.h"

namespace mhc {

template <typename T>
static void premix_forward(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ h, int64_t tokens, int n,
                           int64_t C) {
    for (int64_t t = 0; t < tokens; ++t) {
        const T* xt = x + t * n * C;
        T* ht = h + t * C;
        for (int64_t c = 0; c < C; ++c) ht[c] = 0;
        for (int i = 0; i < n; ++i) {
            const T wi = w ? w[t * n + i] : T(1);
            const T* xi = xt + i * C;
            for (int64_t c = 0; c < C; ++c) ht[c] += wi * xi[c];
        }
        if (!w)
            for (int64_t c = 0; c < C; ++c) ht[c] /= T(n);
    }
}

// dx[i] = w[i] dh (dh / n without w);  dw[i] = Σ_c dh[c] x[i, c]
template <typename T>
static void premix_backward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ dh, T* __restrict__ dx,
                            T* __restrict__ dw, int64_t tokens, int n, int64_t C) {
    for (int64_t t = 0; t < tokens; ++t) {
        const T* xt = x + t * n * C;
        const T* dht = dh + t * C;
        for (int i = 0; i < n; ++i) {
            T* dxi = dx + (t * n + i) * C;
            if (w) {
                const T wi = w[t * n + i];
                for (int64_t c = 0; c < C; ++c) dxi[c] = wi * dht[c];
                dw[t * n + i] = dot(dht, xt + i * C, C);
            } else {
                for (int64_t c = 0; c < C; ++c) dxi[c] = dht[c] / T(n);
            }
        }
    }
}

}  // namespace mhc

#define MHC_PREMIX(T, SUFFIX)                                                                                    \
    extern "C" void mhc_premix_forward_##SUFFIX(const T* x, const T* w, T* h, int64_t tokens, int n, int64_t C) { \
        mhc::premix_forward<T>(x, w, h, tokens, n, C);                                                           \
    }                                                                                                            \
    extern "C" void mhc_premix_backward_##SUFFIX(const T* x, const T* w, const T* dh, T* dx, T* dw, int64_t tokens, \
                                                 int n, int64_t C) {                                             \
        mhc::premix_backward<T>(x, w, dh, dx, dw, tokens, n, C);                                                 \
    }

MHC_PREMIX(float, f32)
MHC_PREMIX(double, f64)
