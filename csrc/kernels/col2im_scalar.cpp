// Transposed convolution in "GEMM + col2im" form: the tap products of one GEMM over the input pixels are
// summed into each output pixel, then the epilogue. Used for int8 layers with few output channels (where a
// GEMM per phase would leave most tile columns empty) and for float32 layers (the GEMM is numpy's).
// One baseline implementation serves every ISA path. int32: sums are exact in any order and the epilogue is
// the scalar form that every SIMD epilogue matches operation for operation, so results are bit-identical to
// the sub-pixel phase form. float32: taps are added in one fixed order (ky, then kx, ascending) from +0.0, so
// results do not depend on threads or ISA either.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/gemm.hpp"

namespace pyquant {
namespace {

template <class T, class Finish>
void col2im_row_impl(const T* y, const Col2Im& g, index_t b, index_t oy, Finish finish) {
    const index_t C = g.C, taps_row = g.kw * C;
    std::vector<T> acc(static_cast<std::size_t>(C));
    const index_t ty = oy + g.pt;  // kernel rows reaching output row oy: ky = ty - iy * sh
    for (index_t ox = 0; ox < g.Wo; ++ox) {
        std::fill(acc.begin(), acc.end(), T(0));
        const index_t tx = ox + g.pl;
        for (index_t ky = ty % g.sh; ky < g.kh && ky <= ty; ky += g.sh) {
            const index_t iy = (ty - ky) / g.sh;
            if (iy >= g.H) continue;
            for (index_t kx = tx % g.sw; kx < g.kw && kx <= tx; kx += g.sw) {
                const index_t ix = (tx - kx) / g.sw;
                if (ix >= g.W) continue;
                const T* src = y + ((b * g.H + iy) * g.W + ix) * (g.kh * taps_row) + ky * taps_row + kx * C;
                if constexpr (std::is_same_v<T, int32_t>) {
                    for (index_t c = 0; c < C; ++c)
                        acc[c] = static_cast<int32_t>(static_cast<uint32_t>(acc[c]) + static_cast<uint32_t>(src[c]));
                } else {
                    for (index_t c = 0; c < C; ++c) acc[c] += src[c];
                }
            }
        }
        finish(acc.data(), ((b * g.Ho + oy) * g.Wo + ox) * C);
    }
}

}  // namespace

void col2im_row(const int32_t* y, const Col2Im& g, index_t b, index_t oy, const GemmOut& o) {
    col2im_row_impl(y, g, b, oy, [&](const int32_t* acc, index_t base) {
        for (index_t c = 0; c < g.C; ++c) {
            const float v = epilogue_float(acc[c], o.scale[c], o.bias[c], o.epi);
            if (o.mode == OutMode::Float) {
                static_cast<float*>(o.out)[base + c] = v;
            } else {
                const int32_t q = requantize_one(v, o.epi);
                if (o.out_u8) static_cast<uint8_t*>(o.out)[base + c] = static_cast<uint8_t>(q);
                else static_cast<int8_t*>(o.out)[base + c] = static_cast<int8_t>(q);
            }
        }
    });
}

void col2im_row_f32(const float* y, const Col2Im& g, index_t b, index_t oy, const float* bias, const Epilogue& e,
                    float* out) {
    col2im_row_impl(y, g, b, oy, [&](const float* acc, index_t base) {
        for (index_t c = 0; c < g.C; ++c) out[base + c] = activate(acc[c] + bias[c], e.act, e.alpha);
    });
}

}  // namespace pyquant
