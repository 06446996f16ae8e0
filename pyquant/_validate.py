"""Argument checks shared by the public functions. Errors name the argument and what was expected:
TypeError for a wrong type or dtype, ValueError for a wrong shape or value (CONTRACT section 4)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

_F32_MAX = np.float64(np.finfo(np.float32).max)



_QDTYPE_FAST = {"int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), np.int8: np.dtype(np.int8),
                np.uint8: np.dtype(np.uint8)}


def qdtype_range(dtype, narrow_range: bool = False, fn: str = "quantize") -> Tuple[np.dtype, int, int]:
    """(numpy dtype, qmin, qmax) for "int8" / "uint8" / np.int8 / np.uint8; narrow_range gives [-127, 127]."""
    dt = _QDTYPE_FAST.get(dtype) if isinstance(dtype, (str, type)) else None
    if dt is not None and not narrow_range:
        return dt, (-128, 0)[dt == np.uint8], (127, 255)[dt == np.uint8]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"{fn}: dtype must be 'int8' or 'uint8' (or np.int8 / np.uint8), got {dtype!r}")
    if dt == np.int8:
        return dt, (-127 if narrow_range else -128), 127
    if narrow_range:
        raise ValueError(f"{fn}: narrow_range applies to int8 only ([-127, 127]); got dtype uint8")
    return dt, 0, 255


def as_float32(x, name: str, fn: str) -> np.ndarray:
    """x as a C-contiguous float32 array. float16/float64 are converted (float64 saturating at the float32
    range); non-float dtypes are a TypeError. NaN/Inf are found by the kernels (or by check_finite)."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    a = np.asarray(x)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be a floating-point array (float32, or float16/float64 converted), "
                        f"got dtype {a.dtype}")
    if a.dtype.itemsize > 4:
        a64 = a.astype(np.float64, copy=False)
        check_finite(a64, name, fn)
        a = np.clip(a64, -_F32_MAX, _F32_MAX)
    return np.ascontiguousarray(a, dtype=np.float32)


def check_finite(a: np.ndarray, name: str, fn: str) -> None:
    """ValueError naming how many values are NaN/Inf and the index of the first."""
    bad = ~np.isfinite(a)
    count = int(np.count_nonzero(bad))
    if count:
        first = np.unravel_index(int(np.argmax(bad.ravel())), a.shape) if a.ndim else ()
        first = tuple(int(i) for i in first)
        raise ValueError(f"{fn}: {name} has {count} non-finite value(s) (NaN or Inf); the first is at index "
                         f"{first if len(first) != 1 else first[0]} (value {a[first] if a.ndim else a[()]})")


def normalize_axis(axis, ndim: int, fn: str) -> Optional[int]:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{fn}: axis must be an int or None, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for an array with {ndim} dimension(s)")
    return axis % ndim


def layout(shape: Sequence[int], axis: Optional[int]) -> Tuple[int, int, int]:
    """(outer, channels, inner) of a C-contiguous array split at `axis` (per tensor: channels == 1)."""
    size = int(np.prod(shape, dtype=np.int64))
    if axis is None:
        return 1, 1, size
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def check_out(out, shape: Tuple[int, ...], dtype: np.dtype, fn: str, inputs: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Validate a caller-supplied output array before anything is written to it."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{fn}: out must have dtype {dtype}, got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{fn}: out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out is read-only")
    for a in inputs:
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise ValueError(f"{fn}: out must not overlap an input array")
    return out


# Activation codes of the fused epilogue (csrc/kernels/epilogue.hpp, enum Activation).
ACTIVATIONS = {"identity": 0, "none": 0, "linear": 0, "relu": 1, "leaky_relu": 2, "leakyrelu": 2, "tanh": 3,
               "sigmoid": 4}


def activation_id(activation, fn: str) -> int:
    """The epilogue code of an activation name (None means identity)."""
    if activation is None:
        return 0
    if not isinstance(activation, str):
        raise TypeError(f"{fn}: activation must be a str or None, got {type(activation).__name__}")
    key = activation.strip().lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of 'identity', 'relu', 'leaky_relu', 'tanh', 'sigmoid'; "
                         f"got {activation!r}")
    return ACTIVATIONS[key]
