// int8 GEMM, AVX512-VNNI: zmm vpdpbusd (u8 x s8, four products summed into int32 with no intermediate
// saturation), exact for every input. int8 activations arrive as a + 128 (uint8), corrected by column sums.
#include "kernels/gemm_avx512_common.hpp"

// GCC 12's _mm512_cvtepi32_ps starts from a self-initialized "undefined" vector (__Y = __Y), which
// -Wuninitialized reports wherever it is inlined; a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"


namespace pyquant {
namespace avx512vnni {
namespace {

// The register epilogue's modes (Kernel::finish): 0 int32 output; 1, 2, 3 float32 output with the identity,
// ReLU or LeakyReLU; 4, 5, 6 requantized 8-bit output with those; -1 for the rest (the tile-buffer epilogue).
constexpr int kDirectInt32 = 0;
inline int direct_mode(const GemmOut& o) {
    if (o.mode == OutMode::Int32) return kDirectInt32;
    int act;
    switch (o.epi.act) {
        case Activation::Identity: act = 1; break;
        case Activation::Relu: act = 2; break;
        case Activation::LeakyRelu: act = 3; break;
        default: return -1;
    }
    switch (o.mode) {
        case OutMode::Float: return act;
        case OutMode::Quant: return 3 + act;
        default: return -1;
    }
}

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
    // The fused epilogue straight from the registers, without the round trip through the tile buffer, for the
    // modes of direct_mode(): the operations of epilogue_row_avx512, with the output kind and the activation
    // known at compile time. (The tanh/sigmoid constants would be hoisted above the k loop and push
    // accumulators out of the registers, so those activations keep the tile-buffer epilogue.)
    template <int R, int Mode>
    static inline __attribute__((always_inline)) void finish(__m512i (&acc)[R][2], const GemmOut& o, index_t m,
                                                             index_t n0, index_t nr) {
        const __mmask16 k0 = nr >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << nr) - 1u);
        const __mmask16 k1 =
            nr >= 32 ? __mmask16(0xFFFF) : (nr > 16 ? static_cast<__mmask16>((1u << (nr - 16)) - 1u) : __mmask16(0));
        const __m512i zero = _mm512_setzero_si512();
        const __m512i cc0 = o.col_corr ? _mm512_maskz_loadu_epi32(k0, o.col_corr + n0) : zero;
        const __m512i cc1 = o.col_corr ? _mm512_maskz_loadu_epi32(k1, o.col_corr + n0 + 16) : zero;
        const __m512i zb0 = o.zb ? _mm512_maskz_loadu_epi32(k0, o.zb + n0) : zero;
        const __m512i zb1 = o.zb ? _mm512_maskz_loadu_epi32(k1, o.zb + n0 + 16) : zero;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, bb0 = s0, bb1 = s0;
        if constexpr (Mode != kDirectInt32) {
            s0 = _mm512_maskz_loadu_ps(k0, o.scale + n0);
            s1 = _mm512_maskz_loadu_ps(k1, o.scale + n0 + 16);
            bb0 = _mm512_maskz_loadu_ps(k0, o.bias + n0);
            bb1 = _mm512_maskz_loadu_ps(k1, o.bias + n0 + 16);
        }
        Epilogue ep = o.epi;  // the activation known at compile time: activate_avx512's switch folds
        ep.act = Mode % 3 == 1 ? Activation::Identity : (Mode % 3 == 2 ? Activation::Relu : Activation::LeakyRelu);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            __m512i v0 = _mm512_add_epi32(acc[i][0], cc0), v1 = _mm512_add_epi32(acc[i][1], cc1);
            if (o.zb) {
                const __m512i rt = _mm512_set1_epi32(o.row_term[m + i]);
                v0 = _mm512_add_epi32(v0, _mm512_mullo_epi32(rt, zb0));
                v1 = _mm512_add_epi32(v1, _mm512_mullo_epi32(rt, zb1));
            }
            if constexpr (Mode == kDirectInt32) {
                int32_t* out = static_cast<int32_t*>(o.out) + o.row(m + i) + n0;
                _mm512_mask_storeu_epi32(out, k0, v0);
                _mm512_mask_storeu_epi32(out + 16, k1, v1);
            } else {
                const __m512 y0 = activate_avx512(_mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v0), s0), bb0), ep);
                const __m512 y1 = activate_avx512(_mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v1), s1), bb1), ep);
                if constexpr (Mode <= 3) {
                    float* out = static_cast<float*>(o.out) + o.row(m + i) + n0;
                    _mm512_mask_storeu_ps(out, k0, y0);
                    _mm512_mask_storeu_ps(out + 16, k1, y1);
                } else {  // requantized: inside [qmin, qmax], so truncation narrows exactly (see epilogue_row)
                    char* out = static_cast<char*>(o.out) + o.row(m + i) + n0;
                    _mm_mask_storeu_epi8(out, k0, _mm512_cvtepi32_epi8(requantize_avx512(y0, ep)));
                    _mm_mask_storeu_epi8(out + 16, k1, _mm512_cvtepi32_epi8(requantize_avx512(y1, ep)));
                }
            }
        }
    }
    template <int R, int Mode>
    static void direct_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, const GemmOut& o, index_t m,
                         index_t n0, index_t nr) {
        __m512i acc[R][2];
        accumulate<R>(acc, a, lda, b, groups);
        finish<R, Mode>(acc, o, m, n0, nr);
    }
    template <int R, int Mode>
    static void direct_implicit_r(const uint8_t* const* p, const APack& a, const int8_t* b, const GemmOut& o,
                                  index_t m, index_t n0, index_t nr) {
        __m512i acc[R][2];
        accumulate_implicit<R>(acc, p, a, n0, b);
        finish<R, Mode>(acc, o, m, n0, nr);
    }
    template <int Mode, int R = MR>
    static void direct_dispatch(int mr, const uint8_t* a, index_t lda, const int8_t* b, index_t groups,
                                const GemmOut& o, index_t m, index_t n0, index_t nr) {
        if constexpr (R >= 1) {
            if (mr == R) return direct_r<R, Mode>(a, lda, b, groups, o, m, n0, nr);
            if constexpr (R > 1) return direct_dispatch<Mode, R - 1>(mr, a, lda, b, groups, o, m, n0, nr);
        }
    }
    template <int Mode, int R = MR>
    static void direct_implicit_dispatch(int mr, const uint8_t* const* p, const APack& a, const int8_t* b,
                                         const GemmOut& o, index_t m, index_t n0, index_t nr) {
        if constexpr (R >= 1) {
            if (mr == R) return direct_implicit_r<R, Mode>(p, a, b, o, m, n0, nr);
            if constexpr (R > 1) return direct_implicit_dispatch<Mode, R - 1>(mr, p, a, b, o, m, n0, nr);
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
    // The same loop orders as gemm_block_generic and gemm_block_implicit.
    const int8_t* bp = static_cast<const int8_t*>(b.data);
    const uint8_t* ptrs[Kernel::MR * kMaxImplicitTaps];
    for (index_t m = m0; m < m1; m += Kernel::MR) {
        const int mr = static_cast<int>((m1 - m) < Kernel::MR ? (m1 - m) : Kernel::MR);
        if (a.rows) implicit_row_segments(a, m, mr, ptrs);
        for (index_t p = p0; p < p1; ++p) {
            const index_t n0 = p * Kernel::NR;
            const index_t nr = (b.N - n0) < Kernel::NR ? (b.N - n0) : Kernel::NR;
            if (a.rows)
                Kernel::direct_implicit_dispatch<Mode>(mr, ptrs, a, bp + p * b.panel_elems, o, m, n0, nr);
            else
                Kernel::direct_dispatch<Mode>(mr, static_cast<const uint8_t*>(a.data) + m * a.lda, a.lda,
                                              bp + p * b.panel_elems, b.groups, o, m, n0, nr);
        }
    }
}
}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    switch (b.corr_ptr ? -1 : direct_mode(o)) {
        case kDirectInt32: return gemm_block_direct<kDirectInt32>(b, a, o, m0, m1, p0, p1);
        case 1: return gemm_block_direct<1>(b, a, o, m0, m1, p0, p1);
        case 2: return gemm_block_direct<2>(b, a, o, m0, m1, p0, p1);
        case 3: return gemm_block_direct<3>(b, a, o, m0, m1, p0, p1);
        case 4: return gemm_block_direct<4>(b, a, o, m0, m1, p0, p1);
        case 5: return gemm_block_direct<5>(b, a, o, m0, m1, p0, p1);
        case 6: return gemm_block_direct<6>(b, a, o, m0, m1, p0, p1);
        default:
            if (a.rows) return gemm_block_implicit<Kernel>(b, a, o, m0, m1, p0, p1);
            return gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
    }
}

// Inner-loop throughput probe (see probe_kernel).
double peak_probe(int, index_t iters) { return probe_kernel<Kernel>(iters); }

}  // namespace avx512vnni
}  // namespace pyquant
