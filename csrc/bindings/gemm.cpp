// int8 GEMM bindings: weight packing (one layout per inner loop), the GEMM driver (activation packing, fused
// with quantization for float32 inputs; fixed M x N tiling over the thread pool; fused epilogue) and an
// inner-loop throughput probe. Only checks and conversions here: the API, defaults and messages live in
// pyquant/gemm.py. This file is compiled at baseline flags: all allocation happens here, the ISA files get
// raw pointers.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "bindings/bindings.hpp"
#include "dispatch.hpp"
#include "kernels/convf32.hpp"
#include "kernels/gemm.hpp"
#include "kernels/quantize.hpp"
#include "parallel.hpp"

namespace pyquant {
namespace {

using BlockFn = void (*)(const BPack&, const APack&, const GemmOut&, index_t, index_t, index_t, index_t);

// The ISA a path's instructions need.
Isa path_isa(GemmPath p) {
    switch (p) {
        case GemmPath::Scalar: return Isa::Scalar;
        case GemmPath::Avx2Exact:
        case GemmPath::Avx2Fast: return Isa::Avx2;
        case GemmPath::AvxVnni: return Isa::AvxVnni;
        case GemmPath::Avx512Exact: return Isa::Avx512;
        case GemmPath::Avx512Vnni: return Isa::Avx512Vnni;
    }
    return Isa::Scalar;
}

bool path_runnable(GemmPath p) {
    Isa isa = path_isa(p);
    return isa_compiled(isa) && isa_supported(isa);
}

BlockFn block_fn(GemmPath p) {
    switch (p) {
#ifdef PYQUANT_BUILD_AVX2
        case GemmPath::Avx2Exact: return avx2::gemm_block;
        case GemmPath::Avx2Fast: return avx2::gemm_block_fast;
#endif
#if defined(PYQUANT_BUILD_AVXVNNI) && defined(PYQUANT_BUILD_AVX2)
        case GemmPath::AvxVnni: return avxvnni::gemm_block;
#endif
#if defined(PYQUANT_BUILD_AVX512) && defined(PYQUANT_BUILD_AVX2)
        case GemmPath::Avx512Exact: return avx512::gemm_block;
#endif
#if defined(PYQUANT_BUILD_AVX512VNNI) && defined(PYQUANT_BUILD_AVX512)
        case GemmPath::Avx512Vnni: return avx512vnni::gemm_block;
#endif
        default: return scalar::gemm_block;
    }
}

// (exact path, fast path or -1) for the active ISA.
std::pair<int, int> paths_for_active() {
    switch (active_isa()) {
        case Isa::Avx2: return {int(GemmPath::Avx2Exact), int(GemmPath::Avx2Fast)};
        case Isa::AvxVnni: return {int(GemmPath::AvxVnni), -1};
        case Isa::Avx512: return {int(GemmPath::Avx512Exact), -1};
        case Isa::Avx512Vnni: return {int(GemmPath::Avx512Vnni), -1};
        default: return {int(GemmPath::Scalar), -1};
    }
}

using QuantU8Fn = bool (*)(const float*, uint8_t*, index_t, const QuantRun&);
QuantU8Fn quantize_u8_fn() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) return avx512::quantize_u8;
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa)) return avx2::quantize_u8;
#endif
    (void)isa;
    return scalar::quantize_u8;
}

using Col2ImFn = void (*)(const Col2ImCall&, index_t, index_t);
Col2ImFn col2im_fn() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) return avx512::col2im_rows;
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa)) return avx2::col2im_rows;
#endif
    (void)isa;
    return scalar::col2im_rows;
}

// Weights packed for one inner loop. Immutable after construction, so one object serves any number of
// concurrent calls.
struct PackedB {
    GemmPath path = GemmPath::Scalar;
    GemmKernelInfo info{};
    index_t K = 0, N = 0;
    AlignedBuffer<int8_t> s8;
    AlignedBuffer<int16_t> s16;
    AlignedBuffer<int32_t> colsum;
    AlignedBuffer<int32_t> corr_ptr, corr_k, corr_v;
    index_t n_corr = 0;

    BPack view() const {
        BPack b;
        b.layout = info.layout;
        b.data = info.layout == BLayout::S8Quad ? static_cast<const void*>(s8.data) : static_cast<const void*>(s16.data);
        b.K = K;
        b.N = N;
        b.groups = ceil_div(K, info.group);
        b.nr = info.nr;
        b.panels = ceil_div(N, info.nr);
        b.panel_elems = b.groups * info.group * info.nr;
        if (n_corr > 0) {
            b.corr_ptr = corr_ptr.data;
            b.corr_k = corr_k.data;
            b.corr_v = corr_v.data;
        }
        return b;
    }
    std::size_t nbytes() const {
        return s8.size + s16.size * 2 + (colsum.size + corr_ptr.size + corr_k.size + corr_v.size) * 4;
    }
};

GemmPath check_path(int p) {
    if (p < 0 || p >= kNumGemmPaths) throw py::value_error("unknown GEMM path " + std::to_string(p));
    return static_cast<GemmPath>(p);
}

// Packs w (K x N int8, C-contiguous). For the fast path, returns None when more than max_corrections pairs
// would have to be split out (the caller then uses the exact path); max_corrections < 0 packs the fast path
// unsplit, for callers that proved their activations 7-bit (a' <= 127: 127 * 128 * 2 <= 32767).
py::object pack(py::array w, int path_id, index_t max_corrections) {
    GemmPath path = check_path(path_id);
    if (w.ndim() != 2) throw py::value_error("w: expected a 2-D array");
    const int8_t* pw = checked_data<int8_t>(w, "w");
    const index_t K = w.shape(0), N = w.shape(1);
    if (K < 1 || N < 1) throw py::value_error("w: expected K >= 1 and N >= 1");
    auto pb = std::make_unique<PackedB>();
    pb->path = path;
    pb->info = gemm_kernel_info(path);
    pb->K = K;
    pb->N = N;
    const bool split = path == GemmPath::Avx2Fast && max_corrections >= 0;
    if (split) {
        index_t count;
        {
            py::gil_scoped_release nogil;
            count = gemm_pack_b(path, pw, N, K, N, nullptr, true, nullptr, nullptr, nullptr);
        }
        if (count > max_corrections) return py::none();
        pb->n_corr = count;
        pb->corr_ptr.resize(N + 1);
        pb->corr_k.resize(std::max<index_t>(count, 1));
        pb->corr_v.resize(std::max<index_t>(count, 1));
    }
    {
        py::gil_scoped_release nogil;
        index_t elems = gemm_packed_elems(path, K, N);
        if (pb->info.layout == BLayout::S8Quad) pb->s8.resize(elems);
        else pb->s16.resize(elems);
        void* dst = pb->info.layout == BLayout::S8Quad ? static_cast<void*>(pb->s8.data) : static_cast<void*>(pb->s16.data);
        gemm_pack_b(path, pw, N, K, N, dst, split, pb->corr_ptr.data, pb->corr_k.data, pb->corr_v.data);
        pb->colsum.resize(N);
        for (index_t n = 0; n < N; ++n) pb->colsum[n] = 0;
        for (index_t k = 0; k < K; ++k)
            for (index_t n = 0; n < N; ++n) pb->colsum[n] += pw[k * N + n];  // |sum| <= K * 128, guarded upstream
    }
    return py::cast(std::move(pb));
}

