// Orthostochastic H_res = O ⊙ O on the CPU, O the Newton-Schulz polar factor of the logits,
// forward and exact backward (kernels/orthostochastic.py calls it; its reference is the maths):
//
//     X_0 = L / (‖L‖_F + eps);  X ← a X + (b A + c A²) X,  A = X Xᵀ,  (a, b, c) = (3, -3.2, 1.2)
//
// Each token's n x n matrices are tiny, so a tile holds LANES tokens side by side (cpu_common.h)
// and every matrix product loops over the lanes innermost. The backward recomputes the steps'
// X of a tile instead of having autograd store and replay them, then walks back through
//     Y = a X + B X, B = b A + c A², A = X Xᵀ:
//     dX = a dY + Bᵀ dY + (dA + dAᵀ) X,  dB = dY Xᵀ,  dA = b dB + c (dB Aᵀ + Aᵀ dB).
#include "cpu_common.h"

namespace mhc {

constexpr double NS_A = 3.0, NS_B = -3.2, NS_C = 1.2;

// out = op(P) op(Q) for every lane; op = transpose where asked. out must not alias P or Q.
template <typename T, typename N>
static void mm(T* __restrict__ out, const T* __restrict__ P, const T* __restrict__ Q, N n, bool tp, bool tq) {
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
            T acc[LANES] = {};
            for (int k = 0; k < n; ++k) {
                const T* p = P + (tp ? k * n + i : i * n + k) * LANES;
                const T* q = Q + (tq ? j * n + k : k * n + j) * LANES;
                for (int v = 0; v < LANES; ++v) acc[v] += p[v] * q[v];
            }
            std::memcpy(out + (i * n + j) * LANES, acc, sizeof(acc));
        }
}

// B = b A + c A² (A, A² given), one step X_next = a X + B X
template <typename T, typename N>
static void ns_step(T* X_next, const T* X, T* A, T* A2, T* B, N n) {
    const int nn = n * n;
    mm(A, X, X, n, false, true);
    mm(A2, A, A, n, false, false);
    for (int e = 0; e < nn * LANES; ++e) B[e] = T(NS_B) * A[e] + T(NS_C) * A2[e];
    mm(X_next, B, X, n, false, false);
    for (int e = 0; e < nn * LANES; ++e) X_next[e] = T(NS_A) * X[e] + X_next[e];
}

// X_0 = L / (‖L‖_F + eps) for a tile; nrm gets ‖L‖_F per lane
template <typename T>
static void ns_start(T* X, const T* Lt, T* nrm, int nn, T eps) {
    for (int v = 0; v < LANES; ++v) nrm[v] = 0;
    for (int e = 0; e < nn; ++e)
        for (int v = 0; v < LANES; ++v) nrm[v] += Lt[e * LANES + v] * Lt[e * LANES + v];
    for (int v = 0; v < LANES; ++v) nrm[v] = std::sqrt(nrm[v]);
    for (int e = 0; e < nn; ++e)
        for (int v = 0; v < LANES; ++v) X[e * LANES + v] = Lt[e * LANES + v] / (nrm[v] + eps);
}

template <typename T, typename N>
static void ortho_forward(const T* L, T* H, int64_t tokens, N n, int steps, T eps) {
    const int nn = n * n;
    Scratch<T> s(6, nn);
    T *Lt = s.at(0, nn), *X = s.at(1, nn), *Xn = s.at(2, nn), *A = s.at(3, nn), *A2 = s.at(4, nn), *B = s.at(5, nn);
    T nrm[LANES];
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        load_tile(Lt, L + t0 * nn, count, nn, T(0));
        ns_start(X, Lt, nrm, nn, eps);
        for (int k = 0; k < steps; ++k) {
            ns_step(Xn, X, A, A2, B, n);
            std::swap(X, Xn);
        }
        for (int e = 0; e < nn * LANES; ++e) X[e] *= X[e];
        store_tile(H + t0 * nn, X, count, nn);
    }
}

