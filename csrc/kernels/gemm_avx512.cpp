// int8 GEMM, AVX-512BW without VNNI: the exact int16 path on zmm (vpmaddwd + vpaddd), activations and
// weights widened to int16 (pair sums of u8 x s8 products never saturate in int32).
#include "kernels/gemm_avx512_common.hpp"

namespace pyquant {
namespace avx512 {
namespace {

// 8 x 32 tile: 16 accumulators + 2 weight vectors + broadcast + product, of 32 zmm registers.
struct Kernel : SimdTile<Kernel, Zmm> {
    static constexpr int MR = 8, NR = 32, G = 2;
    using AT = int16_t;
    using BT = int16_t;
    static inline __attribute__((always_inline)) void step(__m512i& c0, __m512i& c1, const int16_t* a, __m512i b0,
                                                           __m512i b1) {
        __m512i t, va;
        __asm__("vpbroadcastd %[am], %[va]\n\t"
                "vpmaddwd %[b0], %[va], %[t]\n\t"
                "vpaddd %[t], %[c0], %[c0]\n\t"
                "vpmaddwd %[b1], %[va], %[va]\n\t"
                "vpaddd %[va], %[c1], %[c1]"
                : [c0] "+v"(c0), [c1] "+v"(c1), [t] "=&v"(t), [va] "=&v"(va)
                : [am] "m"(*reinterpret_cast<const int32_t*>(a)), [b0] "v"(b0), [b1] "v"(b1));
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
