// AVX2 form of epilogue.hpp, operation for operation (include only from *_avx2.cpp / *_avxvnni.cpp files).
#pragma once
#include <immintrin.h>

#include "kernels/epilogue.hpp"

namespace pyquant {
namespace {

struct Avx2Ops {  // the operation set of tanh_rational_v / sigmoid_v (epilogue.hpp)
    using T = __m256;
    static T set1(float v) { return _mm256_set1_ps(v); }
    static T add(T a, T b) { return _mm256_add_ps(a, b); }
    static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
    static T div(T a, T b) { return _mm256_div_ps(a, b); }
    static T min(T a, T b) { return _mm256_min_ps(a, b); }
    static T max(T a, T b) { return _mm256_max_ps(a, b); }
};

inline __m256 activate_avx2(__m256 y, const Epilogue& e) {
    switch (e.act) {
        case Activation::Identity: return y;
        case Activation::Relu: return _mm256_max_ps(y, _mm256_setzero_ps());
        case Activation::LeakyRelu:
            return _mm256_blendv_ps(y, _mm256_mul_ps(y, _mm256_set1_ps(e.alpha)),
                                    _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
        case Activation::Tanh: return tanh_rational_v<Avx2Ops>(y);
        case Activation::Sigmoid: return sigmoid_v<Avx2Ops>(y);
    }
    return y;
}

inline __m256 epilogue_float_avx2(__m256i acc, __m256 scale, __m256 bias, const Epilogue& e) {
    return activate_avx2(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale), bias), e);
}

// y / out_scale (one division, section 1); int32 results already inside [qmin, qmax], so narrowing them to
// 8 bits never saturates.
inline __m256i requantize_avx2(__m256 y, const Epilogue& e) {
    __m256 v = _mm256_div_ps(y, _mm256_set1_ps(e.out_scale));
    v = _mm256_max_ps(v, _mm256_set1_ps(static_cast<float>(e.qmin - e.out_zp)));
    v = _mm256_min_ps(v, _mm256_set1_ps(static_cast<float>(e.qmax - e.out_zp)));
    return _mm256_add_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(e.out_zp));
}

}  // namespace
}  // namespace pyquant
