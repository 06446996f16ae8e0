// int8 GEMM, AVX2: the exact int16 path (vpmaddwd on activations and weights widened to int16) and the fast
// u8 x s8 path (vpmaddubsw + vpmaddwd(1)), which pyquant runs only on weights packed with every adjacent pair
// satisfying |b0| + |b1| <= 128 (violating pairs split into an exact sparse correction at pack time), where
// the int16 pair sums provably cannot saturate (255 * 128 = 32640 <= 32767).
#include "kernels/gemm_avx2_common.hpp"

namespace pyquant {
namespace avx2 {
namespace {

// 5 x 16 tile: 10 accumulators + 2 weight vectors + 1 broadcast + 1 product = 14 ymm registers. (A 6-row
// tile needs all 16, and inlined into the block loop GCC then spilled two accumulators, whose store-load
// round trip in the dependency chain halved the speed; read in the assembly.)
struct ExactKernel : SimdTile<ExactKernel, Ymm> {
    static constexpr int MR = 5, NR = 16, G = 2;
    using AT = int16_t;
    using BT = int16_t;
    static inline __attribute__((always_inline)) void step(__m256i& c0, __m256i& c1, const int16_t* a, __m256i b0,
                                                           __m256i b1) {
        __m256i t, va;
        __asm__("vpbroadcastd %[am], %[va]\n\t"
                "vpmaddwd %[b0], %[va], %[t]\n\t"
                "vpaddd %[t], %[c0], %[c0]\n\t"
                "vpmaddwd %[b1], %[va], %[va]\n\t"
                "vpaddd %[va], %[c1], %[c1]"
                : [c0] "+x"(c0), [c1] "+x"(c1), [t] "=&x"(t), [va] "=&x"(va)
                : [am] "m"(*reinterpret_cast<const int32_t*>(a)), [b0] "x"(b0), [b1] "x"(b1));
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx2(d, nr, o, m, n0);
    }
};

// 5 x 16 tile: 10 accumulators + 2 weights + ones + broadcast + product = 15 ymm registers. u8 activations x
// s8 weights, pair sums in int16 (exact under the packing proof), widened by vpmaddwd(1), accumulated in int32.
struct FastKernel : SimdTile<FastKernel, Ymm> {
    static constexpr int MR = 5, NR = 16, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    static inline __attribute__((always_inline)) void step(__m256i& c0, __m256i& c1, const uint8_t* a, __m256i b0,
                                                           __m256i b1) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i t, va;
        __asm__("vpbroadcastd %[am], %[va]\n\t"
                "vpmaddubsw %[b0], %[va], %[t]\n\t"
                "vpmaddwd %[one], %[t], %[t]\n\t"
                "vpaddd %[t], %[c0], %[c0]\n\t"
                "vpmaddubsw %[b1], %[va], %[va]\n\t"
                "vpmaddwd %[one], %[va], %[va]\n\t"
                "vpaddd %[va], %[c1], %[c1]"
                : [c0] "+x"(c0), [c1] "+x"(c1), [t] "=&x"(t), [va] "=&x"(va)
                : [am] "m"(*reinterpret_cast<const int32_t*>(a)), [b0] "x"(b0), [b1] "x"(b1), [one] "x"(ones));
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

// Inner-loop throughput probe (see probe_kernel): which 0 = exact int16 loop, 1 = fast u8 x s8 loop.
double peak_probe(int which, index_t iters) {
    return which == 0 ? probe_kernel<ExactKernel>(iters) : probe_kernel<FastKernel>(iters);
}

}  // namespace avx2
}  // namespace pyquant
