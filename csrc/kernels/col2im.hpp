// Transposed convolution in "GEMM + col2im" form: the tap products of one GEMM over the input pixels are
// summed into each output pixel, then the epilogue. Used for int8 layers with few output channels (where a
// GEMM per phase would leave most tile columns empty), for float32 layers (the GEMM is BLAS's) and for sparse
// layers (the product is a CSR one, taps transposed).
//
// Written once here over an operation set Ops and compiled per ISA (col2im_<isa>.cpp): the sums are the same
// additions in the same order on every path, and Ops' row epilogues are the GEMM epilogues, which match the
// scalar form operation for operation. int32: sums are exact in any order, so results are bit-identical to the
// sub-pixel phase form. float32: taps are added in one fixed order from +0.0 (below), so results do not depend on
// threads or ISA either.
//
// Ops provides
//   static void add(T* acc, const T* src, index_t n)            acc[j] += src[j], j < n (T = int32_t, float)
//   static void epilogue_row(const int32_t* d, index_t n, const GemmOut& o, index_t m)   (row m of o, ldo = n)
//   static void activate_row(const float* d, const float* bias, index_t n, const Epilogue& e, float* dst)
#pragma once
#include <algorithm>
#include <vector>

#include "kernels/gemm.hpp"
#include "transpose.hpp"

