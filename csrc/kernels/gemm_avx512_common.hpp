// zmm helpers shared by gemm_avx512.cpp and gemm_avx512vnni.cpp: the fused epilogue of one tile row with
// masked tails (corrections, float epilogue of epilogue_avx512.hpp, requantization, narrowing) and the tile's
// vector type. Include only from files compiled with AVX-512 flags. Everything is in an unnamed namespace (one
// copy per ISA file).
#pragma once
#include <immintrin.h>

#include "kernels/epilogue_avx512.hpp"
#include "kernels/gemm.hpp"

namespace pyquant {
namespace {

struct Zmm {  // the vector type of SimdTile (gemm.hpp) on AVX-512
    using V = __m512i;
    static V zero() { return _mm512_setzero_si512(); }
    static V load(const void* p) { return _mm512_loadu_si512(p); }
    static void store(int32_t* p, V v) { _mm512_store_si512(p, v); }
    static V add(V a, V b) { return _mm512_add_epi32(a, b); }
};

inline void epilogue_row_avx512(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
    if (o.mode == OutMode::FixedPoint) {  // integer-only rule: the scalar form is the definition
        epilogue_row_scalar(d, 0, nr, o, m, n0);
        return;
    }
    const __m512i rt = _mm512_set1_epi32(o.zb ? o.row_term[m] : 0);
    for (index_t j = 0; j < nr; j += 16) {
        const index_t n = n0 + j;
        const __mmask16 k = nr - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (nr - j)) - 1u);
        __m512i acc = _mm512_maskz_loadu_epi32(k, d + j);
        if (o.col_corr) acc = _mm512_add_epi32(acc, _mm512_maskz_loadu_epi32(k, o.col_corr + n));
        if (o.zb) acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(rt, _mm512_maskz_loadu_epi32(k, o.zb + n)));
        if (o.mode == OutMode::Int32) {
            _mm512_mask_storeu_epi32(static_cast<int32_t*>(o.out) + o.row(m) + n, k, acc);
            continue;
        }
        __m512 y = epilogue_float_avx512(acc, _mm512_maskz_loadu_ps(k, o.scale + n), _mm512_maskz_loadu_ps(k, o.bias + n), o.epi);
        if (o.mode == OutMode::Float) {
            _mm512_mask_storeu_ps(static_cast<float*>(o.out) + o.row(m) + n, k, y);
        } else {
            __m512i q = requantize_avx512(y, o.epi);  // inside [qmin, qmax]: the narrowing never saturates
            if (o.out_u8) _mm512_mask_cvtusepi32_storeu_epi8(static_cast<uint8_t*>(o.out) + o.row(m) + n, k, q);
            else _mm512_mask_cvtsepi32_storeu_epi8(static_cast<int8_t*>(o.out) + o.row(m) + n, k, q);
        }
    }
}

}  // namespace
}  // namespace pyquant
