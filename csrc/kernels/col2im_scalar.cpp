// Transposed convolution in "GEMM + col2im" form (for few output channels, where a GEMM per phase would
// leave most of its tile columns empty): the int32 tap products of one GEMM over the input pixels are summed
// into each output pixel, then the fused epilogue. One baseline implementation serves every ISA path:
// integer sums are exact in any order, and the epilogue is the scalar form that every SIMD epilogue matches
// operation for operation, so results are bit-identical to the sub-pixel phase form.
#include <algorithm>
#include <vector>

#include "kernels/gemm.hpp"

namespace pyquant {

void col2im_row(const int32_t* y, const Col2Im& g, index_t b, index_t oy, const GemmOut& o) {
    const index_t C = g.C, taps_row = g.kw * C;
    std::vector<int32_t> acc(static_cast<std::size_t>(C));
    // kernel rows reaching output row oy: ky = (oy + pt) - iy * sh for input rows iy in range
    const index_t ty = oy + g.pt;
    for (index_t ox = 0; ox < g.Wo; ++ox) {
        std::fill(acc.begin(), acc.end(), 0);
        const index_t tx = ox + g.pl;
        for (index_t ky = ty % g.sh; ky < g.kh; ky += g.sh) {
            const index_t iy = (ty - ky) / g.sh;
            if (ty < ky || iy >= g.H) continue;
            for (index_t kx = tx % g.sw; kx < g.kw; kx += g.sw) {
                const index_t ix = (tx - kx) / g.sw;
                if (tx < kx || ix >= g.W) continue;
                const int32_t* src = y + ((b * g.H + iy) * g.W + ix) * (g.kh * taps_row) + ky * taps_row + kx * C;
                for (index_t c = 0; c < C; ++c)
                    acc[c] = static_cast<int32_t>(static_cast<uint32_t>(acc[c]) + static_cast<uint32_t>(src[c]));
            }
        }
        const index_t base = ((b * g.Ho + oy) * g.Wo + ox) * C;
        for (index_t c = 0; c < C; ++c) {
            const float v = epilogue_float(acc[c], o.scale[c], o.bias[c], o.epi);
            if (o.mode == OutMode::Float) {
                static_cast<float*>(o.out)[base + c] = v;
            } else {
                const int32_t q = requantize_one(v, o.epi);
                if (o.out_u8) static_cast<uint8_t*>(o.out)[base + c] = static_cast<uint8_t>(q);
                else static_cast<int8_t*>(o.out)[base + c] = static_cast<int8_t>(q);
            }
        }
    }
}

}  // namespace pyquant
