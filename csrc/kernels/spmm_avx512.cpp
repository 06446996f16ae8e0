// AVX-512 sparse kernels. float32: strips of 64 columns (4 zmm per X row; 128 columns / 8 zmm when the binding
// picks wide strips), four W rows at a time while all four have entries, then pairs: up to 16 independent add
// chains and four X rows in flight. Each output element still adds its products one by one in CSR storage
// order with a separate multiply and add (the scalar oracle's exact sequence). Measured here the loop is
// bound by 512-bit loads of X (one X row segment per stored entry), not by the FP pipes: FMA gained nothing.
// int8: strips of 64 int16 columns (2 zmm per X row); non-zeros taken in pairs: the two X rows are
// interleaved with unpacklo/hi_epi16 and vpmaddwd multiplies them by the broadcast weight pair, exact int32.
// Short rows as sliced ELL chunks, the four rows of a chunk side by side: W 12544 x 100 at 90%, int8 / float32
// on this path 0.74-0.84x with CSR rows -> 0.98-1.01x (95%: 0.57-0.76x -> 0.82-0.88x).
#include <immintrin.h>

#include <cstring>

#include "kernels/epilogue_avx512.hpp"
#include "kernels/spmm.hpp"

namespace pyquant {
namespace avx512 {
namespace {

constexpr index_t kS8 = kSpmmStripAvx512S8;   // int16 per packed X row
constexpr index_t kDist = 8;                  // prefetch distance in non-zeros

PYQUANT_SPMM_INLINE __mmask16 tail_mask(index_t rem) {
    return rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
}

template <int NV>
PYQUANT_SPMM_INLINE void store_row(float* y, const __m512* acc, index_t width) {
    for (int v = 0; v < NV; ++v) {
        index_t rem = width - 16 * v;
        if (rem >= 16)
            _mm512_storeu_ps(y + 16 * v, acc[v]);
        else
            _mm512_mask_storeu_ps(y + 16 * v, tail_mask(rem), acc[v]);
    }
}

template <int NV>
PYQUANT_SPMM_INLINE void step(__m512* acc, float value, const float* xr) {
    const __m512 wv = _mm512_set1_ps(value);
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_mul_ps(wv, _mm512_loadu_ps(xr + 16 * v)));
}

// One line per upcoming X row: measured here, prefetching every line of the row gained nothing and costs
// load slots.
template <int NV>
PYQUANT_SPMM_INLINE void prefetch_row(const float* xr) {
    _mm_prefetch(reinterpret_cast<const char*>(xr), _MM_HINT_T0);
}

// Continue the sums of two rows from entries [ka, ea) and [kb, eb), interleaved while both have entries.
template <int NV, index_t kS>
PYQUANT_SPMM_INLINE void two_rows(const int32_t* idx, const float* data, const float* xp, index_t ka, index_t ea,
                                  index_t kb, index_t eb, __m512* a, __m512* b) {
    index_t common = (ea - ka) < (eb - kb) ? (ea - ka) : (eb - kb);
    index_t t = 0;
    for (; t + kDist < common; ++t) {
        prefetch_row<NV>(xp + static_cast<index_t>(idx[ka + t + kDist]) * kS);
        prefetch_row<NV>(xp + static_cast<index_t>(idx[kb + t + kDist]) * kS);
        step<NV>(a, data[ka + t], xp + static_cast<index_t>(idx[ka + t]) * kS);
        step<NV>(b, data[kb + t], xp + static_cast<index_t>(idx[kb + t]) * kS);
    }
    for (; t < common; ++t) {
        step<NV>(a, data[ka + t], xp + static_cast<index_t>(idx[ka + t]) * kS);
        step<NV>(b, data[kb + t], xp + static_cast<index_t>(idx[kb + t]) * kS);
    }
    for (index_t k = ka + t; k < ea; ++k) step<NV>(a, data[k], xp + static_cast<index_t>(idx[k]) * kS);
    for (index_t k = kb + t; k < eb; ++k) step<NV>(b, data[k], xp + static_cast<index_t>(idx[k]) * kS);
}

// Four rows at a time while all four have entries (16 independent add chains and four X rows in flight),
// then pairs; each row still adds its products in its own storage order.
template <int NV, index_t kS>
void f32_rows(const CsrView& w, const float* data, const float* xp, index_t n, index_t r0, index_t r1, index_t c0,
              index_t width, float* y) {
    const int32_t* idx = w.indices;
    const int64_t* ip = w.indptr;
    index_t r = r0;
    for (; NV <= 4 && r + 4 <= r1; r += 4) {  // 16 accumulators at most
        __m512 a[NV], b[NV], c[NV], d[NV];
        for (int v = 0; v < NV; ++v) a[v] = b[v] = c[v] = d[v] = _mm512_setzero_ps();
        const index_t ka = ip[r], kb = ip[r + 1], kc = ip[r + 2], kd = ip[r + 3], ke = ip[r + 4];
        index_t m = kb - ka;
        m = kc - kb < m ? kc - kb : m;
        m = kd - kc < m ? kd - kc : m;
        m = ke - kd < m ? ke - kd : m;
        for (index_t t = 0; t < m; ++t) {
            step<NV>(a, data[ka + t], xp + static_cast<index_t>(idx[ka + t]) * kS);
            step<NV>(b, data[kb + t], xp + static_cast<index_t>(idx[kb + t]) * kS);
            step<NV>(c, data[kc + t], xp + static_cast<index_t>(idx[kc + t]) * kS);
            step<NV>(d, data[kd + t], xp + static_cast<index_t>(idx[kd + t]) * kS);
        }
        two_rows<NV, kS>(idx, data, xp, ka + m, kb, kb + m, kc, a, b);
        two_rows<NV, kS>(idx, data, xp, kc + m, kd, kd + m, ke, c, d);
        store_row<NV>(y + r * n + c0, a, width);
        store_row<NV>(y + (r + 1) * n + c0, b, width);
        store_row<NV>(y + (r + 2) * n + c0, c, width);
        store_row<NV>(y + (r + 3) * n + c0, d, width);
    }
    for (; r + 2 <= r1; r += 2) {
        __m512 a[NV], b[NV];
        for (int v = 0; v < NV; ++v) a[v] = b[v] = _mm512_setzero_ps();
        two_rows<NV, kS>(idx, data, xp, ip[r], ip[r + 1], ip[r + 1], ip[r + 2], a, b);
        store_row<NV>(y + r * n + c0, a, width);
        store_row<NV>(y + (r + 1) * n + c0, b, width);
    }
    if (r < r1) {
        __m512 a[NV];
        for (int v = 0; v < NV; ++v) a[v] = _mm512_setzero_ps();
        index_t ka = ip[r], ea = ip[r + 1], k = ka;
        for (; k + kDist < ea; ++k) {
            prefetch_row<NV>(xp + (static_cast<index_t>(idx[k + kDist]) * kS));
            step<NV>(a, data[k], xp + static_cast<index_t>(idx[k]) * kS);
        }
        for (; k < ea; ++k) step<NV>(a, data[k], xp + static_cast<index_t>(idx[k]) * kS);
        store_row<NV>(y + r * n + c0, a, width);
    }
}

PYQUANT_SPMM_INLINE __m512i pair_weights(int8_t w0, int8_t w1) {
    uint32_t lo = static_cast<uint16_t>(static_cast<int16_t>(w0));
    uint32_t hi = static_cast<uint16_t>(static_cast<int16_t>(w1));
    return _mm512_set1_epi32(static_cast<int>(lo | (hi << 16)));
}

template <int NG>
PYQUANT_SPMM_INLINE void pair_step(__m512i* acc, const int16_t* x0, const int16_t* x1, __m512i wv) {
    for (int g = 0; g < NG; ++g) {
        __m512i p = _mm512_load_si512(x0 + 32 * g), q = _mm512_load_si512(x1 + 32 * g);
        acc[2 * g] = _mm512_add_epi32(acc[2 * g], _mm512_madd_epi16(_mm512_unpacklo_epi16(p, q), wv));
        acc[2 * g + 1] = _mm512_add_epi32(acc[2 * g + 1], _mm512_madd_epi16(_mm512_unpackhi_epi16(p, q), wv));
    }
}

template <int NG>
PYQUANT_SPMM_INLINE void prefetch_s16(const int16_t* xr) {
    for (int g = 0; g < NG; ++g) _mm_prefetch(reinterpret_cast<const char*>(xr + 32 * g), _MM_HINT_T0);
}

// Epilogue and store of one row's 2 * NG accumulators (columns c0 .. c0 + width of output row r).
template <int NG, Activation A, bool Q>
PYQUANT_SPMM_INLINE void store_s8_row(const __m512i* acc, index_t r, index_t c0, index_t width,
                                      const float* row_scale, float x_scale, const float* bias, const Epilogue& ep,
                                      const SpmmS8Out& o_) {
    const __m512 sc = _mm512_set1_ps(row_scale[r] * x_scale), b = _mm512_set1_ps(bias ? bias[r] : 0.0f);
    const index_t o = o_.at(r, c0);
#pragma GCC unroll 4
    for (int v = 0; v < 2 * NG; ++v) {
        index_t rem = width - 16 * v;
        if (rem <= 0) break;
        __mmask16 m = tail_mask(rem);
        __m512 yv = epilogue_float_avx512(acc[v], sc, b, ep);
        if constexpr (!Q) {
            if (rem >= 16)
                _mm512_storeu_ps(o_.y_f32 + o + 16 * v, yv);
            else
                _mm512_mask_storeu_ps(o_.y_f32 + o + 16 * v, m, yv);
        } else {
            __m128i q8 = _mm512_cvtepi32_epi8(requantize_avx512(yv, ep));  // values already in [qmin, qmax]
            char* dst = static_cast<char*>(o_.y_q) + o + 16 * v;
            _mm_mask_storeu_epi8(dst, m, q8);
        }
    }
}

// A (activation) and Q (requantize) are template constants and `ep` a local copy whose act is A: the shared
// epilogue's switch folds away and nothing is reloaded after the output stores.
template <int NG, Activation A, bool Q>
PYQUANT_SPMM_KERNEL void s8_rows(const CsrView& w, const int8_t* data, const int16_t* xp, index_t n, index_t r0, index_t r1,
             index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias, const Epilogue& e,
             const SpmmS8Out& out) {
    Epilogue ep = e;
    ep.act = A;
    const SpmmS8Out o_ = out;
    const int32_t* idx = w.indices;
    for (index_t r = r0; r < r1; ++r) {
        __m512i acc[2 * NG];
        for (int v = 0; v < 2 * NG; ++v) acc[v] = _mm512_setzero_si512();
        index_t k = w.indptr[r], e1 = w.indptr[r + 1];
        for (; k + 1 + 2 * kDist < e1; k += 2) {
            prefetch_s16<NG>(xp + static_cast<index_t>(idx[k + 2 * kDist]) * kS8);
            prefetch_s16<NG>(xp + static_cast<index_t>(idx[k + 1 + 2 * kDist]) * kS8);
            pair_step<NG>(acc, xp + static_cast<index_t>(idx[k]) * kS8, xp + static_cast<index_t>(idx[k + 1]) * kS8,
                          pair_weights(data[k], data[k + 1]));
        }
        for (; k + 1 < e1; k += 2)
            pair_step<NG>(acc, xp + static_cast<index_t>(idx[k]) * kS8, xp + static_cast<index_t>(idx[k + 1]) * kS8,
                          pair_weights(data[k], data[k + 1]));
        if (k < e1) {  // odd count: pair the last non-zero with a zero weight on the same row
            const int16_t* x0 = xp + static_cast<index_t>(idx[k]) * kS8;
            pair_step<NG>(acc, x0, x0, pair_weights(data[k], 0));
        }
        store_s8_row<NG, A, Q>(acc, r, c0, width, row_scale, x_scale, bias, ep, o_);
    }
}

// One quad of a sliced ELL row as two pairs. The stored offsets address 64-byte rows (kSellStride); this path's
// packed rows are twice as long (64 int16 columns), so X row k is at byte 2 * offset (an addressing scale).
template <int NG>
PYQUANT_SPMM_INLINE void sell_quad(__m512i* acc, const char* xb, const uint32_t* o, const int8_t* wd) {
    int32_t word;
    std::memcpy(&word, wd, sizeof word);
    const __m128i w16 = _mm_cvtepi8_epi16(_mm_cvtsi32_si128(word));  // w0 w1 w2 w3 as int16
    const __m512i w01 = _mm512_broadcastd_epi32(w16), w23 = _mm512_broadcastd_epi32(_mm_srli_epi64(w16, 32));
    const auto x = [xb](uint32_t off) { return reinterpret_cast<const int16_t*>(xb + 2 * static_cast<index_t>(off)); };
    pair_step<NG>(acc, x(o[0]), x(o[1]), w01);
    pair_step<NG>(acc, x(o[2]), x(o[3]), w23);
}

// Sliced ELL chunks (see SellView) over one strip: the four rows of a chunk side by side (up to sixteen
// accumulators), every row the chunk's number of quads, no tail; padding entries (weight 0) add exact zeros.
template <int NG, Activation A, bool Q>
PYQUANT_SPMM_KERNEL bool s8_sell_rows(const SellView& w, const int16_t* xp, index_t n, index_t ch0, index_t ch1,
                                      index_t c0, index_t width, const float* row_scale, float x_scale,
                                      const float* bias, const Epilogue& e, const SpmmS8Out& out) {
    static_assert(2 * kSellStride == kS8 * sizeof(int16_t), "packed X rows are two sliced ELL strides long");
    Epilogue ep = e;
    ep.act = A;
    const SpmmS8Out o_ = out;
    const char* xb = reinterpret_cast<const char*>(xp);
    constexpr index_t R = kSellRows;
    return for_each_sell_chunk(w, ch0, ch1, [&](const SellChunk& ch) PYQUANT_SPMM_INLINE_LAMBDA {
        __m512i acc[R][2 * NG];
#pragma GCC unroll 4
        for (index_t i = 0; i < R; ++i)
            for (int v = 0; v < 2 * NG; ++v) acc[i][v] = _mm512_setzero_si512();
        for (index_t q = 0; q < ch.nq; ++q) {
#pragma GCC unroll 4
            for (index_t i = 0; i < R; ++i)
                sell_quad<NG>(acc[i], xb, ch.offsets + (q * R + i) * 4, ch.data + (q * R + i) * 4);
        }
#pragma GCC unroll 4
        for (index_t i = 0; i < R; ++i)
            if (ch.rows[i] >= 0) store_s8_row<NG, A, Q>(acc[i], ch.rows[i], c0, width, row_scale, x_scale, bias, ep, o_);
    });
}

}  // namespace

void spmm_f32(const CsrView& w, const float* data, const float* xp, index_t xstride, index_t n, index_t r0, index_t r1,
              index_t c0, index_t width, float* y) {
    if (xstride == kSpmmStripAvx512F32Wide) {
        switch ((width + 15) / 16) {
            case 1: f32_rows<1, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 2: f32_rows<2, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 3: f32_rows<3, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 4: f32_rows<4, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 5: f32_rows<5, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 6: f32_rows<6, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 7: f32_rows<7, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            case 8: f32_rows<8, 128>(w, data, xp, n, r0, r1, c0, width, y); break;
            default: break;
        }
        return;
    }
    switch ((width + 15) / 16) {
        case 1: f32_rows<1, 64>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 2: f32_rows<2, 64>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 3: f32_rows<3, 64>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 4: f32_rows<4, 64>(w, data, xp, n, r0, r1, c0, width, y); break;
        default: break;
    }
}

void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp, index_t n,
             index_t r0, index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
             const int64_t*, const Epilogue& e, const SpmmS8Out& out) {
    const int16_t* x16 = static_cast<const int16_t*>(xp);
    with_s16_kernel(e, out, width, 32, [&](auto act, auto q, auto ng) {
        constexpr int NG = decltype(ng)::value;
        s8_rows<NG, decltype(act)::value, decltype(q)::value>(w, data, x16, n, r0, r1, c0, width, row_scale, x_scale,
                                                              bias, e, out);
    });
}

