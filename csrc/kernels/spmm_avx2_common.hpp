// Helpers of the 256-bit sparse kernels (spmm_avx2.cpp, spmm_avxvnni.cpp); include only from those files.
#pragma once
#include <immintrin.h>

#include "kernels/epilogue_avx2.hpp"
#include "kernels/spmm.hpp"

namespace pyquant {
namespace {

PYQUANT_SPMM_INLINE __m256i tail_mask(index_t rem) {  // lanes i < rem set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Epilogue and store of one row's 2 * NG accumulators (columns c0 .. c0 + width of output row r). A (the
// activation) and Q (requantize) are template constants and `ep` a local copy whose act is A: the shared
// epilogue's switch folds away and nothing is reloaded after the output stores.
template <int NG, Activation A, bool Q>
PYQUANT_SPMM_INLINE void store_s8_row(const __m256i* acc, index_t r, index_t c0, index_t width,
                                      const float* row_scale, float x_scale, const float* bias, const Epilogue& ep,
                                      const SpmmS8Out& o_) {
    const __m256 sc = _mm256_set1_ps(row_scale[r] * x_scale), b = _mm256_set1_ps(bias ? bias[r] : 0.0f);
    const index_t o = o_.at(r, c0);
#pragma GCC unroll 4
    for (int v = 0; v < 2 * NG; ++v) {
        index_t rem = width - 8 * v;
        if (rem <= 0) break;
        __m256 yv = epilogue_float_avx2(acc[v], sc, b, ep);
        if constexpr (!Q) {
            if (rem >= 8)
                _mm256_storeu_ps(o_.y_f32 + o + 8 * v, yv);
            else
                _mm256_maskstore_ps(o_.y_f32 + o + 8 * v, tail_mask(rem), yv);
        } else {
            // int32 already in [qmin, qmax]: narrow to 16 then 8 bits without saturating anything
            __m256i q32 = requantize_avx2(yv, ep);
            __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q32), _mm256_extracti128_si256(q32, 1));
            __m128i q8 = o_.is_u8 ? _mm_packus_epi16(q16, q16) : _mm_packs_epi16(q16, q16);
            char* dst = static_cast<char*>(o_.y_q) + o + 8 * v;
            if (rem >= 8) {
                _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), q8);
            } else {
                alignas(16) char b8[16];
                _mm_store_si128(reinterpret_cast<__m128i*>(b8), q8);
                for (index_t j = 0; j < rem; ++j) dst[j] = b8[j];
            }
        }
    }
}

}  // namespace
}  // namespace pyquant
