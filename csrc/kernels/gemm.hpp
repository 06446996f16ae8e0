// Exact int8 GEMM family (CONTRACT section 2).
//
// Every path computes, for activations A (M x K) and weights B (K x N) packed once:
//   D[m, n] = sum_k a'[m, k] * b[k, n]          a' = a (uint8) or a + 128 (int8): always in [0, 255]
//   C[m, n] = D[m, n] + col_corr[n] + row_term[m] * zb[n]
// with col_corr[n] = -za' * colsum[n] + K * za' * zb[n] (+ an int32 bias) and row_term[m] = -rowsum'[m],
// which is exactly sum_k (a - za)(b - zb). All int32 arithmetic wraps (two's complement): every kernel
// instruction used (vpdpbusd, vpmaddwd + vpaddd, vpmaddubsw only where proven exact) is exact or modular, so
// whenever the true result fits in int32 (the overflow guard in pyquant/gemm.py checks that before the call)
// the wrapped computation equals it, on every path.
//
// Packed weights: panels of NR columns; inside a panel, K is cut into groups of G consecutive k (G = 4 for
// byte layouts, 2 for int16 layouts), and one group holds, for each of the NR columns, its G weights
// contiguously: panel[g][n][0..G). K and N are zero padded to whole groups and panels. Activations are
// packed per call into rows of round_up(K, G) elements (zero padded), uint8 or int16 by layout.
//
// The kernels compute one MR x NR tile of D in registers over the full K, write it into a small tile buffer
// on the stack (L1), add the optional sparse correction (the fast AVX2 path's split-out weight pairs), and
// run the fused epilogue from that tile straight into the caller's output rows (any row stride).
#pragma once
#include <type_traits>

#include "common.hpp"
#include "kernels/epilogue.hpp"

namespace pyquant {

enum class BLayout : int { S8Quad = 0, S16Pair = 1 };

// Inner loops. The numbering is part of the private Python binding (pyquant/gemm.py names them).
enum class GemmPath : int {
    Scalar = 0,       // plain C++, byte quads (the oracle path)
    Avx2Exact = 1,    // int16 x int16 vpmaddwd, exact for all inputs
    Avx2Fast = 2,     // u8 x s8 vpmaddubsw + vpmaddwd(1): exact only with |b0| + |b1| <= 128 per pair (proven)
    AvxVnni = 3,      // ymm vpdpbusd (AVX-VNNI), exact
    Avx512Exact = 4,  // zmm vpmaddwd (AVX-512BW), exact
    Avx512Vnni = 5,   // zmm vpdpbusd (AVX512-VNNI), exact
};
constexpr int kNumGemmPaths = 6;

struct GemmKernelInfo {
    BLayout layout;
    int group;  // k per group (G)
    int mr, nr;
    const char* name;
};
GemmKernelInfo gemm_kernel_info(GemmPath path);

// A view of packed weights.
struct BPack {
    const void* data = nullptr;
    BLayout layout = BLayout::S8Quad;
    index_t K = 0, N = 0;
    index_t groups = 0;       // ceil(K / G)
    index_t nr = 0;           // panel width
    index_t panels = 0;       // ceil(N / nr)
    index_t panel_elems = 0;  // elements per panel: groups * G * nr
    // Optional exact sparse correction, CSR by column: entries [corr_ptr[n], corr_ptr[n+1]) hold (k, value)
    // added as D[m, n] += a'[m, k] * value (the parts of weight pairs split out of the fast path).
    const int32_t* corr_ptr = nullptr;
    const int32_t* corr_k = nullptr;
    const int32_t* corr_v = nullptr;
};

// A view of packed activations: rows of lda elements (uint8 for S8Quad, int16 for S16Pair).
// Or, with `rows` set (implicit rows: a convolution's gather read in place, for the inner loops that take it:
// avx512vnni on bytes, convf32 on floats), row m = img * rows_per_image + r is the concatenation of `taps` segments
// of `seg` elements (for the int8 loops a multiple of G): segment j at data + img * image_stride + rows[r * taps +
// j] (elements), or `pad` (seg elements of the zero point) where that offset is negative. Nothing is copied: an
// input pixel that several rows read stays in cache instead of being written out once per row.
struct APack {
    const void* data = nullptr;
    index_t lda = 0;
    const int64_t* rows = nullptr;
    index_t taps = 0, seg = 0, rows_per_image = 1, image_stride = 0;
    // batch_minor: row m is table row m / n_images of image m % n_images (a convolution's pixels outermost, so
    // that the rows of a tile are one pixel of several images and share their padding segments); else table
    // row m % rows_per_image of image m / rows_per_image
    bool batch_minor = false;
    index_t n_images = 1;
    const void* pad = nullptr;
    // Optional, implicit rows: pad_corr[j * pad_corr_ld + n] = za * (sum of segment j's weights in column n),
    // wrapping int32. A tile whose rows all read padding for segment j then skips the segment's products
    // (za * w, the padding holding the zero point) and adds this instead: the same int32 sums, fewer products.
    const int32_t* pad_corr = nullptr;
    index_t pad_corr_ld = 0;
};
constexpr index_t kMaxImplicitTaps = 64;

// Whether segment j of all R rows of a tile (p[i * taps + j], as implicit_row_segments gives them) is the
// padding segment `pad`: the implicit-row kernels then skip its products.
template <int R, class T>
inline bool segment_is_padding(const T* const* p, index_t taps, index_t j, const void* pad) {
    bool all = true;
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) all &= static_cast<const void*>(p[i * taps + j]) == pad;
    return all;
}

