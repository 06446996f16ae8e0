// AVX-512 form of epilogue.hpp, operation for operation (include only from *_avx512.cpp / *_avx512vnni.cpp files).
#pragma once
#include <immintrin.h>

#include "kernels/epilogue.hpp"

namespace pyquant {
namespace {

struct Avx512Ops {  // the operation set of tanh_rational_v / sigmoid_v (epilogue.hpp)
    using T = __m512;
    static T set1(float v) { return _mm512_set1_ps(v); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
    static T div(T a, T b) { return _mm512_div_ps(a, b); }
    static T min(T a, T b) { return _mm512_min_ps(a, b); }
    static T max(T a, T b) { return _mm512_max_ps(a, b); }
};

inline __m512 activate_avx512(__m512 y, const Epilogue& e) {
    switch (e.act) {
        case Activation::Identity: return y;
        case Activation::Relu: return _mm512_max_ps(y, _mm512_setzero_ps());
        case Activation::LeakyRelu:
            return _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ), y,
                                      _mm512_set1_ps(e.alpha));
        case Activation::Tanh: return tanh_rational_v<Avx512Ops>(y);
        case Activation::Sigmoid: return sigmoid_v<Avx512Ops>(y);
    }
    return y;
}

inline __m512 epilogue_float_avx512(__m512i acc, __m512 scale, __m512 bias, const Epilogue& e) {
    return activate_avx512(_mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale), bias), e);
}

// y / out_scale (one division, section 1); int32 results already inside [qmin, qmax], so narrowing them to
// 8 bits never saturates.
inline __m512i requantize_avx512(__m512 y, const Epilogue& e) {
    __m512 v = _mm512_div_ps(y, _mm512_set1_ps(e.out_scale));
    v = _mm512_max_ps(v, _mm512_set1_ps(static_cast<float>(e.qmin - e.out_zp)));
    v = _mm512_min_ps(v, _mm512_set1_ps(static_cast<float>(e.qmax - e.out_zp)));
    return _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm512_set1_epi32(e.out_zp));
}

}  // namespace
}  // namespace pyquant
