// Round-affine quantization family (CONTRACT section 1: the ONNX QuantizeLinear rule). Every path computes,
// element by element,
//   v = float32(x) / scale;  q = int(rint(clamp(v, qmin - zp, qmax - zp))) + zp
// with ONE IEEE float32 division (never a multiply by a precomputed reciprocal: the two differ near .5 ties,
// e.g. 17.924828f / 1.1564405f is exactly 15.5f -> 16, while 17.924828f * (1 / 1.1564405f) is 15.499999f -> 15).
// This equals clamp(rint(v) + zp, qmin, qmax) because the bounds are integers and rint is monotonic.
// Clamping in float first is what keeps huge inputs at qmin/qmax instead of the 0x80000000 of a bare
// conversion. Dequantize is float32(q - zp) * scale: one multiply, identical everywhere.
#pragma once
#include "common.hpp"

namespace pyquant {

// Per-tensor parameters of one contiguous run, or per-element arrays (a row whose channels are contiguous).
struct QuantRun {
    float scale;  // x is divided by it (> 0)
    float lo, hi;  // clamp bounds qmin - zp, qmax - zp
    int32_t zp;
};
struct QuantRow {
    const float* scale;
    const float* lo;
    const float* hi;
    const int32_t* zp;
};

// Each function returns false when x held a NaN or an infinity (the output is then unspecified).
#define PYQUANT_QUANTIZE_DECLS                                                                      \
    bool quantize_s8(const float* x, int8_t* y, index_t n, const QuantRun& p);                     \
    bool quantize_u8(const float* x, uint8_t* y, index_t n, const QuantRun& p);                    \
    bool quantize_row_s8(const float* x, int8_t* y, index_t n, const QuantRow& p);                 \
    bool quantize_row_u8(const float* x, uint8_t* y, index_t n, const QuantRow& p);                \
    void dequantize_s8(const int8_t* q, float* y, index_t n, float scale, int32_t zp);              \
    void dequantize_u8(const uint8_t* q, float* y, index_t n, float scale, int32_t zp);             \
    void dequantize_row_s8(const int8_t* q, float* y, index_t n, const float* scale, const int32_t* zp);  \
    void dequantize_row_u8(const uint8_t* q, float* y, index_t n, const float* scale, const int32_t* zp); \
    /* min and max of finite x (n >= 1); false when x held a NaN or an infinity */                 \
    bool minmax(const float* x, index_t n, float* mn, float* mx);

// Each ISA file implements templates quantize_run / quantize_row / dequantize_run / dequantize_row (and
// minmax) and then defines the exported functions above with this macro.
#define PYQUANT_QUANTIZE_EXPORTS                                                                            \
    bool quantize_s8(const float* x, int8_t* y, index_t n, const QuantRun& p) { return quantize_run(x, y, n, p); } \
    bool quantize_u8(const float* x, uint8_t* y, index_t n, const QuantRun& p) { return quantize_run(x, y, n, p); } \
    bool quantize_row_s8(const float* x, int8_t* y, index_t n, const QuantRow& p) {                       \
        return quantize_row(x, y, n, p);                                                                  \
    }                                                                                                     \
    bool quantize_row_u8(const float* x, uint8_t* y, index_t n, const QuantRow& p) {                      \
        return quantize_row(x, y, n, p);                                                                  \
    }                                                                                                     \
    void dequantize_s8(const int8_t* q, float* y, index_t n, float s, int32_t zp) { dequantize_run(q, y, n, s, zp); } \
    void dequantize_u8(const uint8_t* q, float* y, index_t n, float s, int32_t zp) { dequantize_run(q, y, n, s, zp); } \
    void dequantize_row_s8(const int8_t* q, float* y, index_t n, const float* s, const int32_t* zp) {      \
        dequantize_row(q, y, n, s, zp);                                                                   \
    }                                                                                                     \
    void dequantize_row_u8(const uint8_t* q, float* y, index_t n, const float* s, const int32_t* zp) {     \
        dequantize_row(q, y, n, s, zp);                                                                   \
    }

namespace scalar { PYQUANT_QUANTIZE_DECLS }
namespace avx2 { PYQUANT_QUANTIZE_DECLS }
namespace avx512 { PYQUANT_QUANTIZE_DECLS }
namespace neon { PYQUANT_QUANTIZE_DECLS }

// Software prefetch distance of the streaming loops, in floats (8 KB ahead: measured best on Zen 5 for arrays
// larger than the caches, +25% at 1e7 elements; prefetches past the end are harmless hints).
constexpr index_t kPrefetchFloats = 2048;

// Helpers shared by the ISA files live in an unnamed namespace: an inline function with external linkage,
// compiled once with AVX flags, could be the copy the linker keeps for baseline code (SIGILL on older CPUs).
namespace {

// Scalar rounding used by every path's tails: round-half-even of |v| <= 2^22 in the default FP mode,
// written as plain adds so it vectorizes at baseline flags (no SSE4.1 roundss needed).
inline float round_half_even_small(float v) {
    const float magic = 12582912.0f;  // 1.5 * 2^23
    return (v + magic) - magic;
}

template <class OutT>
inline OutT quantize_one(float x, float scale, float lo, float hi, int32_t zp) {
    float v = x / scale;  // a true division (the build has no -ffast-math / -freciprocal-math)
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return static_cast<OutT>(static_cast<int32_t>(round_half_even_small(v)) + zp);
}

}  // namespace

}  // namespace pyquant
