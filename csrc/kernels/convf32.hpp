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

namespace pyquant {

struct ConvF32Call {
    const float* b = nullptr;  // packed panels
    index_t K = 0, N = 0;
    const float* a = nullptr;  // NHWC input
    const int64_t* a_rows = nullptr;  // rows_per_image x taps element offsets (< 0: padding)
    index_t taps = 1, seg = 0, rows_per_image = 1, a_image_stride = 0;
    const float* zero_row = nullptr;  // seg zeros
    float* out = nullptr;
    const int64_t* out_rows = nullptr;  // rows_per_image element offsets
    index_t out_image_stride = 0;
    const float* bias = nullptr;  // N
    Epilogue epi;
};

// One ISA's block routine: rows [m0, m1) x panels [p0, p1); and its panel width.
#define PYQUANT_CONVF32_DECLS \
    void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1); \
    index_t convf32_nr();
namespace scalar { PYQUANT_CONVF32_DECLS }
namespace avx2 { PYQUANT_CONVF32_DECLS }
namespace avx512 { PYQUANT_CONVF32_DECLS }

namespace {
// The shared block loop: for each MR-row tile, the rows' segment pointers once, then every panel.
// Kernel: MR, NR, template <int R> tile(const float* const* p, index_t taps, index_t seg, const float* b,
// float* t) (R x NR sums into t), and store_row(const float* t, const ConvF32Call&, float* dst, index_t nr, index_t n0).
template <class Kernel, int R = Kernel::MR>
inline void convf32_tile(int mr, const float* const* p, index_t taps, index_t seg, const float* b, float* t) {
    if constexpr (R > 1) {
        if (mr < R) return convf32_tile<Kernel, R - 1>(mr, p, taps, seg, b, t);
    }
    Kernel::template tile<R>(p, taps, seg, b, t);
}

template <class Kernel>
inline void convf32_block_generic(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    constexpr int MR = Kernel::MR, NR = Kernel::NR;
    constexpr index_t kMaxTaps = 64;
    alignas(64) float t[MR * NR];
    const float* ptrs[MR * kMaxTaps];
    for (index_t m = m0; m < m1; m += MR) {
        const int mr = static_cast<int>((m1 - m) < MR ? (m1 - m) : MR);
        float* dst[MR];
        for (int i = 0; i < mr; ++i) {
            const index_t img = (m + i) / c.rows_per_image, r = (m + i) - img * c.rows_per_image;
            const float* ib = c.a + img * c.a_image_stride;
            for (index_t j = 0; j < c.taps; ++j) {
                const int64_t off = c.a_rows[r * c.taps + j];
                ptrs[i * c.taps + j] = off >= 0 ? ib + off : c.zero_row;
            }
            dst[i] = c.out + img * c.out_image_stride + c.out_rows[r];
        }
        for (index_t p = p0; p < p1; ++p) {
            const index_t n0 = p * NR, nr = (c.N - n0) < NR ? (c.N - n0) : NR;
            convf32_tile<Kernel>(mr, ptrs, c.taps, c.seg, c.b + p * c.K * NR, t);
            for (int i = 0; i < mr; ++i) Kernel::store_row(t + i * NR, c, dst[i] + n0, nr, n0);
        }
    }
}
}  // namespace

}  // namespace pyquant
