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

// Sums the tap products reaching output row (b, oy) into acc (Wo * C). An input pixel's kw taps along one kernel
// row land on kw consecutive output pixels, so each is one contiguous block add (kw * C elements), clipped at
// the row's ends. Order per output element: kernel rows ascending, then input columns ascending.
template <class T>
void col2im_sum_row(const T* y, const Col2Im& g, index_t b, index_t oy, T* acc) {
    const index_t C = g.C, blk = g.kw * C, pix = g.kh * blk;
    std::fill(acc, acc + g.Wo * C, T(0));
    const index_t ty = oy + g.pt;  // kernel rows reaching output row oy: ky = ty - iy * sh
    for (index_t ky = ty % g.sh; ky < g.kh && ky <= ty; ky += g.sh) {
        const index_t iy = (ty - ky) / g.sh;
        if (iy >= g.H) continue;
        const T* row = y + (b * g.H + iy) * g.W * pix + ky * blk;
        for (index_t ix = 0; ix < g.W; ++ix) {
            const index_t o0 = ix * g.sw - g.pl;  // output column of tap kx = 0
            const index_t k0 = std::max<index_t>(0, -o0), k1 = std::min<index_t>(g.kw, g.Wo - o0);
            if (k0 >= k1) continue;
            T* a = acc + (o0 + k0) * C;
            const T* src = row + ix * pix + k0 * C;
            const index_t n = (k1 - k0) * C;
            for (index_t j = 0; j < n; ++j) a[j] += src[j];  // int32: exact (the overflow guard bounds the sum)
        }
    }
}

// The same sums from transposed float32 taps (sparse layers: W_taps @ X gives rows (ky, kx, c) x input pixels):
// y[((ky * kw + kx) * C + c) * P + pixel], P = pixels of the batch. Order per output element: kernel rows
// ascending, then kernel columns ascending.
void col2im_sum_row_t(const float* y, index_t P, const Col2Im& g, index_t b, index_t oy, float* acc) {
    const index_t C = g.C;
    std::fill(acc, acc + g.Wo * C, 0.0f);
    const index_t ty = oy + g.pt;
    for (index_t ky = ty % g.sh; ky < g.kh && ky <= ty; ky += g.sh) {
        const index_t iy = (ty - ky) / g.sh;
        if (iy >= g.H) continue;
        for (index_t kx = 0; kx < g.kw; ++kx) {
            const index_t lo = g.pl - kx, hi = g.Wo - 1 + g.pl - kx;  // 0 <= ix * sw + kx - pl < Wo
            if (hi < 0) continue;
            const index_t ix0 = lo <= 0 ? 0 : (lo + g.sw - 1) / g.sw, ix1 = std::min(g.W, hi / g.sw + 1);
            for (index_t c = 0; c < C; ++c) {
                const float* src = y + ((ky * g.kw + kx) * C + c) * P + (b * g.H + iy) * g.W;
                float* a = acc + (kx - g.pl) * C + c;
                for (index_t ix = ix0; ix < ix1; ++ix) a[ix * g.sw * C] += src[ix];
            }
        }
    }
}

}  // namespace

void col2im_row_f32_t(const float* y, index_t P, const Col2Im& g, index_t b, index_t oy, const float* bias,
                      const Epilogue& e, float* out, float* acc) {
    col2im_sum_row_t(y, P, g, b, oy, acc);
    const index_t n = g.Wo * g.C;
    float* dst = out + (b * g.Ho + oy) * n;
    with_activation(e.act, [&](auto act) {
        for (index_t j = 0; j < n; ++j) dst[j] = activate(acc[j] + bias[j], act.value, e.alpha);
    });
}

void col2im_row(const int32_t* y, const Col2Im& g, index_t b, index_t oy, const GemmOut& o, int32_t* acc) {
    col2im_sum_row(y, g, b, oy, acc);
    const index_t n = g.Wo * g.C, base = (b * g.Ho + oy) * n;
    // o.scale / o.bias hold one row's worth (Wo * C, the per-channel values tiled): a plain loop per row
    with_epilogue(o.epi.act, o.epi.requantize, [&](auto act, auto quant) {
        for (index_t j = 0; j < n; ++j) {
            const float v = activate(static_cast<float>(acc[j]) * o.scale[j] + o.bias[j], act.value, o.epi.alpha);
            if constexpr (quant.value) {
                const int32_t q = requantize_one(v, o.epi);
                if (o.out_u8) static_cast<uint8_t*>(o.out)[base + j] = static_cast<uint8_t>(q);
                else static_cast<int8_t*>(o.out)[base + j] = static_cast<int8_t>(q);
            } else {
                static_cast<float*>(o.out)[base + j] = v;
            }
        }
    });
}

void col2im_row_f32(const float* y, const Col2Im& g, index_t b, index_t oy, const float* bias, const Epilogue& e,
                    float* out, float* acc) {
    col2im_sum_row(y, g, b, oy, acc);
    const index_t n = g.Wo * g.C;
    float* dst = out + (b * g.Ho + oy) * n;
    with_activation(e.act, [&](auto act) {
        for (index_t j = 0; j < n; ++j) dst[j] = activate(acc[j] + bias[j], act.value, e.alpha);
    });
}

}  // namespace pyquant