// A 2-D array with unit column stride: its row stride in elements (rows may be padded or a column slice).
template <class T>
index_t row_stride(const py::array& a, const char* name, index_t rows, index_t cols) {
    if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
        throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(rows) + ", " +
                              std::to_string(cols) + ")");
    if (rows == 0) return cols;
    const index_t it = static_cast<index_t>(sizeof(T));
    if ((cols > 1 && a.strides(1) != it) || a.strides(0) % it != 0 || (rows > 1 && a.strides(0) / it < cols))
        throw py::value_error(std::string(name) + ": expected rows of contiguous elements (unit column stride)");
    return rows > 1 ? a.strides(0) / it : cols;
}

template <class T>
T* data_of(const py::array& a, const char* name, bool writable) {
    if (!dtype_is<T>(a))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                             ", got " + std::string(py::str(a.dtype())));
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
    return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
const T* optional_vec(const py::object& o, const char* name, index_t n) {
    if (o.is_none()) return nullptr;
    py::array a = o.cast<py::array>();
    return checked_data<T>(a, name, n);
}

constexpr index_t kPackRows = 32;     // activation rows per packing task
constexpr double kSerialMacs = 4e6;  // below this many multiply-accumulates, one thread
constexpr index_t kSerialPack = 1 << 18;  // activations with fewer elements are packed on the calling thread

// The whole GEMM: C = (A - za)(B - zb) with the chosen output mode. a_kind: 0 uint8, 1 int8, 2 float32
// (quantized on the fly to uint8 with in_scale, za and [0, a_qmax]: x / in_scale, section 1). Returns False when a float input
// held a NaN or an infinity (nothing useful was written then).
// A row table (a convolution's pixels): rows_per_image x T element offsets of T segments (-1: padding), or
// rows_per_image output row offsets. Checked against the array it addresses: every segment of every image
// lies inside it.
struct RowTable {
    const int64_t* off = nullptr;
    index_t rows = 0, taps = 1;
};
RowTable checked_rows(py::object obj, const char* name, index_t n_images, index_t image_stride, index_t seg,
                      index_t size, bool allow_pad) {
    RowTable t;
    if (obj.is_none()) return t;
    py::array a = obj.cast<py::array>();
    if (!dtype_is<int64_t>(a) || !(a.flags() & py::array::c_style) || (a.ndim() != 1 && a.ndim() != 2))
        throw py::value_error(std::string(name) + ": expected a C-contiguous int64 array of 1 or 2 dimensions");
    t.off = static_cast<const int64_t*>(a.data());
    t.rows = a.shape(0);
    t.taps = a.ndim() == 2 ? a.shape(1) : 1;
    if (n_images < 1 || image_stride < 0 || t.taps < 1) throw py::value_error(std::string(name) + ": bad image count/stride");
    int64_t lo = 0, hi = 0;
    const index_t n = t.rows * t.taps;
    for (index_t i = 0; i < n; ++i) {
        const int64_t v = t.off[i];
        if (v < 0 && !(allow_pad && v == -1)) throw py::value_error(std::string(name) + ": negative offset");
        hi = std::max(hi, v);
        lo = std::min(lo, v);
    }
    // 128-bit arithmetic: offsets, strides and counts near 2^63 must not wrap past the check
    if (n && (static_cast<__int128>(hi) + seg + static_cast<__int128>(n_images - 1) * image_stride > size))
        throw py::value_error(std::string(name) + ": offsets reach past the end of the array");
    if (static_cast<__int128>(n_images) * t.rows > (static_cast<__int128>(1) << 40))
        throw py::value_error(std::string(name) + ": too many rows");
    return t;
}

// Fixed tiling (sizes only, never the thread count): M rows in blocks of MC x `panels` panels of nr columns, up
// to 256 columns per task, fewer when that leaves under 16 tasks (so two or more threads balance); block(m0, m1,
// p0, p1) per task. Small products run on the calling thread (waking the pool costs more than it saves); the
// tiling, and so every result, is the same either way.
template <class F>
void for_each_block(index_t M, index_t MC, index_t panels, index_t nr, double macs, F&& block) {
    const index_t mt = ceil_div(M, MC);
    const index_t NCP = std::max<index_t>(1, std::min<index_t>(256 / nr, ceil_div(mt * panels, 16)));
    const index_t nt = ceil_div(panels, NCP);
    auto task = [&](index_t t) {
        const index_t im = t / nt, in = t % nt;
        block(im * MC, std::min(M, im * MC + MC), in * NCP, std::min(panels, in * NCP + NCP));
    };
    if (macs < kSerialMacs) {
        for (index_t t = 0; t < mt * nt; ++t) task(t);
    } else {
        parallel_for(mt * nt, task);
    }
}

// An APack of implicit rows: the row table `t` over `data` (images image_stride elements apart), segments of seg
// elements, padding read from `pad`.
APack implicit_rows(const void* data, const RowTable& t, index_t seg, index_t image_stride, const void* pad) {
    APack ap;
    ap.data = data;
    ap.rows = t.off;
    ap.taps = t.taps;
    ap.seg = seg;
    ap.rows_per_image = t.rows;
    ap.image_stride = image_stride;
    ap.pad = pad;
    return ap;
}

