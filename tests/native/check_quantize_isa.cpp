// Cross-ISA check of the quantize family without Python: runs one ISA namespace's kernels against the
// scalar oracle on adversarial data and prints "N passed, M failed". Used by tests/test_cross_isa.py to test
// the arm64 NEON path under qemu-user on an x86-64 machine (build: see that file).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/quantize.hpp"

#ifndef ISA_NS
#error "define ISA_NS to the namespace under test, e.g. -DISA_NS=neon"
#endif

using namespace pyquant;

static int passed = 0, failed = 0;

static void check(bool ok, const char* what, long n) {
    if (ok) {
        ++passed;
    } else {
        ++failed;
        std::printf("FAIL %s n=%ld\n", what, n);
    }
}

static std::vector<float> adversarial(long n, std::mt19937& rng) {
    std::uniform_int_distribution<int> pick(0, 5), k(-300, 300);
    std::normal_distribution<float> normal(0.0f, 100.0f);
    std::vector<float> x(n);
    for (long i = 0; i < n; ++i) {
        switch (pick(rng)) {
            case 0: x[i] = normal(rng); break;
            case 1: x[i] = (i & 1) ? 3e38f : -3e38f; break;
            case 2: x[i] = -0.0f; break;
            default: x[i] = (static_cast<float>(k(rng)) + 0.5f) * 0.5f;  // exact ties at scale 0.5
        }
    }
    return x;
}

int main() {
    std::mt19937 rng(1234);
    const long sizes[] = {0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 35, 63, 64, 65, 1000, 4099};
    const int zps[] = {0, 3, -7, 128, 131, 255};
    for (long n : sizes) {
        std::vector<float> x = adversarial(n, rng);
        for (int zp : zps) {
            bool u8 = zp >= 0 && zp != 3;
            int qmin = u8 ? 0 : -128, qmax = u8 ? 255 : 127;
            QuantRun p{0.5f, float(qmin - zp), float(qmax - zp), zp};
            std::vector<uint8_t> a(n + 1), b(n + 1);
            bool fa, fb;
            if (u8) {
                fa = scalar::quantize_u8(x.data(), a.data(), n, p);
                fb = ISA_NS::quantize_u8(x.data(), b.data(), n, p);
            } else {
                fa = scalar::quantize_s8(x.data(), reinterpret_cast<int8_t*>(a.data()), n, p);
                fb = ISA_NS::quantize_s8(x.data(), reinterpret_cast<int8_t*>(b.data()), n, p);
            }
            check(fa == fb && std::memcmp(a.data(), b.data(), n) == 0, "quantize", n);
            std::vector<float> da(n + 1), db(n + 1);
            if (u8) {
                scalar::dequantize_u8(a.data(), da.data(), n, 0.5f, zp);
                ISA_NS::dequantize_u8(a.data(), db.data(), n, 0.5f, zp);
            } else {
                scalar::dequantize_s8(reinterpret_cast<int8_t*>(a.data()), da.data(), n, 0.5f, zp);
                ISA_NS::dequantize_s8(reinterpret_cast<int8_t*>(a.data()), db.data(), n, 0.5f, zp);
            }
            check(std::memcmp(da.data(), db.data(), n * sizeof(float)) == 0, "dequantize", n);
        }
        // per-element parameters (a row whose channels are contiguous)
        std::vector<float> lo(n + 1), hi(n + 1), sc(n + 1);
        std::vector<int32_t> zpv(n + 1);
        for (long i = 0; i < n; ++i) {
            zpv[i] = static_cast<int32_t>(rng() % 256) - 128;
            sc[i] = 0.01f + static_cast<float>(rng() % 1000) / 500.0f;
            lo[i] = float(-128 - zpv[i]);
            hi[i] = float(127 - zpv[i]);
        }
        QuantRow row{sc.data(), lo.data(), hi.data(), zpv.data()};
        std::vector<int8_t> a(n + 1), b(n + 1);
        bool fa = scalar::quantize_row_s8(x.data(), a.data(), n, row);
        bool fb = ISA_NS::quantize_row_s8(x.data(), b.data(), n, row);
        check(fa == fb && std::memcmp(a.data(), b.data(), n) == 0, "quantize_row", n);
        std::vector<float> da(n + 1), db(n + 1);
        scalar::dequantize_row_s8(a.data(), da.data(), n, sc.data(), zpv.data());
        ISA_NS::dequantize_row_s8(a.data(), db.data(), n, sc.data(), zpv.data());
        check(std::memcmp(da.data(), db.data(), n * sizeof(float)) == 0, "dequantize_row", n);
        if (n > 0) {
            float mn1, mx1, mn2, mx2;
            bool f1 = scalar::minmax(x.data(), n, &mn1, &mx1), f2 = ISA_NS::minmax(x.data(), n, &mn2, &mx2);
            check(f1 == f2 && mn1 == mn2 && mx1 == mx2, "minmax", n);
            x[n / 2] = NAN;
            std::vector<int8_t> c(n + 1);
            check(!ISA_NS::quantize_s8(x.data(), c.data(), n, QuantRun{0.5f, -128.0f, 127.0f, 0}), "nan flagged", n);
            check(!ISA_NS::minmax(x.data(), n, &mn2, &mx2), "nan flagged by minmax", n);
        }
    }
    {  // one float32 division, not a multiply by the reciprocal: 17.924828f / 1.1564405f is exactly 15.5f -> 16
        for (long n : {1L, 5L, 16L, 37L}) {
            std::vector<float> x(n, 17.924828f);
            std::vector<uint8_t> a(n), b(n);
            QuantRun p{1.1564405f, -34.0f, 221.0f, 34};
            bool fa = scalar::quantize_u8(x.data(), a.data(), n, p), fb = ISA_NS::quantize_u8(x.data(), b.data(), n, p);
            bool all50 = true;
            for (long i = 0; i < n; ++i) all50 &= a[i] == 50 && b[i] == 50;
            check(fa && fb && all50, "division rule (17.924828 / 1.1564405 + 34 = 50)", n);
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
