// AVX-VNNI int8 sparse kernels (256-bit VEX vpdpbusd: CPUs that have it without AVX-512, e.g. Intel client
// cores since Alder Lake). The AVX-512 VNNI design at 256 bits: X packed as uint8 u = xq (uint8 activations) or
// xq + 128 (int8 activations), kSellStride = 64 bytes per packed X row so that the sliced ELL offsets address it,
// and acc = sum_k w[k] * u - zp_eff * sum_k w[k], exact (see spmm_avx512vnni.cpp). Each packed row holds two
// 32-column halves; within a half, position 16l + 4j + t holds the half's column 8j + 4l + t, so that unpacking
// four X rows (epi8 then epi16) gives a half's four accumulators in column order. A task's halves run one after
// the other, four accumulators per row: CSR rows two at a time (quads, then one branch-free tail quad), sliced
// ELL chunks two rows at a time with no tail.
#include <immintrin.h>

#include <cstring>

#include "kernels/spmm_avx2_common.hpp"

namespace pyquant {
namespace avxvnni {
namespace {

constexpr index_t kS = kSellStride;  // bytes per packed X row
constexpr index_t kHalf = 32;        // columns per half (one ymm of uint8)

// acc += the u8 x s8 quad products of x and w, in place. Written out with the VEX prefix: the assembler would
// otherwise pick the EVEX form, which needs AVX-512 VL ("%{" escapes the brace in GCC asm templates).
PYQUANT_SPMM_INLINE void dpbusd(__m256i& acc, __m256i x, __m256i w) {
    __asm__("%{vex%} vpdpbusd %[w], %[x], %[acc]" : [acc] "+x"(acc) : [x] "x"(x), [w] "x"(w));
}

PYQUANT_SPMM_INLINE void quad_step(__m256i* acc, const uint8_t* x0, const uint8_t* x1, const uint8_t* x2,
                                   const uint8_t* x3, __m256i wv) {
    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(x0));
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(x1));
    const __m256i c = _mm256_load_si256(reinterpret_cast<const __m256i*>(x2));
    const __m256i d = _mm256_load_si256(reinterpret_cast<const __m256i*>(x3));
    const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
    const __m256i cd_lo = _mm256_unpacklo_epi8(c, d), cd_hi = _mm256_unpackhi_epi8(c, d);
    dpbusd(acc[0], _mm256_unpacklo_epi16(ab_lo, cd_lo), wv);
    dpbusd(acc[1], _mm256_unpackhi_epi16(ab_lo, cd_lo), wv);
    dpbusd(acc[2], _mm256_unpacklo_epi16(ab_hi, cd_hi), wv);
    dpbusd(acc[3], _mm256_unpackhi_epi16(ab_hi, cd_hi), wv);
}

// Four consecutive int8 weights as one little-endian 32-bit word: the byte quad vpdpbusd wants.
PYQUANT_SPMM_INLINE __m256i quad_weights_at(const int8_t* p) {
    uint32_t q;
    std::memcpy(&q, p, sizeof q);
    return _mm256_set1_epi32(static_cast<int>(q));
}

PYQUANT_SPMM_INLINE const uint8_t* xrow(const uint8_t* x8, const int32_t* idx, index_t k) {
    return x8 + static_cast<index_t>(idx[k]) * kS;
}

PYQUANT_SPMM_INLINE void quad_at(__m256i* acc, const uint8_t* x8, const int32_t* idx, const int8_t* data, index_t k) {
    quad_step(acc, xrow(x8, idx, k), xrow(x8, idx, k + 1), xrow(x8, idx, k + 2), xrow(x8, idx, k + 3),
              quad_weights_at(data + k));
}

// The last 1-3 non-zeros [k, e1) of a row (none when k == e1), as tail_quad_slots lays them out.
PYQUANT_SPMM_INLINE void tail_quad(__m256i* acc, const uint8_t* x8, const int32_t* idx, const int8_t* data, index_t k,
                                   index_t e1, index_t nnz) {
    if (k >= e1) return;
    const TailQuad t = tail_quad_slots(idx, data, k, e1, nnz);
    quad_step(acc, x8 + t.cols[0] * kS, x8 + t.cols[1] * kS, x8 + t.cols[2] * kS, x8 + t.cols[0] * kS,
              _mm256_set1_epi32(static_cast<int>(t.weights)));
}

// Per-row start value and fused epilogue of one call (activation A, requantized output Q), copied by each kernel.
template <Activation A, bool Q>
struct RowIo {
    Epilogue ep;  // ep.act == A
    SpmmS8Out out;
    index_t n;
    const float* row_scale;
    float x_scale;
    const float* bias;
    const int64_t* row_sums;
    int64_t zp_eff;

