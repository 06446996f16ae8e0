// A strided 2-D transpose shared by the bindings and the kernels.
#pragma once
#include <algorithm>
#include <type_traits>

#ifdef __SSE2__
#include <immintrin.h>
#endif

#include "common.hpp"

namespace pyquant {

// dst (C x R, row stride dst_ld) = src (R x C, row stride src_ld)^T: the transposed forms of spmm_s8 (X^T in,
// Y^T out, through per-task tiles in cache), col2im's transposed taps and _core.transpose. Pure data movement,
// so one portable version serves every ISA path: float32 in 4 x 4 SSE blocks (x86-64's baseline), four output rows written side by
// side along the source rows (a scalar element loop ran at ~0.7 values per cycle); other types element-wise.
template <class T>
inline void transpose_into(const T* src, index_t src_ld, index_t R, index_t C, T* dst, index_t dst_ld) {
    index_t c0 = 0;
#ifdef __SSE2__
    if constexpr (std::is_same_v<T, float>) {
        for (; c0 + 4 <= C; c0 += 4) {
            index_t r = 0;
            for (; r + 4 <= R; r += 4) {
                __m128 a = _mm_loadu_ps(src + r * src_ld + c0), b = _mm_loadu_ps(src + (r + 1) * src_ld + c0);
                __m128 c = _mm_loadu_ps(src + (r + 2) * src_ld + c0), d = _mm_loadu_ps(src + (r + 3) * src_ld + c0);
                _MM_TRANSPOSE4_PS(a, b, c, d);
                _mm_storeu_ps(dst + c0 * dst_ld + r, a);
                _mm_storeu_ps(dst + (c0 + 1) * dst_ld + r, b);
                _mm_storeu_ps(dst + (c0 + 2) * dst_ld + r, c);
                _mm_storeu_ps(dst + (c0 + 3) * dst_ld + r, d);
            }
            for (; r < R; ++r)
                for (index_t c = c0; c < c0 + 4; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
        }
    }
#endif
    constexpr index_t B = 16;  // the rest (or everything) in 16 x 16 blocks
    for (index_t r0 = 0; r0 < R; r0 += B) {
        const index_t r1 = std::min(R, r0 + B);
        for (index_t cb = c0; cb < C; cb += B) {
            const index_t c1 = std::min(C, cb + B);
            for (index_t c = cb; c < c1; ++c)
                for (index_t r = r0; r < r1; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
        }
    }
}

}  // namespace pyquant
