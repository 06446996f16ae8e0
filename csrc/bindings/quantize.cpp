// quantize / dequantize / minmax over an array viewed as (outer, channels, inner): channel c of block b has
// its own parameters; per tensor is channels == 1. Work is cut into fixed chunks, so the thread count never
// changes a result (each element's arithmetic is independent of the others anyway).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "bindings/bindings.hpp"
#include "dispatch.hpp"
#include "kernels/quantize.hpp"
#include "parallel.hpp"

namespace pyquant {
namespace {

struct QuantizeOps {
    decltype(&scalar::quantize_s8) quantize_s8;
    decltype(&scalar::quantize_u8) quantize_u8;
    decltype(&scalar::quantize_row_s8) quantize_row_s8;
    decltype(&scalar::quantize_row_u8) quantize_row_u8;
    decltype(&scalar::dequantize_s8) dequantize_s8;
    decltype(&scalar::dequantize_u8) dequantize_u8;
    decltype(&scalar::dequantize_row_s8) dequantize_row_s8;
    decltype(&scalar::dequantize_row_u8) dequantize_row_u8;
    decltype(&scalar::minmax) minmax;
};

#define PYQUANT_QUANTIZE_OPS(ns)                                                                                  \
    QuantizeOps {                                                                                                 \
        ns::quantize_s8, ns::quantize_u8, ns::quantize_row_s8, ns::quantize_row_u8, ns::dequantize_s8,            \
            ns::dequantize_u8, ns::dequantize_row_s8, ns::dequantize_row_u8, ns::minmax                           \
    }

QuantizeOps quantize_ops() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) return PYQUANT_QUANTIZE_OPS(avx512);
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa)) return PYQUANT_QUANTIZE_OPS(avx2);
#endif
#ifdef PYQUANT_BUILD_NEON
    if (isa == Isa::Neon || isa == Isa::NeonDot) return PYQUANT_QUANTIZE_OPS(neon);
#endif
    (void)isa;
    return PYQUANT_QUANTIZE_OPS(scalar);
}

constexpr index_t kChunk = 1 << 16;  // elements per task, at most (smaller arrays run on one thread)

// Equal chunks of at most kChunk elements (multiples of 64, so SIMD tails only at the very end).
inline index_t chunk_for(index_t n) { return round_up(ceil_div(n, task_count(n, kChunk)), 64); }

// The contract's parameters for one range (CONTRACT section 1): the range widened to include 0, float64
// arithmetic, the scale rounded once to float32 (at least the smallest normal float32), the zero point rounded
// half to even and clamped to [qmin, qmax]; symmetric: amax / 127 and zero point 0 (128 for uint8).
struct RangeParams {
    float scale;
    int32_t zero_point;
};

RangeParams range_params(double lo, double hi, int32_t qmin, int32_t qmax, bool symmetric, bool is_unsigned) {
    constexpr double kTiny = 1.1754943508222875e-38;  // smallest normal float32
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
    if (symmetric) {
        const double amax = std::max(-lo, hi);
        return {static_cast<float>(amax == 0 ? 1.0 : std::max(amax / 127.0, kTiny)), is_unsigned ? 128 : 0};
    }
    const double span = hi - lo;
    const float scale = static_cast<float>(span == 0 ? 1.0 : std::max(span / (qmax - qmin), kTiny));
    const double zp = qmin - std::nearbyint(lo / static_cast<double>(scale));  // default mode: half to even
    return {scale, static_cast<int32_t>(std::min<double>(std::max<double>(zp, qmin), qmax))};
}

struct Layout {
    index_t outer, channels, inner;
    index_t size() const { return outer * channels * inner; }
};

Layout check_layout(index_t outer, index_t channels, index_t inner) {
    if (outer < 0 || channels < 1 || inner < 0) throw py::value_error("invalid (outer, channels, inner) layout");
    return {outer, channels, inner};
}