bool spmm_s8_sell(const SellView& w, const void* xp, bool, int32_t, index_t n, index_t ch0, index_t ch1, index_t c0,
                  index_t width, const float* row_scale, float x_scale, const float* bias, const int64_t*,
                  const Epilogue& e, const SpmmS8Out& out) {
    const int16_t* x16 = static_cast<const int16_t*>(xp);
    bool ok = true;
    with_s16_kernel(e, out, width, 32, [&](auto act, auto q, auto ng) {
        constexpr int NG = decltype(ng)::value;
        ok = s8_sell_rows<NG, decltype(act)::value, decltype(q)::value>(w, x16, n, ch0, ch1, c0, width, row_scale,
                                                                        x_scale, bias, e, out);
    });
    return ok;
}

bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1, const QuantRun& qp,
                  bool x_is_u8, int32_t x_zp, void* dst) {
    alignas(64) uint8_t tmp[kS8];
    const __m512i perm = _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7);
    const __m512i zpv = _mm512_set1_epi16(static_cast<short>(x_zp));
    int16_t* d = static_cast<int16_t*>(dst);
    bool ok = true;
    for (index_t i = i0; i < i1; ++i) {
        const float* src = x + i * n + c0;
        ok &= x_is_u8 ? quantize_u8(src, tmp, w, qp) : quantize_s8(src, reinterpret_cast<int8_t*>(tmp), w, qp);
        for (index_t j = w; j < kS8; ++j) tmp[j] = static_cast<uint8_t>(x_zp);  // pads to 0 after - zp
        for (int g = 0; g < 2; ++g) {
            __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp + 32 * g));
            __m512i v = x_is_u8 ? _mm512_cvtepu8_epi16(b) : _mm512_cvtepi8_epi16(b);
            v = _mm512_permutexvar_epi64(perm, _mm512_sub_epi16(v, zpv));
            _mm512_store_si512(d + i * kS8 + 32 * g, v);
        }
    }
    return ok;
}

}  // namespace avx512
}  // namespace pyquant
