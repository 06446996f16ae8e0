// Shared helpers for the pybind11 layer. Bindings only check and convert: the Python package owns the
// user-facing API, defaults and messages; these checks are the last line that keeps bad arrays out of kernels.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common.hpp"

namespace pyquant {
namespace py = pybind11;

void register_system(py::module_& m);
void register_quantize(py::module_& m);
void register_gemm(py::module_& m);
void register_sparse(py::module_& m);

// A C-contiguous array of dtype T with `size` elements (size < 0: any), optionally writable.
// dtype equality by value (PyArray_EquivTypes): an unpickled array's dtype is equal to, but not the same
// object as, the canonical one, so an identity test (dtype::is) would wrongly reject it.
template <class T>
bool dtype_is(const py::array& a) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

template <class T>
T* checked_data(const py::array& a, const char* name, index_t size = -1, bool writable = false) {
    if (!dtype_is<T>(a))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                             ", got " + std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
    if (size >= 0 && a.size() != size)
        throw py::value_error(std::string(name) + ": expected " + std::to_string(size) + " elements, got " +
                              std::to_string(a.size()));
    if (writable) {
        if (!a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
        return static_cast<T*>(const_cast<void*>(a.data()));
    }
    return static_cast<T*>(const_cast<void*>(a.data()));
}

}  // namespace pyquant