bool run(const PackedB& pb, py::array a, int a_kind, int32_t za, float in_scale, int32_t a_qmax, py::object zb_obj,
         py::object bias_i32_obj, int mode, py::array out, py::object scale_obj, py::object bias_obj, int act,
         float alpha, float out_scale, int32_t out_zp, int32_t qmin, int32_t qmax, py::object mult_obj,
         py::object shift_obj, py::object a_rows_obj, index_t n_images, index_t a_image_stride,
         py::object out_rows_obj, index_t out_image_stride, py::object a_pad_sums_obj, bool batch_minor) {
    if (!path_runnable(pb.path))
        throw py::value_error(std::string("packed weights: inner loop '") + pb.info.name + "' cannot run on this CPU");
    const index_t K = pb.K, N = pb.N;
    if (a_kind < 0 || a_kind > 2) throw py::value_error("a_kind must be 0, 1 or 2");
    if (mode < 0 || mode > 3) throw py::value_error("mode must be 0..3");
    const bool gather = !a_rows_obj.is_none();
    if (batch_minor && (!gather || out_rows_obj.is_none()))
        throw py::value_error("batch_minor: needs a_rows and out_rows (it orders the rows of both tables)");
    index_t M;
    RowTable arows;
    const void* pa;
    index_t lda_in;
    if (gather) {  // rows gathered from segments of a flat C-contiguous array
        if (!(a.flags() & py::array::c_style)) throw py::value_error("a: expected a C-contiguous array");
        const index_t taps = py::array(a_rows_obj).ndim() == 2 ? py::array(a_rows_obj).shape(1) : 1;
        if (taps < 1 || K % taps != 0) throw py::value_error("a_rows: K must be a positive multiple of the segment count");
        arows = checked_rows(a_rows_obj, "a_rows", n_images, a_image_stride, K / taps, a.size(), true);
        M = n_images * arows.rows;
        lda_in = K;
        if (a_kind == 2) pa = data_of<float>(a, "a", false);
        else if (a_kind == 1) pa = data_of<int8_t>(a, "a", false);
        else pa = data_of<uint8_t>(a, "a", false);
    } else {
        if (a.ndim() != 2) throw py::value_error("a: expected a 2-D array");
        M = a.shape(0);
        if (a.shape(1) != K) throw py::value_error("a: expected " + std::to_string(K) + " columns");
        if (a_kind == 2) {
            pa = data_of<float>(a, "a", false);
            lda_in = row_stride<float>(a, "a", M, K);
        } else if (a_kind == 1) {
            pa = data_of<int8_t>(a, "a", false);
            lda_in = row_stride<int8_t>(a, "a", M, K);
        } else {
            pa = data_of<uint8_t>(a, "a", false);
            lda_in = row_stride<uint8_t>(a, "a", M, K);
        }
    }
    if (a_kind == 2 && (za < 0 || za > a_qmax || a_qmax < 1 || a_qmax > 255))
        throw py::value_error("input zero point outside [0, a_qmax]");
    if (a_kind == 2 && (!(in_scale > 0.0f) || !(in_scale <= 3.4028234663852886e38f)))
        throw py::value_error("input scale: must be finite and > 0");

    GemmOut o;
    o.mode = static_cast<OutMode>(mode);
    if (!out_rows_obj.is_none()) {  // rows scattered into a flat C-contiguous output
        if (!(out.flags() & py::array::c_style)) throw py::value_error("out: expected a C-contiguous array");
        const bool ok_dtype = o.mode == OutMode::Int32 ? dtype_is<int32_t>(out)
                              : o.mode == OutMode::Float ? dtype_is<float>(out)
                                                         : (dtype_is<uint8_t>(out) || dtype_is<int8_t>(out));
        if (!ok_dtype) throw py::type_error("out: dtype does not match the output mode");
        if (!out.writeable()) throw py::value_error("out: array is read-only");
        const index_t per = gather ? arows.rows : M;
        const index_t imgs = gather ? n_images : 1;
        RowTable orows = checked_rows(out_rows_obj, "out_rows", imgs, out_image_stride, N, out.size(), false);
        if (orows.rows != per || orows.taps != 1) throw py::value_error("out_rows: expected one offset per row");
        o.out = out.mutable_data();
        o.out_u8 = dtype_is<uint8_t>(out);
        o.out_rows = orows.off;
        o.rows_per_image = per;
        o.image_stride = out_image_stride;
        o.n_images = imgs;
    } else if (o.mode == OutMode::Int32) {
        o.out = data_of<int32_t>(out, "out", true);
        o.ldo = row_stride<int32_t>(out, "out", M, N);
    } else if (o.mode == OutMode::Float) {
        o.out = data_of<float>(out, "out", true);
        o.ldo = row_stride<float>(out, "out", M, N);
    } else if (dtype_is<uint8_t>(out)) {
        o.out = data_of<uint8_t>(out, "out", true);
        o.out_u8 = true;
        o.ldo = row_stride<uint8_t>(out, "out", M, N);
    } else {
        o.out = data_of<int8_t>(out, "out", true);
        o.ldo = row_stride<int8_t>(out, "out", M, N);
    }
    const int32_t* zb = optional_vec<int32_t>(zb_obj, "b_zero_point", N);
    const int32_t* bias_i32 = optional_vec<int32_t>(bias_i32_obj, "bias", N);
    if (o.mode == OutMode::Float || o.mode == OutMode::Quant) {
        o.scale = optional_vec<float>(scale_obj, "scale", N);
        o.bias = optional_vec<float>(bias_obj, "bias", N);
        if (!o.scale || !o.bias) throw py::value_error("scale and bias are required for float epilogues");
        if (act < 0 || act > 4) throw py::value_error("unknown activation");
        o.epi.act = static_cast<Activation>(act);
        o.epi.alpha = alpha;
    }
    if (o.mode == OutMode::Quant || o.mode == OutMode::FixedPoint) {
        int lo = o.out_u8 ? 0 : -128, hi = o.out_u8 ? 255 : 127;
        if (qmin < lo || qmax > hi || qmin > qmax || out_zp < qmin || out_zp > qmax)
            throw py::value_error("output zero point / range outside the output dtype");
        o.epi.requantize = true;
        if (o.mode == OutMode::Quant && (!(out_scale > 0.0f) || !(out_scale <= 3.4028234663852886e38f)))
            throw py::value_error("output scale: must be finite and > 0");
        o.epi.out_scale = out_scale;
        o.epi.out_zp = out_zp;
        o.epi.qmin = qmin;
        o.epi.qmax = qmax;
        o.fx_zp = out_zp;
        o.fx_qmin = qmin;
        o.fx_qmax = qmax;
    }
    if (o.mode == OutMode::FixedPoint) {
        o.mult = optional_vec<int32_t>(mult_obj, "multiplier", N);
        o.shift = optional_vec<int32_t>(shift_obj, "shift", N);
        if (!o.mult || !o.shift) throw py::value_error("multiplier and shift are required");
        for (index_t n = 0; n < N; ++n)
            if (o.shift[n] < 0 || o.shift[n] > 31) throw py::value_error("shift: expected values in [0, 31]");
    }
    if (M == 0) return true;

    const GemmKernelInfo ki = pb.info;
    const BPack bv = pb.view();
    const index_t lda = round_up(K, ki.group);
    const bool s16 = ki.layout == BLayout::S16Pair;
    // za' : the zero point in the uint8 (a') domain.
    const int32_t zap = a_kind == 1 ? za + 128 : za;
    // uint8 rows gathered by a row table are read in place by the inner loops that can (APack::rows)
    const bool implicit = gather && pb.path == GemmPath::Avx512Vnni && a_kind == 0 && !zb &&
                          (K / arows.taps) % ki.group == 0 && arows.taps <= kMaxImplicitTaps;
    // batch_minor is a hint with the same results: taken where the kernel reads the rows in place (and skips
    // padding); packing rows gathered pixel-major measured slower than image-major (AVX2, DCGAN 28x28)
    batch_minor = batch_minor && implicit;
    o.batch_minor = batch_minor;
    AlignedBuffer<uint8_t> abuf8;
    AlignedBuffer<int16_t> abuf16;
    if (s16) abuf16.resize(M * lda);
    else if (!implicit) abuf8.resize(M * lda);
    void* adst = s16 ? static_cast<void*>(abuf16.data) : static_cast<void*>(abuf8.data);
    std::vector<uint8_t> pad(implicit ? static_cast<std::size_t>(K / arows.taps) : 0, static_cast<uint8_t>(za));
    std::vector<int32_t> rowsum(zb ? M : 0), row_term(zb ? M : 0), col_corr(N);
    // implicit rows: per segment and column, za times the segment's weight sum (APack::pad_corr), columns padded
    // to whole panels (the kernels read a panel's columns at once)
    std::vector<int32_t> pad_corr;
    const index_t pad_corr_ld = round_up(N, ki.nr);
    if (implicit && !a_pad_sums_obj.is_none()) {
        const int32_t* ps = checked_data<int32_t>(a_pad_sums_obj.cast<py::array>(), "a_pad_sums", arows.taps * N);
        pad_corr.assign(static_cast<std::size_t>(arows.taps * pad_corr_ld), 0);
        for (index_t j = 0; j < arows.taps; ++j)
            for (index_t n = 0; n < N; ++n)
                pad_corr[j * pad_corr_ld + n] =
                    static_cast<int32_t>(static_cast<uint32_t>(za) * static_cast<uint32_t>(ps[j * N + n]));
    }
    std::atomic<bool> finite{true};
    {
        py::gil_scoped_release nogil;
        // 1. Activations: quantize (float input) and pack in one pass, row sums alongside.
        const index_t ptasks = task_count(M, kPackRows);
        // With a row table, row m is assembled from its segments (padding: the zero point, 0.0 for floats)
        // into a per-task buffer first; the rest of the pass is the same.
        const index_t esize = a_kind == 2 ? 4 : 1;
        const index_t seg = gather ? K / arows.taps : 0;
        std::vector<uint8_t> gbuf(gather ? ptasks * K * esize : 0);
        auto row_src = [&](index_t m, index_t t, uint8_t* into = nullptr) -> const void* {
            if (!gather) return static_cast<const uint8_t*>(pa) + m * lda_in * esize;
            const index_t img = batch_minor ? m % n_images : m / arows.rows;
            const index_t r = batch_minor ? m / n_images : m - img * arows.rows;
            uint8_t* dst = into ? into : gbuf.data() + t * K * esize;
            const uint8_t* base = static_cast<const uint8_t*>(pa) + img * a_image_stride * esize;
            for (index_t j = 0; j < arows.taps; ++j) {
                const int64_t off = arows.off[r * arows.taps + j];
                uint8_t* d = dst + j * seg * esize;
                if (off >= 0) std::memcpy(d, base + off * esize, static_cast<std::size_t>(seg * esize));
                else if (a_kind == 2) std::memset(d, 0, static_cast<std::size_t>(seg * esize));
                else std::memset(d, static_cast<int>(static_cast<uint8_t>(za)), static_cast<std::size_t>(seg));
            }
            return dst;
        };
        if (a_kind == 2) {
            QuantU8Fn qf = quantize_u8_fn();
            const QuantRun qr{in_scale, static_cast<float>(-za), static_cast<float>(a_qmax - za), za};
            std::vector<uint8_t> tmp(s16 ? ptasks * K : 0);
            auto pack_task = [&](index_t t) {
                const index_t m1 = std::min(M, (t + 1) * kPackRows);
                for (index_t m = t * kPackRows; m < m1; ++m) {
                    const float* x = static_cast<const float*>(row_src(m, t));
                    uint8_t* row8 = s16 ? tmp.data() + t * K : abuf8.data + m * lda;
                    if (!qf(x, row8, K, qr)) finite.store(false);
                    if (s16 || zb) {  // widen to int16 and/or sum the row
                        gemm_pack_a(ki.layout, row8, false, K, K, 0, 1,
                                    s16 ? static_cast<void*>(abuf16.data + m * lda) : static_cast<void*>(row8), lda,
                                    zb ? rowsum.data() + m : nullptr);
                    } else {  // quantized straight into the packed row: only the K padding is left
                        std::memset(row8 + K, 0, static_cast<std::size_t>(lda - K));
                    }
                }
            };
            if (M * K < kSerialPack) {
                for (index_t t = 0; t < ptasks; ++t) pack_task(t);
            } else {
                parallel_for(ptasks, pack_task);
            }
        } else if (implicit) {
            // nothing to pack
        } else if (gather) {
            auto pack_task = [&](index_t t) {
                const index_t m1 = std::min(M, (t + 1) * kPackRows);
                for (index_t m = t * kPackRows; m < m1; ++m) {
                    if (!s16 && a_kind == 0 && !zb) {  // uint8 bytes are the packed row: gather straight into it
                        uint8_t* d = abuf8.data + m * lda;
                        row_src(m, t, d);
                        std::memset(d + K, 0, static_cast<std::size_t>(lda - K));
                        continue;
                    }
                    void* d = s16 ? static_cast<void*>(abuf16.data + m * lda) : static_cast<void*>(abuf8.data + m * lda);
                    gemm_pack_a(ki.layout, row_src(m, t), a_kind == 1, K, K, 0, 1, d, lda,
                                zb ? rowsum.data() + m : nullptr);
                }
            };
            if (M * K < kSerialPack) {
                for (index_t t = 0; t < ptasks; ++t) pack_task(t);
            } else {
                parallel_for(ptasks, pack_task);
            }
        } else if (M * K < kSerialPack) {  // a copy this small costs less than waking the pool
            gemm_pack_a(ki.layout, pa, a_kind == 1, lda_in, K, 0, M, adst, lda, zb ? rowsum.data() : nullptr);
        } else {
            parallel_for(ptasks, [&](index_t t) {
                const index_t m0 = t * kPackRows, m1 = std::min(M, m0 + kPackRows);
                gemm_pack_a(ki.layout, pa, a_kind == 1, lda_in, K, m0, m1, adst, lda, zb ? rowsum.data() : nullptr);
            });
        }
        if (!finite.load()) return false;
        // 2. Folded per-call corrections (wrapping int32 arithmetic, see gemm.hpp).
        for (index_t n = 0; n < N; ++n) {
            uint32_t c = 0u - static_cast<uint32_t>(zap) * static_cast<uint32_t>(pb.colsum[n]);
            if (zb) c += static_cast<uint32_t>(K) * static_cast<uint32_t>(zap) * static_cast<uint32_t>(zb[n]);
            if (bias_i32) c += static_cast<uint32_t>(bias_i32[n]);
            col_corr[n] = static_cast<int32_t>(c);
        }
        o.col_corr = col_corr.data();
        if (zb) {
            for (index_t m = 0; m < M; ++m) row_term[m] = static_cast<int32_t>(0u - static_cast<uint32_t>(rowsum[m]));
            o.zb = zb;
            o.row_term = row_term.data();
        }
        // 3. Fixed tiling: MC rows x up to 256 columns per task.
        APack ap = implicit ? implicit_rows(pa, arows, K / arows.taps, a_image_stride, pad.data()) : APack{adst, lda};
        ap.batch_minor = batch_minor;
        ap.n_images = n_images;
        if (!pad_corr.empty()) {
            ap.pad_corr = pad_corr.data();
            ap.pad_corr_ld = pad_corr_ld;
        }
        BlockFn fn = block_fn(pb.path);
        for_each_block(M, std::max<index_t>(ki.mr, (64 / ki.mr) * ki.mr), bv.panels, ki.nr,
                       static_cast<double>(M) * N * K,
                       [&](index_t m0, index_t m1, index_t p0, index_t p1) { fn(bv, ap, o, m0, m1, p0, p1); });
    }
    return true;
}

