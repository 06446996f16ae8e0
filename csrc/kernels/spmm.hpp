// Sparse CSR x dense matmul family (CONTRACT section 3):  Y[r, :] = sum_k W[r, idx[k]] * X[idx[k], :]
// over W's stored entries k of row r, IN STORAGE ORDER (unsorted and duplicate column indices are accepted
// and each stored entry contributes once, in the order stored).
//
// float32 path: every output element starts at +0.0f and adds the products one by one in storage order,
// each step a separate float32 multiply then a float32 add (no FMA: the build uses -ffp-contract=off and the
// SIMD paths use mul + add intrinsics), so scalar, AVX2 and AVX-512 give the same bits for any thread count.
// On Zen 4/5 mul and add run on separate pipes, so this costs nothing next to FMA in a load-bound loop.
//
// int8 path: W int8 (per-row float32 scales), X quantized per call and per tensor to uint8/int8 with zero
// point zx (section-1 rule, the quantize kernels, while packing); the kernels accumulate
// acc = sum_k w[k] * (xq[idx[k], j] - zx) exactly in int32 (AVX2 / AVX-512: int16 (xq - zx) operands and
// vpmaddwd on pairs of non-zeros; AVX-512 VNNI: vpdpbusd on quads of u8 activations minus zp * sum(w)); the
// caller has proven that no row can overflow int32. Then the shared fused epilogue (epilogue*.hpp).
//
// The SIMD kernels read X from packed column strips (`strip` columns of every X row stored contiguously),
// packed once per call (spmm_pack_f32 / each path's spmm_pack_s8). Callers allocate every buffer; kernel
// files allocate nothing.
#pragma once
#include <cstring>
#include <type_traits>

#include "common.hpp"
#include "kernels/epilogue.hpp"
#include "kernels/quantize.hpp"

// Helpers of the hot loops: force inlining (with many template instances GCC otherwise outlines them and
// keeps the accumulators in memory).
#define PYQUANT_SPMM_INLINE inline __attribute__((always_inline))
#define PYQUANT_SPMM_INLINE_LAMBDA __attribute__((always_inline))  // after a lambda's parameter list
// Each kernel instance (activation x output kind) stays a function of its own: inlined into the dispatcher,
// GCC ran out of inlining budget there and called the per-row helpers out of line (measured 30% slower).
#define PYQUANT_SPMM_KERNEL __attribute__((noinline))

