"""pyquant: exact int8 quantization, int8 GEMM and sparse kernels for running quantized and pruned image
generators fast on ordinary CPUs.

The native core picks SIMD kernels for the CPU at run time (scalar, AVX2, AVX-512, VNNI); every path gives
bit-identical results, for any number of threads. ``pyquant.show_config()`` says what runs here.
"""
from __future__ import annotations

try:
    from . import _core
except ImportError as e:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "pyquant's native extension (pyquant._core) could not be imported. If you are inside the source tree, "
        "run from another directory so the installed package is used; otherwise reinstall with `pip install .`"
        f" ({e})"
    ) from e

__version__: str = _core.version

from ._runtime import (  # noqa: E402
    available_isas,
    config,
    cpu_features,
    get_num_threads,
    isa,
    set_isa,
    set_num_threads,
    show_config,
    use_isa,
    use_threads,
)
from .quantization import (  # noqa: E402
    QParams,
    QuantizedArray,
    choose_qparams,
    dequantize,
    quantize,
    quantize_dynamic,
    quantize_reference,
)
from . import gemm as _gemm, sparse as _sparse  # noqa: E402
from .gemm import *  # noqa: E402,F401,F403
from .sparse import *  # noqa: E402,F401,F403
from . import model as _model  # noqa: E402
from .model import Generator, from_keras, from_torch, load, prune_model, quantize_model  # noqa: E402
from .model.optimize import compress  # noqa: E402
from .builtin import builtin_generator, builtin_generators  # noqa: E402
from ._runtime import _apply_environment  # noqa: E402

_apply_environment()
del _apply_environment

__all__ = [
    "__version__",
    "available_isas",
    "config",
    "cpu_features",
    "get_num_threads",
    "isa",
    "set_isa",
    "set_num_threads",
    "show_config",
    "use_isa",
    "use_threads",
    "QParams",
    "QuantizedArray",
    "choose_qparams",
    "dequantize",
    "quantize",
    "quantize_dynamic",
    "quantize_reference",
    "Generator",
    "from_torch",
    "from_keras",
    "quantize_model",
    "compress",
    "prune_model",
    "load",
    "builtin_generator", "builtin_generators",
] + list(_gemm.__all__) + list(_sparse.__all__)