namespace pyquant {
namespace {

// Sums the tap products reaching output row (b, oy) into acc (Wo * C). An input pixel's kw taps along one kernel
// row land on kw consecutive output pixels, so each is one contiguous block add (kw * C elements), clipped at
// the row's ends. Input columns are visited in `passes` interleaved sweeps (ix = p, p + passes, ...) far enough
// apart that the 64-byte footprints of consecutive block adds never overlap: a load that overlaps a store still
// in flight (masked-off lanes included) waits for it, which made these adds ~5x slower. The sweep count depends on
// the geometry only, never on the ISA, so float sums keep one order everywhere. Order per output element: kernel
// rows ascending, then the sweeps, then input columns ascending.
template <class Ops, class T>
void col2im_sum_row(const T* y, index_t pix0, const Col2Im& g, index_t b, index_t oy, T* acc) {
    const index_t C = g.C, blk = g.kw * C, pix = g.kh * blk;
    const index_t footprint = (blk + 15) / 16 * 16;  // elements from one block's start to the end of its last vector
    const index_t passes = std::min<index_t>(g.W, std::max<index_t>(1, (footprint + g.sw * C - 1) / (g.sw * C)));
    std::fill(acc, acc + g.Wo * C, T(0));
    const index_t ty = oy + g.pt;  // kernel rows reaching output row oy: ky = ty - iy * sh
    for (index_t ky = ty % g.sh; ky < g.kh && ky <= ty; ky += g.sh) {
        const index_t iy = (ty - ky) / g.sh;
        if (iy >= g.H) continue;
        const T* row = y + ((b * g.H + iy) * g.W - pix0) * pix + ky * blk;
        for (index_t p = 0; p < passes; ++p) {
            for (index_t ix = p; ix < g.W; ix += passes) {
                const index_t o0 = ix * g.sw - g.pl;  // output column of tap kx = 0
                const index_t k0 = std::max<index_t>(0, -o0), k1 = std::min<index_t>(g.kw, g.Wo - o0);
                if (k0 >= k1) continue;
                Ops::add(acc + (o0 + k0) * C, row + ix * pix + k0 * C, (k1 - k0) * C);  // int32: exact
            }
        }
    }
}

// The sums from transposed float32 taps (sparse layers: W_taps @ X gives rows (ky, kx, c) x input pixels, the
// pixels batch-minor): y[((ky * kw + kx) * C + c) * P + (iy * W + ix) * B + b], P = H * W * B. Task t is output
// row oy = t / tiles of channel tile t % tiles (kCol2ImChannelsT channels) for all B images. The task's sums are
// held as (c, px, tx, b) (channel rows `stride` apart) for output columns ox = tx * sw + px: the input columns of
// one kernel tap then land on one column phase px, consecutively, so each tap of a channel adds one contiguous
// run of (ix1 - ix0) * B values.
// Bias and activation then run along those rows, and each output column's (c, b) block is stored transposed.
// Order per output element: kernel rows ascending, then kernel columns ascending, from +0.0; then the bias.
template <class Ops>
void col2im_rows_t(const Col2ImCall& c, index_t t0, index_t t1) {
    const Col2Im& g = c.g;
    const index_t C = g.C, B = c.P / (g.H * g.W), tiles = ceil_div(C, kCol2ImChannelsT);
    const index_t nt = ceil_div(g.Wo, g.sw), run = g.sw * nt * B;  // sums per channel
    // Channel rows of the sums are `stride` apart, at least 16 floats more than a row: consecutive adds go to
    // consecutive channels, and with rows closer than a vector the masked load of one add overlapped the store
    // of the one before (masked-off lanes included) and waited for it (a batch of one: ~60% of the time).
    const index_t stride = (run + 15) / 16 * 16 + 16;
    std::vector<float> acc(static_cast<std::size_t>(std::min(C, kCol2ImChannelsT) * stride));
    std::vector<float> bias_run(static_cast<std::size_t>(run));
    const float* y = static_cast<const float*>(c.y);
    float* out = static_cast<float*>(c.o.out);
    for (index_t t = t0; t < t1; ++t) {
        const index_t oy = t / tiles, c0 = (t % tiles) * kCol2ImChannelsT, nc = std::min(C - c0, kCol2ImChannelsT);
        std::fill(acc.begin(), acc.begin() + nc * stride, 0.0f);
        const index_t ty = oy + g.pt;
        for (index_t ky = ty % g.sh; ky < g.kh && ky <= ty; ky += g.sh) {
            const index_t iy = (ty - ky) / g.sh;
            if (iy >= g.H) continue;
            for (index_t kx = 0; kx < g.kw; ++kx) {
                const index_t lo = g.pl - kx, hi = g.Wo - 1 + g.pl - kx;  // 0 <= ix * sw + kx - pl < Wo
                if (hi < 0) continue;
                const index_t ix0 = lo <= 0 ? 0 : (lo + g.sw - 1) / g.sw, ix1 = std::min(g.W, hi / g.sw + 1);
                if (ix0 >= ix1) continue;
                // ox = ix * sw + kx - pl: phase px, tx = ix + (kx - pl - px) / sw
                const index_t px = ((kx - g.pl) % g.sw + g.sw) % g.sw, dt = (kx - g.pl - px) / g.sw;
                const index_t at = (px * nt + dt + ix0) * B;
                for (index_t ci = 0; ci < nc; ++ci)
                    Ops::add(acc.data() + ci * stride + at,
                             y + ((ky * g.kw + kx) * C + c0 + ci) * c.P + (iy * g.W + ix0) * B, (ix1 - ix0) * B);
            }
        }
        for (index_t ci = 0; ci < nc; ++ci) {
            std::fill(bias_run.begin(), bias_run.end(), c.o.bias[c0 + ci]);
            float* a = acc.data() + ci * stride;
            Ops::activate_row(a, bias_run.data(), run, c.o.epi, a);
        }
        for (index_t ox = 0; ox < g.Wo; ++ox)  // (c, b) block of column ox -> rows (b, oy, ox) of c0 .. c0 + nc
            transpose_into(acc.data() + ((ox % g.sw) * nt + ox / g.sw) * B, stride, nc, B,
                           out + (oy * g.Wo + ox) * C + c0, g.Ho * g.Wo * C);
    }
}

// Output rows [r0, r1) (r = b * Ho + oy) of one col2im call.
template <class Ops>
void col2im_rows_impl(const Col2ImCall& c, index_t r0, index_t r1) {
    if (c.transposed) return col2im_rows_t<Ops>(c, r0, r1);  // r0, r1: its tasks
    const Col2Im& g = c.g;
    const index_t n = g.Wo * g.C;
    std::vector<int32_t> acc(c.f32 ? 0 : static_cast<std::size_t>(n));  // one output row's sums
    std::vector<float> accf(c.f32 ? static_cast<std::size_t>(n) : 0);
    GemmOut o = c.o;
    o.ldo = n;
    for (index_t r = r0; r < r1; ++r) {
        const index_t b = r / g.Ho, oy = r % g.Ho;
        if (!c.f32) {
            col2im_sum_row<Ops>(static_cast<const int32_t*>(c.y), c.pix0, g, b, oy, acc.data());
            Ops::epilogue_row(acc.data(), n, o, r);
            continue;
        }
        col2im_sum_row<Ops>(static_cast<const float*>(c.y), c.pix0, g, b, oy, accf.data());
        Ops::activate_row(accf.data(), o.bias, n, o.epi, static_cast<float*>(o.out) + r * n);
    }
}

}  // namespace
}  // namespace pyquant