// The col2im half of a transposed convolution, checked: geometry, tap array size, output (gemm.hpp). The
// per-channel scale and bias are tiled over one output row (the epilogue then runs on contiguous rows) into
// vectors this object owns.
struct Col2ImSetup {
    Col2ImCall c;
    std::vector<float> bias_t, scale_t;
};

void setup_col2im(Col2ImSetup& s, bool f32, index_t B, index_t H, index_t W, index_t Ho, index_t Wo, index_t kh,
                  index_t kw, index_t sh, index_t sw, index_t pt, index_t pl, py::array scale, py::array bias, int act,
                  float alpha, py::array out, float out_scale, int32_t out_zp, int32_t qmin, int32_t qmax) {
    if (B < 0 || H < 1 || W < 1 || Ho < 1 || Wo < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || pt < 0 || pl < 0)
        throw py::value_error("col2im: bad geometry");
    {  // every size product below must fit in index_t (128-bit check: no wrap-around can pass the size tests)
        const __int128 limit = static_cast<__int128>(1) << 48;
        const __int128 taps_in = static_cast<__int128>(B) * H * W * kh * kw * bias.size();
        const __int128 outs = static_cast<__int128>(B) * Ho * Wo * bias.size();
        if (taps_in > limit || outs > limit || H > limit || W > limit || Ho > limit || Wo > limit || pt > limit ||
            pl > limit || kh > (1 << 16) || kw > (1 << 16) || sh > (1 << 16) || sw > (1 << 16))
            throw py::value_error("col2im: sizes too large");
    }
    const index_t C = bias.size();
    if (C < 1) throw py::value_error("col2im: bias must not be empty");
    Col2ImCall& c = s.c;
    c.f32 = f32;
    c.P = B * H * W;
    Col2Im& g = c.g;
    g.H = H; g.W = W; g.Ho = Ho; g.Wo = Wo; g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.pt = pt; g.pl = pl; g.C = C;
    GemmOut& o = c.o;
    const float* pb = checked_data<float>(bias, "bias", C);
    if (f32 && !dtype_is<float>(out)) throw py::type_error("col2im: float32 taps give a float32 output");
    const float* ps = f32 ? pb : checked_data<float>(scale, "scale", C);
    s.bias_t.resize(static_cast<std::size_t>(Wo * C));
    s.scale_t.resize(static_cast<std::size_t>(Wo * C));
    for (index_t j = 0; j < Wo * C; ++j) {
        s.bias_t[j] = pb[j % C];
        s.scale_t[j] = ps[j % C];
    }
    o.bias = s.bias_t.data();
    o.scale = s.scale_t.data();
    if (act < 0 || act > 4) throw py::value_error("unknown activation");
    o.epi.act = static_cast<Activation>(act);
    o.epi.alpha = alpha;
    if (dtype_is<float>(out)) {
        o.mode = OutMode::Float;
        o.out = checked_data<float>(out, "out", B * Ho * Wo * C, true);
    } else {
        o.mode = OutMode::Quant;
        o.out_u8 = dtype_is<uint8_t>(out);
        if (o.out_u8) o.out = checked_data<uint8_t>(out, "out", B * Ho * Wo * C, true);
        else o.out = checked_data<int8_t>(out, "out", B * Ho * Wo * C, true);
        int lo = o.out_u8 ? 0 : -128, hi = o.out_u8 ? 255 : 127;
        if (qmin < lo || qmax > hi || qmin > qmax || out_zp < qmin || out_zp > qmax)
            throw py::value_error("output zero point / range outside the output dtype");
        o.epi.requantize = true;
        if (!(out_scale > 0.0f) || !(out_scale <= 3.4028234663852886e38f))
            throw py::value_error("col2im: the output scale must be finite and > 0");
        o.epi.out_scale = out_scale;
        o.epi.out_zp = out_zp;
        o.epi.qmin = qmin;
        o.epi.qmax = qmax;
    }
}

