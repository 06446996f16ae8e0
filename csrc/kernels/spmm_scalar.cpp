// Scalar sparse kernels: the oracle the SIMD paths are tested against (bit for bit), the fallback on any CPU,
// and the baseline helpers (CSR check, strip packing) that every path shares.
#include <cstring>

#include "kernels/spmm.hpp"

namespace pyquant {

const char* csr_check(const int64_t* indptr, const int32_t* indices, index_t nrows, index_t ncols, index_t nnz) {
    if (nrows < 0 || ncols < 0 || nnz < 0) return "negative dimension";
    if (indptr[0] != 0) return "indptr[0] must be 0";
    for (index_t r = 0; r < nrows; ++r)
        if (indptr[r + 1] < indptr[r]) return "indptr must be non-decreasing";
    if (indptr[nrows] != nnz) return "indptr[-1] must equal nnz";
    int32_t bad = 0;
    const int32_t nc = static_cast<int32_t>(ncols);
    for (index_t k = 0; k < nnz; ++k) bad |= static_cast<int32_t>(indices[k] < 0) | static_cast<int32_t>(indices[k] >= nc);
    if (bad) return "indices must lie in [0, ncols)";
    return nullptr;
}

void spmm_pack_f32(const float* x, index_t n, index_t strip, index_t s, index_t i0, index_t i1, float* dst) {
    index_t c0 = s * strip, w = n - c0 < strip ? n - c0 : strip;
    for (index_t i = i0; i < i1; ++i) {
        float* d = dst + i * strip;
        std::memcpy(d, x + i * n + c0, static_cast<std::size_t>(w) * sizeof(float));
        for (index_t j = w; j < strip; ++j) d[j] = 0.0f;
    }
}

namespace scalar {

void spmm_f32(const CsrView& w, const float* data, const float* x, index_t, index_t n, index_t r0, index_t r1,
              index_t c0, index_t width, float* y) {
    for (index_t r = r0; r < r1; ++r) {
        float* yr = y + r * n + c0;
        for (index_t j = 0; j < width; ++j) yr[j] = 0.0f;
        for (int64_t k = w.indptr[r]; k < w.indptr[r + 1]; ++k) {
            const float v = data[k];
            const float* xr = x + static_cast<index_t>(w.indices[k]) * n + c0;
            for (index_t j = 0; j < width; ++j) {
                float p = v * xr[j];
                yr[j] = yr[j] + p;
            }
        }
    }
}

namespace {

template <class XT>
void spmm_s8_rows(const CsrView& w, const int8_t* data, const XT* x, int32_t zp, index_t n, index_t r0, index_t r1,
                  index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias, const Epilogue& e,
                  const SpmmS8Out& out) {
    constexpr index_t kCols = 64;
    int32_t acc[kCols];
    for (index_t r = r0; r < r1; ++r) {
        for (index_t cb = 0; cb < width; cb += kCols) {
            index_t nb = width - cb < kCols ? width - cb : kCols;
            for (index_t j = 0; j < nb; ++j) acc[j] = 0;
            for (int64_t k = w.indptr[r]; k < w.indptr[r + 1]; ++k) {
                const int32_t v = data[k];
                const XT* xr = x + static_cast<index_t>(w.indices[k]) * n + c0 + cb;
                for (index_t j = 0; j < nb; ++j) acc[j] += v * (static_cast<int32_t>(xr[j]) - zp);
            }
            const float sc = row_scale[r] * x_scale, b = bias ? bias[r] : 0.0f;
            index_t o = out.at(r, c0 + cb);
            if (out.y_f32) {
                for (index_t j = 0; j < nb; ++j) out.y_f32[o + j] = epilogue_float(acc[j], sc, b, e);
            } else if (out.is_u8) {
                uint8_t* yq = static_cast<uint8_t*>(out.y_q) + o;
                for (index_t j = 0; j < nb; ++j)
                    yq[j] = static_cast<uint8_t>(requantize_one(epilogue_float(acc[j], sc, b, e), e));
            } else {
                int8_t* yq = static_cast<int8_t*>(out.y_q) + o;
                for (index_t j = 0; j < nb; ++j)
                    yq[j] = static_cast<int8_t>(requantize_one(epilogue_float(acc[j], sc, b, e), e));
            }
        }
    }
}

}  // namespace

void spmm_s8(const CsrView& w, const int8_t* data, const void* x, bool x_is_u8, int32_t x_zp, index_t n, index_t r0,
             index_t r1, index_t c0, index_t width, const float* row_scale, float x_scale, const float* bias, const int64_t*,
             const Epilogue& e, const SpmmS8Out& out) {
    if (x_is_u8)
        spmm_s8_rows(w, data, static_cast<const uint8_t*>(x), x_zp, n, r0, r1, c0, width, row_scale, x_scale, bias, e, out);
    else
        spmm_s8_rows(w, data, static_cast<const int8_t*>(x), x_zp, n, r0, r1, c0, width, row_scale, x_scale, bias, e, out);
}

// The scalar path reads X quantized in place (row-major uint8 / int8): "packing" quantizes whole rows.
bool spmm_pack_s8(const float* x, index_t n, index_t c0, index_t w, index_t i0, index_t i1, const QuantRun& qp,
                  bool x_is_u8, int32_t, void* dst) {
    const index_t cnt = (i1 - i0) * n;
    return x_is_u8 ? quantize_u8(x + i0 * n, static_cast<uint8_t*>(dst) + i0 * n, cnt, qp)
                   : quantize_s8(x + i0 * n, static_cast<int8_t*>(dst) + i0 * n, cnt, qp);
}

}  // namespace scalar
}  // namespace pyquant
