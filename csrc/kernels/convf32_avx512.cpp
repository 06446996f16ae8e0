// float32 implicit-GEMM phases (convf32.hpp) on AVX-512: 8 x 32 tiles (16 zmm accumulators), one broadcast and
// two fused multiply-adds per row and k; the epilogue of epilogue_avx512.hpp with masked tails.
#include <immintrin.h>

#include "kernels/convf32.hpp"
#include "kernels/epilogue_avx512.hpp"

namespace pyquant {
namespace avx512 {
namespace {

struct Kernel {
    static constexpr int MR = 8, NR = 32;
    template <int R>
    static void tile(const float* const* p, index_t taps, index_t seg, const float* b, float* t) {
        __m512 acc[R][2];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (index_t j = 0; j < taps; ++j) {
            const float* row[R];
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) row[i] = p[i * taps + j];
            for (index_t k = 0; k < seg; ++k, b += NR) {
                const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 16
                for (int i = 0; i < R; ++i) {
                    const __m512 a = _mm512_set1_ps(row[i][k]);
                    acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
                }
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            _mm512_store_ps(t + i * NR, acc[i][0]);
            _mm512_store_ps(t + i * NR + 16, acc[i][1]);
        }
    }
    static void store_row(const float* t, const ConvF32Call& c, float* dst, index_t nr, index_t n0) {
        for (index_t j = 0; j < nr; j += 16) {
            const __mmask16 k = nr - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (nr - j)) - 1u);
            const __m512 y = _mm512_add_ps(_mm512_load_ps(t + j), _mm512_maskz_loadu_ps(k, c.bias + n0 + j));
            _mm512_mask_storeu_ps(dst + j, k, activate_avx512(y, c.epi));
        }
    }
};

}  // namespace

void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    convf32_block_generic<Kernel>(c, m0, m1, p0, p1);
}
index_t convf32_nr() { return Kernel::NR; }

}  // namespace avx512
}  // namespace pyquant
