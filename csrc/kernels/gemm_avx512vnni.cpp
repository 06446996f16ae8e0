// int8 GEMM, AVX512-VNNI: zmm vpdpbusd (u8 x s8, four products summed into int32 with no intermediate
// saturation), exact for every input. int8 activations arrive as a + 128 (uint8), corrected by column sums.
#include "kernels/gemm_avx512_common.hpp"

namespace pyquant {
namespace avx512vnni {
namespace {

// 8 x 32 tile: 16 accumulators + 2 weight vectors + 1 broadcast (of 32 zmm registers).
struct Kernel {
    static constexpr int MR = 8, NR = 32, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    template <int R>
    static void tile_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        __m512i acc[R][2];
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
        for (index_t g = 0; g < groups; ++g) {
            const __m512i b0 = _mm512_loadu_si512(b + g * 128);
            const __m512i b1 = _mm512_loadu_si512(b + g * 128 + 64);
            for (int i = 0; i < R; ++i) {
                const __m512i va = _mm512_set1_epi32(load_a32(a + i * lda + g * 4));
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], va, b0);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], va, b1);
            }
        }
        for (int i = 0; i < R; ++i) {
            _mm512_store_si512(c + i * NR, acc[i][0]);
            _mm512_store_si512(c + i * NR + 16, acc[i][1]);
        }
    }
    static void tile(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        switch (mr) {
            case 8: tile_r<8>(a, lda, b, groups, c); break;
            case 7: tile_r<7>(a, lda, b, groups, c); break;
            case 6: tile_r<6>(a, lda, b, groups, c); break;
            case 5: tile_r<5>(a, lda, b, groups, c); break;
            case 4: tile_r<4>(a, lda, b, groups, c); break;
            case 3: tile_r<3>(a, lda, b, groups, c); break;
            case 2: tile_r<2>(a, lda, b, groups, c); break;
            default: tile_r<1>(a, lda, b, groups, c); break;
        }
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx512(d, nr, o, m, n0);
    }
};

}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
}

// Throughput probe: 16 independent zmm vpdpbusd chains; returns the multiply-accumulates done.
double peak_probe(int which, index_t iters) {
    __m512i acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
    __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
    for (index_t it = 0; it < iters; ++it) {
        __asm__ volatile("" : "+v"(x), "+v"(y));
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], x, y);
    }
    __m512i s = acc[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_epi32(s, acc[i]);
    volatile int32_t sink = _mm512_reduce_add_epi32(s);
    (void)sink;
    return static_cast<double>(iters) * 16.0 * 64.0;
}

}  // namespace avx512vnni
}  // namespace pyquant
