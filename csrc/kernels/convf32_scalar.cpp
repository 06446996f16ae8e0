// float32 implicit-GEMM phases (convf32.hpp) on the baseline path: plain loops, separate multiply and add.
#include "kernels/convf32.hpp"

namespace pyquant {
namespace scalar {
namespace {

struct Kernel {
    static constexpr int MR = 4, NR = 16;
    template <int R>
    static void tile(const float* const* p, index_t taps, index_t seg, const float* b, float* t, const float* pad) {
        for (int i = 0; i < R * NR; ++i) t[i] = 0.0f;
        for (index_t j = 0; j < taps; ++j) {
            if (segment_is_padding<R>(p, taps, j, pad)) {  // see convf32_tile
                b += seg * NR;
                continue;
            }
            for (index_t k = 0; k < seg; ++k, b += NR)
                for (int i = 0; i < R; ++i) {
                    const float a = p[i * taps + j][k];
                    for (int n = 0; n < NR; ++n) t[i * NR + n] += a * b[n];
                }
        }
    }
    static void store_row(const float* t, const GemmOut& o, float* dst, index_t nr, index_t n0) {
        for (index_t n = 0; n < nr; ++n) dst[n] = activate(t[n] + o.bias[n0 + n], o.epi.act, o.epi.alpha);
    }
};

}  // namespace

void convf32_block(const ConvF32Call& c, index_t m0, index_t m1, index_t p0, index_t p1) {
    convf32_block_generic<Kernel>(c, m0, m1, p0, p1);
}
index_t convf32_nr() { return Kernel::NR; }

}  // namespace scalar
}  // namespace pyquant
