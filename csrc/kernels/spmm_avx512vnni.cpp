// AVX-512 VNNI int8 sparse kernel. X is packed as uint8 u = xq (uint8 activations) or xq + 128 (int8
// activations), 64 columns per strip (one zmm per X row). Non-zeros are taken four at a time: the four X rows
// are interleaved (unpack epi8 then epi16) into byte quads and vpdpbusd multiplies them by the broadcast
// weight quad, summing u8 * s8 products in int32. With zp_eff = zp (+ 128 for int8 activations):
//     acc = sum_k w[k] * (xq - zp) = sum_k w[k] * u  -  zp_eff * sum_k w[k]  = dot - row_corr[r]
// Integer arithmetic is exact modulo 2^32, and the caller has proven |acc| <= sum|w| * max|xq - zp| < 2^31,
// so the result is exact (intermediate wrap-around, if any, cancels). The accumulators start at -row_corr.
// CSR rows, one strip per task: two rows at a time. Several strips per task (up to 4, while their packed X
// fits 64 KB): one row at a time over all of them, each quad's indices and weights loaded once. Short rows
// with X up to 3 strips wide come as sliced ELL chunks instead, strip by strip (spmm_s8_sell): the four rows
// of a chunk with the same quad count side by side, no tail. Measured on W 12544 x 100 (rows of ~10 entries),
// X 64 wide, 1 thread: CSR rows ~120 us (loop exits on random row lengths and 1-3 leftover entries per row),
// chunks ~90 us: ~40 us of quads (~4.5 cycles per quad and row; the FP pipes need 3: 8 unpacks + 4 vpdpbusd
// over four pipes) and ~45 us per-row start, epilogue and the 3.2 MB of float32 stores.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu_features.hpp"
#include "kernels/epilogue_avx512.hpp"
#include "kernels/spmm.hpp"

