// float32 implicit-GEMM phases (convf32.hpp) on AVX2 + FMA: 6 x 16 tiles (12 ymm accumulators), one broadcast
// and two fused multiply-adds per row and k; the epilogue of epilogue_avx2.hpp, tails in the scalar form.
#include <immintrin.h>

#include "kernels/convf32.hpp"
#include "kernels/epilogue_avx2.hpp"

namespace pyquant {
namespace avx2 {
namespace {

struct Kernel {
    static constexpr int MR = 6, NR = 16;
    template <int R>
    static void tile(const float* const* p, index_t taps, index_t seg, const float* b, float* t) {
        __m256 acc[R][2];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (index_t j = 0; j < taps; ++j) {
            const float* row[R];
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) row[i] = p[i * taps + j];
            for (index_t k = 0; k < seg; ++k, b += NR) {
                const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 16
                for (int i = 0; i < R; ++i) {
                    const __m256 a = _mm256_broadcast_ss(row[i] + k);
                    acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
                }
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            _mm256_store_ps(t + i * NR, acc[i][0]);
            _mm256_store_ps(t + i * NR + 8, acc[i][1]);
        }
    }
    static void store_row(const float* t, const ConvF32Call& c, float* dst, index_t nr, index_t n0) {
        index_t j = 0;
        for (; j + 8 <= nr; j += 8)
            _mm256_storeu_ps(dst + j, activate_avx2(_mm256_add_ps(_mm256_load_ps(t + j), _mm256_loadu_ps(c.bias + n0 + j)), c.epi));
        for (; j < nr; ++j) dst[j] = activate(t[j] + c.bias[n0 + j], c.epi.act, c.epi.alpha);
    }
};

}  // namespace

void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    convf32_block_generic<Kernel>(c, m0, m1, p0, p1);
}
index_t convf32_nr() { return Kernel::NR; }

}  // namespace avx2
}  // namespace pyquant
