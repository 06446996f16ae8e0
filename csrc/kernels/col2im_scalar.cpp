// col2im (col2im.hpp) on the baseline path: plain loops, the scalar GEMM epilogue (the definition the SIMD
// epilogues match operation for operation).
#include "kernels/col2im.hpp"

namespace pyquant {
namespace scalar {
namespace {

struct Ops {
    template <class T>
    static void add(T* acc, const T* src, index_t n) {
        for (index_t j = 0; j < n; ++j) acc[j] += src[j];
    }
    static void epilogue_row(const int32_t* d, index_t n, const GemmOut& o, index_t m) {
        epilogue_row_scalar(d, 0, n, o, m, 0);
    }
    static void activate_row(const float* d, const float* bias, index_t n, const Epilogue& e, float* dst) {
        with_activation(e.act, [&](auto act) {
            for (index_t j = 0; j < n; ++j) dst[j] = activate(d[j] + bias[j], act.value, e.alpha);
        });
    }
};

}  // namespace

void col2im_rows(const Col2ImCall& c, index_t r0, index_t r1) { col2im_rows_impl<Ops>(c, r0, r1); }

}  // namespace scalar
}  // namespace pyquant
