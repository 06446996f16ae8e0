// Sparse CSR x dense bindings: check the arrays (the CSR structure too, O(nnz), before any kernel reads it),
// pack X into column strips once per call, and run fixed tasks (row blocks x column strips) on the pool.
// Each output element is computed by exactly one task, in CSR storage order, so neither the thread count nor
// the task schedule changes a bit.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "bindings/bindings.hpp"
#include "dispatch.hpp"
#include "kernels/spmm.hpp"
#include "parallel.hpp"

namespace pyquant {
namespace {

struct SpmmOps {
    decltype(&scalar::spmm_f32) f32;
    decltype(&scalar::spmm_s8) s8;
    index_t strip_f32, strip_s8, lanes_s8;  // strip 0: no packing (scalar reads X in place)
};

SpmmOps spmm_ops() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) return {avx512::spmm_f32, avx512::spmm_s8, kSpmmStripAvx512F32, kSpmmStripAvx512S8, 4};
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa)) return {avx2::spmm_f32, avx2::spmm_s8, kSpmmStripAvx2F32, kSpmmStripAvx2S8, 2};
#endif
    (void)isa;
    return {scalar::spmm_f32, scalar::spmm_s8, 0, 0, 0};
}

constexpr index_t kScalarCols = 64;          // column block of the scalar path's tasks
constexpr index_t kNnzPerTask = 1 << 13;     // target stored entries per task and strip

// Rows per task: fixed by the matrix alone (never by the thread count), a multiple of 2 (row pairs).
index_t rows_per_block(index_t nrows, index_t nnz) {
    if (nrows <= 0) return 1;
    index_t per = nnz > 0 ? (kNnzPerTask * nrows) / nnz : nrows;
    per = std::max<index_t>(8, std::min<index_t>(per, nrows));
    return round_up(per, 2);
}

struct Csr {
    CsrView view;
    index_t nnz;
};

Csr checked_csr(const py::array& indptr, const py::array& indices, index_t nrows, index_t ncols) {
    if (nrows < 0 || ncols < 0) throw py::value_error("shape: dimensions must be >= 0");
    if (ncols > INT32_MAX) throw py::value_error("shape: ncols must be < 2**31");
    const int64_t* ip = checked_data<int64_t>(indptr, "indptr", nrows + 1);
    index_t nnz = static_cast<index_t>(indices.size());
    const int32_t* ix = checked_data<int32_t>(indices, "indices", nnz);
    if (const char* msg = csr_check(ip, ix, nrows, ncols, nnz)) throw py::value_error(std::string("CSR: ") + msg);
    return {{ip, ix, nrows, ncols}, nnz};
}

index_t checked_cols(const py::array& x, index_t k) {
    if (x.ndim() != 2) throw py::value_error("x: expected a 2-D array");
    if (x.shape(0) != k) throw py::value_error("x: expected " + std::to_string(k) + " rows (W's ncols)");
    return x.shape(1);
}

}  // namespace

