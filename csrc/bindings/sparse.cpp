// Sparse CSR x dense bindings: check the arrays (and the CSR structure, O(nnz), unless the caller passes
// arrays pyquant validated and made immutable), pack X into column strips once per call, and run fixed tasks
// (row blocks x column strips) on the pool. Each output element is computed by exactly one task, in CSR
// storage order, so neither the thread count nor the schedule changes a bit.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "bindings/bindings.hpp"
#include "dispatch.hpp"
#include "kernels/spmm.hpp"
#include "parallel.hpp"
#include "transpose.hpp"

namespace pyquant {
namespace {

// Packed int8 X of each path (spmm.hpp): int16 strips, uint8 quads of AVX-512 VNNI (whose CSR kernel takes up
// to kSpmmVnniMaxStrips strips per task), uint8 quads in 32-column halves (AVX-VNNI).
enum class S8Pack { None, S16, U8Vnni, U8VnniHalves };

struct SpmmOps {
    decltype(&scalar::spmm_f32) f32;
    decltype(&scalar::spmm_s8) s8;
    decltype(&scalar::spmm_pack_s8) pack_s8;
    index_t strip_f32, strip_s8;  // strip 0: no packing (scalar reads X in place)
    S8Pack pack;
    decltype(&avx512vnni::spmm_s8_sell) s8_sell = nullptr;  // sliced ELL chunks (null: CSR rows only)
};

SpmmOps spmm_ops() {
    Isa isa = active_isa();
#ifdef PYQUANT_BUILD_AVX512
    if (has_avx512(isa)) {
#ifdef PYQUANT_BUILD_AVX512VNNI
        if (isa == Isa::Avx512Vnni)
            return {avx512::spmm_f32, avx512vnni::spmm_s8, avx512vnni::spmm_pack_s8,
                    kSpmmStripAvx512F32, kSpmmStripVnniS8, S8Pack::U8Vnni, avx512vnni::spmm_s8_sell};
#endif
        return {avx512::spmm_f32, avx512::spmm_s8, avx512::spmm_pack_s8,
                kSpmmStripAvx512F32, kSpmmStripAvx512S8, S8Pack::S16, avx512::spmm_s8_sell};
    }
#endif
#ifdef PYQUANT_BUILD_AVXVNNI
    if (isa == Isa::AvxVnni)
        return {avx2::spmm_f32, avxvnni::spmm_s8, avxvnni::spmm_pack_s8, kSpmmStripAvx2F32,
                kSpmmStripAvxVnniS8, S8Pack::U8VnniHalves, avxvnni::spmm_s8_sell};
#endif
#ifdef PYQUANT_BUILD_AVX2
    if (has_avx2(isa))
        return {avx2::spmm_f32, avx2::spmm_s8, avx2::spmm_pack_s8, kSpmmStripAvx2F32,
                kSpmmStripAvx2S8, S8Pack::S16, avx2::spmm_s8_sell};
#endif
    (void)isa;
    return {scalar::spmm_f32, scalar::spmm_s8, scalar::spmm_pack_s8, 0, 0, S8Pack::None};
}

constexpr index_t kScalarCols = 64;       // column block of the scalar path's tasks
constexpr index_t kNnzPerTask = 1 << 13;  // target stored entries per task and strip

constexpr const char* kSellMalformed = "sell: malformed chunk structure";

// The whole of src (R x C) into dst (C x R): blocks of 32 rows on the thread pool.
template <class T>
void transpose_blocks(const T* ps, T* pd, index_t R, index_t C) {
    constexpr index_t B = 32;
    auto task = [&](index_t t) {
        const index_t r0 = t * B;
        transpose_into(ps + r0 * C, C, std::min(B, R - r0), C, pd + r0, R);
    };
    const index_t tasks = ceil_div(R, B);
    if (R * C * static_cast<index_t>(sizeof(T)) < (1 << 18)) {
        for (index_t t = 0; t < tasks; ++t) task(t);
    } else {
        parallel_for(tasks, task);
    }
}


// Rows per task: fixed by the matrix alone (never by the thread count), a multiple of 2 (row pairs).
index_t rows_per_block(index_t nrows, index_t nnz) {
    if (nrows <= 0) return 1;
    index_t per = nnz > 0 ? (kNnzPerTask * nrows) / nnz : nrows;
    per = std::max<index_t>(8, std::min<index_t>(per, nrows));
    return round_up(per, 2);
}

// Packed X of at least 2 MB (float32 strips of a W with thousands of columns): 2 MB aligned and advised as
// transparent huge pages. The kernels read X rows at random inside a strip of 1-2 MB; with 4 KB pages most of
// those reads also miss the first-level TLB.
struct HugeBuffer {
    float* data = nullptr;
    HugeBuffer() = default;
    HugeBuffer(const HugeBuffer&) = delete;
    HugeBuffer& operator=(const HugeBuffer&) = delete;
    ~HugeBuffer() { std::free(data); }
    void resize(std::size_t n) {
        constexpr std::size_t kHuge = std::size_t(1) << 21;
        const std::size_t bytes = (n * sizeof(float) + kHuge - 1) / kHuge * kHuge;
        data = static_cast<float*>(std::aligned_alloc(kHuge, bytes));
        if (!data) throw std::bad_alloc();
        madvise(data, bytes, MADV_HUGEPAGE);  // advice only: without THP the buffer simply keeps 4 KB pages
    }
};

// One round on the pool for packing and computing: tasks [0, npack) pack row chunks of the strips, the rest
// compute, and a compute task of strip s first waits until all chunks of s are packed. Tasks are claimed in
// index order, so every pack task is already running when anyone waits (no deadlock), and a call pays for
// one wake-up of the pool instead of two.
class PackedStrips {
public:
    PackedStrips(index_t nstrips, index_t chunks) : chunks_(chunks), done_(new std::atomic<index_t>[static_cast<std::size_t>(nstrips > 0 ? nstrips : 1)]) {
        for (index_t i = 0; i < nstrips; ++i) done_[i].store(0, std::memory_order_relaxed);
    }
    void mark(index_t s) { done_[s].fetch_add(1, std::memory_order_release); }
    void wait(index_t s) {
        while (done_[s].load(std::memory_order_acquire) < chunks_) std::this_thread::yield();
    }

private:
    index_t chunks_;
    std::unique_ptr<std::atomic<index_t>[]> done_;
};

// X rows per packing task (fixed, about 16 K values).
index_t rows_per_pack(index_t width) { return std::max<index_t>(1, (index_t(1) << 14) / std::max<index_t>(width, 1)); }

struct Csr {
    CsrView view;
    index_t nnz;
};

Csr checked_csr(const py::array& indptr, const py::array& indices, index_t nrows, index_t ncols, bool validated) {
    if (nrows < 0 || ncols < 0) throw py::value_error("shape: dimensions must be >= 0");
    if (ncols > INT32_MAX) throw py::value_error("shape: ncols must be < 2**31");
    const int64_t* ip = checked_data<int64_t>(indptr, "indptr", nrows + 1);
    index_t nnz = static_cast<index_t>(indices.size());
    const int32_t* ix = checked_data<int32_t>(indices, "indices", nnz);
    // `validated`: pyquant checked these arrays when it built them and they are immutable (backed by bytes);
    // anything else gets the full O(nnz) check before a kernel can read through it.
    if (validated && !indptr.writeable() && !indices.writeable()) {
        if (ip[0] != 0 || ip[nrows] != nnz) throw py::value_error("CSR: indptr does not match nnz");
    } else if (const char* msg = csr_check(ip, ix, nrows, ncols, nnz)) {
        throw py::value_error(std::string("CSR: ") + msg);
    }
    return {{ip, ix, nrows, ncols}, nnz};
}

// The sliced ELL arrays (rows, ptr, offsets, data) pyquant built from a validated matrix and froze: sizes and
// the ends of ptr are checked here, each chunk's structure (sell_chunk_fits) by the kernel that reads it; the
// entries are validated columns (as X row offsets) or padding at column 0. Arrays that are not frozen are not
// used (null view: CSR rows).
SellView checked_sell(const py::object& arrays, index_t nrows, index_t ncols) {
    py::tuple t = arrays.cast<py::tuple>();
    if (t.size() != 4) throw py::value_error("sell: expected (rows, ptr, offsets, data)");
    py::array rows = t[0].cast<py::array>(), ptr = t[1].cast<py::array>(), idx = t[2].cast<py::array>(),
              dat = t[3].cast<py::array>();
    if (rows.writeable() || ptr.writeable() || idx.writeable() || dat.writeable()) return {};
    const index_t nch = ceil_div(nrows, kSellRows), total = static_cast<index_t>(idx.size());
    SellView v{checked_data<int64_t>(rows, "sell rows", nch * kSellRows), checked_data<int64_t>(ptr, "sell ptr", nch + 1),
               checked_data<int32_t>(idx, "sell offsets", total), checked_data<int8_t>(dat, "sell data", total), nch,
               total, nrows, ncols};
    if (v.ptr[0] != 0 || v.ptr[nch] != total) throw py::value_error(kSellMalformed);
    return v;
}

// The int8 kernels' output and epilogue from the binding's arguments, checked: a float32 out of `size` values,
// or an int8 / uint8 one requantized with (out_scale, out_zp) into [qmin, qmax].
SpmmS8Out checked_s8_out(const py::array& out, index_t size, int act, float alpha, float out_scale, int32_t out_zp,
                         int32_t qmin, int32_t qmax, Epilogue& e) {
    if (act < 0 || act > 4) throw py::value_error("activation: unknown code");
    e.act = static_cast<Activation>(act);
    e.alpha = alpha;
    SpmmS8Out o{nullptr, nullptr, false};
    if (dtype_is<float>(out)) {
        o.y_f32 = checked_data<float>(out, "out", size, true);
        return o;
    }
    o.is_u8 = dtype_is<uint8_t>(out);
    const int lo = o.is_u8 ? 0 : -128, hi = o.is_u8 ? 255 : 127;
    if (qmin < lo || qmax > hi || qmin > qmax || out_zp < qmin || out_zp > qmax)
        throw py::value_error("out: qmin/qmax/zero point outside the output dtype");
    o.y_q = o.is_u8 ? static_cast<void*>(checked_data<uint8_t>(out, "out", size, true))
                    : static_cast<void*>(checked_data<int8_t>(out, "out", size, true));
    if (!(out_scale > 0.0f) || !(out_scale <= 3.4028234663852886e38f))
        throw py::value_error("out_scale: must be finite and > 0");
    e.requantize = true;
    e.out_scale = out_scale;
    e.out_zp = out_zp;
    e.qmin = qmin;
    e.qmax = qmax;
    return o;
}

// A task's tile of the int8 kernels' output: rows [row0, row0 + rows) x columns [col0, col0 + width) of Y in a
// per-thread buffer (the kernels write it through SpmmS8Out::at); store_transposed then moves it into Y.
SpmmS8Out s8_tile(const SpmmS8Out& o, index_t rows, index_t width, index_t row0, index_t col0) {
    thread_local AlignedBuffer<uint8_t> buf;
    const index_t ld = round_up(width, 16);
    const std::size_t bytes = static_cast<std::size_t>(rows * ld) * (o.y_f32 ? sizeof(float) : 1);
    if (buf.size < bytes) buf.resize(bytes);
    SpmmS8Out t = o;
    if (o.y_f32) t.y_f32 = reinterpret_cast<float*>(buf.data);
    else t.y_q = buf.data;
    t.ld = ld;
    t.row0 = row0;
    t.col0 = col0;
    return t;
}

// Tile columns [c, c + cols) of its first `rows` rows, transposed into o's array at element offset dst (row stride
// ld_dst): float32, or the requantized bytes.
void store_transposed(const SpmmS8Out& t, index_t rows, index_t c, index_t cols, const SpmmS8Out& o, index_t dst,
                      index_t ld_dst) {
    if (o.y_f32)
        transpose_into(t.y_f32 + (c - t.col0), t.ld, rows, cols, o.y_f32 + dst, ld_dst);
    else
        transpose_into(static_cast<const uint8_t*>(t.y_q) + (c - t.col0), t.ld, rows, cols,
                       static_cast<uint8_t*>(o.y_q) + dst, ld_dst);
}

index_t checked_cols(const py::array& x, index_t k) {
    if (x.ndim() != 2) throw py::value_error("x: expected a 2-D array");
    if (x.shape(0) != k) throw py::value_error("x: expected " + std::to_string(k) + " rows (W's ncols)");
    return x.shape(1);
}

}  // namespace

void transpose(py::array src, py::array dst) {
    if (src.ndim() != 2 || dst.ndim() != 2) throw py::value_error("transpose: expected 2-D arrays");
    const index_t R = src.shape(0), C = src.shape(1);
    if (dst.shape(0) != C || dst.shape(1) != R) throw py::value_error("transpose: dst must have the transposed shape");
    const bool f32 = dtype_is<float>(src);
    if (!f32 && !dtype_is<uint8_t>(src)) throw py::type_error("transpose: expected float32 or uint8 arrays");
    const std::size_t esize = f32 ? 4 : 1;
    const void* ps = f32 ? static_cast<const void*>(checked_data<float>(src, "src"))
                         : static_cast<const void*>(checked_data<uint8_t>(src, "src"));
    void* pd = f32 ? static_cast<void*>(checked_data<float>(dst, "dst", -1, true))
                   : static_cast<void*>(checked_data<uint8_t>(dst, "dst", -1, true));
    const auto* s0 = static_cast<const char*>(ps);
    const auto* d0 = static_cast<const char*>(pd);
    const std::size_t bytes = static_cast<std::size_t>(R * C) * esize;
    if (d0 < s0 + bytes && s0 < d0 + bytes) throw py::value_error("transpose: dst overlaps src");
    py::gil_scoped_release nogil;
    if (f32) transpose_blocks(static_cast<const float*>(ps), static_cast<float*>(pd), R, C);
    else transpose_blocks(static_cast<const uint8_t*>(ps), static_cast<uint8_t*>(pd), R, C);
}

void register_sparse(py::module_& m) {
    m.def("transpose", &transpose, py::arg("src"), py::arg("dst"));
    m.attr("SELL_ROWS") = kSellRows;      // rows per sliced ELL chunk (pyquant.sparse builds that layout)
    m.attr("SELL_STRIDE") = kSellStride;  // its X row offsets: column * SELL_STRIDE
    m.attr("SELL_WINDOW") = kSellWindow;  // its rows sorted by length within windows of this many rows
    m.def("csr_check", [](py::array indptr, py::array indices, index_t nrows, index_t ncols) {
        checked_csr(indptr, indices, nrows, ncols, false);
    });

    m.def("spmm_f32", [](py::array indptr, py::array indices, py::array data, index_t nrows, index_t ncols,
                         py::array x, py::array out, bool validated) {
        Csr c = checked_csr(indptr, indices, nrows, ncols, validated);
        const float* pd = checked_data<float>(data, "data", c.nnz);
        index_t n = checked_cols(x, ncols);
        const float* px = checked_data<float>(x, "x");
        float* py_ = checked_data<float>(out, "out", nrows * n, true);
        if (nrows == 0 || n == 0) return;
        py::gil_scoped_release nogil;
        SpmmOps ops = spmm_ops();
        index_t strip = ops.strip_f32 ? ops.strip_f32 : kScalarCols;
        // AVX-512: 128-column strips (8 vectors per stored entry, half the passes over W) when X has more than
        // 64 columns and its strips live in L2 anyway: a 64-column strip would not fit L1 (>= 256 rows) and a
        // 128-column one still fits L2 comfortably (<= 1024 rows, 512 KB), and W is sparse enough (density
        // <= 30%). Measured at 1024 x 1024, X 256 wide: +10% at 75% sparsity, +15-30% at 90-95%, but -25% at
        // 50%. The strip width never changes a result (each element's sum order is the same).
        if (strip == kSpmmStripAvx512F32 && n > strip && ncols >= 256 && ncols <= 1024 &&
            c.nnz * 10 <= nrows * ncols * 3)
            strip = kSpmmStripAvx512F32Wide;
        const index_t nstrips = ceil_div(n, strip), rpb = rows_per_block(nrows, c.nnz);
        const index_t nblocks = ceil_div(nrows, rpb);
        // X already has the strip layout when it is exactly one strip wide and 64-byte aligned: no copy. (The
        // kernels load unaligned, but loads that split cache lines made a misaligned X ~20% slower here.)
        const bool pack = ops.strip_f32 && !(n == strip && reinterpret_cast<std::uintptr_t>(px) % kAlign == 0);
        AlignedBuffer<float> packed_small;
        HugeBuffer packed_huge;
        const std::size_t pack_n = pack ? static_cast<std::size_t>(nstrips * ncols * strip) : 0;
        const bool huge = pack_n * sizeof(float) >= (std::size_t(1) << 21);
        if (pack && huge) packed_huge.resize(pack_n);
        else if (pack) packed_small.resize(pack_n);
        struct { float* data; } packed{huge ? packed_huge.data : packed_small.data};
        const index_t rpp = rows_per_pack(strip), nchunks = pack ? ceil_div(ncols, rpp) : 0, npack = nstrips * nchunks;
        PackedStrips ready(nstrips, nchunks);
        parallel_for(npack + nstrips * nblocks, [&](index_t t) {
            if (t < npack) {
                index_t s = t / nchunks, i0 = (t % nchunks) * rpp;
                spmm_pack_f32(px, n, strip, s, i0, std::min(ncols, i0 + rpp), packed.data + s * ncols * strip);
                ready.mark(s);
                return;
            }
            t -= npack;
            index_t s = t / nblocks, b = t % nblocks;
            index_t r0 = b * rpb, r1 = std::min(nrows, r0 + rpb), c0 = s * strip;
            index_t width = std::min(strip, n - c0);
            ready.wait(s);
            const float* xs = pack ? packed.data + s * ncols * strip : px;
            ops.f32(c.view, pd, xs, pack ? strip : n, n, r0, r1, c0, width, py_);
        });
    });

    // x: float32, quantized here per tensor with (x_scale, x_zp) into uint8 / int8 (section-1 rule: one float32
    // division by x_scale per element, the quantize kernels), then packed for the active path.
    m.def("spmm_s8", [](py::array indptr, py::array indices, py::array data, py::array row_scale, float x_scale, index_t nrows,
                        index_t ncols, py::array x, int32_t x_zp, bool x_u8, py::object bias,
                        int act, float alpha, py::array out, float out_scale, int32_t out_zp, int32_t qmin,
                        int32_t qmax, bool validated, py::object row_sums, int64_t max_abs_row_sum,
                        py::object sell_arrays, bool x_t, bool y_t) {
        Csr c = checked_csr(indptr, indices, nrows, ncols, validated);
        const int8_t* pd = checked_data<int8_t>(data, "data", c.nnz);
        const float* ps = checked_data<float>(row_scale, "row_scale", nrows);
        const float* pb = nullptr;
        if (!bias.is_none()) pb = checked_data<float>(bias.cast<py::array>(), "bias", nrows);
        // x_t: X given as X^T (n x ncols), read by the pack tasks through transposed tiles; y_t: Y stored as Y^T
        // (n x nrows), tiles of Y written by the compute tasks and then stored transposed. Both: the layout of a
        // Linear layer (Y^T = X^T W^T).
        index_t n = 0;
        if (x_t) {
            if (x.ndim() != 2 || x.shape(1) != ncols)
                throw py::value_error("x: expected a 2-D array of " + std::to_string(ncols) + " columns (W's ncols)");
            n = x.shape(0);
        } else {
            n = checked_cols(x, ncols);
        }
        const float* px = checked_data<float>(x, "x");
        if (n == 1) x_t = y_t = false;  // one column: X^T and X, Y^T and Y have the same memory layout
        const int32_t xqmin = x_u8 ? 0 : -128, xqmax = x_u8 ? 255 : 127;
        if (x_zp < xqmin || x_zp > xqmax) throw py::value_error("x_zero_point: outside the range of x's dtype");
        if (!(x_scale > 0.0f) || !(x_scale < 3.4e38f)) throw py::value_error("x_scale: must be finite and > 0");
        Epilogue e;
        SpmmS8Out o = checked_s8_out(out, nrows * n, act, alpha, out_scale, out_zp, qmin, qmax, e);
        o.ld = n;
        // Per-row sums of w (and the largest sum of |w|) cached by pyquant for its immutable matrices.
        const int64_t* prs = nullptr;
        if (validated && !row_sums.is_none() && !data.writeable() && max_abs_row_sum >= 0) {
            py::array rs = row_sums.cast<py::array>();
            if (!rs.writeable()) prs = checked_data<int64_t>(rs, "row_sums", nrows);
        }
        // Short rows as sliced ELL chunks (built and frozen by pyquant from this validated matrix; only the
        // chunk structure is checked here, O(nchunks)); used by the paths that have a chunk kernel.
        SellView sell{};
        if (validated && !sell_arrays.is_none() && !data.writeable()) sell = checked_sell(sell_arrays, nrows, ncols);
        if (nrows == 0 || n == 0) return;
        bool overflow = false, finite = true, sell_fits = true;
        {
            py::gil_scoped_release nogil;
            SpmmOps ops = spmm_ops();
            const index_t strip = ops.strip_s8 ? ops.strip_s8 : kScalarCols;
            const index_t nstrips = ceil_div(n, strip);
            // Sliced ELL chunks, strip by strip. On AVX-512 VNNI only while X has fewer strips than a CSR strip
            // group: from 4 strips on, the CSR kernel reading each stored entry once for 4 strips measured 3-6%
            // faster, with 1-3 strips sliced ELL 1.05-1.6x faster (W 12544 x 100 at 90 and 95%, X 64-256 wide).
            const bool use_sell = sell.rows && ops.s8_sell && prs &&
                                  (ops.pack != S8Pack::U8Vnni || nstrips < kSpmmVnniMaxStrips);
            if (sell.rows && !use_sell)  // the kernels check the chunks they read; these would not be read
                for (index_t c = 0; c < sell.nchunks; ++c) sell_fits &= sell_chunk_fits(sell, c);
            // VNNI CSR rows: compute tasks over groups of up to kSpmmVnniMaxStrips strips while the group's packed
            // X stays within kSpmmVnniGroupBytes (fixed by the shapes, never by the thread count).
            index_t gs = 1;
            if (ops.pack == S8Pack::U8Vnni && !use_sell)  // (the sliced ELL kernel takes one strip)
                while (gs < kSpmmVnniMaxStrips && gs < nstrips && 2 * gs * ncols * strip <= kSpmmVnniGroupBytes)
                    gs *= 2;
            // tasks of about the same work whatever gs (finer tasks balance two threads better); with sliced
            // ELL chunks, blocks of rpb / kSellRows chunks
            // (sliced ELL blocks of whole windows: a block's rows are then exactly the rows of its windows)
            const index_t rpb = rows_per_block(nrows, c.nnz * gs);
            const index_t cpb = round_up(ceil_div(rpb, kSellRows), kSellWindow / kSellRows);
            const index_t nblocks = use_sell ? ceil_div(sell.nchunks, cpb) : ceil_div(nrows, rpb);
            // Exactness: every partial sum of row r is bounded by sum_k |w_k| * max|xq - zp| < 2^31.
            const int64_t max_x = std::max(x_zp - xqmin, xqmax - x_zp);
            AlignedBuffer<int64_t> own_sums;  // row sums when pyquant did not supply cached ones
            const int64_t* row_sums = prs;
            if (prs) {
                overflow = max_abs_row_sum * max_x > INT32_MAX;
            } else {  // arrays pyquant did not freeze: one pass for the row sums and the bound
                own_sums.resize(static_cast<std::size_t>(nrows));
                std::vector<int64_t> block_max(static_cast<std::size_t>(nblocks), 0);
                parallel_for(nblocks, [&](index_t b) {
                    index_t r0 = b * rpb, r1 = std::min(nrows, r0 + rpb);
                    int64_t mx = 0;
                    for (index_t r = r0; r < r1; ++r) {
                        int64_t sa = 0, sw = 0;
                        for (int64_t k = c.view.indptr[r]; k < c.view.indptr[r + 1]; ++k) {
                            int32_t v = pd[k];
                            sw += v;
                            sa += v < 0 ? -v : v;
                        }
                        mx = std::max(mx, sa);
                        own_sums[r] = sw;
                    }
                    block_max[b] = mx;
                });
                for (int64_t v : block_max) overflow |= v * max_x > INT32_MAX;
                row_sums = own_sums.data;
            }
            if (!overflow) {
                // One round: pack tasks quantize X's columns (section-1 rule, the quantize kernels) into the
                // active path's strips (scalar: all of X quantized in place, row-major), then compute tasks.
                QuantRun qp{x_scale, static_cast<float>(xqmin - x_zp), static_cast<float>(xqmax - x_zp), x_zp};
                std::atomic<bool> fin{true}, sell_ok{true};
                const bool packed = ops.strip_s8 != 0;
                const std::size_t elem = ops.pack == S8Pack::S16 ? sizeof(int16_t) : 1;
                AlignedBuffer<uint8_t> xbuf(static_cast<std::size_t>(packed ? nstrips * ncols * strip : ncols * n) * elem);
                const index_t pw = packed ? strip : n, rpp = rows_per_pack(pw), nchunks = ceil_div(ncols, rpp);
                const index_t nps = packed ? nstrips : 1, npack = nps * nchunks;
                PackedStrips ready(nps, nchunks);
                const index_t ngroups = ceil_div(nstrips, gs);
                parallel_for(npack + ngroups * nblocks, [&](index_t t) {
                    if (t < npack) {
                        index_t s = t / nchunks, i0 = (t % nchunks) * rpp, i1 = std::min(ncols, i0 + rpp);
                        index_t c0 = packed ? s * strip : 0, w = packed ? std::min(strip, n - c0) : n;
                        uint8_t* dst = xbuf.data + (packed ? static_cast<std::size_t>(s * ncols * strip) * elem : 0);
                        bool ok = true;
                        if (x_t) {  // rows [i0, i1) of X's columns [c0, c0 + w), taken from X^T
                            thread_local AlignedBuffer<float> xt;
                            if (xt.size < static_cast<std::size_t>((i1 - i0) * w)) xt.resize((i1 - i0) * w);
                            transpose_into(px + c0 * ncols + i0, ncols, w, i1 - i0, xt.data, w);
                            ok = ops.pack_s8(xt.data, w, 0, w, 0, i1 - i0, qp, x_u8, x_zp,
                                             dst + static_cast<std::size_t>(i0 * pw) * elem);
                        } else {
                            ok = ops.pack_s8(px, n, c0, w, i0, i1, qp, x_u8, x_zp, dst);
                        }
                        if (!ok) fin.store(false);
                        ready.mark(s);
                        return;
                    }
                    t -= npack;
                    index_t g = t / nblocks, b = t % nblocks, s = g * gs;
                    index_t r0 = b * rpb, r1 = std::min(nrows, r0 + rpb), c0 = s * strip;
                    index_t width = std::min(gs * strip, n - c0);
                    for (index_t u = s; u < std::min(nstrips, s + gs); ++u) ready.wait(packed ? u : 0);
                    const std::size_t off = packed ? static_cast<std::size_t>(s * ncols * strip) * elem : 0;
                    const index_t ch0 = b * cpb, ch1 = std::min(sell.nchunks, (b + 1) * cpb);
                    if (use_sell) {  // the block's rows: its windows
                        r0 = ch0 * kSellRows;
                        r1 = std::min(nrows, ch1 * kSellRows);
                    }
                    auto compute = [&](index_t q0, index_t q1, index_t d0, index_t d1, const SpmmS8Out& to) {
                        if (use_sell) {
                            if (!ops.s8_sell(sell, xbuf.data + off, x_u8, x_zp, n, d0, d1, c0, width, ps, x_scale, pb,
                                             row_sums, e, to))
                                sell_ok.store(false);
                        } else {
                            ops.s8(c.view, pd, xbuf.data + off, x_u8, x_zp, n, q0, q1, c0, width, ps, x_scale, pb,
                                   row_sums, e, to);
                        }
                    };
                    if (!y_t) return compute(r0, r1, ch0, ch1, o);
                    // Y^T: tiles of one window of rows (kSellWindow; sliced ELL chunks hold exactly their window's
                    // rows), each stored transposed while it is still in L1 (a whole block's tile went to L2 and
                    // back: the transposed store took as long as the products)
                    for (index_t q0 = r0; q0 < r1; q0 += kSellWindow) {
                        const index_t q1 = std::min(r1, q0 + kSellWindow);
                        const index_t d0 = ch0 + (q0 - r0) / kSellRows;
                        const index_t d1 = std::min(ch1, d0 + kSellWindow / kSellRows);
                        const SpmmS8Out to = s8_tile(o, q1 - q0, width, q0, c0);
                        // a tile holds rows [q0, q1) only: every row of its chunks must be one of them
                        for (index_t i = d0 * kSellRows; use_sell && i < d1 * kSellRows; ++i)
                            if (sell.rows[i] != -1 && (sell.rows[i] < q0 || sell.rows[i] >= q1)) {
                                sell_ok.store(false);
                                return;
                            }
                        compute(q0, q1, d0, d1, to);
                        store_transposed(to, q1 - q0, c0, width, o, c0 * nrows + q0, nrows);
                    }
                });
                finite = fin.load();
                sell_fits &= sell_ok.load();
            }
        }
        if (overflow)
            throw py::value_error("int32 overflow: a row's sum of |w| times max|x - zero_point| exceeds 2**31 - 1");
        if (!finite) throw py::value_error("x: NaN or Inf");
        if (!sell_fits) throw py::value_error(kSellMalformed);
    });

    // A sparse int8 transposed convolution computed directly, phase by phase, with no tap-product array: X (the
    // float32 NHWC input, B x H x W x Cin) is quantized per tensor (x_scale, x_zp, uint8) and packed batch-minor
    // as a "virtual" matrix of V = Hp * Wp * Cin rows (padded input pixel, channel) x bands * B columns (virtual
    // images), padding pixels at the zero point. Virtual image g * B + b is image b shifted left by g * band_shift
    // input columns: with fewer than 64 images, the bands fill the kernels' strips (each band computes its own
    // columns of the output). Each phase is a CSR matrix over the Cout output channels whose column indices are
    // row offsets into that matrix (tap shift and channel), so the CSR kernels compute one output pixel of the
    // phase for a strip of virtual images from the X rows at its base row plus those offsets: exact int32 sums
    // over all of the pixel's taps, then the fused epilogue, into a tile (Cout x virtual images) stored
    // transposed into out (B x Ho x Wo x Cout, float32 or requantized uint8). phases: [(indptr, offsets, data,
    // row_sums, max_abs_row_sum, base_rows, out_pixels, bands_valid)]: base_rows[i] the virtual row of (band 0's)
    // phase pixel i, out_pixels[i] its output pixel oy * Wo + ox, bands_valid[i] the bands in which it exists
    // (band g's pixel is out_pixels[i] + g * band_dox). validated: the phase matrices are pyquant's, frozen (CSR
    // structure and row sums then checked once when built, not on every call).
    m.def("spconv_s8", [](py::array x, float x_scale, int32_t x_zp, index_t Hp, index_t Wp, index_t pad_top,
                          index_t pad_left, index_t bands, index_t band_shift, index_t band_dox, py::list phases,
                          bool validated,
                          py::array row_scale, py::object bias, int act, float alpha, py::array out, float out_scale,
                          int32_t out_zp, int32_t qmin, int32_t qmax) {
        if (x.ndim() != 4 || out.ndim() != 4) throw py::value_error("spconv_s8: x and out must be 4-D (NHWC)");
        const index_t B = x.shape(0), H = x.shape(1), W = x.shape(2), Cin = x.shape(3);
        const index_t Ho = out.shape(1), Wo = out.shape(2), Cout = out.shape(3);
        if (out.shape(0) != B) throw py::value_error("spconv_s8: out must have x's batch size");
        if (pad_top < 0 || pad_left < 0 || Hp < H + pad_top || Wp < W + pad_left)
            throw py::value_error("spconv_s8: bad padding");
        // (the pack reads inside x whatever the shift; each pixel's bands are checked against out below)
        if (bands < 1 || bands > 4096 || band_shift < 0 || band_shift > (1 << 30) || band_dox < 0 || band_dox > (1 << 30))
            throw py::value_error("spconv_s8: bad bands");
        const __int128 V128 = static_cast<__int128>(Hp) * Wp * Cin;
        if (V128 * kSellStride > INT32_MAX || static_cast<__int128>(B) * Ho * Wo * Cout > (static_cast<__int128>(1) << 48))
            throw py::value_error("spconv_s8: sizes too large");
        const index_t V = static_cast<index_t>(V128);
        const float* px = checked_data<float>(x, "x");
        const float* ps = checked_data<float>(row_scale, "row_scale", Cout);
        const float* pb = bias.is_none() ? nullptr : checked_data<float>(bias.cast<py::array>(), "bias", Cout);
        if (x_zp < 0 || x_zp > 255) throw py::value_error("x_zero_point: outside uint8");
        if (!(x_scale > 0.0f) || !(x_scale < 3.4e38f)) throw py::value_error("x_scale: must be finite and > 0");
        Epilogue e;
        const SpmmS8Out o = checked_s8_out(out, B * Ho * Wo * Cout, act, alpha, out_scale, out_zp, qmin, qmax, e);
        struct Phase {
            CsrView w;
            const int8_t* data;
            const int64_t* row_sums;
            const int64_t* base;
            const int64_t* opix;
            const int64_t* nbands;
            index_t npix;
        };
        std::vector<Phase> ph;
        const int64_t max_x = std::max(x_zp, 255 - x_zp);
        for (py::handle item : phases) {
            py::tuple t = item.cast<py::tuple>();
            if (t.size() != 8)
                throw py::value_error("spconv_s8: a phase is (indptr, offsets, data, row_sums, max_abs_row_sum, base_rows, "
                                      "out_pixels, bands_valid)");
            py::array ip = t[0].cast<py::array>(), idx = t[1].cast<py::array>(), dat = t[2].cast<py::array>();
            py::array rs = t[3].cast<py::array>(), base = t[5].cast<py::array>(), opx = t[6].cast<py::array>();
            const int64_t max_abs = t[4].cast<int64_t>();
            // offsets may reach any virtual row from the lowest base row: checked as a CSR of V - max(base) columns
            const index_t npix = base.size();
            const int64_t* pbase = checked_data<int64_t>(base, "base_rows");
            const int64_t* popx = checked_data<int64_t>(opx, "out_pixels", npix);
            const int64_t* pnb = checked_data<int64_t>(t[7].cast<py::array>(), "bands_valid", npix);
            int64_t bmax = -1;
            for (index_t i = 0; i < npix; ++i) {
                if (pbase[i] < 0 || popx[i] < 0 || pnb[i] < 0 || pnb[i] > bands ||
                    popx[i] + std::max<int64_t>(0, pnb[i] - 1) * band_dox >= Ho * Wo)
                    throw py::value_error("spconv_s8: bad pixel tables");
                bmax = std::max(bmax, pbase[i]);
            }
            if (bmax >= V) throw py::value_error("spconv_s8: bad pixel tables");
            Csr c = checked_csr(ip, idx, Cout, npix ? V - bmax : V, validated);
            const int8_t* pd = checked_data<int8_t>(dat, "data", c.nnz);
            const int64_t* prs = checked_data<int64_t>(rs, "row_sums", Cout);
            if (max_abs < 0 || max_abs * max_x > INT32_MAX)
                throw py::value_error("int32 overflow: a row's sum of |w| times max|x - zero_point| exceeds 2**31 - 1");
            // the row sums the zero-point correction relies on (and the bound above): trusted as spmm_s8 trusts
            // them, when pyquant built them with the matrix and froze them, else recounted here
            const bool trusted = validated && !dat.writeable() && !rs.writeable();
            for (index_t r = 0; r < Cout && !trusted; ++r) {
                int64_t sw = 0, sa = 0;
                for (int64_t k = c.view.indptr[r]; k < c.view.indptr[r + 1]; ++k) {
                    sw += pd[k];
                    sa += pd[k] < 0 ? -pd[k] : pd[k];
                }
                if (sw != prs[r] || sa > max_abs) throw py::value_error("spconv_s8: row sums do not match the data");
            }
            c.view.ncols = V;  // strip stride of the multi-strip kernels
            ph.push_back({c.view, pd, prs, pbase, popx, pnb, npix});
        }
        if (B == 0 || Cout == 0) return;
        bool finite = true;
        {
            py::gil_scoped_release nogil;
            SpmmOps ops = spmm_ops();
            const index_t strip = ops.strip_s8 ? ops.strip_s8 : kScalarCols;
            const index_t NV = bands * B;  // virtual images
            const index_t nstrips = ceil_div(NV, strip);
            const bool packed = ops.strip_s8 != 0;
            const std::size_t elem = ops.pack == S8Pack::S16 ? sizeof(int16_t) : 1;
            const index_t pw = packed ? strip : NV, rpp = rows_per_pack(pw), nchunks = ceil_div(V, rpp);
            const index_t nps = packed ? nstrips : 1, npack = nps * nchunks;
            AlignedBuffer<uint8_t> xbuf(static_cast<std::size_t>(packed ? nstrips * V * strip : V * NV) * elem);
            QuantRun qp{x_scale, static_cast<float>(0 - x_zp), static_cast<float>(255 - x_zp), x_zp};
            std::atomic<bool> fin{true};
            PackedStrips ready(nps, nchunks);
            // compute tasks: (phase, group of pixels, strip), groups of ~64 output rows (few output channels
            // make one pixel a short task)
            const index_t group = std::max<index_t>(1, 64 / Cout);
            std::vector<index_t> first(ph.size() + 1, 0);
            for (std::size_t p = 0; p < ph.size(); ++p) first[p + 1] = first[p] + ceil_div(ph[p].npix, group) * nstrips;
            const index_t HWC = H * W * Cin;
            parallel_for(npack + first.back(), [&](index_t t) {
                if (t < npack) {
                    const index_t s = t / nchunks, i0 = (t % nchunks) * rpp, i1 = std::min(V, i0 + rpp);
                    const index_t c0 = packed ? s * strip : 0, w = packed ? std::min(strip, NV - c0) : NV;
                    uint8_t* dst = xbuf.data + (packed ? static_cast<std::size_t>(s * V * strip) * elem : 0);
                    thread_local AlignedBuffer<float> xt;
                    if (xt.size < static_cast<std::size_t>(rpp * w)) xt.resize(rpp * w);
                    // virtual rows [i0, i1) of virtual images [c0, c0 + w): runs of one padded pixel's channels at
                    // a time, each band's images from its own input column
                    for (index_t v = i0; v < i1;) {
                        const index_t pix = v / Cin, ci = v % Cin, n = std::min(i1 - v, Cin - ci);
                        const index_t iy = pix / Wp - pad_top;
                        for (index_t c = c0; c < c0 + w;) {
                            const index_t g = c / B, b = c % B, nb = std::min(c0 + w - c, B - b);
                            const index_t ix = pix % Wp - pad_left + g * band_shift;
                            float* rows = xt.data + (v - i0) * w + (c - c0);
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                transpose_into(px + b * HWC + (iy * W + ix) * Cin + ci, HWC, nb, n, rows, w);
                            else  // zero quantizes to the zero point: adds nothing
                                for (index_t r = 0; r < n; ++r) std::fill(rows + r * w, rows + r * w + nb, 0.0f);
                            c += nb;
                        }
                        v += n;
                    }
                    if (!ops.pack_s8(xt.data, w, 0, w, 0, i1 - i0, qp, true, x_zp,
                                     dst + static_cast<std::size_t>(i0 * pw) * elem))
                        fin.store(false);
                    ready.mark(s);
                    return;
                }
                t -= npack;
                const std::size_t p = static_cast<std::size_t>(std::upper_bound(first.begin(), first.end(), t) - first.begin() - 1);
                const Phase& f = ph[p];
                const index_t g = (t - first[p]) / nstrips, s = (t - first[p]) % nstrips;
                const index_t c0 = s * strip, width = std::min(strip, NV - c0);
                ready.wait(packed ? s : 0);
                const SpmmS8Out to = s8_tile(o, Cout, width, 0, c0);
                const index_t ldo = Ho * Wo * Cout;
                for (index_t i = g * group; i < std::min(f.npix, (g + 1) * group); ++i) {
                    const std::size_t off =
                        static_cast<std::size_t>(packed ? s * V * strip + f.base[i] * strip : f.base[i] * NV) * elem;
                    ops.s8(f.w, f.data, xbuf.data + off, true, x_zp, NV, 0, Cout, c0, width, ps, x_scale, pb,
                           f.row_sums, e, to);
                    for (index_t c = c0; c < c0 + width;) {  // each band's images: its own output pixel
                        const index_t band = c / B, b = c % B, nb = std::min(c0 + width - c, B - b);
                        if (band < f.nbands[i])
                            store_transposed(to, Cout, c, nb, o, b * ldo + (f.opix[i] + band * band_dox) * Cout, ldo);
                        c += nb;
                    }
                }
            });
            finite = fin.load();
        }
        if (!finite) throw py::value_error("x: NaN or Inf");
    });
}

}  // namespace pyquant
