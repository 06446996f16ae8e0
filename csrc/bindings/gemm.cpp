#include "bindings/bindings.hpp"

namespace pyquant {

void register_gemm(py::module_& m) {}

}  // namespace pyquant