namespace pyquant {

// A validated CSR matrix view (indptr int64 of nrows + 1 entries, indices int32 in [0, ncols)).
struct CsrView {
    const int64_t* indptr;
    const int32_t* indices;
    index_t nrows, ncols;
};

// int8 matrices of short rows, "sliced ELL" (built once by pyquant): rows taken kSellRows at a time, the
// rows of a chunk sorted by length (within windows of rows) and padded with zero weights at column 0 to the
// chunk's number of non-zero quads. The kernels then run every row of a chunk with the same trip count and no
// tail: with ~10 entries per row, the loop exits and 1-3 leftover entries of CSR rows cost more than the
// arithmetic. Chunk c computes rows rows[kSellRows * c + i] (-1: no row) from entries [ptr[c], ptr[c + 1]):
// entry ptr[c] + (q * kSellRows + i) * 4 + t is slot t of quad q of the chunk's row i. An entry holds its
// weight and the byte offset of its X row in the packed strip (column * kSellStride), so the kernel addresses
// X without scaling. Padding adds zero products to exact integer sums: the same bits as the CSR kernels.
constexpr index_t kSellRows = 4;
// rows are sorted by length within windows of kSellWindow rows (a multiple of kSellRows): the chunks of a
// window hold exactly that window's rows
constexpr index_t kSellWindow = 64;
// bytes per packed X row: 64 uint8 columns (AVX-512 VNNI; AVX-VNNI in two halves) or 32 int16 columns (AVX2)
constexpr index_t kSellStride = 64;
struct SellView {
    const int64_t* rows;
    const int64_t* ptr;
    const int32_t* offsets;
    const int8_t* data;
    index_t nchunks, nentries, nrows;  // nentries: length of offsets / data; nrows: W's rows
    index_t ncols;                     // W's columns (X's rows)
};

// Output of the int8 path: float32 (y_f32) or requantized int8 / uint8 (y_q, is_u8) with the epilogue.
// Element (r, c) of Y is stored at at(r, c) = (r - row0) * ld + (c - col0): Y itself (row0 = col0 = 0, ld =
// its column count n), or a task's tile of Y (its first row and column, the tile's row stride) that the
// caller then stores elsewhere (spmm_s8 with transposed output).
struct SpmmS8Out {
    float* y_f32;   // null when requantizing
    void* y_q;      // int8_t* or uint8_t*
    bool is_u8;
    index_t ld = 0, row0 = 0, col0 = 0;
    PYQUANT_SPMM_INLINE index_t at(index_t r, index_t c) const { return (r - row0) * ld + (c - col0); }
};

namespace {  // one internal copy per file: the ISA files compile it with their own flags
// Whether chunk c of a sliced ELL matrix fits its arrays: entries inside [0, nentries), whole quads for every
// row, rows inside [-1, nrows).
PYQUANT_SPMM_INLINE bool sell_chunk_fits(const SellView& w, index_t c) {
    const index_t e0 = w.ptr[c], e1 = w.ptr[c + 1];
    bool fits = e0 >= 0 && e0 <= e1 && e1 <= w.nentries && (e1 - e0) % (4 * kSellRows) == 0;
    for (index_t i = 0; i < kSellRows; ++i) fits &= w.rows[c * kSellRows + i] >= -1 && w.rows[c * kSellRows + i] < w.nrows;
    return fits;
}

// The last 1-3 stored entries [k, e1) of a row as one quad for the vpdpbusd kernels: slots 0-2 read X rows
// cols[0..2] (slot 3 repeats slot 0), the missing slots repeat slot 0 with weight 0. Row lengths vary at random,
// so this has no data-dependent branches (selects and a masked weight word) whenever a whole quad can be read
// inside the arrays (nnz stored entries).
struct TailQuad {
    index_t cols[3];
    uint32_t weights;  // the four int8 weights as one little-endian word
};
PYQUANT_SPMM_INLINE TailQuad tail_quad_slots(const int32_t* idx, const int8_t* data, index_t k, index_t e1,
                                             index_t nnz) {
    const index_t rem = e1 - k;  // 1..3
    TailQuad t{{idx[k], idx[k], idx[k]}, 0};
    if (k + 4 <= nnz) {
        std::memcpy(&t.weights, data + k, sizeof t.weights);
        t.weights &= 0xFFFFFFFFu >> (8 * (4 - rem));  // keep the first rem weights
        const index_t c1 = idx[k + 1], c2 = idx[k + 2];
        t.cols[1] = rem > 1 ? c1 : t.cols[0];
        t.cols[2] = rem > 2 ? c2 : t.cols[0];
    } else {
        for (index_t s = 0; s < rem; ++s)
            t.weights |= static_cast<uint32_t>(static_cast<uint8_t>(data[k + s])) << (8 * s);
        if (rem > 1) t.cols[1] = idx[k + 1];
        if (rem > 2) t.cols[2] = idx[k + 2];
    }
    return t;
}

// Calls f(act, q, ng) for the int16 kernels: the activation and output kind as with_epilogue gives them, and
// ng = std::integral_constant<int, 1 or 2> (two vector groups when width exceeds one group of `group` columns).
template <class F>
PYQUANT_SPMM_INLINE void with_s16_kernel(const Epilogue& e, const SpmmS8Out& out, index_t width, index_t group, F&& f) {
    if (width <= 0) return;
    with_epilogue(e.act, !out.y_f32, [&](auto act, auto q) {
        if (width > group)
            f(act, q, std::integral_constant<int, 2>{});
        else
            f(act, q, std::integral_constant<int, 1>{});
    });
}

// One sliced ELL chunk as a kernel reads it: its kSellRows output rows (-1: none), its number of quads per row,
// and its entries (entry (q * kSellRows + i) * 4 + t is slot t of quad q of row i).
struct SellChunk {
    const int64_t* rows;
    index_t nq;
    const uint32_t* offsets;  // X row byte offsets
    const int8_t* data;
};

// Calls f(chunk) for each chunk of [ch0, ch1) that fits its arrays; false when one did not (it is skipped).
// Checked here, where each chunk is read anyway, instead of a pass over all chunks per call in the binding.
template <class F>
PYQUANT_SPMM_INLINE bool for_each_sell_chunk(const SellView& w, index_t ch0, index_t ch1, F&& f) {
    bool ok = true;
    for (index_t c = ch0; c < ch1; ++c) {
        if (!sell_chunk_fits(w, c)) {
            ok = false;
            continue;
        }
        const index_t e0 = w.ptr[c];
        f(SellChunk{w.rows + c * kSellRows, (w.ptr[c + 1] - e0) / (4 * kSellRows),
                    reinterpret_cast<const uint32_t*>(w.offsets + e0), w.data + e0});
    }
    return ok;
}
}  // namespace


// One task's work: rows [r0, r1) of W times columns [c0, c0 + width) of X, where the columns form packed
// strip `s` (SIMD) or are read straight from X (scalar). n is X's full column count (row stride of X and Y).
#define PYQUANT_SPMM_DECLS                                                                                    \
    /* float32: xp = packed strip base with row stride xstride (SIMD), or X itself (scalar, stride n) */  \
    void spmm_f32(const CsrView& w, const float* data, const float* xp, index_t xstride, index_t n,         \
                  index_t r0, index_t r1, index_t c0, index_t width, float* y);                            \
    /* int8: xp = packed int16 strip (SIMD) or X itself as uint8/int8 (scalar, x_is_u8) */                  \
    void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp,          \
                 index_t n, index_t r0, index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale,     \
                 const float* bias, const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out);   \
    /* quantize rows [i0, i1) of X's columns [c0, c0 + w) (section-1 rule) into this path's packed strip */ \
    bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1,              \
                      const QuantRun& qp, bool x_is_u8, int32_t x_zp, void* dst);

