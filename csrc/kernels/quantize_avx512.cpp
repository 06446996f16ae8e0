// AVX-512 quantization: 64 elements per step, masked tails (no scalar remainder loop).
#include <immintrin.h>

#include <type_traits>

#include "kernels/quantize.hpp"

namespace pyquant {
namespace avx512 {
namespace {

// fpclass 0x99 = QNaN | SNaN | +Inf | -Inf; OR-ing masks keeps the check off the critical path.
// v = x / scale (vdivps, never a multiply by the reciprocal), clamp, round half to even, + zp.
inline __m512i quant16(__m512 x, __m512 scale, __m512 lo, __m512 hi, __m512i zp, __mmask16& bad) {
    bad |= _mm512_fpclass_ps_mask(x, 0x99);
    __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(x, scale), lo), hi);
    return _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
}

// Values are already in range, so the saturating narrowings are plain truncations here.
inline void store16(int8_t* y, __m512i v, __mmask16 m) { _mm512_mask_cvtsepi32_storeu_epi8(y, m, v); }
inline void store16(uint8_t* y, __m512i v, __mmask16 m) { _mm512_mask_cvtusepi32_storeu_epi8(y, m, v); }
inline void store16(int8_t* y, __m512i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm512_cvtsepi32_epi8(v)); }
inline void store16(uint8_t* y, __m512i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm512_cvtusepi32_epi8(v)); }

inline __mmask16 tail_mask(index_t left) { return static_cast<__mmask16>((1u << left) - 1u); }

// Params: a functor giving (scale, lo, hi, zp) vectors for element offset i under mask m.
template <class OutT, class Params>
bool quantize_loop(const float* x, OutT* y, index_t n, Params params) {
    __mmask16 bad = 0;
    __m512 sc, lo, hi;
    __m512i zp;
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int k = 0; k < 64; k += 16) {
            _mm_prefetch(reinterpret_cast<const char*>(x + i + k + kPrefetchFloats), _MM_HINT_T0);
            params(i + k, __mmask16(0xFFFF), sc, lo, hi, zp);
            store16(y + i + k, quant16(_mm512_loadu_ps(x + i + k), sc, lo, hi, zp, bad));
        }
    }
    for (; i + 16 <= n; i += 16) {
        params(i, __mmask16(0xFFFF), sc, lo, hi, zp);
        store16(y + i, quant16(_mm512_loadu_ps(x + i), sc, lo, hi, zp, bad));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        params(i, m, sc, lo, hi, zp);
        store16(y + i, quant16(_mm512_maskz_loadu_ps(m, x + i), sc, lo, hi, zp, bad), m);
    }
    return bad == 0;
}

template <class OutT>
bool quantize_run(const float* x, OutT* y, index_t n, const QuantRun& p) {
    const __m512 vsc = _mm512_set1_ps(p.scale), vlo = _mm512_set1_ps(p.lo), vhi = _mm512_set1_ps(p.hi);
    const __m512i vzp = _mm512_set1_epi32(p.zp);
    return quantize_loop(x, y, n, [&](index_t, __mmask16, __m512& sc, __m512& lo, __m512& hi, __m512i& zp) {
        sc = vsc; lo = vlo; hi = vhi; zp = vzp;
    });
}

template <class OutT>
bool quantize_row(const float* x, OutT* y, index_t n, const QuantRow& p) {
    return quantize_loop(x, y, n, [&](index_t i, __mmask16 m, __m512& sc, __m512& lo, __m512& hi, __m512i& zp) {
        sc = _mm512_maskz_loadu_ps(m, p.scale + i);
        lo = _mm512_maskz_loadu_ps(m, p.lo + i);
        hi = _mm512_maskz_loadu_ps(m, p.hi + i);
        zp = _mm512_maskz_loadu_epi32(m, p.zp + i);
    });
}

inline __m512i load16_i32(const int8_t* q, __mmask16 m) { return _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, q)); }
inline __m512i load16_i32(const uint8_t* q, __mmask16 m) { return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, q)); }
inline __m512i load16_i32(const int8_t* q) {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
}
inline __m512i load16_i32(const uint8_t* q) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
}

// Full vectors with plain loads and stores (masked ones are slower on some cores), the tail masked.
template <class InT, class Params>
void dequantize_loop(const InT* q, float* y, index_t n, Params params) {
    __m512 s;
    __m512i z;
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
        params(i, __mmask16(0xFFFF), s, z);
        __m512i v = load16_i32(q + i);
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)), s));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        params(i, m, s, z);
        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(load16_i32(q + i, m), z));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, s));
    }
}

template <class InT>
void dequantize_run(const InT* q, float* y, index_t n, float scale, int32_t zp) {
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512i vz = _mm512_set1_epi32(zp);
    dequantize_loop(q, y, n, [&](index_t, __mmask16, __m512& s, __m512i& z) { s = vs; z = vz; });
}

template <class InT>
void dequantize_row(const InT* q, float* y, index_t n, const float* scale, const int32_t* zp) {
    dequantize_loop(q, y, n, [&](index_t i, __mmask16 m, __m512& s, __m512i& z) {
        s = _mm512_maskz_loadu_ps(m, scale + i);
        z = _mm512_maskz_loadu_epi32(m, zp + i);
    });
}

}  // namespace

PYQUANT_QUANTIZE_EXPORTS

bool minmax(const float* x, index_t n, float* mn, float* mx) {
    const __m512 first = _mm512_set1_ps(x[0]);
    __m512 lo = first, hi = first, lo2 = first, hi2 = first, bad = _mm512_setzero_ps();
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(x + i + 16 + kPrefetchFloats), _MM_HINT_T0);
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        bad = _mm512_add_ps(bad, _mm512_add_ps(_mm512_mul_ps(a, _mm512_setzero_ps()), _mm512_mul_ps(b, _mm512_setzero_ps())));
        lo = _mm512_min_ps(lo, a);
        hi = _mm512_max_ps(hi, a);
        lo2 = _mm512_min_ps(lo2, b);
        hi2 = _mm512_max_ps(hi2, b);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : tail_mask(n - i);
        __m512 a = _mm512_mask_loadu_ps(first, m, x + i);  // masked-off lanes repeat x[0]: neutral for min/max
        bad = _mm512_add_ps(bad, _mm512_mul_ps(a, _mm512_setzero_ps()));
        lo = _mm512_min_ps(lo, a);
        hi = _mm512_max_ps(hi, a);
    }
    *mn = _mm512_reduce_min_ps(_mm512_min_ps(lo, lo2));
    *mx = _mm512_reduce_max_ps(_mm512_max_ps(hi, hi2));
    return _mm512_reduce_add_ps(bad) == 0.0f;
}

}  // namespace avx512
}  // namespace pyquant