// col2im of a whole tap array: y int32 (B * H * W, kh * kw * C) -> out (B, Ho, Wo, C) float32 or uint8/int8,
// epilogue per channel; or y float32 -> out float32 (bias and activation; scale unused), with taps_transposed:
// y float32 (kh * kw * C, H * W * B) (input pixels batch-minor), the product of a sparse layer. Rows of the output
// are independent tasks (fixed chunks).
void col2im(py::array y, index_t B, index_t H, index_t W, index_t Ho, index_t Wo, index_t kh, index_t kw, index_t sh,
            index_t sw, index_t pt, index_t pl, py::array scale, py::array bias, int act, float alpha, py::array out,
            float out_scale, int32_t out_zp, int32_t qmin, int32_t qmax, bool taps_transposed) {
    const bool f32 = dtype_is<float>(y);
    if (taps_transposed && !f32) throw py::type_error("col2im: transposed taps must be float32");
    Col2ImSetup s;
    setup_col2im(s, f32, B, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, scale, bias, act, alpha, out, out_scale, out_zp,
                 qmin, qmax);
    const index_t C = s.c.g.C;
    s.c.y = f32 ? static_cast<const void*>(checked_data<float>(y, "y", B * H * W * kh * kw * C))
                : static_cast<const void*>(checked_data<int32_t>(y, "y", B * H * W * kh * kw * C));
    s.c.transposed = taps_transposed;
    py::gil_scoped_release nogil;
    // tasks: 8 output rows each, or with transposed taps one output row (all images) per channel tile
    const index_t rows = taps_transposed ? Ho * ceil_div(C, kCol2ImChannelsT) : B * Ho;
    const index_t per_task = taps_transposed ? 1 : 8;
    const Col2ImFn run = col2im_fn();
    auto task = [&](index_t t) { run(s.c, t * per_task, std::min(rows, (t + 1) * per_task)); };
    const index_t tasks = ceil_div(rows, per_task);
    if (rows * Wo * C < (1 << 14)) {
        for (index_t t = 0; t < tasks; ++t) task(t);
    } else {
        parallel_for(tasks, task);
    }
}