// The segment pointers of implicit rows m .. m + mr - 1: p[i * taps + j] is row m + i's segment j.
template <class T>
inline void implicit_row_segments(const APack& a, index_t m, int mr, const T** p) {
    for (int i = 0; i < mr; ++i) {
        index_t img, r;
        if (a.batch_minor) {
            r = (m + i) / a.n_images;
            img = (m + i) - r * a.n_images;
        } else {
            img = (m + i) / a.rows_per_image;
            r = (m + i) - img * a.rows_per_image;
        }
        const T* base = static_cast<const T*>(a.data) + img * a.image_stride;
        for (index_t j = 0; j < a.taps; ++j) {
            const int64_t off = a.rows[r * a.taps + j];
            p[i * a.taps + j] = off >= 0 ? base + off : static_cast<const T*>(a.pad);
        }
    }
}

enum class OutMode : int { Int32 = 0, Float = 1, Quant = 2, FixedPoint = 3 };

struct GemmOut {
    OutMode mode = OutMode::Int32;
    void* out = nullptr;
    index_t ldo = 0;  // output row stride in elements
    // Optional output row table (a convolution's pixels): row m = img * rows_per_image + r starts at element
    // img * image_stride + out_rows[r] instead of m * ldo.
    // (batch_minor: row m = r * n_images + img instead, as APack::batch_minor)
    const int64_t* out_rows = nullptr;
    index_t rows_per_image = 1, image_stride = 0;
    bool batch_minor = false;
    index_t n_images = 1;
    index_t row(index_t m) const {
        if (!out_rows) return m * ldo;
        if (batch_minor) {
            const index_t r = m / n_images;
            return (m - r * n_images) * image_stride + out_rows[r];
        }
        const index_t img = m / rows_per_image;
        return img * image_stride + out_rows[m - img * rows_per_image];
    }
    bool out_u8 = false;
    const int32_t* col_corr = nullptr;  // N entries, or null for zeros
    const int32_t* zb = nullptr;        // N entries, or null when every zb is 0
    const int32_t* row_term = nullptr;  // M entries (used only with zb)
    // Float / Quant: y = float32(acc) * scale[n] + bias[n], activation, then store or requantize.
    const float* scale = nullptr;
    const float* bias = nullptr;
    Epilogue epi;
    // FixedPoint: q = clamp(zp + RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc, mult[n]), shift[n]))
    const int32_t* mult = nullptr;
    const int32_t* shift = nullptr;
    int32_t fx_zp = 0, fx_qmin = -128, fx_qmax = 127;
};

// One ISA's block routine: rows [m0, m1) x panels [p0, p1).
#define PYQUANT_GEMM_DECLS \
    void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1);

namespace scalar { PYQUANT_GEMM_DECLS }
namespace avx2 {
PYQUANT_GEMM_DECLS
void gemm_block_fast(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1);
double peak_probe(int which, index_t iters);
}  // namespace avx2
namespace avxvnni { PYQUANT_GEMM_DECLS double peak_probe(int which, index_t iters); }
namespace avx512 { PYQUANT_GEMM_DECLS double peak_probe(int which, index_t iters); }
namespace avx512vnni { PYQUANT_GEMM_DECLS double peak_probe(int which, index_t iters); }

