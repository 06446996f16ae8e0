#include "dispatch.hpp"

#include <atomic>
#include <stdexcept>

#include "cpu_features.hpp"

namespace pyquant {
namespace {

std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return "avx2";
        case Isa::AvxVnni: return "avxvnni";
        case Isa::Avx512: return "avx512";
        case Isa::Avx512Vnni: return "avx512vnni";
        case Isa::Neon: return "neon";
        case Isa::NeonDot: return "neondot";
    }
    return "unknown";
}

bool isa_from_name(const std::string& raw, Isa* out) {
    std::string name;
    for (char c : raw) {
        if (c == '_' || c == '-') continue;
        name += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    for (int i = 0; i <= static_cast<int>(Isa::NeonDot); ++i) {
        if (name == isa_name(static_cast<Isa>(i))) {
            *out = static_cast<Isa>(i);
            return true;
        }
    }
    if (name == "avx512fvnni") { *out = Isa::Avx512Vnni; return true; }
    if (name == "neondotprod") { *out = Isa::NeonDot; return true; }
    return false;
}

bool isa_compiled(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return true;
#ifdef PYQUANT_BUILD_AVX2
        case Isa::Avx2: return true;
#endif
#if defined(PYQUANT_BUILD_AVXVNNI) && defined(PYQUANT_BUILD_AVX2)
        case Isa::AvxVnni: return true;
#endif
#if defined(PYQUANT_BUILD_AVX512) && defined(PYQUANT_BUILD_AVX2)
        case Isa::Avx512: return true;
#endif
#if defined(PYQUANT_BUILD_AVX512VNNI) && defined(PYQUANT_BUILD_AVX512)
        case Isa::Avx512Vnni: return true;
#endif
#ifdef PYQUANT_BUILD_NEON
        case Isa::Neon: return true;
#endif
#if defined(PYQUANT_BUILD_NEONDOT) && defined(PYQUANT_BUILD_NEON)
        case Isa::NeonDot: return true;
#endif
        default: return false;
    }
}

bool isa_supported(Isa isa) {
    const CpuFeatures& f = cpu_features();
    bool avx2 = f.avx2 && f.fma && f.f16c && f.os_avx;
    bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.os_avx512;
    switch (isa) {
        case Isa::Scalar: return true;
        case Isa::Avx2: return avx2;
        case Isa::AvxVnni: return avx2 && f.avxvnni;
        case Isa::Avx512: return avx512;
        case Isa::Avx512Vnni: return avx512 && f.avx512vnni;
        case Isa::Neon: return f.neon;
        case Isa::NeonDot: return f.neon && f.asimddp;
    }
    return false;
}

std::vector<Isa> available_isas() {
    std::vector<Isa> out;
    for (int i = 0; i <= static_cast<int>(Isa::NeonDot); ++i) {
        Isa isa = static_cast<Isa>(i);
        if (isa_compiled(isa) && isa_supported(isa)) out.push_back(isa);
    }
    return out;
}

Isa best_isa() {
    // Preference order; on one architecture the enum order is the preference order.
    Isa best = Isa::Scalar;
    for (Isa isa : available_isas()) best = isa;
    return best;
}

Isa active_isa() {
    int v = g_active.load(std::memory_order_relaxed);
    if (v < 0) {
        Isa b = best_isa();
        int expected = -1;
        g_active.compare_exchange_strong(expected, static_cast<int>(b));
        return static_cast<Isa>(g_active.load());
    }
    return static_cast<Isa>(v);
}

void set_active_isa(Isa isa) {
    if (!isa_compiled(isa))
        throw std::invalid_argument(std::string("ISA '") + isa_name(isa) + "' is not compiled into this build of pyquant");
    if (!isa_supported(isa))
        throw std::invalid_argument(std::string("ISA '") + isa_name(isa) + "' is not supported by this CPU");
    g_active.store(static_cast<int>(isa));
}

}  // namespace pyquant