namespace pyquant {
namespace avx512vnni {
namespace {

constexpr index_t kS = kSpmmStripVnniS8;  // bytes per packed X row

PYQUANT_SPMM_INLINE __mmask16 tail_mask(index_t rem) {
    return rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
}

// Four consecutive int8 weights as one little-endian 32-bit word: exactly the byte quad vpdpbusd wants.
PYQUANT_SPMM_INLINE __m512i quad_weights_at(const int8_t* p) {
    uint32_t q;
    std::memcpy(&q, p, sizeof q);
    return _mm512_set1_epi32(static_cast<int>(q));
}

// acc += the u8 x s8 quad products of x and w, updated in place: with the intrinsic, GCC 12 gave each result a
// new register and copied it back (two register moves per vpdpbusd in the hot loops, read in the assembly).
PYQUANT_SPMM_INLINE void dpbusd(__m512i& acc, __m512i x, __m512i w) {
    __asm__("vpdpbusd %[w], %[x], %[acc]" : [acc] "+v"(acc) : [x] "v"(x), [w] "v"(w));
}

PYQUANT_SPMM_INLINE void quad_step(__m512i* acc, const uint8_t* x0, const uint8_t* x1, const uint8_t* x2, const uint8_t* x3,
                      __m512i wv) {
    __m512i a = _mm512_load_si512(x0), b = _mm512_load_si512(x1);
    __m512i c = _mm512_load_si512(x2), d = _mm512_load_si512(x3);
    __m512i ab_lo = _mm512_unpacklo_epi8(a, b), ab_hi = _mm512_unpackhi_epi8(a, b);
    __m512i cd_lo = _mm512_unpacklo_epi8(c, d), cd_hi = _mm512_unpackhi_epi8(c, d);
    dpbusd(acc[0], _mm512_unpacklo_epi16(ab_lo, cd_lo), wv);
    dpbusd(acc[1], _mm512_unpackhi_epi16(ab_lo, cd_lo), wv);
    dpbusd(acc[2], _mm512_unpacklo_epi16(ab_hi, cd_hi), wv);
    dpbusd(acc[3], _mm512_unpackhi_epi16(ab_hi, cd_hi), wv);
}

}  // namespace

namespace {

PYQUANT_SPMM_INLINE const uint8_t* xrow(const uint8_t* x8, const int32_t* idx, index_t k) {
    return x8 + static_cast<index_t>(idx[k]) * kS;
}

PYQUANT_SPMM_INLINE void quad_at(__m512i* acc, const uint8_t* x8, const int32_t* idx, const int8_t* data, index_t k) {
    quad_step(acc, xrow(x8, idx, k), xrow(x8, idx, k + 1), xrow(x8, idx, k + 2), xrow(x8, idx, k + 3),
              quad_weights_at(data + k));
}

// The last 1-3 non-zeros [k, e1) of a row (none when k == e1), as tail_quad_slots lays them out.
PYQUANT_SPMM_INLINE void tail_quad(__m512i* acc, const uint8_t* x8, const int32_t* idx, const int8_t* data, index_t k,
                                   index_t e1, index_t nnz) {
    if (k >= e1) return;
    const TailQuad t = tail_quad_slots(idx, data, k, e1, nnz);
    quad_step(acc, x8 + t.cols[0] * kS, x8 + t.cols[1] * kS, x8 + t.cols[2] * kS, x8 + t.cols[0] * kS,
              _mm512_set1_epi32(static_cast<int>(t.weights)));
}

// Epilogue and store of one row's four accumulators. A (the activation) and Q (requantize) are template
// constants, and `ep` a local copy whose act is A: the shared epilogue's switch folds away.
template <Activation A, bool Q>
PYQUANT_SPMM_INLINE void store_row(const __m512i* acc, float scale, float bias, const Epilogue& e, float* yf,
                      int8_t* yq, index_t width) {
    Epilogue ep = e;
    ep.act = A;
    const __m512 sc = _mm512_set1_ps(scale), b = _mm512_set1_ps(bias);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        index_t rem = width - 16 * v;
        if (rem <= 0) break;
        __m512 yv = epilogue_float_avx512(acc[v], sc, b, ep);
        if constexpr (!Q) {
            if (rem >= 16)
                _mm512_storeu_ps(yf + 16 * v, yv);
            else
                _mm512_mask_storeu_ps(yf + 16 * v, tail_mask(rem), yv);
        } else {
            __m128i q8 = _mm512_cvtepi32_epi8(requantize_avx512(yv, ep));  // values already in [qmin, qmax]
            _mm_mask_storeu_epi8(yq + 16 * v, tail_mask(rem), q8);
        }
    }
}

// The accumulators of row r start at -zp_eff * sum(w) modulo 2^32 instead of subtracting it at the end (one
// operation less per vector; the true sum fits in int32, so the wrapped sum is exact).
PYQUANT_SPMM_INLINE int32_t acc_start_value(int64_t row_sum, int64_t zp_eff) {
    return static_cast<int32_t>(static_cast<uint32_t>(0u - static_cast<uint64_t>(row_sum * zp_eff)));
}
PYQUANT_SPMM_INLINE __m512i acc_start(int64_t row_sum, int64_t zp_eff) {
    return _mm512_set1_epi32(acc_start_value(row_sum, zp_eff));
}

// Everything a kernel does per output row besides the quads, set up once per call: the accumulators' start
// value (acc_start) and the fused epilogue and store of the task's strips of a row. Each kernel works on a
// local copy, which the output stores cannot alias, so nothing in it is reloaded after a store.
template <Activation A, bool Q>
struct RowIo {
    Epilogue ep;
    SpmmS8Out out;
    index_t c0, width;
    const float* row_scale;
    float x_scale;
    const float* bias;
    const int64_t* row_sums;
    int64_t zp_eff;

