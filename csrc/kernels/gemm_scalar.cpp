// int8 GEMM: the scalar (oracle) path and the baseline packing routines shared by every path.
#include <cstdlib>

#include "kernels/gemm.hpp"

namespace pyquant {

GemmKernelInfo gemm_kernel_info(GemmPath path) {
    switch (path) {
        case GemmPath::Scalar: return {BLayout::S8Quad, 4, 4, 16, "scalar"};
        case GemmPath::Avx2Exact: return {BLayout::S16Pair, 2, 5, 16, "avx2-vpmaddwd-s16"};
        case GemmPath::Avx2Fast: return {BLayout::S8Quad, 4, 5, 16, "avx2-vpmaddubsw-u8s8"};
        case GemmPath::AvxVnni: return {BLayout::S8Quad, 4, 6, 16, "avxvnni-vpdpbusd-ymm"};
        case GemmPath::Avx512Exact: return {BLayout::S16Pair, 2, 8, 32, "avx512-vpmaddwd-s16"};
        case GemmPath::Avx512Vnni: return {BLayout::S8Quad, 4, 8, 32, "avx512vnni-vpdpbusd-zmm"};
    }
    return {BLayout::S8Quad, 4, 4, 16, "scalar"};
}

index_t gemm_packed_elems(GemmPath path, index_t K, index_t N) {
    GemmKernelInfo ki = gemm_kernel_info(path);
    return ceil_div(K, ki.group) * ki.group * ceil_div(N, ki.nr) * ki.nr;
}

namespace {

inline int iabs(int v) { return v < 0 ? -v : v; }

// The fast path's clipped pair: keep b0, shrink |b1| to 128 - |b0| (so |b0| + |b1'| <= 128).
inline int clip_second(int b0, int b1) {
    int lim = 128 - iabs(b0);
    return b1 > lim ? lim : (b1 < -lim ? -lim : b1);
}

template <class BT>
void pack_panels(const int8_t* b, index_t ldb, index_t K, index_t N, int G, int NR, bool clip_pairs, BT* dst) {
    const index_t groups = ceil_div(K, G), panels = ceil_div(N, NR);
    const index_t panel_elems = groups * G * NR;
    for (index_t p = 0; p < panels; ++p) {
        BT* pd = dst + p * panel_elems;
        for (index_t g = 0; g < groups; ++g) {
            for (int j = 0; j < NR; ++j) {
                const index_t n = p * NR + j;
                BT* e = pd + (g * NR + j) * G;
                for (int q = 0; q < G; ++q) {
                    const index_t k = g * G + q;
                    e[q] = static_cast<BT>((k < K && n < N) ? b[k * ldb + n] : 0);
                }
                if (clip_pairs)
                    for (int q = 0; q + 1 < G; q += 2) e[q + 1] = static_cast<BT>(clip_second(e[q], e[q + 1]));
            }
        }
    }
}

}  // namespace

index_t gemm_pack_b(GemmPath path, const int8_t* b, index_t ldb, index_t K, index_t N, void* dst, bool split_pairs,
                    int32_t* corr_ptr, int32_t* corr_k, int32_t* corr_v) {
    GemmKernelInfo ki = gemm_kernel_info(path);
    const bool fast = path == GemmPath::Avx2Fast && split_pairs;
    if (dst) {
        if (ki.layout == BLayout::S16Pair)
            pack_panels(b, ldb, K, N, ki.group, ki.nr, false, static_cast<int16_t*>(dst));
        else
            pack_panels(b, ldb, K, N, ki.group, ki.nr, fast, static_cast<int8_t*>(dst));
    }
    if (!fast) return 0;
    // Violating pairs (k even, k + 1), column by column: residual of the second weight.
    index_t count = 0;
    for (index_t n = 0; n < N; ++n) {
        if (corr_ptr) corr_ptr[n] = static_cast<int32_t>(count);
        for (index_t k = 0; k + 1 < K; k += 2) {
            int b0 = b[k * ldb + n], b1 = b[(k + 1) * ldb + n];
            if (iabs(b0) + iabs(b1) > 128) {
                if (corr_k) {
                    corr_k[count] = static_cast<int32_t>(k + 1);
                    corr_v[count] = b1 - clip_second(b0, b1);
                }
                ++count;
            }
        }
    }
    if (corr_ptr) corr_ptr[N] = static_cast<int32_t>(count);
    return count;
}

namespace {
// One activation row as a' = a (uint8) or a + 128 (int8 bytes xor 0x80) into DT, zero padded to lda; returns
// its sum.
template <class DT>
int32_t pack_a_row(const uint8_t* s, uint8_t flip, index_t K, index_t lda, DT* d) {
    int32_t sum = 0;
    for (index_t k = 0; k < K; ++k) {
        uint8_t v = static_cast<uint8_t>(s[k] ^ flip);
        d[k] = v;
        sum += v;
    }
    for (index_t k = K; k < lda; ++k) d[k] = 0;
    return sum;
}
}  // namespace

void gemm_pack_a(BLayout layout, const void* a, bool is_s8, index_t lda_in, index_t K, index_t m0, index_t m1,
                 void* dst, index_t lda, int32_t* rowsum) {
    const uint8_t* src = static_cast<const uint8_t*>(a);
    const uint8_t flip = is_s8 ? 0x80 : 0x00;  // int8 v -> v + 128 as a byte
    for (index_t m = m0; m < m1; ++m) {
        const uint8_t* s = src + m * lda_in;
        const int32_t sum = layout == BLayout::S8Quad ? pack_a_row(s, flip, K, lda, static_cast<uint8_t*>(dst) + m * lda)
                                                      : pack_a_row(s, flip, K, lda, static_cast<int16_t*>(dst) + m * lda);
        if (rowsum) rowsum[m] = sum;  // K * 255 < 2^31 for every K the overflow guard admits
    }
}

namespace scalar {
namespace {

struct Kernel {
    static constexpr int MR = 4, NR = 16, G = 4;
    using AT = uint8_t;
    using BT = int8_t;
    template <int R>
    static void tile_r(const uint8_t* a, index_t lda, const int8_t* b, index_t groups, int32_t* c) {
        for (int i = 0; i < R; ++i) {
            uint32_t acc[NR] = {};
            const uint8_t* ai = a + i * lda;
            for (index_t g = 0; g < groups; ++g) {
                const int8_t* bg = b + g * NR * G;
                for (int j = 0; j < NR; ++j)
                    for (int q = 0; q < G; ++q)
                        acc[j] += static_cast<uint32_t>(static_cast<int32_t>(ai[g * G + q]) * static_cast<int32_t>(bg[j * G + q]));
            }
            for (int j = 0; j < NR; ++j) c[i * NR + j] = static_cast<int32_t>(acc[j]);
        }
    }
    static void epilogue_row(const int32_t* d, index_t nr, const GemmOut& o, index_t m, index_t n0) {
        epilogue_row_scalar(d, 0, nr, o, m, n0);
    }
};

}  // namespace

void gemm_block(const BPack& b, const APack& a, const GemmOut& o, index_t m0, index_t m1, index_t p0, index_t p1) {
    gemm_block_generic<Kernel>(b, a, o, m0, m1, p0, p1);
}

}  // namespace scalar
}  // namespace pyquant