void register_sparse(py::module_& m) {
    m.def("csr_check", [](py::array indptr, py::array indices, index_t nrows, index_t ncols) {
        checked_csr(indptr, indices, nrows, ncols);
    });

    m.def("spmm_f32", [](py::array indptr, py::array indices, py::array data, index_t nrows, index_t ncols,
                         py::array x, py::array out) {
        Csr c = checked_csr(indptr, indices, nrows, ncols);
        const float* pd = checked_data<float>(data, "data", c.nnz);
        index_t n = checked_cols(x, ncols);
        const float* px = checked_data<float>(x, "x");
        float* py_ = checked_data<float>(out, "out", nrows * n, true);
        if (nrows == 0 || n == 0) return;
        py::gil_scoped_release nogil;
        SpmmOps ops = spmm_ops();
        const index_t strip = ops.strip_f32 ? ops.strip_f32 : kScalarCols;
        const index_t nstrips = ceil_div(n, strip), rpb = rows_per_block(nrows, c.nnz);
        const index_t nblocks = ceil_div(nrows, rpb);
        AlignedBuffer<float> packed;
        if (ops.strip_f32) {
            packed.resize(static_cast<std::size_t>(nstrips * ncols * strip));
            parallel_for(nstrips, [&](index_t s) { spmm_pack_f32(px, ncols, n, strip, s, packed.data + s * ncols * strip); });
        }
        parallel_for(nstrips * nblocks, [&](index_t t) {
            index_t s = t / nblocks, b = t % nblocks;
            index_t r0 = b * rpb, r1 = std::min(nrows, r0 + rpb), c0 = s * strip;
            index_t width = std::min(strip, n - c0);
            if (ops.strip_f32)
                ops.f32(c.view, pd, packed.data + s * ncols * strip, n, r0, r1, c0, width, py_);
            else
                ops.f32(c.view, pd, px, n, r0, r1, c0, width, py_);
        });
    });

    m.def("spmm_s8", [](py::array indptr, py::array indices, py::array data, py::array row_scale, index_t nrows,
                        index_t ncols, py::array xq, int32_t x_zp, py::object bias, int act, float alpha,
                        py::array out, float out_inv_scale, int32_t out_zp, int32_t qmin, int32_t qmax) {
        Csr c = checked_csr(indptr, indices, nrows, ncols);
        const int8_t* pd = checked_data<int8_t>(data, "data", c.nnz);
        const float* ps = checked_data<float>(row_scale, "row_scale", nrows);
        const float* pb = nullptr;
        if (!bias.is_none()) pb = checked_data<float>(bias.cast<py::array>(), "bias", nrows);
        index_t n = checked_cols(xq, ncols);
        bool x_u8 = xq.dtype().is(py::dtype::of<uint8_t>());
        const void* px = x_u8 ? static_cast<const void*>(checked_data<uint8_t>(xq, "x"))
                              : static_cast<const void*>(checked_data<int8_t>(xq, "x"));
        if (x_u8 ? (x_zp < 0 || x_zp > 255) : (x_zp < -128 || x_zp > 127))
            throw py::value_error("x_zero_point: outside the range of x's dtype");
        if (act < 0 || act > 4) throw py::value_error("activation: unknown code");
        Epilogue e;
        e.act = static_cast<Activation>(act);
        e.alpha = alpha;
        SpmmS8Out o{nullptr, nullptr, false};
        if (out.dtype().is(py::dtype::of<float>())) {
            o.y_f32 = checked_data<float>(out, "out", nrows * n, true);
        } else {
            o.is_u8 = out.dtype().is(py::dtype::of<uint8_t>());
            int lo = o.is_u8 ? 0 : -128, hi = o.is_u8 ? 255 : 127;
            if (qmin < lo || qmax > hi || qmin > qmax || out_zp < qmin || out_zp > qmax)
                throw py::value_error("out: qmin/qmax/zero point outside the output dtype");
            o.y_q = o.is_u8 ? static_cast<void*>(checked_data<uint8_t>(out, "out", nrows * n, true))
                            : static_cast<void*>(checked_data<int8_t>(out, "out", nrows * n, true));
            e.requantize = true;
            e.out_inv_scale = out_inv_scale;
            e.out_zp = out_zp;
            e.qmin = qmin;
            e.qmax = qmax;
        }
        if (nrows == 0 || n == 0) return;
        bool overflow = false;
        {
        py::gil_scoped_release nogil;
        // Exactness: every partial sum of a row is bounded by sum_k |w_k| * max|x - zp| < 2^31.
        int64_t max_abs_row = 0;
        for (index_t r = 0; r < nrows; ++r) {
            int64_t s = 0;
            for (int64_t k = c.view.indptr[r]; k < c.view.indptr[r + 1]; ++k) s += std::abs(static_cast<int>(pd[k]));
            max_abs_row = std::max(max_abs_row, s);
        }
        int64_t max_x = 0;
        if (max_abs_row > 0) {
            int xmin = x_u8 ? 255 : 127, xmax = x_u8 ? 0 : -128;
            for (index_t i = 0; i < ncols * n; ++i) {
                int v = x_u8 ? static_cast<const uint8_t*>(px)[i] : static_cast<const int8_t*>(px)[i];
                xmin = std::min(xmin, v);
                xmax = std::max(xmax, v);
            }
            if (ncols * n > 0) max_x = std::max(std::abs(xmin - x_zp), std::abs(xmax - x_zp));
        }
        overflow = max_abs_row * max_x > INT32_MAX;
        if (!overflow) {
        SpmmOps ops = spmm_ops();
        const index_t strip = ops.strip_s8 ? ops.strip_s8 : kScalarCols;
        const index_t nstrips = ceil_div(n, strip), rpb = rows_per_block(nrows, c.nnz);
        const index_t nblocks = ceil_div(nrows, rpb);
        AlignedBuffer<int16_t> packed;
        if (ops.strip_s8) {
            packed.resize(static_cast<std::size_t>(nstrips * ncols * strip));
            parallel_for(nstrips, [&](index_t s) {
                spmm_pack_s16(px, x_u8, x_zp, ncols, n, strip, ops.lanes_s8, s, packed.data + s * ncols * strip);
            });
        }
        parallel_for(nstrips * nblocks, [&](index_t t) {
            index_t s = t / nblocks, b = t % nblocks;
            index_t r0 = b * rpb, r1 = std::min(nrows, r0 + rpb), c0 = s * strip;
            index_t width = std::min(strip, n - c0);
            const void* xs = ops.strip_s8 ? static_cast<const void*>(packed.data + s * ncols * strip) : px;
            ops.s8(c.view, pd, xs, x_u8, x_zp, n, r0, r1, c0, width, ps, pb, e, o);
        });
        }
        }
        if (overflow)
            throw py::value_error("int32 overflow: a row's sum of |w| times max|x - zero_point| exceeds 2**31 - 1");
    });
}

}  // namespace pyquant
