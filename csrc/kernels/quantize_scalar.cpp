// Scalar quantization: the oracle every SIMD path is tested against, and the fallback on any CPU.
#include <cmath>

#include "kernels/quantize.hpp"

namespace pyquant {
namespace scalar {
namespace {

// x * 0 is 0 for finite x and NaN for NaN/Inf: summing it flags a non-finite input without a branch.
template <class OutT>
bool quantize_run(const float* x, OutT* y, index_t n, const QuantRun& p) {
    float bad = 0.0f;
    for (index_t i = 0; i < n; ++i) {
        bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale, p.lo, p.hi, p.zp);
    }
    return bad == 0.0f;
}

template <class OutT>
bool quantize_row(const float* x, OutT* y, index_t n, const QuantRow& p) {
    float bad = 0.0f;
    for (index_t i = 0; i < n; ++i) {
        bad += x[i] * 0.0f;
        y[i] = quantize_one<OutT>(x[i], p.scale[i], p.lo[i], p.hi[i], p.zp[i]);
    }
    return bad == 0.0f;
}

template <class InT>
void dequantize_run(const InT* q, float* y, index_t n, float scale, int32_t zp) {
    for (index_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

template <class InT>
void dequantize_row(const InT* q, float* y, index_t n, const float* scale, const int32_t* zp) {
    for (index_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp[i]) * scale[i];
}

}  // namespace

PYQUANT_QUANTIZE_EXPORTS

bool minmax(const float* x, index_t n, float* mn, float* mx) {
    float lo = x[0], hi = x[0], bad = 0.0f;
    for (index_t i = 0; i < n; ++i) {
        bad += x[i] * 0.0f;
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *mn = lo;
    *mx = hi;
    return bad == 0.0f;
}

}  // namespace scalar
}  // namespace pyquant
