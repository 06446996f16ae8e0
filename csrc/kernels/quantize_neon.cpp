// NEON quantization (arm64 baseline): 16 elements per step. FCVTNS rounds to nearest with ties to even
// whatever the FPCR mode, and the clamp before it keeps every value in range, as on the other paths.
#include <arm_neon.h>

#include "kernels/quantize.hpp"

namespace pyquant {
namespace neon {
namespace {

// v = x / scale (FDIV, never a multiply by the reciprocal), clamp, round half to even, + zp.
inline int32x4_t quant4(float32x4_t x, float32x4_t scale, float32x4_t lo, float32x4_t hi, int32x4_t zp,
                        float32x4_t& bad) {
    bad = vaddq_f32(bad, vmulq_f32(x, vdupq_n_f32(0.0f)));
    float32x4_t v = vminq_f32(vmaxq_f32(vdivq_f32(x, scale), lo), hi);
    return vaddq_s32(vcvtnq_s32_f32(v), zp);
}

// 16 int32 already inside [qmin, qmax] -> 16 bytes (the saturating narrowings never saturate here).
inline void store16(int8_t* y, int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    int16x8_t ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b)), cd = vcombine_s16(vqmovn_s32(c), vqmovn_s32(d));
    vst1q_s8(y, vcombine_s8(vqmovn_s16(ab), vqmovn_s16(cd)));
}
inline void store16(uint8_t* y, int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    int16x8_t ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b)), cd = vcombine_s16(vqmovn_s32(c), vqmovn_s32(d));
    vst1q_u8(y, vcombine_u8(vqmovun_s16(ab), vqmovun_s16(cd)));
}

inline bool all_finite(float32x4_t b0, float32x4_t b1, float32x4_t b2, float32x4_t b3, float tail_bad) {
    float32x4_t b = vaddq_f32(vaddq_f32(b0, b1), vaddq_f32(b2, b3));
    return vaddvq_f32(b) + tail_bad == 0.0f;
}

template <class OutT>
bool quantize_run(const float* x, OutT* y, index_t n, const QuantRun& p) {
    const float32x4_t sc = vdupq_n_f32(p.scale), lo = vdupq_n_f32(p.lo), hi = vdupq_n_f32(p.hi);
    const int32x4_t zp = vdupq_n_s32(p.zp);
    float32x4_t b0 = vdupq_n_f32(0.0f), b1 = b0, b2 = b0, b3 = b0;
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
        int32x4_t a = quant4(vld1q_f32(x + i), sc, lo, hi, zp, b0);
        int32x4_t b = quant4(vld1q_f32(x + i + 4), sc, lo, hi, zp, b1);
        int32x4_t c = quant4(vld1q_f32(x + i + 8), sc, lo, hi, zp, b2);
        int32x4_t d = quant4(vld1q_f32(x + i + 12), sc, lo, hi, zp, b3);
        store16(y + i, a, b, c, d);
    }
    float tail_bad = 0.0f;
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale, p.lo, p.hi, p.zp);
    }
    return all_finite(b0, b1, b2, b3, tail_bad);
}

template <class OutT>
bool quantize_row(const float* x, OutT* y, index_t n, const QuantRow& p) {
    float32x4_t b0 = vdupq_n_f32(0.0f), b1 = b0, b2 = b0, b3 = b0;
    auto q = [&](index_t j, float32x4_t& bad) {
        return quant4(vld1q_f32(x + j), vld1q_f32(p.scale + j), vld1q_f32(p.lo + j), vld1q_f32(p.hi + j),
                      vld1q_s32(p.zp + j), bad);
    };
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
        int32x4_t a = q(i, b0), b = q(i + 4, b1), c = q(i + 8, b2), d = q(i + 12, b3);
        store16(y + i, a, b, c, d);
    }
    float tail_bad = 0.0f;
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale[i], p.lo[i], p.hi[i], p.zp[i]);
    }
    return all_finite(b0, b1, b2, b3, tail_bad);
}

inline int32x4_t widen_lo(int16x8_t v) { return vmovl_s16(vget_low_s16(v)); }
inline int32x4_t widen_hi(int16x8_t v) { return vmovl_s16(vget_high_s16(v)); }
inline int16x8_t load8_i16(const int8_t* q) { return vmovl_s8(vld1_s8(q)); }
inline int16x8_t load8_i16(const uint8_t* q) { return vreinterpretq_s16_u16(vmovl_u8(vld1_u8(q))); }

inline float32x4_t dequant4(int32x4_t v, int32x4_t zp, float32x4_t scale) {
    return vmulq_f32(vcvtq_f32_s32(vsubq_s32(v, zp)), scale);
}

template <class InT>
void dequantize_run(const InT* q, float* y, index_t n, float scale, int32_t zp) {
    const float32x4_t s = vdupq_n_f32(scale);
    const int32x4_t z = vdupq_n_s32(zp);
    index_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int16x8_t v = load8_i16(q + i);
        vst1q_f32(y + i, dequant4(widen_lo(v), z, s));
        vst1q_f32(y + i + 4, dequant4(widen_hi(v), z, s));
    }
    for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

template <class InT>
void dequantize_row(const InT* q, float* y, index_t n, const float* scale, const int32_t* zp) {
    index_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int16x8_t v = load8_i16(q + i);
        vst1q_f32(y + i, dequant4(widen_lo(v), vld1q_s32(zp + i), vld1q_f32(scale + i)));
        vst1q_f32(y + i + 4, dequant4(widen_hi(v), vld1q_s32(zp + i + 4), vld1q_f32(scale + i + 4)));
    }
    for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp[i]) * scale[i];
}

}  // namespace

PYQUANT_QUANTIZE_EXPORTS

bool minmax(const float* x, index_t n, float* mn, float* mx) {
    float32x4_t lo = vdupq_n_f32(x[0]), hi = lo, bad = vdupq_n_f32(0.0f);
    index_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        bad = vaddq_f32(bad, vmulq_f32(v, vdupq_n_f32(0.0f)));
        lo = vminq_f32(lo, v);
        hi = vmaxq_f32(hi, v);
    }
    float rl = vminvq_f32(lo), rh = vmaxvq_f32(hi), tail_bad = 0.0f;
    for (; i < n; ++i) {
        tail_bad += x[i] * 0.0f;
        rl = x[i] < rl ? x[i] : rl;
        rh = x[i] > rh ? x[i] : rh;
    }
    *mn = rl;
    *mx = rh;
    return vaddvq_f32(bad) + tail_bad == 0.0f;
}

}  // namespace neon
}  // namespace pyquant