    // the accumulators start at -zp_eff * sum(w) modulo 2^32 (the true sum fits int32: the result is exact)
    PYQUANT_SPMM_INLINE void start(__m256i* acc, index_t r) const {
        const uint32_t c = static_cast<uint32_t>(0u - static_cast<uint64_t>(row_sums[r] * zp_eff));
        for (int v = 0; v < 4; ++v) acc[v] = _mm256_set1_epi32(static_cast<int32_t>(c));
    }
    PYQUANT_SPMM_INLINE void store(const __m256i* acc, index_t r, index_t c0, index_t width) const {
        store_s8_row<2, A, Q>(acc, r, c0, width, row_scale, x_scale, bias, ep, out);
    }
};

// CSR rows [r0, r1) over one half (x8: the half's first byte; c0, width: its output columns), two at a time.
template <Activation A, bool Q>
PYQUANT_SPMM_KERNEL void s8_rows(const CsrView& w, const int8_t* data, const uint8_t* x8, index_t r0, index_t r1,
                                 index_t c0, index_t width, const RowIo<A, Q> io_) {
    const RowIo<A, Q> io = io_;
    const int32_t* idx = w.indices;
    const int64_t* ip = w.indptr;
    const index_t nnz = ip[w.nrows];
    index_t r = r0;
    for (; r + 2 <= r1; r += 2) {
        __m256i a[4], b[4];
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
        io.store(a, r, c0, width);
        io.store(b, r + 1, c0, width);
    }
    if (r < r1) {
        __m256i a[4];
        io.start(a, r);
        const index_t ka = ip[r], ea = ip[r + 1], qa = (ea - ka) / 4;
        for (index_t u = 0; u < qa; ++u) quad_at(a, x8, idx, data, ka + 4 * u);
        tail_quad(a, x8, idx, data, ka + 4 * qa, ea, nnz);
        io.store(a, r, c0, width);
    }
}

// Sliced ELL chunks [ch0, ch1) over one half: the chunk's rows two at a time, each the chunk's number of quads.
// A chunk that does not fit its arrays is skipped and makes the call return false.
template <Activation A, bool Q>
PYQUANT_SPMM_KERNEL bool s8_sell_rows(const SellView& w, const uint8_t* x8, index_t ch0, index_t ch1, index_t c0,
                                      index_t width, const RowIo<A, Q> io_) {
    static_assert(kSellRows % 2 == 0, "rows are taken in pairs");
    const RowIo<A, Q> io = io_;
    constexpr index_t R = kSellRows;
    return for_each_sell_chunk(w, ch0, ch1, [&](const SellChunk& ch) PYQUANT_SPMM_INLINE_LAMBDA {
        for (index_t i = 0; i < R; i += 2) {
            __m256i a[4], b[4];
            io.start(a, ch.rows[i] < 0 ? 0 : ch.rows[i]);  // a padding row (-1) is computed but not stored
            io.start(b, ch.rows[i + 1] < 0 ? 0 : ch.rows[i + 1]);
            for (index_t q = 0; q < ch.nq; ++q) {
                const uint32_t* o = ch.offsets + (q * R + i) * 4;
                const int8_t* wq = ch.data + (q * R + i) * 4;
                quad_step(a, x8 + o[0], x8 + o[1], x8 + o[2], x8 + o[3], quad_weights_at(wq));
                quad_step(b, x8 + o[4], x8 + o[5], x8 + o[6], x8 + o[7], quad_weights_at(wq + 4));
            }
            if (ch.rows[i] >= 0) io.store(a, ch.rows[i], c0, width);
            if (ch.rows[i + 1] >= 0) io.store(b, ch.rows[i + 1], c0, width);
        }
    });
}

// Calls f(io, x8, c0, width) for each 32-column half of the task's columns [c0, c0 + width), width <= 64.
template <class F>
void for_halves(const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t c0, index_t width,
                const float* row_scale, float x_scale, const float* bias, const int64_t* row_sums, const Epilogue& e,
                const SpmmS8Out& out, F&& f) {
    const int64_t zp_eff = x_is_u8 ? x_zp : x_zp + 128;  // int8 x was packed as x + 128
    const uint8_t* x8 = static_cast<const uint8_t*>(xp);
    with_epilogue(e.act, !out.y_f32, [&](auto act, auto q) {
        constexpr Activation A = decltype(act)::value;
        Epilogue ep = e;
        ep.act = A;
        const RowIo<A, decltype(q)::value> io{ep, out, n, row_scale, x_scale, bias, row_sums, zp_eff};
        for (index_t h = 0; h * kHalf < width && h * kHalf < kS; ++h)
            f(io, x8 + h * kHalf, c0 + h * kHalf, width - h * kHalf < kHalf ? width - h * kHalf : kHalf);
    });
}

}  // namespace