    // the 4 * ns accumulators of row r (ns strips of the task)
    PYQUANT_SPMM_INLINE void start(__m512i* acc, index_t r, int ns = 1) const {
        const __m512i c = acc_start(row_sums[r], zp_eff);
        for (int v = 0; v < 4 * ns; ++v) acc[v] = c;
    }
    PYQUANT_SPMM_INLINE void store(const __m512i* acc, index_t r, int ns = 1) const {
        const float sc = row_scale[r] * x_scale, b = bias ? bias[r] : 0.0f;
        for (int s = 0; s < ns; ++s) {
            const index_t o = out.at(r, c0 + kS * s);
            store_row<A, Q>(acc + 4 * s, sc, b, ep, Q ? nullptr : out.y_f32 + o,
                            Q ? static_cast<int8_t*>(out.y_q) + o : nullptr, width - kS * s);
        }
    }
};

// Two rows at a time (eight independent accumulators), each row's quads in storage order.
template <Activation A, bool Q>
PYQUANT_SPMM_KERNEL void s8_rows(const CsrView& w, const int8_t* data, const uint8_t* x8, index_t r0, index_t r1,
                                 const RowIo<A, Q> io_) {
    const RowIo<A, Q> io = io_;
    const int32_t* idx = w.indices;
    const int64_t* ip = w.indptr;
    const index_t nnz = ip[w.nrows];
    index_t r = r0;
    for (; r + 2 <= r1; r += 2) {
        __m512i a[4], b[4];
        io.start(a, r);
        io.start(b, r + 1);
        const index_t ka = ip[r], ea = ip[r + 1], kb = ip[r + 1], eb = ip[r + 2];
        const index_t qa = (ea - ka) / 4, qb = (eb - kb) / 4, qc = qa < qb ? qa : qb;
        index_t t = 0;
        for (; t + 4 < qc; ++t) {  // prefetch the X rows of the quads four steps ahead
            for (int j = 0; j < 4; ++j) {
                _mm_prefetch(reinterpret_cast<const char*>(xrow(x8, idx, ka + 4 * (t + 4) + j)), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(xrow(x8, idx, kb + 4 * (t + 4) + j)), _MM_HINT_T0);
            }
            quad_at(a, x8, idx, data, ka + 4 * t);
            quad_at(b, x8, idx, data, kb + 4 * t);
        }
        for (; t < qc; ++t) {
            quad_at(a, x8, idx, data, ka + 4 * t);
            quad_at(b, x8, idx, data, kb + 4 * t);
        }
        for (index_t u = t; u < qa; ++u) quad_at(a, x8, idx, data, ka + 4 * u);
        for (index_t u = t; u < qb; ++u) quad_at(b, x8, idx, data, kb + 4 * u);
        tail_quad(a, x8, idx, data, ka + 4 * qa, ea, nnz);
        tail_quad(b, x8, idx, data, kb + 4 * qb, eb, nnz);
        io.store(a, r);
        io.store(b, r + 1);
    }
    if (r < r1) {
        __m512i a[4];
        io.start(a, r);
        const index_t ka = ip[r], ea = ip[r + 1], qa = (ea - ka) / 4;
        for (index_t u = 0; u < qa; ++u) quad_at(a, x8, idx, data, ka + 4 * u);
        tail_quad(a, x8, idx, data, ka + 4 * qa, ea, nnz);
        io.store(a, r);
    }
}

// Several strips per pass (NS = 2..4, 64 columns each; strip s of X starts w.ncols * kS bytes after strip
// s - 1): one row at a time with 4 * NS accumulators. Each quad's column indices, X row offsets and weight word
// are loaded once for all NS strips, and each row's indptr / loop work once per NS strips. Chosen by
// the binding when the NS strips of X stay small (64 KB), so no prefetching.
template <int NS>
PYQUANT_SPMM_INLINE void quad_multi(__m512i* acc, const uint8_t* const* xs, index_t o0, index_t o1, index_t o2,
                                    index_t o3, __m512i wv) {
    for (int s = 0; s < NS; ++s) quad_step(acc + 4 * s, xs[s] + o0, xs[s] + o1, xs[s] + o2, xs[s] + o3, wv);
}

template <int NS, Activation A, bool Q>
PYQUANT_SPMM_KERNEL void s8_rows_multi(const CsrView& w, const int8_t* data, const uint8_t* x8, index_t r0, index_t r1,
                                       const RowIo<A, Q> io_) {
    const RowIo<A, Q> io = io_;
    const int32_t* idx = w.indices;
    const int64_t* ip = w.indptr;
    const index_t nnz = ip[w.nrows];
    const uint8_t* xs[NS];
    for (int s = 0; s < NS; ++s) xs[s] = x8 + s * w.ncols * kS;
    for (index_t r = r0; r < r1; ++r) {
        __m512i acc[4 * NS];
        io.start(acc, r, NS);
        index_t k = ip[r];
        const index_t e1 = ip[r + 1];
        for (; k + 4 <= e1; k += 4)
            quad_multi<NS>(acc, xs, static_cast<index_t>(idx[k]) * kS, static_cast<index_t>(idx[k + 1]) * kS,
                           static_cast<index_t>(idx[k + 2]) * kS, static_cast<index_t>(idx[k + 3]) * kS,
                           quad_weights_at(data + k));
        if (k < e1) {  // 1-3 left
            const TailQuad t = tail_quad_slots(idx, data, k, e1, nnz);
            quad_multi<NS>(acc, xs, t.cols[0] * kS, t.cols[1] * kS, t.cols[2] * kS, t.cols[0] * kS,
                           _mm512_set1_epi32(static_cast<int>(t.weights)));
        }
        io.store(acc, r, NS);
    }
}

// All quad steps of one chunk, its four rows side by side (16 accumulators; unrolled so that they stay
// registers). X is addressed by the stored byte offsets (zero-extended), without scaling.
PYQUANT_SPMM_INLINE void sell_chunk_quads(__m512i (*acc)[4], const uint8_t* x8, const uint32_t* o, const int8_t* wd,
                                          index_t nq) {
    for (index_t q = 0; q < nq; ++q, o += 4 * kSellRows, wd += 4 * kSellRows) {
#pragma GCC unroll 4
        for (index_t i = 0; i < kSellRows; ++i)
            quad_step(acc[i], x8 + o[4 * i], x8 + o[4 * i + 1], x8 + o[4 * i + 2], x8 + o[4 * i + 3],
                      quad_weights_at(wd + 4 * i));
    }
}

// Sliced ELL chunks (see SellView), one strip: the four rows of a chunk side by side (sixteen accumulators),
// every row the same number of quads and no tail. A chunk that does not fit its arrays (sell_chunk_fits) is
// skipped and makes the call return false (for_each_sell_chunk: ~7 us at 12544 rows as a separate pass).
template <Activation A, bool Q>
PYQUANT_SPMM_KERNEL bool s8_sell_rows(const SellView& w, const uint8_t* x8, index_t ch0, index_t ch1,
                                      const RowIo<A, Q> io_) {
    const RowIo<A, Q> io = io_;
    constexpr index_t R = kSellRows;
    return for_each_sell_chunk(w, ch0, ch1, [&](const SellChunk& ch) PYQUANT_SPMM_INLINE_LAMBDA {
        // a padding row (index -1, last chunk only) is computed from row 0's start value and not stored;
        // unrolled so that the accumulators stay registers
        __m512i acc[R][4];
#pragma GCC unroll 4
        for (index_t i = 0; i < R; ++i) io.start(acc[i], ch.rows[i] < 0 ? 0 : ch.rows[i]);
        if (ch.nq > 0) sell_chunk_quads(acc, x8, ch.offsets, ch.data, ch.nq);
#pragma GCC unroll 4
        for (index_t i = 0; i < R; ++i)
            if (ch.rows[i] >= 0) io.store(acc[i], ch.rows[i]);
    });
}

// Sliced ELL chunks times ONE column of X (a batch of one image) on CPUs with AVX-512 VBMI, W of at most 256
// columns: rows become lanes. quad_step would use one column of the 64 it loads; here the X column is a byte table
// in four zmm registers and four chunks (16 rows) run side by side: each quad step turns the chunks' 64 entries'
// X row offsets into column bytes, looks their X values up in the table (vpermi2b: no memory access) and one
// vpdpbusd adds the 64 products (row i of chunk j: dword 4 j + i). A chunk with fewer quads than the others adds
// zero weights for the rest. Then the epilogue of the 16 rows at once, stored lane by lane. (With a dword gather
// per chunk quad instead, ~20 cycles each on AMD Zen 5, the whole call took about twice as long.)
constexpr index_t kColumnTableMax = 256;

template <Activation A, bool Q>
__attribute__((target("avx512vbmi"))) bool s8_sell_column(const SellView& w, const uint8_t* x8, index_t ch0,
                                                           index_t ch1, const RowIo<A, Q> io_) {
    const RowIo<A, Q> io = io_;
    Epilogue ep = io.ep;
    ep.act = A;
    constexpr index_t G = 4, L = G * kSellRows;  // chunks side by side, lanes
    constexpr index_t E = 4 * kSellRows;         // entries per chunk quad
    alignas(64) uint8_t table[kColumnTableMax] = {};
    for (index_t k = 0; k < w.ncols; ++k) table[k] = x8[k * kS];  // column 0 of packed row k
    const __m512i t0 = _mm512_load_si512(table), t1 = _mm512_load_si512(table + 64);
    const __m512i t2 = _mm512_load_si512(table + 128), t3 = _mm512_load_si512(table + 192);
    const bool wide = w.ncols > 128;
    bool ok = true;
    for (index_t c = ch0; c < ch1; c += G) {
        SellChunk chs[G];
        index_t nq_max = 0;
        alignas(64) int64_t rows[L];
        for (index_t j = 0; j < G; ++j) {
            const index_t cj = c + j;
            const bool fits = cj < ch1 && sell_chunk_fits(w, cj);
            ok &= cj >= ch1 || fits;
            chs[j] = SellChunk{nullptr, 0, nullptr, nullptr};
            if (fits) {
                const index_t e0 = w.ptr[cj];
                chs[j] = SellChunk{w.rows + cj * kSellRows, (w.ptr[cj + 1] - e0) / E,
                                   reinterpret_cast<const uint32_t*>(w.offsets + e0), w.data + e0};
            }
            for (index_t i = 0; i < kSellRows; ++i) rows[j * kSellRows + i] = fits ? chs[j].rows[i] : -1;
            nq_max = std::max(nq_max, chs[j].nq);
        }
        alignas(64) int32_t start[L];
        alignas(64) float sc[L], bias[L];
        for (index_t l = 0; l < L; ++l) {  // a padding row (-1) is computed as row 0 and not stored
            const index_t r = rows[l] < 0 ? 0 : rows[l];
            start[l] = acc_start_value(io.row_sums[r], io.zp_eff);
            sc[l] = io.row_scale[r] * io.x_scale;
            bias[l] = io.bias ? io.bias[r] : 0.0f;
        }
        // the start values join after the quads (the same sum modulo 2^32): loaded right after the scalar stores
        // above, the vector load would wait for them (no store forwarding)
        __m512i acc = _mm512_setzero_si512();
        for (index_t q = 0; q < nq_max; ++q) {
            __m512i cols = _mm512_setzero_si512(), wq = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (index_t j = 0; j < G; ++j) {
                if (q >= chs[j].nq) continue;  // zero weights: no products
                const __m512i off = _mm512_loadu_si512(chs[j].offsets + q * E);
                const __m128i cb = _mm512_cvtepi32_epi8(_mm512_srli_epi32(off, 6));  // offset / kS: the column
                const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(chs[j].data + q * E));
                cols = _mm512_mask_broadcast_i32x4(cols, static_cast<__mmask16>(0xF << (4 * j)), cb);
                wq = _mm512_mask_broadcast_i32x4(wq, static_cast<__mmask16>(0xF << (4 * j)), wb);
            }
            __m512i xq = _mm512_permutex2var_epi8(t0, cols, t1);  // columns 0..127 (index bit 7 ignored)
            if (wide)  // columns 128..255: index bit 7 set
                xq = _mm512_mask_blend_epi8(_mm512_movepi8_mask(cols), xq, _mm512_permutex2var_epi8(t2, cols, t3));
            dpbusd(acc, xq, wq);
        }
        acc = _mm512_add_epi32(acc, _mm512_load_si512(start));
        const __m512 y = epilogue_float_avx512(acc, _mm512_load_ps(sc), _mm512_load_ps(bias), ep);
        alignas(64) float yf[L];
        alignas(64) int32_t yq[L];
        if constexpr (Q) _mm512_store_si512(yq, requantize_avx512(y, ep));
        else _mm512_store_ps(yf, y);
        for (index_t l = 0; l < L; ++l) {
            if (rows[l] < 0) continue;
            const index_t o = io.out.at(rows[l], io.c0);
            if constexpr (Q) static_cast<int8_t*>(io.out.y_q)[o] = static_cast<int8_t>(yq[l]);  // in [qmin, qmax]
            else io.out.y_f32[o] = yf[l];
        }
    }
    return ok;
}

}  // namespace

