// ymm helpers shared by gemm_avx2.cpp and gemm_avxvnni.cpp: the fused epilogue of one tile row (corrections,
// float epilogue of epilogue_avx2.hpp, requantization, narrowing) and the tile's vector type. Include only from files
// compiled with AVX2 flags. Everything is in an unnamed namespace (one private copy per ISA file).
#pragma once
#include <immintrin.h>

#include "kernels/epilogue_avx2.hpp"
#include "kernels/gemm.hpp"

namespace pyquant {
namespace {

inline __m256i loadu8x32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

struct Ymm {  // the vector type of SimdTile (gemm.hpp) on AVX2 / AVX-VNNI
    using V = __m256i;
    static V zero() { return _mm256_setzero_si256(); }
    static V load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    static void store(int32_t* p, V v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
    static V add(V a, V b) { return _mm256_add_epi32(a, b); }
};

inline void store8_narrow(__m256i v, const GemmOut& o, index_t m, index_t n) {
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));  // in range: exact
    if (o.out_u8)
        _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(o.out) + o.row(m) + n), _mm_packus_epi16(w, w));
    else
        _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<int8_t*>(o.out) + o.row(m) + n), _mm_packs_epi16(w, w));
}

// Epilogue of one tile row: 8 columns per step, then the scalar form (operation-for-operation identical).
inline void epilogue_row_avx2(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
    if (o.mode == OutMode::FixedPoint) {  // integer-only rule: the scalar form is the definition
        epilogue_row_scalar(d, 0, nr, o, m, n0);
        return;
    }
    index_t j = 0;
    const __m256i rt = _mm256_set1_epi32(o.zb ? o.row_term[m] : 0);
    for (; j + 8 <= nr; j += 8) {
        const index_t n = n0 + j;
        __m256i acc = loadu8x32(d + j);
        if (o.col_corr) acc = _mm256_add_epi32(acc, loadu8x32(o.col_corr + n));
        if (o.zb) acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(rt, loadu8x32(o.zb + n)));
        if (o.mode == OutMode::Int32) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(o.out) + o.row(m) + n), acc);
            continue;
        }
        __m256 y = epilogue_float_avx2(acc, _mm256_loadu_ps(o.scale + n), _mm256_loadu_ps(o.bias + n), o.epi);
        if (o.mode == OutMode::Float)
            _mm256_storeu_ps(static_cast<float*>(o.out) + o.row(m) + n, y);
        else
            store8_narrow(requantize_avx2(y, o.epi), o, m, n);
    }
    epilogue_row_scalar(d, j, nr, o, m, n0);
}

}  // namespace
}  // namespace pyquant
