// float32 implicit-GEMM phases (convf32.hpp) on AVX-512: 8 x 32 tiles (16 zmm accumulators); the epilogue of
// epilogue_avx512.hpp with masked tails.
#include <immintrin.h>

#include "kernels/convf32.hpp"
#include "kernels/epilogue_avx512.hpp"

namespace pyquant {
namespace avx512 {
namespace {

struct Zmm {
    using T = __m512;
    static constexpr int L = 16;
    static T zero() { return _mm512_setzero_ps(); }
    static T load(const float* p) { return _mm512_loadu_ps(p); }
    static T set1(float v) { return _mm512_set1_ps(v); }
    static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static void store(float* p, T v) { _mm512_store_ps(p, v); }
};

struct Kernel : SimdConvTile<Zmm> {
    static constexpr int MR = 8;
    static void store_row(const float* t, const GemmOut& o, float* dst, index_t nr, index_t n0) {
        for (index_t j = 0; j < nr; j += 16) {
            const __mmask16 k = nr - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (nr - j)) - 1u);
            const __m512 y = _mm512_add_ps(_mm512_load_ps(t + j), _mm512_maskz_loadu_ps(k, o.bias + n0 + j));
            _mm512_mask_storeu_ps(dst + j, k, activate_avx512(y, o.epi));
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