namespace {
// Calls f(io) with the RowIo of this call's activation and output kind.
template <class F>
void with_row_io(bool x_is_u8, int32_t x_zp, index_t n, index_t c0, index_t width, const float* row_scale,
                 float x_scale, const float* bias, const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out,
                 F&& f) {
    const int64_t zp_eff = x_is_u8 ? x_zp : x_zp + 128;  // int8 x was packed as x + 128
    with_epilogue(e.act, !out.y_f32, [&](auto act, auto q) {
        f(RowIo<decltype(act)::value, decltype(q)::value>{e, out, c0, width, row_scale, x_scale, bias, row_sums,
                                                           zp_eff});
    });
}
}  // namespace

void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t r0,
             index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
             const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out) {
    const uint8_t* x8 = static_cast<const uint8_t*>(xp);
    with_row_io(x_is_u8, x_zp, n, c0, width, row_scale, x_scale, bias, row_sums, e, out, [&](const auto& io) {
        switch ((width + kS - 1) / kS) {
            case 1: return s8_rows(w, data, x8, r0, r1, io);
            case 2: return s8_rows_multi<2>(w, data, x8, r0, r1, io);
            case 3: return s8_rows_multi<3>(w, data, x8, r0, r1, io);
            case 4: return s8_rows_multi<4>(w, data, x8, r0, r1, io);
            default: return;
        }
    });
}