// Calls body(offset, count, channel) over contiguous same-channel runs, or row(offset) over whole rows of
// `channels` elements when inner == 1 and channels > 1, in fixed-size tasks across the thread pool.
template <class RunFn, class RowFn>
void for_each_piece(const Layout& L, RunFn run, RowFn row) {
    if (L.size() == 0) return;
    if (L.inner == 1 && L.channels > 1) {
        index_t rows_per_task = std::max<index_t>(1, kChunk / L.channels);
        parallel_for(task_count(L.outer, rows_per_task), [&](index_t t) {
            index_t r1 = std::min(L.outer, (t + 1) * rows_per_task);
            for (index_t r = t * rows_per_task; r < r1; ++r) row(r * L.channels);
        });
        return;
    }
    index_t blocks = L.outer * L.channels;
    if (L.inner >= kChunk) {  // split each block into chunks
        index_t chunk = chunk_for(L.inner), per_block = ceil_div(L.inner, chunk);
        parallel_for(blocks * per_block, [&](index_t t) {
            index_t b = t / per_block, part = t % per_block;
            index_t begin = part * chunk, count = std::min(chunk, L.inner - begin);
            run(b * L.inner + begin, count, b % L.channels);
        });
    } else {  // group small blocks
        index_t blocks_per_task = std::max<index_t>(1, kChunk / std::max<index_t>(1, L.inner));
        parallel_for(task_count(blocks, blocks_per_task), [&](index_t t) {
            index_t b1 = std::min(blocks, (t + 1) * blocks_per_task);
            for (index_t b = t * blocks_per_task; b < b1; ++b) run(b * L.inner, L.inner, b % L.channels);
        });
    }
}

template <class OutT>
bool quantize_impl(const float* x, OutT* y, const Layout& L, const float* scale, const int32_t* zp, int qmin,
                   int qmax) {
    QuantizeOps ops = quantize_ops();
    auto run_fn = [&] {
        if constexpr (std::is_same<OutT, int8_t>::value) return ops.quantize_s8; else return ops.quantize_u8;
    }();
    auto row_fn = [&] {
        if constexpr (std::is_same<OutT, int8_t>::value) return ops.quantize_row_s8; else return ops.quantize_row_u8;
    }();
    std::vector<float> lo(L.channels), hi(L.channels);
    for (index_t c = 0; c < L.channels; ++c) {
        lo[c] = static_cast<float>(qmin - zp[c]);
        hi[c] = static_cast<float>(qmax - zp[c]);
    }
    std::atomic<bool> finite{true};
    QuantRow rowp{scale, lo.data(), hi.data(), zp};
    for_each_piece(
        L,
        [&](index_t off, index_t n, index_t c) {
            if (!run_fn(x + off, y + off, n, QuantRun{scale[c], lo[c], hi[c], zp[c]})) finite.store(false);
        },
        [&](index_t off) {
            if (!row_fn(x + off, y + off, L.channels, rowp)) finite.store(false);
        });
    return finite.load();
}

template <class InT>
void dequantize_impl(const InT* q, float* y, const Layout& L, const float* scale, const int32_t* zp) {
    QuantizeOps ops = quantize_ops();
    auto run_fn = [&] {
        if constexpr (std::is_same<InT, int8_t>::value) return ops.dequantize_s8; else return ops.dequantize_u8;
    }();
    auto row_fn = [&] {
        if constexpr (std::is_same<InT, int8_t>::value) return ops.dequantize_row_s8; else return ops.dequantize_row_u8;
    }();
    for_each_piece(
        L, [&](index_t off, index_t n, index_t c) { run_fn(q + off, y + off, n, scale[c], zp[c]); },
        [&](index_t off) { row_fn(q + off, y + off, L.channels, scale, zp); });
}

bool quantize_checked(const py::array& x, const py::array& out, const Layout& L, const float* scale,
                      const int32_t* zp, int qmin, int qmax) {
    const float* px = checked_data<float>(x, "x", L.size());
    bool s8 = dtype_is<int8_t>(out);
    int lo = s8 ? -128 : 0, hi = s8 ? 127 : 255;
    if (qmin < lo || qmax > hi || qmin > qmax) throw py::value_error("qmin/qmax outside the output dtype");
    for (index_t c = 0; c < L.channels; ++c) {
        if (zp[c] < qmin || zp[c] > qmax) throw py::value_error("zero_point outside [qmin, qmax]");
        if (!(scale[c] > 0.0f) || !(scale[c] <= 3.4028234663852886e38f)) throw py::value_error("scale: must be finite and > 0");
    }
    if (s8) {
        int8_t* py_ = checked_data<int8_t>(out, "out", L.size(), true);
        py::gil_scoped_release nogil;
        return quantize_impl(px, py_, L, scale, zp, qmin, qmax);
    }
    uint8_t* py_ = checked_data<uint8_t>(out, "out", L.size(), true);
    py::gil_scoped_release nogil;
    return quantize_impl(px, py_, L, scale, zp, qmin, qmax);
}

struct MinMax {
    float lo, hi;
    bool finite;
};

