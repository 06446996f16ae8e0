// AVX2 sparse kernels: the AVX-512 file's design at 256 bits. float32: strips of 32 columns (4 ymm per X
// row), three W rows at a time while all have entries, then pairs; separate multiply and add in CSR storage
// order. int8: strips of 32 int16 columns (2 ymm per X row, kSellStride bytes), non-zero pairs through
// unpacklo/hi_epi16 and vpmaddwd, exact int32; short rows as sliced ELL chunks (same layout as AVX-512 VNNI).
// Measured W 12544 x 100 (~10 entries per row) at 90%, int8 / float32 on this path: CSR rows 0.72-0.87x,
// chunks 1.05-1.30x (X 64 and 256 wide, 1 and 2 threads).
#include <immintrin.h>

#include <cstring>

#include "kernels/spmm_avx2_common.hpp"

namespace pyquant {
namespace avx2 {
namespace {

constexpr index_t kS = kSpmmStripAvx2F32;
constexpr index_t kS8 = kSpmmStripAvx2S8;
constexpr index_t kDist = 8;

template <int NV>
PYQUANT_SPMM_INLINE void store_row(float* y, const __m256* acc, index_t width) {
    for (int v = 0; v < NV; ++v) {
        index_t rem = width - 8 * v;
        if (rem >= 8)
            _mm256_storeu_ps(y + 8 * v, acc[v]);
        else
            _mm256_maskstore_ps(y + 8 * v, tail_mask(rem), acc[v]);
    }
}

template <int NV>
PYQUANT_SPMM_INLINE void step(__m256* acc, float value, const float* xr) {
    const __m256 wv = _mm256_set1_ps(value);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_add_ps(acc[v], _mm256_mul_ps(wv, _mm256_loadu_ps(xr + 8 * v)));
}

template <int NV>
PYQUANT_SPMM_INLINE void prefetch_row(const float* xr) {
    for (int v = 0; v < NV; v += 2) _mm_prefetch(reinterpret_cast<const char*>(xr + 8 * v), _MM_HINT_T0);
}

// Continue the sums of two rows from entries [ka, ea) and [kb, eb), interleaved while both have entries.
template <int NV>
PYQUANT_SPMM_INLINE void two_rows(const int32_t* idx, const float* data, const float* xp, index_t ka, index_t ea,
                                  index_t kb, index_t eb, __m256* a, __m256* b) {
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

// Three rows at a time while all three have entries (12 accumulators + broadcast + product: 14 of the 16
// ymm registers), then pairs; each row adds its products in its own storage order.
template <int NV>
void f32_rows(const CsrView& w, const float* data, const float* xp, index_t n, index_t r0, index_t r1, index_t c0,
              index_t width, float* y) {
    const int32_t* idx = w.indices;
    const int64_t* ip = w.indptr;
    index_t r = r0;
    for (; r + 3 <= r1; r += 3) {
        __m256 a[NV], b[NV], c[NV];
        for (int v = 0; v < NV; ++v) a[v] = b[v] = c[v] = _mm256_setzero_ps();
        const index_t ka = ip[r], kb = ip[r + 1], kc = ip[r + 2], kd = ip[r + 3];
        index_t m = kb - ka;
        m = kc - kb < m ? kc - kb : m;
        m = kd - kc < m ? kd - kc : m;
        for (index_t t = 0; t < m; ++t) {
            step<NV>(a, data[ka + t], xp + static_cast<index_t>(idx[ka + t]) * kS);
            step<NV>(b, data[kb + t], xp + static_cast<index_t>(idx[kb + t]) * kS);
            step<NV>(c, data[kc + t], xp + static_cast<index_t>(idx[kc + t]) * kS);
        }
        two_rows<NV>(idx, data, xp, ka + m, kb, kb + m, kc, a, b);
        for (index_t k = kc + m; k < kd; ++k) step<NV>(c, data[k], xp + static_cast<index_t>(idx[k]) * kS);
        store_row<NV>(y + r * n + c0, a, width);
        store_row<NV>(y + (r + 1) * n + c0, b, width);
        store_row<NV>(y + (r + 2) * n + c0, c, width);
    }
    for (; r + 2 <= r1; r += 2) {
        __m256 a[NV], b[NV];
        for (int v = 0; v < NV; ++v) a[v] = b[v] = _mm256_setzero_ps();
        two_rows<NV>(idx, data, xp, ip[r], ip[r + 1], ip[r + 1], ip[r + 2], a, b);
        store_row<NV>(y + r * n + c0, a, width);
        store_row<NV>(y + (r + 1) * n + c0, b, width);
    }
    if (r < r1) {
        __m256 a[NV];
        for (int v = 0; v < NV; ++v) a[v] = _mm256_setzero_ps();
        index_t ka = ip[r], ea = ip[r + 1], k = ka;
        for (; k + kDist < ea; ++k) {
            prefetch_row<NV>(xp + static_cast<index_t>(idx[k + kDist]) * kS);
            step<NV>(a, data[k], xp + static_cast<index_t>(idx[k]) * kS);
        }
        for (; k < ea; ++k) step<NV>(a, data[k], xp + static_cast<index_t>(idx[k]) * kS);
        store_row<NV>(y + r * n + c0, a, width);
    }
}

PYQUANT_SPMM_INLINE __m256i pair_weights(int8_t w0, int8_t w1) {
    uint32_t lo = static_cast<uint16_t>(static_cast<int16_t>(w0));
    uint32_t hi = static_cast<uint16_t>(static_cast<int16_t>(w1));
    return _mm256_set1_epi32(static_cast<int>(lo | (hi << 16)));
}

template <int NG>
PYQUANT_SPMM_INLINE void pair_step(__m256i* acc, const int16_t* x0, const int16_t* x1, __m256i wv) {
    for (int g = 0; g < NG; ++g) {
        __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(x0 + 16 * g));
        __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(x1 + 16 * g));
        acc[2 * g] = _mm256_add_epi32(acc[2 * g], _mm256_madd_epi16(_mm256_unpacklo_epi16(p, q), wv));
        acc[2 * g + 1] = _mm256_add_epi32(acc[2 * g + 1], _mm256_madd_epi16(_mm256_unpackhi_epi16(p, q), wv));
    }
}

template <int NG, Activation A, bool Q>
PYQUANT_SPMM_KERNEL void s8_rows(const CsrView& w, const int8_t* data, const int16_t* xp, index_t n, index_t r0, index_t r1,
             index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias, const Epilogue& e,
             const SpmmS8Out& out) {
    Epilogue ep = e;
    ep.act = A;
    const SpmmS8Out o_ = out;
    const int32_t* idx = w.indices;
    for (index_t r = r0; r < r1; ++r) {
        __m256i acc[2 * NG];
        for (int v = 0; v < 2 * NG; ++v) acc[v] = _mm256_setzero_si256();
        index_t k = w.indptr[r], e1 = w.indptr[r + 1];
        for (; k + 1 + 2 * kDist < e1; k += 2) {
            _mm_prefetch(reinterpret_cast<const char*>(xp + static_cast<index_t>(idx[k + 2 * kDist]) * kS8),
                         _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(xp + static_cast<index_t>(idx[k + 1 + 2 * kDist]) * kS8),
                         _MM_HINT_T0);
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

// One quad of a sliced ELL row as two pairs: X rows at byte offsets o[0..3] from xb, weights wd[0..3].
template <int NG>
PYQUANT_SPMM_INLINE void sell_quad(__m256i* acc, const char* xb, const uint32_t* o, const int8_t* wd) {
    int32_t word;
    std::memcpy(&word, wd, sizeof word);
    const __m128i w16 = _mm_cvtepi8_epi16(_mm_cvtsi32_si128(word));  // w0 w1 w2 w3 as int16
    const __m256i w01 = _mm256_broadcastd_epi32(w16), w23 = _mm256_broadcastd_epi32(_mm_srli_epi64(w16, 32));
    pair_step<NG>(acc, reinterpret_cast<const int16_t*>(xb + o[0]), reinterpret_cast<const int16_t*>(xb + o[1]), w01);
    pair_step<NG>(acc, reinterpret_cast<const int16_t*>(xb + o[2]), reinterpret_cast<const int16_t*>(xb + o[3]), w23);
}

// Sliced ELL chunks (see SellView) over one strip, whose packed X rows are exactly kSellStride bytes apart: the
// chunk's rows two at a time (eight accumulators), every row the chunk's number of quads, no tail. Padding
// entries (weight 0) add exact zeros, so the sums equal the CSR kernel's. A chunk that does not fit its arrays
// is skipped and makes the call return false.
template <int NG, Activation A, bool Q>
PYQUANT_SPMM_KERNEL bool s8_sell_rows(const SellView& w, const int16_t* xp, index_t n, index_t ch0, index_t ch1,
                                      index_t c0, index_t width, const float* row_scale, float x_scale,
                                      const float* bias, const Epilogue& e, const SpmmS8Out& out) {
    static_assert(kSellStride == kS8 * sizeof(int16_t), "sliced ELL offsets address this path's packed X rows");
    static_assert(kSellRows % 2 == 0, "rows are taken in pairs");
    Epilogue ep = e;
    ep.act = A;
    const SpmmS8Out o_ = out;
    const char* xb = reinterpret_cast<const char*>(xp);
    constexpr index_t R = kSellRows;
    return for_each_sell_chunk(w, ch0, ch1, [&](const SellChunk& ch) PYQUANT_SPMM_INLINE_LAMBDA {
        for (index_t i = 0; i < R; i += 2) {
            __m256i a[2 * NG], b[2 * NG];
            for (int v = 0; v < 2 * NG; ++v) a[v] = b[v] = _mm256_setzero_si256();
            for (index_t q = 0; q < ch.nq; ++q) {
                const index_t at = (q * R + i) * 4;
                sell_quad<NG>(a, xb, ch.offsets + at, ch.data + at);
                sell_quad<NG>(b, xb, ch.offsets + at + 4, ch.data + at + 4);
            }
            if (ch.rows[i] >= 0) store_s8_row<NG, A, Q>(a, ch.rows[i], c0, width, row_scale, x_scale, bias, ep, o_);
            if (ch.rows[i + 1] >= 0)
                store_s8_row<NG, A, Q>(b, ch.rows[i + 1], c0, width, row_scale, x_scale, bias, ep, o_);
        }
    });
}

}  // namespace

void spmm_f32(const CsrView& w, const float* data, const float* xp, index_t, index_t n, index_t r0, index_t r1,
              index_t c0, index_t width, float* y) {  // strips are always kSpmmStripAvx2F32 wide here
    switch ((width + 7) / 8) {
        case 1: f32_rows<1>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 2: f32_rows<2>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 3: f32_rows<3>(w, data, xp, n, r0, r1, c0, width, y); break;
        case 4: f32_rows<4>(w, data, xp, n, r0, r1, c0, width, y); break;
        default: break;
    }
}

void spmm_s8(const CsrView& w, const int8_t* data, const void* xp, bool x_is_u8, int32_t x_zp, index_t n,
             index_t r0, index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias,
             const int64_t*, const Epilogue& e, const SpmmS8Out& out) {
    const int16_t* x16 = static_cast<const int16_t*>(xp);
    with_s16_kernel(e, out, width, 16, [&](auto act, auto q, auto ng) {
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
    with_s16_kernel(e, out, width, 16, [&](auto act, auto q, auto ng) {
        constexpr int NG = decltype(ng)::value;
        ok = s8_sell_rows<NG, decltype(act)::value, decltype(q)::value>(w, x16, n, ch0, ch1, c0, width, row_scale,
                                                                        x_scale, bias, e, out);
    });
    return ok;
}

bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1, const QuantRun& qp,
                  bool x_is_u8, int32_t x_zp, void* dst) {
    alignas(32) uint8_t tmp[kS8];
    const __m256i zpv = _mm256_set1_epi16(static_cast<short>(x_zp));
    int16_t* d = static_cast<int16_t*>(dst);
    bool ok = true;
    for (index_t i = i0; i < i1; ++i) {
        const float* src = x + i * n + c0;
        ok &= x_is_u8 ? quantize_u8(src, tmp, w, qp) : quantize_s8(src, reinterpret_cast<int8_t*>(tmp), w, qp);
        for (index_t j = w; j < kS8; ++j) tmp[j] = static_cast<uint8_t>(x_zp);  // pads to 0 after - zp
        for (int g = 0; g < 2; ++g) {
            __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp + 16 * g));
            __m256i v = x_is_u8 ? _mm256_cvtepu8_epi16(b) : _mm256_cvtepi8_epi16(b);
            v = _mm256_permute4x64_epi64(_mm256_sub_epi16(v, zpv), 0xD8);  // qwords 0 2 1 3
            _mm256_store_si256(reinterpret_cast<__m256i*>(d + i * kS8 + 16 * g), v);
        }
    }
    return ok;
}

}  // namespace avx2
}  // namespace pyquant