void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t r0,
             index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
             const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out) {
    for_halves(xp, x_is_u8, x_zp, n, c0, width, row_scale, x_scale, bias, row_sums, e, out,
               [&](const auto& io, const uint8_t* x8, index_t hc0, index_t hw) {
                   s8_rows(w, data, x8, r0, r1, hc0, hw, io);
               });
}

bool spmm_s8_sell(const SellView& w, const void* xp, bool x_is_u8, int32_t x_zp, index_t n, index_t ch0, index_t ch1,
                  index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
                  const int64_t* row_sums, const Epilogue& e, const SpmmS8Out& out) {
    bool ok = true;
    for_halves(xp, x_is_u8, x_zp, n, c0, width, row_scale, x_scale, bias, row_sums, e, out,
               [&](const auto& io, const uint8_t* x8, index_t hc0, index_t hw) {
                   ok &= s8_sell_rows(w, x8, ch0, ch1, hc0, hw, io);
               });
    return ok;
}

bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1, const QuantRun& qp,
                  bool x_is_u8, int32_t, void* dst) {
    alignas(32) uint8_t tmp[kS];
    const __m256i perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // dword 4l + j takes column dword 2j + l
    const __m256i flip = _mm256_set1_epi8(x_is_u8 ? 0 : static_cast<char>(0x80));  // int8 -> uint8 (+128)
    uint8_t* d = static_cast<uint8_t*>(dst);
    bool ok = true;
    for (index_t i = i0; i < i1; ++i) {
        const float* src = x + i * n + c0;
        ok &= x_is_u8 ? avx2::quantize_u8(src, tmp, w, qp)
                      : avx2::quantize_s8(src, reinterpret_cast<int8_t*>(tmp), w, qp);
        for (index_t j = w; j < kS; ++j) tmp[j] = 0;  // padding columns are never stored
        for (index_t h = 0; h < kS; h += kHalf) {
            const __m256i v = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(tmp + h)), flip);
            _mm256_store_si256(reinterpret_cast<__m256i*>(d + i * kS + h), _mm256_permutevar8x32_epi32(v, perm));
        }
    }
    return ok;
}

}  // namespace avxvnni
}  // namespace pyquant
