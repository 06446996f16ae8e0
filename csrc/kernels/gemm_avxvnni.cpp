// int8 GEMM, AVX-VNNI: ymm vpdpbusd (u8 x s8, four products summed into int32 with no intermediate
// saturation), exact for every input. int8 activations arrive as a + 128 (uint8), corrected by column sums.
#include "kernels/gemm_avx2_common.hpp"

namespace pyquant {
namespace avxvnni {
namespace {

// 6 x 16 tile: 12 accumulators + 2 weight vectors + 1 broadcast.
struct Kernel : SimdTile<Kernel, Ymm> {
    static constexpr int MR = 6, NR = 16, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    static inline __attribute__((always_inline)) void step(__m256i& c0, __m256i& c1, const uint8_t* a, __m256i b0,
                                                           __m256i b1) {
        __m256i va;
        __asm__("vpbroadcastd %[am], %[va]\n\t"
                "%{vex%} vpdpbusd %[b0], %[va], %[c0]\n\t"
                "%{vex%} vpdpbusd %[b1], %[va], %[c1]"
                : [c0] "+x"(c0), [c1] "+x"(c1), [va] "=&x"(va)
                : [am] "m"(*reinterpret_cast<const int32_t*>(a)), [b0] "x"(b0), [b1] "x"(b1));
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx2(d, nr, o, m, n0);
    }
};

}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
}

// Inner-loop throughput probe (see probe_kernel).
double peak_probe(int, index_t iters) { return probe_kernel<Kernel>(iters); }

}  // namespace avxvnni
}  // namespace pyquant