// Transposed convolution as one GEMM + col2im (col2im.hpp): y holds the tap products of every input pixel,
// rows (b, iy, ix) x columns (ky, kx, c) (kh * kw * C), exact int32 or float32; or, `transposed` (float32 only,
// sparse layers), rows (ky, kx, c) x P = B * H * W pixel columns. Each output row (b, oy) sums the taps that reach
// its pixels, then the epilogue of `o` writes it to the NHWC output o.out: int32 sums take the Float or Quant
// GEMM epilogue, float32 sums out = act(sum + bias). o.scale / o.bias hold one output row's worth (the
// per-channel values tiled Wo times). Outputs past the full extent (bottom/right extension) get no taps.
struct Col2Im {
    index_t H = 0, W = 0, Ho = 0, Wo = 0, kh = 1, kw = 1, sh = 1, sw = 1, pt = 0, pl = 0, C = 1;
};
constexpr index_t kCol2ImChannelsT = 32;  // channels per task with transposed taps (col2im.hpp)
struct Col2ImCall {
    const void* y = nullptr;
    bool f32 = false, transposed = false;
    index_t P = 0;
    index_t pix0 = 0;  // not transposed: y's first row is input pixel pix0 (b * H + iy) * W + ix (a band of rows)
    Col2Im g;
    GemmOut o;
};
// Output rows [r0, r1) (r = b * Ho + oy), or tasks [r0, r1) of transposed taps (col2im_rows_t), one routine per
// ISA (col2im_<isa>.cpp).
#define PYQUANT_COL2IM_DECLS void col2im_rows(const Col2ImCall& c, index_t r0, index_t r1);
namespace scalar { PYQUANT_COL2IM_DECLS }
namespace avx2 { PYQUANT_COL2IM_DECLS }
namespace avx512 { PYQUANT_COL2IM_DECLS }

// Baseline helpers (gemm_scalar.cpp).
// Packs B (K x N int8, row stride ldb) for `path`. `dst` holds gemm_packed_elems(...) elements of the layout's
// type; for Avx2Fast, pairs violating |b0| + |b1| <= 128 are clipped (b1 shrunk) and the residual is written to
// corr_k/corr_v per column (only with split_pairs; without it the fast layout is unclipped and valid only
// for 7-bit activations); pass corr_* = nullptr to only count them (returns the count either way).
index_t gemm_packed_elems(GemmPath path, index_t K, index_t N);
index_t gemm_pack_b(GemmPath path, const int8_t* b, index_t ldb, index_t K, index_t N, void* dst, bool split_pairs,
                    int32_t* corr_ptr, int32_t* corr_k, int32_t* corr_v);
// Packs rows [m0, m1) of A (uint8, or int8 when is_s8: +128) into rows of `lda` elements (uint8 or int16 by
// layout), zero padded; writes rowsum'[m] (sum of a') when rowsum is not null.
void gemm_pack_a(BLayout layout, const void* a, bool is_s8, index_t lda_in, index_t K, index_t m0, index_t m1,
                 void* dst, index_t lda, int32_t* rowsum);

