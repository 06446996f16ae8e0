// What the CPU and the OS support, detected once. Compiled at baseline flags only.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace pyquant {

struct CpuFeatures {
    bool sse2 = false, ssse3 = false, sse41 = false, sse42 = false, popcnt = false;
    bool avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512cd = false;
    bool avx512vnni = false, avxvnni = false, avx512vbmi = false;
    bool os_avx = false, os_avx512 = false;  // XGETBV: the OS saves the YMM / ZMM state
    bool neon = false, asimddp = false;
    std::string vendor, brand;
};

const CpuFeatures& cpu_features();

// (name, value) pairs in a fixed order, for pyquant.cpu_features().
std::vector<std::pair<std::string, bool>> cpu_feature_list();

}  // namespace pyquant
