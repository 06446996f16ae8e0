// Which instruction-set path runs. Detected once; tests and users may force a lower path
// (PYQUANT_ISA / pyquant.set_isa). Each kernel family resolves its function table from active_isa()
// at call time, so a change takes effect on the next call.
#pragma once
#include <string>
#include <vector>

namespace pyquant {

// Ordered by preference within an architecture (a higher value is a better path on the same CPU).
enum class Isa : int { Scalar = 0, Avx2 = 1, AvxVnni = 2, Avx512 = 3, Avx512Vnni = 4, Neon = 5, NeonDot = 6 };

const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);  // accepts aliases such as "avx512_vnni"
bool isa_compiled(Isa isa);                             // this build contains the path's kernels
bool isa_supported(Isa isa);                            // the CPU and the OS can run it
std::vector<Isa> available_isas();                      // compiled and supported, scalar first
Isa best_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // throws std::invalid_argument when unavailable

// Is the active path at least as capable as `level` (x86 ladder: avx512 paths include avx2 kernels)?
inline bool has_avx2(Isa a) { return a == Isa::Avx2 || a == Isa::AvxVnni || a == Isa::Avx512 || a == Isa::Avx512Vnni; }
inline bool has_avx512(Isa a) { return a == Isa::Avx512 || a == Isa::Avx512Vnni; }

}  // namespace pyquant