// ---------------------------------------------------------------------------------------------------------
// Shared inline code. Unnamed namespace: each ISA file gets its own copy (no external-linkage inline or
// template copy compiled with AVX flags can reach baseline code).
namespace {

// gemmlowp's rounding rules, in plain integers (no FPU), one documented rule for every path:
// SaturatingRoundingDoublingHighMul(a, b) = saturate(round_half_away_from_zero(a * b / 2^31)), and
// RoundingDivideByPOT(x, s) = x / 2^s rounded half away from zero.
inline int32_t srdhm(int32_t a, int32_t b) {
    if (a == b && a == INT32_MIN) return INT32_MAX;
    int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
    int64_t nudge = ab >= 0 ? (int64_t(1) << 30) : (int64_t(1) - (int64_t(1) << 30));
    return static_cast<int32_t>((ab + nudge) / (int64_t(1) << 31));  // C++ division truncates toward zero
}
inline int32_t rounding_divide_by_pot(int32_t x, int exponent) {
    if (exponent <= 0) return x;
    const int32_t mask = static_cast<int32_t>((int64_t(1) << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}
inline int32_t fixed_point_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax) {
    int64_t v = static_cast<int64_t>(rounding_divide_by_pot(srdhm(acc, mult), shift)) + zp;
    return static_cast<int32_t>(v < qmin ? qmin : (v > qmax ? qmax : v));
}

inline int32_t wrap_add(int32_t x, int32_t y) {
    return static_cast<int32_t>(static_cast<uint32_t>(x) + static_cast<uint32_t>(y));
}
inline int32_t wrap_mul(int32_t x, int32_t y) {
    return static_cast<int32_t>(static_cast<uint32_t>(x) * static_cast<uint32_t>(y));
}

// Corrected accumulator of element (m, n): D + col_corr[n] + row_term[m] * zb[n], wrapping.
inline int32_t corrected(int32_t d, const GemmOut& o, index_t m, index_t n) {
    if (o.col_corr) d = wrap_add(d, o.col_corr[n]);
    if (o.zb) d = wrap_add(d, wrap_mul(o.row_term[m], o.zb[n]));
    return d;
}

// Scalar epilogue of elements [j0, j1) of one tile row into output row m at columns n0 + j.
// Float modes use epilogue.hpp, operation for operation what the SIMD forms do.
inline void epilogue_row_scalar(const int32_t* d, index_t j0, index_t j1, const GemmOut& o, index_t m, index_t n0) {
    for (index_t j = j0; j < j1; ++j) {
        index_t n = n0 + j;
        int32_t acc = corrected(d[j], o, m, n);
        switch (o.mode) {
            case OutMode::Int32: static_cast<int32_t*>(o.out)[o.row(m) + n] = acc; break;
            case OutMode::Float:
                static_cast<float*>(o.out)[o.row(m) + n] = epilogue_float(acc, o.scale[n], o.bias[n], o.epi);
                break;
            case OutMode::Quant: {
                int32_t q = requantize_one(epilogue_float(acc, o.scale[n], o.bias[n], o.epi), o.epi);
                if (o.out_u8) static_cast<uint8_t*>(o.out)[o.row(m) + n] = static_cast<uint8_t>(q);
                else static_cast<int8_t*>(o.out)[o.row(m) + n] = static_cast<int8_t>(q);
                break;
            }
            case OutMode::FixedPoint: {
                int32_t q = fixed_point_requantize(acc, o.mult[n], o.shift[n], o.fx_zp, o.fx_qmin, o.fx_qmax);
                if (o.out_u8) static_cast<uint8_t*>(o.out)[o.row(m) + n] = static_cast<uint8_t>(q);
                else static_cast<int8_t*>(o.out)[o.row(m) + n] = static_cast<int8_t>(q);
                break;
            }
        }
    }
}

// The sparse correction of a tile (rows m0.., columns n0..n0+nr): D[m, n] += a'[m, k] * v.
template <class AT>
inline void apply_sparse_correction(int32_t* tile, index_t ldt, const BPack& b, const APack& a, index_t m0, int mr,
                                    index_t n0, index_t nr) {
    if (!b.corr_ptr) return;
    const AT* ap = static_cast<const AT*>(a.data);
    for (index_t j = 0; j < nr; ++j) {
        index_t n = n0 + j;
        for (int32_t e = b.corr_ptr[n]; e < b.corr_ptr[n + 1]; ++e) {
            const int32_t k = b.corr_k[e], v = b.corr_v[e];
            for (int i = 0; i < mr; ++i)
                tile[i * ldt + j] = wrap_add(tile[i * ldt + j], wrap_mul(static_cast<int32_t>(ap[(m0 + i) * a.lda + k]), v));
        }
    }
}

// Generic block loop. Kernel provides: MR, NR, G, AT (activation element), BT (weight element),
//   template <int R> static void tile_r(const AT* a, index_t lda, const BT* b, index_t groups, int32_t* c)
//       (an R-row tile, 1 <= R <= MR; c: R x NR with row stride NR)
//   static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0)
// Each MR-row activation tile (MR x K) stays in L1 while it runs over the block's weight panels (a few
// hundred KB, held in L2); measured a little faster than panel-outer order at K = 1024 and 2048.
// Runs Kernel::tile_r<R> for R == mr (1 <= mr <= Kernel::MR): each row count is its own compiled loop.
template <class Kernel, int R = Kernel::MR>
inline void tile_rows(int mr, const typename Kernel::AT* a, index_t lda, const typename Kernel::BT* b, index_t groups,
                      int32_t* c) {
    if constexpr (R > 1) {
        if (mr < R) return tile_rows<Kernel, R - 1>(mr, a, lda, b, groups, c);
    }
    Kernel::template tile_r<R>(a, lda, b, groups, c);
}

// The x86 SIMD kernels' R-row tile: two accumulator vectors per row. K provides MR, NR, G, AT, BT and
//   static void step(V& c0, V& c1, const AT* a, V b0, V b1)   one k group of one row
// (inline asm in every kernel: GCC 12 spilled or shuffled the accumulators of intrinsics versions, read in
// the assembly), W (Ymm or Zmm, in the ISA's common header) the vector type V with zero(), load(const void*)
// and store(int32_t*, V). Group g holds NR * G weights (two vectors) and row i's G activations at
// a[i * lda + g * G]. (`#pragma GCC unroll` matters: without it GCC kept the accumulator array in memory,
// spilling inside the k loop; read in the assembly.)
template <class K, class W>
struct SimdTile : W {
    using V = typename W::V;
    // (AT and BT are deduced: K is still incomplete where this base is instantiated)
    template <int R, class AT, class BT>
    static inline __attribute__((always_inline)) void accumulate(V (&acc)[R][2], const AT* a, index_t lda, const BT* b,
                                                                 index_t groups) {
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = W::zero();
        for (index_t g = 0; g < groups; ++g) {
            const BT* bg = b + g * K::NR * K::G;
            const V b0 = W::load(bg), b1 = W::load(bg + K::NR * K::G / 2);
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) K::step(acc[i][0], acc[i][1], a + i * lda + g * K::G, b0, b1);
        }
    }
    template <int R, class AT, class BT>
    static void tile_r(const AT* a, index_t lda, const BT* b, index_t groups, int32_t* c) {
        V acc[R][2];
        accumulate<R>(acc, a, lda, b, groups);
        store_tile<R>(acc, c);
    }
    // The R-row tile over implicit rows (APack::rows) for the panel of columns n0..: p[i * taps + j] is row i's
    // segment j; the weight panel runs on through the segments in order. With APack::pad_corr, a segment that is
    // padding in every row is skipped and its correction added instead.
    template <int R, class AT, class BT>
    static inline __attribute__((always_inline)) void accumulate_implicit(V (&acc)[R][2], const AT* const* p,
                                                                          const APack& a, index_t n0, const BT* b) {
        const index_t taps = a.taps, seg_groups = a.seg / K::G;
        const int32_t* corr = a.pad_corr ? a.pad_corr + n0 : nullptr;
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = W::zero();
        V skip0 = W::zero(), skip1 = W::zero();
        for (index_t j = 0; j < taps; ++j) {
            if (corr && segment_is_padding<R>(p, taps, j, a.pad)) {
                b += seg_groups * K::NR * K::G;
                skip0 = W::add(skip0, W::load(corr + j * a.pad_corr_ld));
                skip1 = W::add(skip1, W::load(corr + j * a.pad_corr_ld + K::NR / 2));
                continue;
            }
            const AT* row[R];
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) row[i] = p[i * taps + j];
            for (index_t g = 0; g < seg_groups; ++g, b += K::NR * K::G) {
                const V b0 = W::load(b), b1 = W::load(b + K::NR * K::G / 2);
#pragma GCC unroll 16
                for (int i = 0; i < R; ++i) K::step(acc[i][0], acc[i][1], row[i] + g * K::G, b0, b1);
            }
        }
        if (corr) {
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) {
                acc[i][0] = W::add(acc[i][0], skip0);
                acc[i][1] = W::add(acc[i][1], skip1);
            }
        }
    }
    template <int R, class AT, class BT>
    static void tile_implicit(const AT* const* p, const APack& a, index_t n0, const BT* b, int32_t* c) {
        V acc[R][2];
        accumulate_implicit<R>(acc, p, a, n0, b);
        store_tile<R>(acc, c);
    }
    template <int R>
    static inline __attribute__((always_inline)) void store_tile(V (&acc)[R][2], int32_t* c) {
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            W::store(c + i * K::NR, acc[i][0]);
            W::store(c + i * K::NR + K::NR / 2, acc[i][1]);
        }
    }
};

