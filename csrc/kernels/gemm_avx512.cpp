// int8 GEMM, AVX-512BW without VNNI: the exact int16 path on zmm (vpmaddwd + vpaddd), activations and
// weights widened to int16 (pair sums of u8 x s8 products never saturate in int32).
#include "kernels/gemm_avx512_common.hpp"

namespace pyquant {
namespace avx512 {
namespace {

// 8 x 32 tile: 16 accumulators + 2 weight vectors + broadcast + product, of 32 zmm registers.
struct Kernel {
    static constexpr int MR = 8, NR = 32, G = 2;
    using AT = int16_t;
    using BT = int16_t;
    template <int R>
    static void tile_r(const int16_t* a, index_t lda, const int16_t* b, index_t groups, int32_t* c) {
        __m512i acc[R][2];
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
        for (index_t g = 0; g < groups; ++g) {
            const __m512i b0 = _mm512_loadu_si512(b + g * 64);
            const __m512i b1 = _mm512_loadu_si512(b + g * 64 + 32);
            for (int i = 0; i < R; ++i) {
                // Inline asm row step: GCC 12 spilled accumulators of the intrinsics version (read in the
                // assembly); this keeps 16 accumulators + 2 weights + broadcast + product in registers.
                __m512i t, va;
                __asm__("vpbroadcastd %[am], %[va]\n\t"
                        "vpmaddwd %[b0], %[va], %[t]\n\t"
                        "vpaddd %[t], %[c0], %[c0]\n\t"
                        "vpmaddwd %[b1], %[va], %[va]\n\t"
                        "vpaddd %[va], %[c1], %[c1]"
                        : [c0] "+v"(acc[i][0]), [c1] "+v"(acc[i][1]), [t] "=&v"(t), [va] "=&v"(va)
                        : [am] "m"(*reinterpret_cast<const int32_t*>(a + i * lda + g * 2)), [b0] "v"(b0), [b1] "v"(b1));
            }
        }
        for (int i = 0; i < R; ++i) {
            _mm512_store_si512(c + i * NR, acc[i][0]);
            _mm512_store_si512(c + i * NR + 16, acc[i][1]);
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

// Inner-loop throughput probe (see probe_kernel).
double peak_probe(int, index_t iters) { return probe_kernel<Kernel>(iters); }

}  // namespace avx512
}  // namespace pyquant
