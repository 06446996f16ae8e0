// float32 implicit-GEMM phases (convf32.hpp) on AVX2 + FMA: 6 x 16 tiles (12 ymm accumulators); the epilogue of
// epilogue_avx2.hpp, tails in the scalar form.
#include <immintrin.h>

#include "kernels/convf32.hpp"
#include "kernels/epilogue_avx2.hpp"

namespace pyquant {
namespace avx2 {
namespace {

struct Ymm {
    using T = __m256;
    static constexpr int L = 8;
    static T zero() { return _mm256_setzero_ps(); }
    static T load(const float* p) { return _mm256_loadu_ps(p); }
    static T set1(float v) { return _mm256_set1_ps(v); }
    static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
    static void store(float* p, T v) { _mm256_store_ps(p, v); }
};

struct Kernel : SimdConvTile<Ymm> {
    static constexpr int MR = 6;
    static void store_row(const float* t, const GemmOut& o, float* dst, index_t nr, index_t n0) {
        index_t j = 0;
        for (; j + 8 <= nr; j += 8)
            _mm256_storeu_ps(dst + j, activate_avx2(_mm256_add_ps(_mm256_load_ps(t + j), _mm256_loadu_ps(o.bias + n0 + j)), o.epi));
        for (; j < nr; ++j) dst[j] = activate(t[j] + o.bias[n0 + j], o.epi.act, o.epi.alpha);
    }
};

}  // namespace

void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    convf32_block_generic<Kernel>(c, m0, m1, p0, p1);
}
index_t convf32_nr() { return Kernel::NR; }

}  // namespace avx2
}  // namespace pyquant