// An int8 transposed convolution as GEMM + col2im, fused: a uint8 (B * H * W, Cin) NHWC input (zero point za)
// times packed weights (Cin x kh * kw * C, symmetric) gives the int32 tap products, which col2im sums into out
// (B, Ho, Wo, C) with the Float or Quant epilogue (scale: input scale x weight scale per channel). Tasks are bands
// of output rows of one image: each computes the tap products of just the input rows its band needs into a
// per-thread buffer (a few hundred KB at most, so they are summed from cache instead of a batch-sized array in
// memory). Bands split an image only when there are few images; their edge rows are then computed by both
// neighbours (the same exact int32 values). Results equal gemm_run (mode Int32) + col2im bit for bit.
void gemm_col2im(const PackedB& pb, py::array a, int32_t za, index_t B, index_t H, index_t W, index_t Ho,
                 index_t Wo, index_t kh, index_t kw, index_t sh, index_t sw, index_t pt, index_t pl, py::array scale,
                 py::array bias, int act, float alpha, py::array out, float out_scale, int32_t out_zp, int32_t qmin,
                 int32_t qmax) {
    if (!path_runnable(pb.path))
        throw py::value_error(std::string("packed weights: inner loop '") + pb.info.name + "' cannot run on this CPU");
    Col2ImSetup s;
    setup_col2im(s, false, B, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, scale, bias, act, alpha, out, out_scale, out_zp,
                 qmin, qmax);
    const index_t C = s.c.g.C, K = pb.K, N = pb.N;
    if (N != kh * kw * C) throw py::value_error("gemm_col2im: the packed weights need kh * kw * C columns");
    if (za < 0 || za > 255) throw py::value_error("gemm_col2im: zero point outside [0, 255]");
    const uint8_t* pa = checked_data<uint8_t>(a, "a", B * H * W * K);
    if (B == 0) return;
    const GemmKernelInfo ki = pb.info;
    const BPack bv = pb.view();
    const index_t lda = round_up(K, ki.group);
    const bool s16 = ki.layout == BLayout::S16Pair;
    const index_t M = B * H * W;
    std::vector<int32_t> col_corr(static_cast<std::size_t>(N));
    for (index_t n = 0; n < N; ++n)  // wrapping int32 arithmetic (gemm.hpp); zb = 0 (symmetric weights)
        col_corr[n] = static_cast<int32_t>(0u - static_cast<uint32_t>(za) * static_cast<uint32_t>(pb.colsum[n]));
    // output bands: at least ~16 tasks when the batch is small, bands of >= 8 rows
    const index_t bands = std::max<index_t>(1, std::min<index_t>(ceil_div(16, B), Ho / 8));
    const index_t band_rows = ceil_div(Ho, bands);
    const Col2ImFn col2im_run = col2im_fn();
    const BlockFn gemm = block_fn(pb.path);
    py::gil_scoped_release nogil;
    // Packed activations: the uint8 rows as they are when the layout is bytes and K is whole groups.
    AlignedBuffer<uint8_t> abuf8;
    AlignedBuffer<int16_t> abuf16;
    const void* adata = pa;
    if (s16 || lda != K) {
        if (s16) abuf16.resize(M * lda);
        else abuf8.resize(M * lda);
        void* adst = s16 ? static_cast<void*>(abuf16.data) : static_cast<void*>(abuf8.data);
        parallel_for(task_count(M, kPackRows * 8), [&](index_t t) {
            const index_t m0 = t * kPackRows * 8, m1 = std::min(M, m0 + kPackRows * 8);
            gemm_pack_a(ki.layout, pa, false, K, K, m0, m1, adst, lda, nullptr);
        });
        adata = adst;
    }
    const std::size_t elem = s16 ? 2 : 1;
    auto task = [&](index_t t) {
        const index_t b = t / bands, oy0 = (t % bands) * band_rows, oy1 = std::min(Ho, oy0 + band_rows);
        if (oy0 >= oy1) return;
        // input rows reaching output rows [oy0, oy1): oy + pt = iy * sh + ky, 0 <= ky < kh
        const index_t lo_num = oy0 + pt - (kh - 1);
        const index_t iy0 = std::max<index_t>(0, lo_num <= 0 ? 0 : ceil_div(lo_num, sh));
        const index_t iy1 = std::min<index_t>(H, (oy1 - 1 + pt) / sh + 1);
        Col2ImCall c = s.c;
        thread_local std::vector<int32_t> taps;
        if (iy0 < iy1) {
            const index_t m0 = (b * H + iy0) * W, rows = (iy1 - iy0) * W;
            if (taps.size() < static_cast<std::size_t>(rows * N)) taps.resize(static_cast<std::size_t>(rows * N));
            GemmOut o;
            o.mode = OutMode::Int32;
            o.out = taps.data();
            o.ldo = N;
            o.col_corr = col_corr.data();
            const APack ap{static_cast<const uint8_t*>(adata) + m0 * lda * elem, lda};
            gemm(bv, ap, o, 0, rows, 0, bv.panels);
            c.y = taps.data();
            c.pix0 = m0;
        }
        col2im_run(c, b * Ho + oy0, b * Ho + oy1);
    };
    const index_t tasks = B * bands;
    if (static_cast<double>(M) * N * K < kSerialMacs) {
        for (index_t t = 0; t < tasks; ++t) task(t);
    } else {
        parallel_for(tasks, task);
    }
}

