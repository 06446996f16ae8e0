// AVX2 form of epilogue.hpp, operation for operation (include only from *_avx2.cpp / *_avxvnni.cpp files).
#pragma once
#include <immintrin.h>

#include "kernels/epilogue.hpp"

namespace pyquant {
namespace {

inline __m256 tanh_rational_avx2(__m256 x) {
    using namespace tanh_coef;
    x = _mm256_max_ps(x, _mm256_set1_ps(-clamp));
    x = _mm256_min_ps(x, _mm256_set1_ps(clamp));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(a13);
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a11));
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a9));
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a7));
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a5));
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a3));
    p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(a1));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(b6);
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(b4));
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(b2));
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(b0));
    return _mm256_div_ps(p, q);
}

inline __m256 activate_avx2(__m256 y, const Epilogue& e) {
    switch (e.act) {
        case Activation::Identity: return y;
        case Activation::Relu: return _mm256_max_ps(y, _mm256_setzero_ps());
        case Activation::LeakyRelu:
            return _mm256_blendv_ps(y, _mm256_mul_ps(y, _mm256_set1_ps(e.alpha)),
                                    _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
        case Activation::Tanh: return tanh_rational_avx2(y);
        case Activation::Sigmoid: {
            const __m256 half = _mm256_set1_ps(0.5f);
            return _mm256_add_ps(half, _mm256_mul_ps(half, tanh_rational_avx2(_mm256_mul_ps(half, y))));
        }
    }
    return y;
}

inline __m256 epilogue_float_avx2(__m256i acc, __m256 scale, __m256 bias, const Epilogue& e) {
    return activate_avx2(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale), bias), e);
}

// int32 results already inside [qmin, qmax], so narrowing them to 8 bits never saturates.
inline __m256i requantize_avx2(__m256 y, const Epilogue& e) {
    __m256 v = _mm256_mul_ps(y, _mm256_set1_ps(e.out_inv_scale));
    v = _mm256_max_ps(v, _mm256_set1_ps(static_cast<float>(e.qmin - e.out_zp)));
    v = _mm256_min_ps(v, _mm256_set1_ps(static_cast<float>(e.qmax - e.out_zp)));
    return _mm256_add_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(e.out_zp));
}

}  // namespace
}  // namespace pyquant
