"""Instruction-set selection, thread count and configuration report."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import warnings
from typing import Dict, Iterator, List

from . import _core

__all__ = [
    "isa",
    "available_isas",
    "set_isa",
    "use_isa",
    "cpu_features",
    "set_num_threads",
    "get_num_threads",
    "use_threads",
    "show_config",
    "config",
]


def isa() -> str:
    """Name of the instruction-set path the kernels run on now ("scalar", "avx2", "avx512", ...)."""
    return _core.isa()


def available_isas() -> List[str]:
    """Paths this build contains and this CPU can run, from the plainest ("scalar") to the best."""
    return list(_core.available_isas())


def set_isa(name: str) -> str:
    """Force the kernels onto path ``name`` (or back to the best with ``"best"``); returns the previous one.

    Every path gives bit-identical results; forcing one is for tests, benchmarks and bug reports.
    Raises ValueError for an unknown name or a path this CPU (or this build) cannot run.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a str, got {type(name).__name__}")
    previous = _core.isa()
    target = _core.best_isa() if name.strip().lower() in ("best", "auto", "") else name.strip()
    try:
        _core.set_isa(target)
    except ValueError as e:
        raise ValueError(f"{e}; available on this machine: {', '.join(available_isas())}") from None
    return previous


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[str]:
    """Context manager: run the block on path ``name``, then restore the previous path."""
    previous = set_isa(name)
    try:
        yield _core.isa()
    finally:
        _core.set_isa(previous)


def cpu_features() -> Dict[str, bool]:
    """What the CPU and the operating system support (cpuid + XGETBV on x86, getauxval on arm64)."""
    return dict(_core.cpu_features())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) in the kernels. Results never depend on this number."""
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels use (default: the cores this process may run on, or PYQUANT_NUM_THREADS)."""
    return _core.get_num_threads()


@contextlib.contextmanager
def use_threads(n: int) -> Iterator[int]:
    """Context manager: run the block with ``n`` threads, then restore the previous count."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        _core.set_num_threads(previous)


def config() -> Dict[str, object]:
    """Everything show_config() prints, as a dict."""
    import numpy

    from . import __version__

    return {
        "pyquant": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "compiler": getattr(_core, "compiler", "unknown"),
        "cpu": _core.cpu_brand() or _core.cpu_vendor() or "unknown",
        "cpu_features": [k for k, v in cpu_features().items() if v],
        "compiled_isas": list(_core.compiled_isas()),
        "available_isas": available_isas(),
        "isa": isa(),
        "num_threads": get_num_threads(),
        "default_num_threads": _core.default_num_threads(),
    }


def show_config(file=None) -> None:
    """Print versions, CPU, the ISA paths compiled / available / in use, and the thread count."""
    file = sys.stdout if file is None else file
    for key, value in config().items():
        if isinstance(value, list):
            value = " ".join(value) if value else "-"
        print(f"{key + ':':<21}{value}", file=file)


def _apply_environment() -> None:
    """PYQUANT_ISA forces a path (an unavailable one is an error); PYQUANT_NUM_THREADS sets the threads."""
    requested = os.environ.get("PYQUANT_ISA", "").strip()
    if requested:
        try:
            set_isa(requested)
        except ValueError as e:
            raise RuntimeError(f"PYQUANT_ISA={requested!r}: {e}") from None
    threads = os.environ.get("PYQUANT_NUM_THREADS", "").strip()
    if threads:
        try:
            set_num_threads(int(threads))
        except ValueError:
            warnings.warn(
                f"PYQUANT_NUM_THREADS={threads!r} is not an integer >= 1; using {get_num_threads()} threads",
                RuntimeWarning,
                stacklevel=3,
            )
