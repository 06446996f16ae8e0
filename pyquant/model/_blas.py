"""Float32 GEMMs inside a model, on numpy's BLAS but on pyquant's terms.

OpenBLAS's worker threads keep spinning for a while after each call; in a model that mixes float32 and int8
layers they take a core from pyquant's thread pool and the next int8 layer runs at a fraction of its speed
(measured: 560 instead of 1890 GOP/s for a 1024^3 int8 GEMM right after a small float GEMM). So while a
model runs, BLAS is held to one thread (:func:`single_threaded_blas`, via threadpoolctl), and each float
GEMM is cut into a fixed number of row (or column) blocks (from the shape only, never the thread count) that run on a
small pool of Python threads, ``pyquant.get_num_threads()`` of them (numpy releases the GIL in matmul).
Without threadpoolctl, plain ``numpy.matmul`` runs.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, List

import numpy as np

from .._runtime import get_num_threads

_BLOCKS = 8          # row blocks per GEMM (fixed: results never depend on the thread count)
_MIN_BLOCK_ROWS = 64  # and columns
_lock = threading.Lock()
_depth = 0
_saved: List[int] = []
_controllers = None
_pool = None
_pool_size = 0


def _blas() -> list:
    """The BLAS libraries numpy loaded (threadpoolctl controllers), found once; [] without threadpoolctl."""
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or unable to read the libraries: leave BLAS alone
            _controllers = []
    return _controllers


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold BLAS to one thread while the block runs (re-entrant and shared by concurrent model calls: the
    first entry saves the thread counts, the last exit restores them)."""
    global _depth, _saved
    libs = _blas()
    with _lock:
        if _depth == 0 and libs:
            _saved = [lib.num_threads for lib in libs]
            for lib in libs:
                if lib.num_threads != 1:
                    lib.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and libs:
                for lib, n in zip(libs, _saved):
                    if lib.num_threads != n:
                        lib.set_num_threads(n)


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pyquant-blas")
            _pool_size = n
        return _pool


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = a @ b`` (float32, 2-D): row blocks on pyquant's thread count when BLAS is held to one
    thread (inside :func:`single_threaded_blas`), else one numpy call."""
    (M, K), N = a.shape, b.shape[1]
    n = get_num_threads()
    by_rows = M >= N  # cut the larger dimension (each block then re-reads the smaller operand only)
    size = M if by_rows else N
    if _depth == 0 or not _blas() or n == 1 or size < 2 * _MIN_BLOCK_ROWS or M * N * K < 1 << 22:
        return np.matmul(a, b, out=out)
    step = max(_MIN_BLOCK_ROWS, -(-size // _BLOCKS))
    bounds = [(i, min(size, i + step)) for i in range(0, size, step)]
    ticket = itertools.count()  # next() is atomic under the GIL: each block is taken once

    def work():
        for t in iter(ticket.__next__, None):
            if t >= len(bounds):
                return
            i, j = bounds[t]
            if by_rows:
                np.matmul(a[i:j], b, out=out[i:j])
            else:
                np.matmul(a, b[:, i:j], out=out[:, i:j])

    futures = [_executor(n - 1).submit(work) for _ in range(min(n, len(bounds)) - 1)]
    work()  # the calling thread works too
    for f in futures:
        f.result()
    return out
