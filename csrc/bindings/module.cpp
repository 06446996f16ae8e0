#include "bindings/bindings.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyquant native core: SIMD kernels chosen at run time (private; use the pyquant package)";
    pyquant::register_system(m);
    pyquant::register_quantize(m);
    pyquant::register_gemm(m);
    pyquant::register_sparse(m);
}
