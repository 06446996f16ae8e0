// int8 GEMM, AVX512-VNNI: zmm vpdpbusd (u8 x s8, four products summed into int32 with no intermediate
// saturation), exact for every input. int8 activations arrive as a + 128 (uint8), corrected by column sums.
#include "kernels/gemm_avx512_common.hpp"

// GCC 12's _mm512_cvtepi32_ps starts from a self-initialized "undefined" vector (__Y = __Y), which
// -Wuninitialized reports wherever it is inlined; a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"


namespace pyquant {
namespace avx512vnni {
namespace {

// 8 x 32 tile: 16 accumulators, 2 weight vectors and one broadcast. With intrinsics, GCC 12 spilled the
// accumulators of wider tiles (6 x 64, 8 x 48) inside the loop (read in the assembly; half speed); with the
// asm row step, 10 or 12 rows measured the same as 8 in the register probe, and 8 wastes less on row tails.
struct Kernel : SimdTile<Kernel, Zmm> {
    static constexpr int MR = 8, NR = 32, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    static inline __attribute__((always_inline)) void step(__m512i& c0, __m512i& c1, const uint8_t* a, __m512i b0,
                                                           __m512i b1) {
        __m512i va;
        __asm__("vpbroadcastd %[am], %[va]\n\t"
                "vpdpbusd %[b0], %[va], %[c0]\n\t"
                "vpdpbusd %[b1], %[va], %[c1]"
                : [c0] "+v"(c0), [c1] "+v"(c1), [va] "=&v"(va)
                : [am] "m"(*reinterpret_cast<const int32_t*>(a)), [b0] "v"(b0), [b1] "v"(b1));
    }
    // The fused epilogue straight from the registers for int32 outputs (Mode 0) and float32 outputs with the
    // identity (1), ReLU (2) or LeakyReLU (3) activation: the operations of epilogue_row_avx512 without the
    // round trip through the tile buffer. (The tanh/sigmoid constants would be hoisted above the k loop and
    // push accumulators out of the registers, so those activations keep the tile-buffer epilogue.)
    template <int R, int Mode>
    static void direct_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, const GemmOut& o, index_t m,
                         index_t n0, index_t nr) {
        __m512i acc[R][2];
        accumulate<R>(acc, a, lda, b, groups);
        const __mmask16 k0 = nr >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << nr) - 1u);
        const __mmask16 k1 =
            nr >= 32 ? __mmask16(0xFFFF) : (nr > 16 ? static_cast<__mmask16>((1u << (nr - 16)) - 1u) : __mmask16(0));
        const __m512i zero = _mm512_setzero_si512();
        const __m512i cc0 = o.col_corr ? _mm512_maskz_loadu_epi32(k0, o.col_corr + n0) : zero;
        const __m512i cc1 = o.col_corr ? _mm512_maskz_loadu_epi32(k1, o.col_corr + n0 + 16) : zero;
        const __m512i zb0 = o.zb ? _mm512_maskz_loadu_epi32(k0, o.zb + n0) : zero;
        const __m512i zb1 = o.zb ? _mm512_maskz_loadu_epi32(k1, o.zb + n0 + 16) : zero;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, bb0 = s0, bb1 = s0;
        if constexpr (Mode != 0) {
            s0 = _mm512_maskz_loadu_ps(k0, o.scale + n0);
            s1 = _mm512_maskz_loadu_ps(k1, o.scale + n0 + 16);
            bb0 = _mm512_maskz_loadu_ps(k0, o.bias + n0);
            bb1 = _mm512_maskz_loadu_ps(k1, o.bias + n0 + 16);
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            __m512i v0 = _mm512_add_epi32(acc[i][0], cc0), v1 = _mm512_add_epi32(acc[i][1], cc1);
            if (o.zb) {
                const __m512i rt = _mm512_set1_epi32(o.row_term[m + i]);
                v0 = _mm512_add_epi32(v0, _mm512_mullo_epi32(rt, zb0));
                v1 = _mm512_add_epi32(v1, _mm512_mullo_epi32(rt, zb1));
            }
            if constexpr (Mode == 0) {
                int32_t* out = static_cast<int32_t*>(o.out) + o.row(m + i) + n0;
                _mm512_mask_storeu_epi32(out, k0, v0);
                _mm512_mask_storeu_epi32(out + 16, k1, v1);
            } else {
                __m512 y0 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v0), s0), bb0);
                __m512 y1 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v1), s1), bb1);
                if constexpr (Mode >= 2) {  // the activation known at compile time: activate_avx512's switch folds
                    Epilogue ep = o.epi;
                    ep.act = Mode == 2 ? Activation::Relu : Activation::LeakyRelu;
                    y0 = activate_avx512(y0, ep);
                    y1 = activate_avx512(y1, ep);
                }
                float* out = static_cast<float*>(o.out) + o.row(m + i) + n0;
                _mm512_mask_storeu_ps(out, k0, y0);
                _mm512_mask_storeu_ps(out + 16, k1, y1);
            }
        }
    }
    template <int Mode, int R = MR>
    static void direct_dispatch(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups,
                                const GemmOut& o, index_t m, index_t n0, index_t nr) {
        if constexpr (R >= 1) {
            if (mr == R) return direct_r<R, Mode>(a, lda, b, groups, o, m, n0, nr);
            if constexpr (R > 1) return direct_dispatch<Mode, R - 1>(mr, a, lda, b, groups, o, m, n0, nr);
        }
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_avx512(d, nr, o, m, n0);
    }
};
}  // namespace

namespace {
template <int Mode>
void gemm_block_direct(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0,
                       index_t p1) {
    // The same loop order as gemm_block_generic.
    const uint8_t* ap = static_cast<const uint8_t*>(a.data);
    const int8_t* bp = static_cast<const int8_t*>(b.data);
    for (index_t m = m0; m < m1; m += Kernel::MR) {
        const int mr = static_cast<int>((m1 - m) < Kernel::MR ? (m1 - m) : Kernel::MR);
        for (index_t p = p0; p < p1; ++p) {
            const index_t n0 = p * Kernel::NR;
            const index_t nr = (b.N - n0) < Kernel::NR ? (b.N - n0) : Kernel::NR;
            Kernel::direct_dispatch<Mode>(mr, ap + m * a.lda, a.lda, bp + p * b.panel_elems, b.groups, o, m, n0, nr);
        }
    }
}
}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    if (a.rows) return gemm_block_implicit<Kernel>(b, a, o, m0, m1, p0, p1);
    if (!b.corr_ptr && o.mode == OutMode::Int32) return gemm_block_direct<0>(b, a, o, m0, m1, p0, p1);
    if (!b.corr_ptr && o.mode == OutMode::Float && o.epi.act == Activation::Identity)
        return gemm_block_direct<1>(b, a, o, m0, m1, p0, p1);
    if (!b.corr_ptr && o.mode == OutMode::Float && o.epi.act == Activation::Relu)
        return gemm_block_direct<2>(b, a, o, m0, m1, p0, p1);
    if (!b.corr_ptr && o.mode == OutMode::Float && o.epi.act == Activation::LeakyRelu)
        return gemm_block_direct<3>(b, a, o, m0, m1, p0, p1);
    gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
}

// Inner-loop throughput probe (see probe_kernel).
double peak_probe(int, index_t iters) { return probe_kernel<Kernel>(iters); }

}  // namespace avx512vnni
}  // namespace pyquant