namespace scalar { PYQUANT_SPMM_DECLS }
// The SIMD int8 paths also run sliced ELL chunks [ch0, ch1) over one strip (their packed X rows are kSellStride
// bytes apart, or twice that on AVX-512 int16), otherwise as spmm_s8; false when a chunk's structure does not
// fit the arrays (that chunk is skipped).
#define PYQUANT_SPMM_SELL_DECL                                                                                    \
    bool spmm_s8_sell(const SellView& w, const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t ch0,    \
                      index_t ch1, index_t c0, index_t width, const float* row_scale, float x_scale,            \
                      const float* bias, const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out);
namespace avx2 { PYQUANT_SPMM_DECLS PYQUANT_SPMM_SELL_DECL }
namespace avx512 { PYQUANT_SPMM_DECLS PYQUANT_SPMM_SELL_DECL }
// AVX-512 VNNI and AVX-VNNI: int8 only (vpdpbusd on u8 activations packed in quads, corrected by
// zp_eff * row_sums[r]).
#define PYQUANT_SPMM_VNNI_DECLS                                                                                \
    void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp, index_t n,  \
                 index_t r0, index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale,     \
                 const float* bias, const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out);        \
    bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1,                \
                      const QuantRun& qp, bool x_is_u8, int32_t x_zp, void* dst);                             \
    PYQUANT_SPMM_SELL_DECL
namespace avx512vnni { PYQUANT_SPMM_VNNI_DECLS }
namespace avxvnni { PYQUANT_SPMM_VNNI_DECLS }

// Strip geometry of each SIMD path (columns per strip).
constexpr index_t kSpmmStripAvx2F32 = 32, kSpmmStripAvx512F32 = 64;
constexpr index_t kSpmmStripAvx512F32Wide = 128;  // AVX-512 float32 when X has > 64 columns and few rows
constexpr index_t kSpmmStripAvx2S8 = 32, kSpmmStripAvx512S8 = 64, kSpmmStripVnniS8 = kSellStride;
constexpr index_t kSpmmStripAvxVnniS8 = kSellStride;  // two 32-column halves per packed row
// AVX-512 VNNI int8: a task may cover up to kSpmmVnniMaxStrips consecutive strips (its width up to 4 x 64
// columns, strip s + 1 packed ncols * 64 bytes after strip s), while those strips take at most
// kSpmmVnniGroupBytes: the kernel then reads each stored entry once for all of them.
constexpr index_t kSpmmVnniMaxStrips = 4, kSpmmVnniGroupBytes = index_t(1) << 16;

// Baseline helpers (spmm_scalar.cpp). Packed layout: strip s holds rows 0..k-1 of columns
// [s*strip, s*strip + strip) contiguously (k * strip elements), zero beyond column n. Each call packs rows
// [i0, i1) of one strip into `dst` (the strip's base).
void spmm_pack_f32(const float* x, index_t n, index_t strip, index_t s, index_t i0, index_t i1, float* dst);
// Packed int8 layouts (written by each path's spmm_pack_s8, with one permute instruction per vector):
//  AVX2 / AVX-512: int16 (q - zp); inside every group of `lanes` x 8 columns, position 8l + p holds column
//    4l + p (p < 4) or 4 * lanes + 4l + p - 4, so that after unpacklo/hi_epi16 of two rows vpmaddwd yields the
//    int32 accumulators in natural column order.
//  AVX-512 VNNI: uint8 (q, or q + 128 for int8 x); in every 64 columns, position 16l + 4j + q holds column
//    16j + 4l + q, so that unpacking four rows (epi8 then epi16) gives the accumulators in column order.
//  AVX-VNNI: the same bytes, but in each 32-column half position 16l + 4j + q holds the half's column 8j + 4l + q.
// Padding columns (beyond n) are never stored.

// O(nnz + nrows) check of a CSR structure; returns nullptr when valid, else a static message.
const char* csr_check(const int64_t* indptr, const int32_t* indices, index_t nrows, index_t ncols, index_t nnz);

}  // namespace pyquant