template <typename T, typename N>
static void ortho_backward(const T* L, const T* G, T* dL, int64_t tokens, N n, int steps, T eps) {
    const int nn = n * n;
    Scratch<T> s(10 + size_t(steps) + 1, nn);
    T *Lt = s.at(0, nn), *A = s.at(1, nn), *A2 = s.at(2, nn), *B = s.at(3, nn), *d = s.at(4, nn), *dX = s.at(5, nn);
    T *dB = s.at(6, nn), *dA = s.at(7, nn), *tmp = s.at(8, nn), *tmp2 = s.at(9, nn), *Xs = s.at(10, nn);
    auto X = [&](int k) { return Xs + size_t(k) * nn * LANES; };
    T nrm[LANES];
    for (int64_t t0 = 0; t0 < tokens; t0 += LANES) {
        const int count = int(std::min<int64_t>(LANES, tokens - t0));
        load_tile(Lt, L + t0 * nn, count, nn, T(0));
        ns_start(X(0), Lt, nrm, nn, eps);
        for (int k = 0; k < steps; ++k) ns_step(X(k + 1), X(k), A, A2, B, n);
        load_tile(d, G + t0 * nn, count, nn, T(0));
        for (int e = 0; e < nn * LANES; ++e) d[e] *= 2 * X(steps)[e];  // H = O ⊙ O
        for (int k = steps - 1; k >= 0; --k) {
            const T* Xk = X(k);
            mm(A, Xk, Xk, n, false, true);
            mm(A2, A, A, n, false, false);
            for (int e = 0; e < nn * LANES; ++e) B[e] = T(NS_B) * A[e] + T(NS_C) * A2[e];
            mm(dX, B, d, n, true, false);  // Bᵀ dY
            for (int e = 0; e < nn * LANES; ++e) dX[e] += T(NS_A) * d[e];
            mm(dB, d, Xk, n, false, true);  // dY Xᵀ
            mm(tmp, dB, A, n, false, true);  // dB Aᵀ
            mm(tmp2, A, dB, n, true, false);  // Aᵀ dB
            for (int e = 0; e < nn * LANES; ++e) dA[e] = T(NS_B) * dB[e] + T(NS_C) * (tmp[e] + tmp2[e]);
            for (int i = 0; i < n; ++i)  // tmp = dA + dAᵀ
                for (int j = 0; j < n; ++j)
                    for (int v = 0; v < LANES; ++v)
                        tmp[(i * n + j) * LANES + v] = dA[(i * n + j) * LANES + v] + dA[(j * n + i) * LANES + v];
            mm(tmp2, tmp, Xk, n, false, false);
            for (int e = 0; e < nn * LANES; ++e) d[e] = dX[e] + tmp2[e];
        }
        // X_0 = L / D, D = ‖L‖ + eps: dL = d / D - L <d, L> / (D² ‖L‖)
        T dot_dl[LANES];
        for (int v = 0; v < LANES; ++v) dot_dl[v] = 0;
        for (int e = 0; e < nn; ++e)
            for (int v = 0; v < LANES; ++v) dot_dl[v] += d[e * LANES + v] * Lt[e * LANES + v];
        for (int v = 0; v < LANES; ++v) {
            const T D = nrm[v] + eps;
            const T coef = nrm[v] > 0 ? dot_dl[v] / (D * D * nrm[v]) : T(0);
            for (int e = 0; e < nn; ++e) d[e * LANES + v] = d[e * LANES + v] / D - Lt[e * LANES + v] * coef;
        }
        store_tile(dL + t0 * nn, d, count, nn);
    }
}

}  // namespace mhc

#define MHC_ORTHO(T, SUFFIX)                                                                                        \
    extern "C" void mhc_orthostochastic_forward_##SUFFIX(const T* L, T* H, int64_t tokens, int n, int steps,        \
                                                         double eps) {                                              \
        mhc::with_streams(n, [&](auto nc) { mhc::ortho_forward<T>(L, H, tokens, nc, steps, T(eps)); });                                                      \
    }                                                                                                               \
    extern "C" void mhc_orthostochastic_backward_##SUFFIX(const T* L, const T* G, T* dL, int64_t tokens, int n,     \
                                                          int steps, double eps) {                                  \
        mhc::with_streams(n, [&](auto nc) { mhc::ortho_backward<T>(L, G, dL, tokens, nc, steps, T(eps)); });                                                 \
    }

MHC_ORTHO(float, f32)
MHC_ORTHO(double, f64)