// float32 transposed-convolution phases as an implicit GEMM (kernels/convf32.hpp).
using ConvF32Fn = void (*)(const ConvF32Call&, index_t, index_t, index_t, index_t);
std::pair<ConvF32Fn, index_t> convf32_fn() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) return {avx512::convf32_block, avx512::convf32_nr()};
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa)) return {avx2::convf32_block, avx2::convf32_nr()};
#endif
    (void)isa;
    return {scalar::convf32_block, scalar::convf32_nr()};
}

// out rows (scattered by out_rows) = act(gathered a rows @ B + bias); b_packed: ceil(N / nr) panels of K x nr
// (nr = convf32_nr(), the active path's panel width).
void convf32_run(py::array b_packed, index_t K, index_t N, py::array a, py::object a_rows, index_t n_images,
                 index_t a_image_stride, py::array out, py::object out_rows, index_t out_image_stride, py::array bias,
                 int act, float alpha, bool batch_minor) {
    const auto [fn, nr] = convf32_fn();
    if (a_rows.is_none() || out_rows.is_none()) throw py::value_error("convf32: a_rows and out_rows are required");
    if (K < 1 || N < 1 || K > (index_t(1) << 30) || N > (index_t(1) << 30)) throw py::value_error("convf32: bad K / N");
    const index_t panels = ceil_div(N, nr);
    ConvF32Call c;
    c.K = K;
    c.N = N;
    c.b = checked_data<float>(b_packed, "b_packed", panels * K * nr);
    if (b_packed.size() != panels * K * nr) throw py::value_error("convf32: b_packed must be packed for this path");
    if (!(a.flags() & py::array::c_style) || !(out.flags() & py::array::c_style))
        throw py::value_error("convf32: a and out must be C-contiguous");
    const float* pa = checked_data<float>(a, "a");
    const index_t taps = py::array(a_rows).ndim() == 2 ? py::array(a_rows).shape(1) : 1;
    if (taps < 1 || taps > kMaxImplicitTaps || K % taps != 0)
        throw py::value_error("convf32: K must be 1.." + std::to_string(kMaxImplicitTaps) + " segments of equal size");
    const RowTable ar = checked_rows(a_rows, "a_rows", n_images, a_image_stride, K / taps, a.size(), true);
    const RowTable orows = checked_rows(out_rows, "out_rows", n_images, out_image_stride, N, out.size(), false);
    if (orows.rows != ar.rows || orows.taps != 1) throw py::value_error("convf32: one output offset per row");
    std::vector<float> zero(static_cast<std::size_t>(K / taps), 0.0f);
    c.a = implicit_rows(pa, ar, K / taps, a_image_stride, zero.data());
    c.a.batch_minor = batch_minor;  // rows pixel-major: a tile skips the padding segments of its pixel
    c.a.n_images = n_images;
    GemmOut& o = c.o;
    o.batch_minor = batch_minor;
    o.n_images = n_images;
    o.mode = OutMode::Float;
    o.out = checked_data<float>(out, "out", -1, true);
    o.out_rows = orows.off;
    o.rows_per_image = orows.rows;
    o.image_stride = out_image_stride;
    o.bias = checked_data<float>(bias, "bias", N);
    if (act < 0 || act > 4) throw py::value_error("unknown activation");
    o.epi.act = static_cast<Activation>(act);
    o.epi.alpha = alpha;
    const index_t M = n_images * ar.rows;
    if (M == 0) return;
    py::gil_scoped_release nogil;
    // 96 rows per task: a multiple of every path's MR
    for_each_block(M, 96, panels, nr, static_cast<double>(M) * N * K,
                   [&](index_t m0, index_t m1, index_t p0, index_t p1) { fn(c, m0, m1, p0, p1); });
}

