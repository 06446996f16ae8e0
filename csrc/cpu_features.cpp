#include "cpu_features.hpp"

#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PYQUANT_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#define PYQUANT_ARM64 1
#endif

namespace pyquant {
namespace {

#ifdef PYQUANT_X86
unsigned long long read_xcr0() {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
    CpuFeatures f;
#ifdef PYQUANT_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
    unsigned max_leaf = a;
    char vendor[13] = {0};
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    f.vendor = vendor;

    __get_cpuid(1, &a, &b, &c, &d);
    f.sse2 = d & (1u << 26);
    f.ssse3 = c & (1u << 9);
    f.sse41 = c & (1u << 19);
    f.sse42 = c & (1u << 20);
    f.popcnt = c & (1u << 23);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    bool osxsave = c & (1u << 27);
    f.avx = c & (1u << 28);
    if (osxsave) {
        unsigned long long xcr0 = read_xcr0();
        f.os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
        f.os_avx512 = (xcr0 & 0xe6) == 0xe6;       // plus opmask, ZMM_Hi256, Hi16_ZMM
    }
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f.avx2 = b & (1u << 5);
        f.bmi2 = b & (1u << 8);
        f.avx512f = b & (1u << 16);
        f.avx512dq = b & (1u << 17);
        f.avx512cd = b & (1u << 28);
        f.avx512bw = b & (1u << 30);
        f.avx512vl = b & (1u << 31);
        f.avx512vnni = c & (1u << 11);
        f.avx512vbmi = c & (1u << 1);
        __cpuid_count(7, 1, a, b, c, d);
        f.avxvnni = a & (1u << 4);
    }
    if (!f.os_avx) f.avx = f.avx2 = f.fma = f.f16c = f.avxvnni = false;
    if (!f.os_avx512) f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = f.avx512cd = f.avx512vnni = f.avx512vbmi = false;

    unsigned ext_max = __get_cpuid_max(0x80000000u, nullptr);
    if (ext_max >= 0x80000004u) {
        char brand[49] = {0};
        for (unsigned i = 0; i < 3; ++i) {
            __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
            std::memcpy(brand + 16 * i, &a, 4);
            std::memcpy(brand + 16 * i + 4, &b, 4);
            std::memcpy(brand + 16 * i + 8, &c, 4);
            std::memcpy(brand + 16 * i + 12, &d, 4);
        }
        f.brand = brand;
        while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
    }
#elif defined(PYQUANT_ARM64)
    unsigned long hw = getauxval(AT_HWCAP);
    f.neon = hw & HWCAP_ASIMD;
#ifdef HWCAP_ASIMDDP
    f.asimddp = hw & HWCAP_ASIMDDP;
#endif
    f.vendor = "arm64";
#endif
    return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

std::vector<std::pair<std::string, bool>> cpu_feature_list() {
    const CpuFeatures& f = cpu_features();
    return {{"sse2", f.sse2},         {"ssse3", f.ssse3},         {"sse4_1", f.sse41},
            {"sse4_2", f.sse42},      {"popcnt", f.popcnt},       {"avx", f.avx},
            {"avx2", f.avx2},         {"fma", f.fma},             {"f16c", f.f16c},
            {"bmi2", f.bmi2},         {"avx512f", f.avx512f},     {"avx512bw", f.avx512bw},
            {"avx512vl", f.avx512vl}, {"avx512dq", f.avx512dq},   {"avx512cd", f.avx512cd},
            {"avx512_vnni", f.avx512vnni}, {"avx512_vbmi", f.avx512vbmi}, {"avx_vnni", f.avxvnni}, {"os_avx", f.os_avx},
            {"os_avx512", f.os_avx512}, {"neon", f.neon},         {"asimddp", f.asimddp}};
}

}  // namespace pyquant
