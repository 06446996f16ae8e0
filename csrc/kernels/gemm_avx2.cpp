// int8 GEMM, AVX2: the exact int16 path (vpmaddwd on activations and weights widened to int16) and the fast
// u8 x s8 path (vpmaddubsw + vpmaddwd(1)), which pyquant runs only on weights packed with every adjacent pair
// satisfying |b0| + |b1| <= 128 (violating pairs split into an exact sparse correction at pack time), where
// the int16 pair sums provably cannot saturate (255 * 128 = 32640 <= 32767).
#include "kernels/gemm_avx2_common.hpp"

namespace pyquant {
namespace avx2 {
namespace {

// 6 x 16 tile: 12 accumulators + 2 weight vectors + 1 broadcast + 1 product = 16 ymm registers.
struct ExactKernel {
    static constexpr int MR = 6, NR = 16, G = 2;
    using AT = int16_t;
    using BT = int16_t;
    template <int R>
    static void tile_r(const int16_t* a, index_t lda, const int16_t* b, index_t groups, int32_t* c) {
        __m256i acc[R][2];
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        for (index_t g = 0; g < groups; ++g) {
            const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 32));
            const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 32 + 16));
            for (int i = 0; i < R; ++i) {
                const __m256i va = _mm256_set1_epi32(load_a32(a + i * lda + g * 2));
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(va, b0));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(va, b1));
            }
        }
        for (int i = 0; i < R; ++i) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(c + i * NR), acc[i][0]);
            _mm256_store_si256(reinterpret_cast<__m256i*>(c + i * NR + 8), acc[i][1]);
        }
    }
    static void tile(int mr, const int16_t* a, index_t lda, const int16_t* b, index_t groups, int32_t* c) {
        switch (mr) {
            case 6: tile_r<6>(a, lda, b, groups, c); break;
            case 5: tile_r<5>(a, lda, b, groups, c); break;
            case 4: tile_r<4>(a, lda, b, groups, c); break;
            case 3: tile_r<3>(a, lda, b, groups, c); break;
            case 2: tile_r<2>(a, lda, b, groups, c); break;
            default: tile_r<1>(a, lda, b, groups, c); break;
        }
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx2(d, nr, o, m, n0);
    }
};

// 4 x 16 tile: 8 accumulators + 2 weights + broadcast + ones + 2 temporaries.
struct FastKernel {
    static constexpr int MR = 4, NR = 16, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    template <int R>
    static void tile_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        __m256i acc[R][2];
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        for (index_t g = 0; g < groups; ++g) {
            const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 64));
            const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 64 + 32));
            for (int i = 0; i < R; ++i) {
                const __m256i va = _mm256_set1_epi32(load_a32(a + i * lda + g * 4));
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(va, b0), ones));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(va, b1), ones));
            }
        }
        for (int i = 0; i < R; ++i) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(c + i * NR), acc[i][0]);
            _mm256_store_si256(reinterpret_cast<__m256i*>(c + i * NR + 8), acc[i][1]);
        }
    }
    static void tile(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        switch (mr) {
            case 4: tile_r<4>(a, lda, b, groups, c); break;
            case 3: tile_r<3>(a, lda, b, groups, c); break;
            case 2: tile_r<2>(a, lda, b, groups, c); break;
            default: tile_r<1>(a, lda, b, groups, c); break;
        }
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx2(d, nr, o, m, n0);
    }
};

}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<ExactKernel>(b, a, o, m0, m1, p0, p1);
}

void gemm_block_fast(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<FastKernel>(b, a, o, m0, m1, p0, p1);
}

// Inner-instruction throughput probe: `iters` rounds over 12 independent accumulators, operands in registers.
// Returns the multiply-accumulates done (the caller times the call). which: 0 = vpmaddwd + vpaddd,
// 1 = vpmaddubsw + vpmaddwd + vpaddd.
double peak_probe(int which, index_t iters) {
    __m256i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_epi32(i);
    __m256i x = _mm256_set1_epi16(3), y = _mm256_set1_epi16(5);
    const __m256i ones = _mm256_set1_epi16(1);
    if (which == 0) {
        for (index_t it = 0; it < iters; ++it) {
            __asm__ volatile("" : "+x"(x), "+x"(y));
            for (int i = 0; i < 12; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, y));
        }
    } else {
        for (index_t it = 0; it < iters; ++it) {
            __asm__ volatile("" : "+x"(x), "+x"(y));
            for (int i = 0; i < 12; ++i)
                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), ones));
        }
    }
    __m256i s = acc[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_epi32(s, acc[i]);
    volatile int32_t sink = _mm256_extract_epi32(s, 0);
    (void)sink;
    return static_cast<double>(iters) * 12.0 * (which == 0 ? 16.0 : 32.0);
}

}  // namespace avx2
}  // namespace pyquant
