// col2im (col2im.hpp) on AVX-512: 16-lane block adds with masked tails and the AVX-512 GEMM epilogue.
#include "kernels/col2im.hpp"
#include "kernels/gemm_avx512_common.hpp"

namespace pyquant {
namespace avx512 {
namespace {

inline __mmask16 tail_mask(index_t left) {
    return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

struct Ops {
    static void add(int32_t* acc, const int32_t* src, index_t n) {
        for (index_t j = 0; j < n; j += 16) {
            const __mmask16 k = tail_mask(n - j);
            _mm512_mask_storeu_epi32(acc + j, k, _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, acc + j),
                                                                  _mm512_maskz_loadu_epi32(k, src + j)));
        }
    }
    static void add(float* acc, const float* src, index_t n) {
        for (index_t j = 0; j < n; j += 16) {
            const __mmask16 k = tail_mask(n - j);
            _mm512_mask_storeu_ps(acc + j, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, acc + j), _mm512_maskz_loadu_ps(k, src + j)));
        }
    }
    static void epilogue_row(const int32_t* d, index_t n, const GemmOut& o, index_t m) {
        epilogue_row_avx512(d, n, o, m, 0);
    }
    static void activate_row(const float* d, const float* bias, index_t n, const Epilogue& e, float* dst) {
        for (index_t j = 0; j < n; j += 16) {
            const __mmask16 k = tail_mask(n - j);
            const __m512 y = _mm512_add_ps(_mm512_maskz_loadu_ps(k, d + j), _mm512_maskz_loadu_ps(k, bias + j));
            _mm512_mask_storeu_ps(dst + j, k, activate_avx512(y, e));
        }
    }
};

}  // namespace

void col2im_rows(const Col2ImCall& c, index_t r0, index_t r1) { col2im_rows_impl<Ops>(c, r0, r1); }

}  // namespace avx512
}  // namespace pyquant
