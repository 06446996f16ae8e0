// ISA selection, CPU features and the thread pool.
#include <pybind11/stl.h>

#include <stdexcept>

#include "bindings/bindings.hpp"
#include "cpu_features.hpp"
#include "dispatch.hpp"
#include "parallel.hpp"

namespace pyquant {

void register_system(py::module_& m) {
    m.def("isa", [] { return std::string(isa_name(active_isa())); }, "Name of the instruction-set path in use.");
    m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
    m.def("available_isas", [] {
        std::vector<std::string> names;
        for (Isa isa : available_isas()) names.emplace_back(isa_name(isa));
        return names;
    });
    m.def("compiled_isas", [] {
        std::vector<std::string> names;
        for (int i = 0; i <= static_cast<int>(Isa::NeonDot); ++i)
            if (isa_compiled(static_cast<Isa>(i))) names.emplace_back(isa_name(static_cast<Isa>(i)));
        return names;
    });
    m.def("set_isa", [](const std::string& name) {
        Isa isa;
        if (!isa_from_name(name, &isa)) throw py::value_error("unknown ISA name '" + name + "'");
        try {
            set_active_isa(isa);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
    });
    m.def("cpu_features", [] {
        py::dict d;
        for (const auto& kv : cpu_feature_list()) d[py::str(kv.first)] = kv.second;
        return d;
    });
    m.def("cpu_brand", [] { return cpu_features().brand; });
    m.def("cpu_vendor", [] { return cpu_features().vendor; });
    m.def("get_num_threads", &get_num_threads);
    m.def("set_num_threads", &set_num_threads);
    m.def("default_num_threads", &default_num_threads);
#ifdef __VERSION__
    m.attr("compiler") = __VERSION__;
#endif
    m.attr("version") = PYQUANT_VERSION;
}

}  // namespace pyquant