// min and max of a non-empty float32 array in one parallel pass (fixed chunks), and whether all are finite.
MinMax minmax_checked(const py::array& x) {
    const float* px = checked_data<float>(x, "x");
    index_t n = x.size();
    if (n == 0) throw py::value_error("minmax of an empty array");
    index_t chunk = chunk_for(n), tasks = ceil_div(n, chunk);
    std::vector<float> lo(tasks), hi(tasks);
    std::atomic<bool> finite{true};
    {
        py::gil_scoped_release nogil;
        auto fn = quantize_ops().minmax;
        parallel_for(tasks, [&](index_t t) {
            index_t begin = t * chunk;
            if (!fn(px + begin, std::min(chunk, n - begin), &lo[t], &hi[t])) finite.store(false);
        });
    }
    return {*std::min_element(lo.begin(), lo.end()), *std::max_element(hi.begin(), hi.end()), finite.load()};
}

void dequantize_checked(const py::array& q, const py::array& out, const Layout& L, const float* scale,
                        const int32_t* zp) {
    float* py_ = checked_data<float>(out, "out", L.size(), true);
    if (dtype_is<int8_t>(q)) {
        const int8_t* pq = checked_data<int8_t>(q, "q", L.size());
        py::gil_scoped_release nogil;
        dequantize_impl(pq, py_, L, scale, zp);
    } else {
        const uint8_t* pq = checked_data<uint8_t>(q, "q", L.size());
        py::gil_scoped_release nogil;
        dequantize_impl(pq, py_, L, scale, zp);
    }
}

}  // namespace

void register_quantize(py::module_& m) {
    m.def(
        "quantize",
        [](py::array x, py::array out, py::array scale, py::array zero_point, index_t outer, index_t channels,
           index_t inner, int qmin, int qmax) {
            Layout L = check_layout(outer, channels, inner);
            return quantize_checked(x, out, L, checked_data<float>(scale, "scale", channels),
                                    checked_data<int32_t>(zero_point, "zero_point", channels), qmin, qmax);
        },
        "Quantize float32 x into out (int8/uint8) with x / scale (one float32 division, ONNX QuantizeLinear); "
        "returns False when x held NaN or Inf.");
    m.def(
        "quantize_tensor",
        [](py::array x, py::array out, float scale, int32_t zero_point, int qmin, int qmax) {
            return quantize_checked(x, out, Layout{1, 1, static_cast<index_t>(x.size())}, &scale, &zero_point,
                                    qmin, qmax);
        },
        "Per-tensor quantize with scalar parameters (no parameter arrays to build).");
    m.def("dequantize", [](py::array q, py::array out, py::array scale, py::array zero_point, index_t outer,
                           index_t channels, index_t inner) {
        Layout L = check_layout(outer, channels, inner);
        dequantize_checked(q, out, L, checked_data<float>(scale, "scale", channels),
                           checked_data<int32_t>(zero_point, "zero_point", channels));
    });
    m.def("dequantize_tensor", [](py::array q, py::array out, float scale, int32_t zero_point) {
        dequantize_checked(q, out, Layout{1, 1, static_cast<index_t>(q.size())}, &scale, &zero_point);
    });
    m.def(
        "qparams",
        [](double lo, double hi, int32_t qmin, int32_t qmax, bool symmetric, bool is_unsigned) {
            if (!(std::isfinite(lo) && std::isfinite(hi)) || qmin >= qmax) throw py::value_error("qparams: bad range");
            RangeParams p = range_params(lo, hi, qmin, qmax, symmetric, is_unsigned);
            return py::make_tuple(p.scale, p.zero_point);
        },
        "(float32 scale as a float, zero point) of the range [lo, hi] (CONTRACT section 1).");
    m.def(
        "dynamic_qparams",
        [](py::array x, int32_t qmin, int32_t qmax) {
            if (qmin >= qmax) throw py::value_error("dynamic_qparams: qmin must be < qmax");
            MinMax r = minmax_checked(x);
            RangeParams p = r.finite ? range_params(r.lo, r.hi, qmin, qmax, false, false) : RangeParams{1.0f, 0};
            return py::make_tuple(p.scale, p.zero_point, r.finite);
        },
        "(scale, zero point, all_finite): asymmetric per-tensor parameters of a float32 array from its min and "
        "max, in one native call (quantize_dynamic's choice).");
    m.def(
        "minmax",
        [](py::array x) {
            MinMax r = minmax_checked(x);
            return py::make_tuple(r.lo, r.hi, r.finite);
        },
        "(min, max, all_finite) of a float32 array in one pass.");
}

}  // namespace pyquant