template <class Kernel>
inline void gemm_block_generic(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0,
                               index_t p1) {
    using AT = typename Kernel::AT;
    using BT = typename Kernel::BT;
    alignas(64) int32_t tile[Kernel::MR * Kernel::NR];
    const AT* ap = static_cast<const AT*>(a.data);
    const BT* bp = static_cast<const BT*>(b.data);
    for (index_t m = m0; m < m1; m += Kernel::MR) {
        const int mr = static_cast<int>((m1 - m) < Kernel::MR ? (m1 - m) : Kernel::MR);
        for (index_t p = p0; p < p1; ++p) {
            const BT* panel = bp + p * b.panel_elems;
            const index_t n0 = p * Kernel::NR;
            const index_t nr = (b.N - n0) < Kernel::NR ? (b.N - n0) : Kernel::NR;
            tile_rows<Kernel>(mr, ap + m * a.lda, a.lda, panel, b.groups, tile);
            apply_sparse_correction<AT>(tile, Kernel::NR, b, a, m, mr, n0, nr);
            for (int i = 0; i < mr; ++i) Kernel::epilogue_row(tile + i * Kernel::NR, nr, o, m + i, n0);
        }
    }
}

// The block loop of gemm_block_generic over implicit rows (APack::rows; byte layouts without sparse corrections,
// Kernel a SimdTile): each MR-row tile's segment pointers are found once and serve every weight panel.
template <class Kernel, int R = Kernel::MR>
inline void tile_rows_implicit(int mr, const uint8_t* const* p, const APack& a, index_t n0, const int8_t* b,
                               int32_t* c) {
    if constexpr (R > 1) {
        if (mr < R) return tile_rows_implicit<Kernel, R - 1>(mr, p, a, n0, b, c);
    }
    Kernel::template tile_implicit<R>(p, a, n0, b, c);
}

