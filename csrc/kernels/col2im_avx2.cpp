// col2im (col2im.hpp) on AVX2: 8-lane block adds and the AVX2 GEMM epilogue; tails in the scalar form.
#include "kernels/col2im.hpp"
#include "kernels/gemm_avx2_common.hpp"

namespace pyquant {
namespace avx2 {
namespace {

struct Ops {
    static void add(int32_t* acc, const int32_t* src, index_t n) {
        index_t j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256i* a = reinterpret_cast<__m256i*>(acc + j);
            _mm256_storeu_si256(a, _mm256_add_epi32(_mm256_loadu_si256(a), loadu8x32(src + j)));
        }
        for (; j < n; ++j) acc[j] += src[j];
    }
    static void add(float* acc, const float* src, index_t n) {
        index_t j = 0;
        for (; j + 8 <= n; j += 8) _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), _mm256_loadu_ps(src + j)));
        for (; j < n; ++j) acc[j] += src[j];
    }
    static void epilogue_row(const int32_t* d, index_t n, const GemmOut& o, index_t m) {
        epilogue_row_avx2(d, n, o, m, 0);
    }
    static void activate_row(const float* d, const float* bias, index_t n, const Epilogue& e, float* dst) {
        index_t j = 0;
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(dst + j, activate_avx2(_mm256_add_ps(_mm256_loadu_ps(d + j), _mm256_loadu_ps(bias + j)), e));
        for (; j < n; ++j) dst[j] = activate(d[j] + bias[j], e.act, e.alpha);
    }
};

}  // namespace

void col2im_rows(const Col2ImCall& c, index_t r0, index_t r1) { col2im_rows_impl<Ops>(c, r0, r1); }

}  // namespace avx2
}  // namespace pyquant
