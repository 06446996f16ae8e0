// int8 GEMM, AVX512-VNNI: zmm vpdpbusd (u8 x s8, four products summed into int32 with no intermediate
// saturation), exact for every input. int8 activations arrive as a + 128 (uint8), corrected by column sums.
#include "kernels/gemm_avx512_common.hpp"


namespace pyquant {
namespace avx512vnni {
namespace {

// MR x (16 * NV) tile held in MR * NV zmm accumulators, NV weight vectors and one broadcast.
template <int MR_, int NV>
struct KernelT {
    static constexpr int MR = MR_, NR = 16 * NV, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    template <int R>
    static void tile_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        __m512i acc[R][NV];
        for (int i = 0; i < R; ++i)
            for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_si512();
        for (index_t g = 0; g < groups; ++g) {
            __m512i bv[NV];
            for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + (g * NV + j) * 64);
            for (int i = 0; i < R; ++i) {
                if constexpr (NV == 2) {
                    // Inline asm row step: keeps the accumulators in registers whatever GCC's scheduler does.
                    __m512i va;
                    __asm__("vpbroadcastd %[am], %[va]\n\t"
                            "vpdpbusd %[b0], %[va], %[c0]\n\t"
                            "vpdpbusd %[b1], %[va], %[c1]"
                            : [c0] "+v"(acc[i][0]), [c1] "+v"(acc[i][1]), [va] "=&v"(va)
                            : [am] "m"(*reinterpret_cast<const int32_t*>(a + i * lda + g * 4)), [b0] "v"(bv[0]),
                              [b1] "v"(bv[1]));
                } else {
                    const __m512i va = _mm512_set1_epi32(load_a32(a + i * lda + g * 4));
                    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], va, bv[j]);
                }
            }
        }
        for (int i = 0; i < R; ++i)
            for (int j = 0; j < NV; ++j) _mm512_store_si512(c + i * NR + 16 * j, acc[i][j]);
    }
    template <int R = MR>
    static void tile_dispatch(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        if constexpr (R >= 1) {
            if (mr == R) return tile_r<R>(a, lda, b, groups, c);
            if constexpr (R > 1) return tile_dispatch<R - 1>(mr, a, lda, b, groups, c);
        }
    }
    static void tile(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        tile_dispatch<MR>(mr, a, lda, b, groups, c);
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx512(d, nr, o, m, n0);
    }
};
// 8 x 32: 16 accumulators. With intrinsics, GCC 12 spilled the accumulators of wider tiles (6 x 64, 8 x 48)
// inside the loop (read in the assembly; half speed); with the asm row step, 10 or 12 rows measured the same
// as 8 in the register probe, and 8 wastes less on row tails.
using Kernel = KernelT<8, 2>;

}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
}

// Inner-loop throughput probe (see probe_kernel).
double peak_probe(int, index_t iters) { return probe_kernel<Kernel>(iters); }

}  // namespace avx512vnni
}  // namespace pyquant