template <class Kernel>
inline void gemm_block_implicit(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0,
                                index_t p1) {
    static_assert(std::is_same_v<typename Kernel::AT, uint8_t>, "implicit rows are bytes");
    alignas(64) int32_t tile[Kernel::MR * Kernel::NR];
    const uint8_t* ptrs[Kernel::MR * kMaxImplicitTaps];
    const int8_t* bp = static_cast<const int8_t*>(b.data);
    const index_t seg_groups = a.seg / Kernel::G;
    for (index_t m = m0; m < m1; m += Kernel::MR) {
        const int mr = static_cast<int>((m1 - m) < Kernel::MR ? (m1 - m) : Kernel::MR);
        implicit_row_segments(a, m, mr, ptrs);
        for (index_t p = p0; p < p1; ++p) {
            const index_t n0 = p * Kernel::NR;
            const index_t nr = (b.N - n0) < Kernel::NR ? (b.N - n0) : Kernel::NR;
            tile_rows_implicit<Kernel>(mr, ptrs, a, n0, bp + p * b.panel_elems, tile);
            for (int i = 0; i < mr; ++i) Kernel::epilogue_row(tile + i * Kernel::NR, nr, o, m + i, n0);
        }
    }
}

// Inner-loop throughput probe: the kernel's own MR x NR tile loop over a 256-group panel that stays in L1,
// repeated; returns the multiply-accumulates done (the caller times the call). Stack buffers only.
template <class Kernel>
inline double probe_kernel(index_t iters) {
    constexpr int KG = 256;
    alignas(64) typename Kernel::AT a[Kernel::MR * KG * Kernel::G];
    alignas(64) typename Kernel::BT b[KG * Kernel::G * Kernel::NR];
    alignas(64) int32_t c[Kernel::MR * Kernel::NR];
    for (int i = 0; i < Kernel::MR * KG * Kernel::G; ++i) a[i] = static_cast<typename Kernel::AT>(i % 200);
    for (int i = 0; i < KG * Kernel::G * Kernel::NR; ++i) b[i] = static_cast<typename Kernel::BT>(i % 60 - 30);
    const index_t reps = iters / KG + 1;
    int32_t sink = 0;
    for (index_t r = 0; r < reps; ++r) {
        Kernel::template tile_r<Kernel::MR>(a, KG * Kernel::G, b, KG, c);
        sink += c[r % (Kernel::MR * Kernel::NR)];
    }
    volatile int32_t keep = sink;
    (void)keep;
    return static_cast<double>(reps) * KG * Kernel::G * Kernel::MR * Kernel::NR;
}

}  // namespace
}  // namespace pyquant
