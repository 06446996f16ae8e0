#include "bindings/bindings.hpp"

namespace pyquant {

void register_sparse(py::module_& m) {}

}  // namespace pyquant