bool spmm_s8_sell(const SellView& w, const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t ch0,
                  index_t ch1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
                  const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out) {
    const uint8_t* x8 = static_cast<const uint8_t*>(xp);
    static const bool vbmi = cpu_features().avx512vbmi;
    const bool column = width == 1 && w.ncols <= kColumnTableMax && vbmi;
    bool ok = true;
    with_row_io(x_is_u8, x_zp, n, c0, width, row_scale, x_scale, bias, row_sums, e, out,
                [&](const auto& io) {
                    ok = column ? s8_sell_column(w, x8, ch0, ch1, io) : s8_sell_rows(w, x8, ch0, ch1, io);
                });
    return ok;
}

bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1, const QuantRun& qp,
                  bool x_is_u8, int32_t, void* dst) {
    alignas(64) uint8_t tmp[kS];
    // 4 x 4 transpose of dwords: position dword 4l + j takes column dword 4j + l
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i flip = _mm512_set1_epi8(x_is_u8 ? 0 : static_cast<char>(0x80));  // int8 -> uint8 (+128)
    uint8_t* d = static_cast<uint8_t*>(dst);
    bool ok = true;
    for (index_t i = i0; i < i1; ++i) {
        const float* src = x + i * n + c0;
        ok &= x_is_u8 ? avx512::quantize_u8(src, tmp, w, qp)
                      : avx512::quantize_s8(src, reinterpret_cast<int8_t*>(tmp), w, qp);
        for (index_t j = w; j < kS; ++j) tmp[j] = 0;  // padding columns are never stored
        __m512i v = _mm512_xor_si512(_mm512_load_si512(tmp), flip);
        _mm512_store_si512(d + i * kS, _mm512_permutexvar_epi32(perm, v));
    }
    return ok;
}

}  // namespace avx512vnni
}  // namespace pyquant
