// AVX2 quantization: 32 elements per step. Tails use the scalar formula, which is the same arithmetic.
#include <immintrin.h>

#include <type_traits>

#include "kernels/quantize.hpp"

namespace pyquant {
namespace avx2 {
namespace {

// Four vectors of int32 (each already in [qmin, qmax]) -> 32 bytes in order.
template <class OutT>
inline __m256i pack4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_packs_epi32(a, b);  // lanes interleaved: a0 b0 | a1 b1
    __m256i cd = _mm256_packs_epi32(c, d);
    __m256i bytes = std::is_same<OutT, int8_t>::value ? _mm256_packs_epi16(ab, cd) : _mm256_packus_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// v = x / scale (vdivps) -> clamp -> round (MXCSR default: half to even, like rint) -> + zp. Values are small integers after the
// clamp, so the conversion is exact and never sees the out-of-range case.
inline __m256i quant8(__m256 x, __m256 scale, __m256 lo, __m256 hi, __m256i zp, __m256& bad) {
    bad = _mm256_add_ps(bad, _mm256_mul_ps(x, _mm256_setzero_ps()));
    __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(x, scale), lo), hi);
    return _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
}

inline bool all_finite(__m256 bad, float tail_bad) {
    alignas(32) float b[8];
    _mm256_store_ps(b, bad);
    float s = tail_bad;
    for (float v : b) s += v;
    return s == 0.0f;
}

template <class OutT>
bool quantize_run(const float* x, OutT* y, index_t n, const QuantRun& p) {
    const __m256 sc = _mm256_set1_ps(p.scale), lo = _mm256_set1_ps(p.lo), hi = _mm256_set1_ps(p.hi);
    const __m256i zp = _mm256_set1_epi32(p.zp);
    // Four independent NaN/Inf accumulators, so their add latency does not serialize the loop.
    __m256 bad0 = _mm256_setzero_ps(), bad1 = bad0, bad2 = bad0, bad3 = bad0;
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(x + i + 16 + kPrefetchFloats), _MM_HINT_T0);
        __m256i a = quant8(_mm256_loadu_ps(x + i), sc, lo, hi, zp, bad0);
        __m256i b = quant8(_mm256_loadu_ps(x + i + 8), sc, lo, hi, zp, bad1);
        __m256i c = quant8(_mm256_loadu_ps(x + i + 16), sc, lo, hi, zp, bad2);
        __m256i d = quant8(_mm256_loadu_ps(x + i + 24), sc, lo, hi, zp, bad3);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), pack4<OutT>(a, b, c, d));
    }
    __m256 bad = _mm256_add_ps(_mm256_add_ps(bad0, bad1), _mm256_add_ps(bad2, bad3));
    float tail_bad = 0.0f;
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale, p.lo, p.hi, p.zp);
    }
    return all_finite(bad, tail_bad);
}

template <class OutT>
bool quantize_row(const float* x, OutT* y, index_t n, const QuantRow& p) {
    __m256 bad0 = _mm256_setzero_ps(), bad1 = bad0, bad2 = bad0, bad3 = bad0;
    index_t i = 0;
    auto q = [&](index_t j, __m256& bad) {
        return quant8(_mm256_loadu_ps(x + j), _mm256_loadu_ps(p.scale + j), _mm256_loadu_ps(p.lo + j),
                      _mm256_loadu_ps(p.hi + j), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.zp + j)), bad);
    };
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(x + i + 16 + kPrefetchFloats), _MM_HINT_T0);
        __m256i a = q(i, bad0), b = q(i + 8, bad1), c = q(i + 16, bad2), d = q(i + 24, bad3);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), pack4<OutT>(a, b, c, d));
    }
    __m256 bad = _mm256_add_ps(_mm256_add_ps(bad0, bad1), _mm256_add_ps(bad2, bad3));
    float tail_bad = 0.0f;
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale[i], p.lo[i], p.hi[i], p.zp[i]);
    }
    return all_finite(bad, tail_bad);
}

inline __m256i load8_i32(const int8_t* q) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
}
inline __m256i load8_i32(const uint8_t* q) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
}

template <class InT>
void dequantize_run(const InT* q, float* y, index_t n, float scale, int32_t zp) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m256i z = _mm256_set1_epi32(zp);
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 32; k += 8)
            _mm256_storeu_ps(y + i + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i + k), z)), s));
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i), z)), s));
    for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

template <class InT>
void dequantize_row(const InT* q, float* y, index_t n, const float* scale, const int32_t* zp) {
    index_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp + i));
        __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(load8_i32(q + i), z));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, _mm256_loadu_ps(scale + i)));
    }
    for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp[i]) * scale[i];
}

}  // namespace

PYQUANT_QUANTIZE_EXPORTS

bool minmax(const float* x, index_t n, float* mn, float* mx) {
    __m256 lo = _mm256_set1_ps(x[0]), hi = lo, lo2 = lo, hi2 = lo, bad = _mm256_setzero_ps();
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        bad = _mm256_add_ps(bad, _mm256_add_ps(_mm256_mul_ps(a, _mm256_setzero_ps()), _mm256_mul_ps(b, _mm256_setzero_ps())));
        lo = _mm256_min_ps(lo, a);
        hi = _mm256_max_ps(hi, a);
        lo2 = _mm256_min_ps(lo2, b);
        hi2 = _mm256_max_ps(hi2, b);
    }
    alignas(32) float l[8], h[8];
    _mm256_store_ps(l, _mm256_min_ps(lo, lo2));
    _mm256_store_ps(h, _mm256_max_ps(hi, hi2));
    float rl = l[0], rh = h[0], tail_bad = 0.0f;
    for (int k = 1; k < 8; ++k) {
        rl = l[k] < rl ? l[k] : rl;
        rh = h[k] > rh ? h[k] : rh;
    }
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        rl = x[i] < rl ? x[i] : rl;
        rh = x[i] > rh ? x[i] : rh;
    }
    *mn = rl;
    *mx = rh;
    return all_finite(bad, tail_bad);
}

}  // namespace avx2
}  // namespace pyquant
