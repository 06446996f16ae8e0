// float32 transposed convolution phases as an implicit GEMM: out[row] = act(sum_k a_row[k] * B[k, :] + bias) where
// activation row `row` is gathered in place from `taps` segments of the NHWC input (a row table, like the int8
// phases: gemm.hpp's APack::rows), and the result row is scattered to its NHWC output pixel. No im2col copy and
// no tap-product array: each input pixel is read from cache by every row that needs it.
//
// B is packed by the caller (pyquant/model/layers.py) into panels of NR columns: panel p holds rows k = 0..K-1 of
// columns p*NR .. p*NR+NR-1 contiguously (zero padded), NR = convf32_nr() of the active path. Each output element
// sums its K products in order k = 0..K-1 (fused multiply-adds on the SIMD paths, so float32 results may differ
// in the last bits between paths; float32 layers promise closeness to the framework, not bit identity).
#pragma once
#include "common.hpp"
#include "kernels/epilogue.hpp"
#include "kernels/gemm.hpp"

namespace pyquant {

// a: the NHWC input as implicit rows (APack::rows; pad: seg float zeros). o: Float mode, its out_rows / image
// stride placing each row, bias (N) and activation.
struct ConvF32Call {
    const float* b = nullptr;  // packed panels
    index_t K = 0, N = 0;
    APack a;
    GemmOut o;
};

// One ISA's block routine: rows [m0, m1) x panels [p0, p1); and its panel width.
#define PYQUANT_CONVF32_DECLS \
    void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1); \
    index_t convf32_nr();
namespace scalar { PYQUANT_CONVF32_DECLS }
namespace avx2 { PYQUANT_CONVF32_DECLS }
namespace avx512 { PYQUANT_CONVF32_DECLS }

namespace {
// The SIMD paths' R-row tile: two vectors of W::L lanes per row (NR = 2 L), one broadcast and two fused
// multiply-adds per row and k. W provides T, L, zero(), load(const float*), set1(float), fmadd(a, b, c),
// store(float*, T) (aligned).
template <class W>
struct SimdConvTile {
    static constexpr int NR = 2 * W::L;
    template <int R>
    static void tile(const float* const* p, index_t taps, index_t seg, const float* b, float* t, const float* pad) {
        typename W::T acc[R][2];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = W::zero();
        for (index_t j = 0; j < taps; ++j) {
            if (segment_is_padding<R>(p, taps, j, pad)) {  // see convf32_tile
                b += seg * NR;
                continue;
            }
            const float* row[R];
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) row[i] = p[i * taps + j];
            for (index_t k = 0; k < seg; ++k, b += NR) {
                const typename W::T b0 = W::load(b), b1 = W::load(b + W::L);
#pragma GCC unroll 16
                for (int i = 0; i < R; ++i) {
                    const typename W::T x = W::set1(row[i][k]);
                    acc[i][0] = W::fmadd(x, b0, acc[i][0]);
                    acc[i][1] = W::fmadd(x, b1, acc[i][1]);
                }
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            W::store(t + i * NR, acc[i][0]);
            W::store(t + i * NR + W::L, acc[i][1]);
        }
    }
};

// Padding segments (all zeros) that every row of a tile reads are skipped: their products are +-0.0, and the
// sums start at +0.0, so they never hold -0.0 and adding +-0.0 leaves them unchanged (the same bits either way;
// a tile is one output pixel of several images when the rows come pixel-major, APack::batch_minor).
template <class Kernel, int R = Kernel::MR>
inline void convf32_tile(int mr, const float* const* p, index_t taps, index_t seg, const float* b, float* t,
                         const float* pad) {
    if constexpr (R > 1) {
        if (mr < R) return convf32_tile<Kernel, R - 1>(mr, p, taps, seg, b, t, pad);
    }
    Kernel::template tile<R>(p, taps, seg, b, t, pad);
}

// The shared block loop: for each MR-row tile, the rows' segment pointers once, then every panel.
// Kernel: MR, NR, template <int R> tile(const float* const* p, index_t taps, index_t seg, const float* b, float* t,
// const float* pad) (R x NR sums into t, skipping segments that are padding in every row), and
// store_row(const float* t, const GemmOut& o, float* dst, index_t nr, index_t n0).
template <class Kernel>
inline void convf32_block_generic(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    constexpr int MR = Kernel::MR, NR = Kernel::NR;
    alignas(64) float t[MR * NR];
    const float* ptrs[MR * kMaxImplicitTaps];
    float* const out = static_cast<float*>(c.o.out);
    for (index_t m = m0; m < m1; m += MR) {
        const int mr = static_cast<int>((m1 - m) < MR ? (m1 - m) : MR);
        implicit_row_segments(c.a, m, mr, ptrs);
        for (index_t p = p0; p < p1; ++p) {
            const index_t n0 = p * NR, nr = (c.N - n0) < NR ? (c.N - n0) : NR;
            convf32_tile<Kernel>(mr, ptrs, c.a.taps, c.a.seg, c.b + p * c.K * NR, t,
                                 static_cast<const float*>(c.a.pad));
            for (int i = 0; i < mr; ++i) Kernel::store_row(t + i * NR, c.o, out + c.o.row(m + i) + n0, nr, n0);
        }
    }
}
}  // namespace

}  // namespace pyquant
