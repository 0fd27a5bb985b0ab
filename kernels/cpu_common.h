// Shared by the CPU kernels (kernels/*_cpu.cpp): the token tile and its helpers.
//
// The per-token maths of the coefficients (Sinkhorn, Newton-Schulz) acts on n x n matrices with
// n = 4 typically: far too small to vectorise within a matrix. So a tile holds LANES tokens side
// by side, entry-major: tile[e * LANES + v] is entry e (= i * n + j) of token v, and every loop
// ends in a loop over the LANES tokens, which the compiler turns into SIMD instructions. A tail
// of fewer than LANES tokens is padded with a harmless matrix whose results are never stored.
//
// Entry points are plain C functions (extern "C"), called through ctypes by kernels/cpu_build.py:
// no PyTorch headers, so the library builds in about a second with any C++ compiler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace mhc {

constexpr int LANES = 16;        // tokens per tile
constexpr int MAX_STREAMS = 16;  // n; the Python side runs the reference beyond it
constexpr int MAX_ENTRIES = MAX_STREAMS * MAX_STREAMS;

// The tile's scratch memory: a few (n*n x LANES) matrices, allocated once per call.
template <typename T>
struct Scratch {
    std::vector<T> mem;
    Scratch(size_t matrices, int nn) : mem(matrices * size_t(nn) * LANES) {}
    T* at(size_t k, int nn) { return mem.data() + k * size_t(nn) * LANES; }
};

// Copy `count` tokens of a token-major (tokens, nn) array into a tile.
template <typename T>
inline void load_tile(T* tile, const T* src, int count, int nn, T pad) {
    for (int e = 0; e < nn; ++e)
        for (int v = 0; v < LANES; ++v) tile[e * LANES + v] = v < count ? src[size_t(v) * nn + e] : pad;
}

template <typename T>
inline void store_tile(T* dst, const T* tile, int count, int nn) {
    for (int v = 0; v < count; ++v)
        for (int e = 0; e < nn; ++e) dst[size_t(v) * nn + e] = tile[e * LANES + v];
}

}  // namespace mhc

#include <type_traits>

namespace mhc {

// Call f with the stream count n as a compile-time constant for the common counts (2, 3, 4, 8),
// so the n x n loops unroll, else as a plain int.
template <typename F>
inline void with_streams(int n, F&& f) {
    switch (n) {
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 8: f(std::integral_constant<int, 8>{}); break;
        default: f(n);
    }
}

}  // namespace mhc

namespace mhc {

// Σ_c a[c] b[c] with 16 partial sums (c mod 16): a fixed order the compiler can vectorise
// (a single running sum would be one long dependency chain, and may not be reordered).
template <typename T>
inline T dot(const T* a, const T* b, int64_t len) {
    constexpr int P = 16;
    T acc[P] = {};
    int64_t c = 0;
    for (; c + P <= len; c += P)
        for (int k = 0; k < P; ++k) acc[k] += a[c + k] * b[c + k];
    for (int k = 0; c < len; ++c, ++k) acc[k] += a[c] * b[c];
    T s = 0;
    for (int k = 0; k < P; ++k) s += acc[k];
    return s;
}

}  // namespace mhc

namespace mhc {

// exp(x) for x in [-87, 88] (outside it: clamped), vectorisable: no call, no branch. float: 2^k e^r
// with k = round(x / ln 2) and |r| <= ln 2 / 2 (Cody-Waite), e^r from Cephes' expf polynomial,
// within 2 ulp of the correctly rounded value; double: std::exp (the fp64 tests, not timed).
inline float exp_lane(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (|k| < 2^22)
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    return y * __builtin_bit_cast(float, (int32_t(k) + 127) << 23);
}

inline double exp_lane(double x) { return std::exp(x); }

}  // namespace mhc