// Inner-loop throughput: multiply-accumulates per second of the path's instruction sequence in registers.
double peak(int path_id, index_t iters) {
    GemmPath p = check_path(path_id);
    if (!path_runnable(p)) throw py::value_error("this CPU cannot run that inner loop");
    double (*fn)(int, index_t) = nullptr;
    int which = 0;
    switch (p) {
#ifdef PYQUANT_BUILD_AVX2
        case GemmPath::Avx2Exact: fn = avx2::peak_probe; break;
        case GemmPath::Avx2Fast: fn = avx2::peak_probe; which = 1; break;
#endif
#if defined(PYQUANT_BUILD_AVXVNNI) && defined(PYQUANT_BUILD_AVX2)
        case GemmPath::AvxVnni: fn = avxvnni::peak_probe; break;
#endif
#if defined(PYQUANT_BUILD_AVX512) && defined(PYQUANT_BUILD_AVX2)
        case GemmPath::Avx512Exact: fn = avx512::peak_probe; break;
#endif
#if defined(PYQUANT_BUILD_AVX512VNNI) && defined(PYQUANT_BUILD_AVX512)
        case GemmPath::Avx512Vnni: fn = avx512vnni::peak_probe; break;
#endif
        default: throw py::value_error("no probe for the scalar path");
    }
    py::gil_scoped_release nogil;
    fn(which, iters / 10 + 1);  // warm-up (clock ramp)
    auto t0 = std::chrono::steady_clock::now();
    double macs = fn(which, iters);
    auto t1 = std::chrono::steady_clock::now();
    return macs / std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace

void register_gemm(py::module_& m) {
    py::class_<PackedB>(m, "_PackedB", "Weights packed for one inner loop (private; see pyquant.PackedWeights).")
        .def_property_readonly("path", [](const PackedB& p) { return static_cast<int>(p.path); })
        .def_property_readonly("kernel", [](const PackedB& p) { return std::string(p.info.name); })
        .def_property_readonly("layout", [](const PackedB& p) {
            return std::string(p.info.layout == BLayout::S8Quad ? "int8" : "int16") + " panels of " +
                   std::to_string(p.info.nr) + " columns x groups of " + std::to_string(p.info.group) +
                   " k, micro-tile " + std::to_string(p.info.mr) + "x" + std::to_string(p.info.nr);
        })
        .def_property_readonly("K", [](const PackedB& p) { return p.K; })
        .def_property_readonly("N", [](const PackedB& p) { return p.N; })
        .def_property_readonly("n_corrections", [](const PackedB& p) { return p.n_corr; })
        .def_property_readonly("nbytes", &PackedB::nbytes);
    m.def("gemm_pack", &pack, py::arg("w"), py::arg("path"), py::arg("max_corrections"));
    m.def("gemm_paths", [] { return paths_for_active(); }, "(exact path, fast path or -1) for the active ISA.");
    m.def("gemm_path_name", [](int p) { return std::string(gemm_kernel_info(check_path(p)).name); });
    m.def("gemm_run", &run, py::arg("packed"), py::arg("a"), py::arg("a_kind"), py::arg("za"), py::arg("in_scale"),
          py::arg("a_qmax"), py::arg("zb"), py::arg("bias_i32"), py::arg("mode"), py::arg("out"), py::arg("scale"),
          py::arg("bias"), py::arg("act"), py::arg("alpha"), py::arg("out_scale"), py::arg("out_zp"),
          py::arg("qmin"), py::arg("qmax"), py::arg("mult"), py::arg("shift"), py::arg("a_rows") = py::none(),
          py::arg("n_images") = 1, py::arg("a_image_stride") = 0, py::arg("out_rows") = py::none(),
          py::arg("out_image_stride") = 0, py::arg("a_pad_sums") = py::none(), py::arg("batch_minor") = false);
    m.def("col2im", &col2im, py::arg("y"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"),
          py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("pt"), py::arg("pl"), py::arg("scale"),
          py::arg("bias"), py::arg("act"), py::arg("alpha"), py::arg("out"), py::arg("out_scale"), py::arg("out_zp"),
          py::arg("qmin"), py::arg("qmax"), py::arg("taps_transposed") = false);
    m.def("gemm_col2im", &gemm_col2im, py::arg("packed"), py::arg("a"), py::arg("za"), py::arg("B"), py::arg("H"),
          py::arg("W"), py::arg("Ho"), py::arg("Wo"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
          py::arg("pt"), py::arg("pl"), py::arg("scale"), py::arg("bias"), py::arg("act"), py::arg("alpha"),
          py::arg("out"), py::arg("out_scale"), py::arg("out_zp"), py::arg("qmin"), py::arg("qmax"));
    m.def("convf32_nr", [] { return convf32_fn().second; }, "panel width of the active float32 convolution path");
    m.def("convf32_run", &convf32_run, py::arg("b_packed"), py::arg("K"), py::arg("N"), py::arg("a"),
          py::arg("a_rows"), py::arg("n_images"), py::arg("a_image_stride"), py::arg("out"), py::arg("out_rows"),
          py::arg("out_image_stride"), py::arg("bias"), py::arg("act"), py::arg("alpha"), py::arg("batch_minor") = false);
    m.def("gemm_peak", &peak, py::arg("path"), py::arg("iters"));
    m.def("fixed_point_requantize", [](py::array acc, py::array mult, py::array shift, int32_t zp, int32_t qmin,
                                       int32_t qmax, py::array out, index_t channels) {
        // acc: int32 (rows x channels), per-channel mult/shift; out int8/uint8 of the same size.
        const int32_t* pa = checked_data<int32_t>(acc, "acc");
        const index_t size = acc.size();
        if (channels < 1 || size % channels != 0) throw py::value_error("acc: size not a multiple of channels");
        const int32_t* pm = checked_data<int32_t>(mult, "multiplier", channels);
        const int32_t* ps = checked_data<int32_t>(shift, "shift", channels);
        for (index_t c = 0; c < channels; ++c)
            if (ps[c] < 0 || ps[c] > 31) throw py::value_error("shift: expected values in [0, 31]");
        bool u8 = dtype_is<uint8_t>(out);
        void* po = u8 ? static_cast<void*>(checked_data<uint8_t>(out, "out", size, true))
                      : static_cast<void*>(checked_data<int8_t>(out, "out", size, true));
        int lo = u8 ? 0 : -128, hi = u8 ? 255 : 127;
        if (qmin < lo || qmax > hi || qmin > qmax || zp < qmin || zp > qmax)
            throw py::value_error("output zero point / range outside the output dtype");
        py::gil_scoped_release nogil;
        for (index_t i = 0; i < size; ++i) {
            const index_t c = i % channels;
            int32_t q = fixed_point_requantize(pa[i], pm[c], ps[c], zp, qmin, qmax);
            if (u8) static_cast<uint8_t*>(po)[i] = static_cast<uint8_t>(q);
            else static_cast<int8_t*>(po)[i] = static_cast<int8_t>(q);
        }
    });
}

}  // namespace pyquant
