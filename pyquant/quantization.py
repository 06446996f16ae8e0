"""Round-affine quantization (CONTRACT section 1): the source design's ``y = round(x * Q + B)``, pinned down to
the ONNX QuantizeLinear rule, so the int8 / uint8 values equal ONNX Runtime's bit for bit:

    q = clamp(rint(float32(x) / float32(scale)) + zero_point, qmin, qmax)

One IEEE float32 division per element, never a multiply by a precomputed reciprocal: the two differ near .5
ties. For x = 17.924828, scale = 1.1564405, zero point 34, ``x / scale`` rounds to exactly 15.5 in float32 and
gives 16 + 34 = 50 (ONNX Runtime's QuantizeLinear gives 50), while ``x * (1 / scale)`` is 15.499999 and would
give 49. rint is round-half-to-even; the zero point is added after rounding (which differs from
``round(x*Q + B)`` only on exact .5 ties with an odd zero point); values far outside the range saturate at
qmin / qmax. Every ISA path equals the numpy expression (all float32)
``np.clip(np.rint(x / np.float32(scale)) + zp, qmin, qmax).astype(dtype)`` bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import math

import numpy as np

from . import _core
from ._validate import as_float32, check_finite, check_out, layout, normalize_axis, qdtype_range

__all__ = [
    "quantize",
    "dequantize",
    "quantize_dynamic",
    "choose_qparams",
    "QParams",
    "QuantizedArray",
    "quantize_reference",
]

DTypeLike = Union[str, type, np.dtype]


class QParams(NamedTuple):
    """Quantization parameters: float32 scale(s) and int32 zero point(s); arrays when per channel."""

    scale: Union[np.float32, np.ndarray]
    zero_point: Union[np.int32, np.ndarray]


class QuantizedArray(NamedTuple):
    """What quantize_dynamic returns: the quantized values and the parameters that produced them."""

    values: np.ndarray
    scale: Union[np.float32, np.ndarray]
    zero_point: Union[np.int32, np.ndarray]


def _channel_param(value, name: str, channels: int, axis: Optional[int], fn: str) -> np.ndarray:
    """A scale or zero point as a 1-D array of `channels` entries (a scalar broadcasts)."""
    a = np.asarray(value)
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"{fn}: {name} must be a real number or an array of them, got dtype {a.dtype}")
    if axis is None:
        if a.size != 1:
            raise ValueError(f"{fn}: {name} has {a.size} values but axis=None (per tensor) takes one; "
                             f"pass axis= for per-channel parameters")
        return a.reshape(1)
    if a.ndim == 0:
        return np.full(channels, a[()], dtype=a.dtype)
    if a.ndim != 1 or a.shape[0] != channels:
        raise ValueError(f"{fn}: {name} must have shape ({channels},) to match axis {axis}, got {a.shape}")
    return a


_SCALARS = (float, int, np.floating, np.integer)


_F32_MAX = float(np.finfo(np.float32).max)
_MIN_SCALE = float(np.finfo(np.float32).tiny)  # subnormal scales are refused (choose_qparams never makes one)


def _scalar_scale(scale, fn: str) -> np.float32:
    """Per-tensor fast path of _scales for a Python or numpy scalar (no array round trips)."""
    s = float(scale)
    if not (_MIN_SCALE <= s <= _F32_MAX):  # also rejects NaN
        if math.isfinite(s) and s > 0:
            raise ValueError(f"{fn}: scale must be a normal float32 in [{_MIN_SCALE:.6g}, {_F32_MAX:.6g}], got {s}")
        raise ValueError(f"{fn}: scale must be finite and > 0, got {s}")
    return np.float32(s)


def _scalar_zero_point(zero_point, qmin: int, qmax: int, fn: str) -> int:
    if isinstance(zero_point, (bool, np.bool_)):
        raise TypeError(f"{fn}: zero_point must be an integer, got {zero_point!r}")
    z = float(zero_point)
    if not (math.isfinite(z) and z == int(z)):
        raise ValueError(f"{fn}: zero_point must be an integer, got {zero_point}")
    if not qmin <= z <= qmax:
        raise ValueError(f"{fn}: zero_point must lie in [{qmin}, {qmax}], got {int(z)}")
    return int(z)


def _scales(scale, channels: int, axis: Optional[int], fn: str) -> np.ndarray:
    """float32 scale(s) with the checks the contract asks for."""
    s = _channel_param(scale, "scale", channels, axis, fn).astype(np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {s if s.size > 1 else s[0]}")
    if np.any(s < _MIN_SCALE) or np.any(s > _F32_MAX):
        raise ValueError(f"{fn}: scale must be a normal float32 in [{_MIN_SCALE:.6g}, {_F32_MAX:.6g}], got "
                         f"{s if s.size > 1 else s[0]}")
    return s.astype(np.float32)


def _zero_points(zero_point, channels: int, axis: Optional[int], qmin: int, qmax: int, fn: str) -> np.ndarray:
    z = _channel_param(zero_point, "zero_point", channels, axis, fn)
    if z.dtype.kind == "f":
        if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
            raise ValueError(f"{fn}: zero_point must be an integer, got {z if z.size > 1 else z[0]}")
    if np.any(z < qmin) or np.any(z > qmax):
        raise ValueError(f"{fn}: zero_point must lie in [{qmin}, {qmax}], got {z if z.size > 1 else z[0]}")
    return z.astype(np.int32)


class _Params:
    """Checked scale / zero point(s). Per-tensor scalars take a fast path (layout None);
    otherwise float32 / int32 arrays with one entry per channel and the (outer, channels, inner) layout."""

    __slots__ = ("scale", "zero_point", "layout")

    def __init__(self, scale, zero_point, shape, axis, qmin: int, qmax: int, fn: str):
        if axis is None and isinstance(scale, _SCALARS) and isinstance(zero_point, _SCALARS):
            self.scale = _scalar_scale(scale, fn)
            self.zero_point = _scalar_zero_point(zero_point, qmin, qmax, fn)
            self.layout = None
        else:
            ax = normalize_axis(axis, len(shape), fn)
            self.layout = layout(shape, ax)
            self.scale = _scales(scale, self.layout[1], ax, fn)
            self.zero_point = _zero_points(zero_point, self.layout[1], ax, qmin, qmax, fn)


def quantize(x, scale, zero_point=0, dtype: DTypeLike = "int8", axis: Optional[int] = None, *,
             narrow_range: bool = False, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Quantize float ``x`` to int8 / uint8: ``clamp(rint(float32(x) / float32(scale)) + zero_point, qmin, qmax)``.

    The ONNX QuantizeLinear rule (one IEEE float32 division per element, round half to even, zero point added
    after rounding, saturate), so results equal ONNX Runtime's QuantizeLinear bit for bit, per tensor and per
    axis. Example: ``quantize(np.float32(17.924828), 1.1564405, 34, "uint8")`` is 50 (17.924828 / 1.1564405 is
    exactly 15.5 in float32, which rounds to 16); multiplying by the reciprocal instead would give 49.

    Args:
        x: float32 array (float16 / float64 are converted to float32 first; float64 saturates at the float32
            range). Any shape, any strides (non-contiguous input is copied).
        scale: > 0 (a normal float32: subnormal scales are a ValueError); a scalar, or with ``axis`` one per
            channel (a scalar broadcasts).
        zero_point: integer in [qmin, qmax]; scalar or one per channel like ``scale``.
        dtype: "int8" / np.int8 ([-128, 127]) or "uint8" / np.uint8 ([0, 255]).
        axis: None for per-tensor parameters, or the channel axis for per-channel ones.
        narrow_range: int8 only: use the symmetric weight range [-127, 127].
        out: optional C-contiguous array of the result's shape and dtype to write into.

    Returns:
        The quantized array, shaped like ``x``.

    Raises:
        TypeError: non-float ``x``, unsupported ``dtype``, wrong ``out`` dtype.
        ValueError: NaN / Inf in ``x`` (with their count and the first index), scale not finite or <= 0, zero
            point out of range or not an integer, parameter shapes not matching ``axis``, bad ``out``.
    """
    fn = "quantize"
    qdt, qmin, qmax = qdtype_range(dtype, narrow_range, fn)
    xa = as_float32(x, "x", fn)
    p = _Params(scale, zero_point, xa.shape, axis, qmin, qmax, fn)
    result = np.empty(xa.shape, dtype=qdt) if out is None else check_out(out, xa.shape, qdt, fn, (x,))
    if xa.size:
        if p.layout is None:
            finite = _core.quantize_tensor(xa, result, float(p.scale), p.zero_point, qmin, qmax)
        else:
            finite = _core.quantize(xa, result, p.scale, p.zero_point, *p.layout, qmin, qmax)
        if not finite:
            check_finite(xa, "x", fn)
    return result


def dequantize(q, scale, zero_point=0, axis: Optional[int] = None, *,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 ``(q - zero_point) * scale``: one float32 multiply per element, identical on every path.

    ``q`` is int8 or uint8; ``scale`` / ``zero_point`` / ``axis`` as in :func:`quantize`.
    """
    fn = "dequantize"
    qa = np.asarray(q)
    if qa.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"dequantize: q must be an int8 or uint8 array, got dtype {qa.dtype}")
    qa = np.ascontiguousarray(qa)
    qmin, qmax = (-128, 127) if qa.dtype == np.int8 else (0, 255)
    p = _Params(scale, zero_point, qa.shape, axis, qmin, qmax, fn)
    f32 = np.dtype(np.float32)
    result = np.empty(qa.shape, dtype=f32) if out is None else check_out(out, qa.shape, f32, fn, (q,))
    if qa.size:
        if p.layout is None:
            _core.dequantize_tensor(qa, result, float(p.scale), p.zero_point)
        else:
            _core.dequantize(qa, result, p.scale, p.zero_point, *p.layout)
    return result


def quantize_reference(x, scale, zero_point=0, dtype: DTypeLike = "int8", axis: Optional[int] = None, *,
                       narrow_range: bool = False) -> np.ndarray:
    """The contract's plain numpy expression (the oracle the kernels are tested against), in float32 throughout:
    ``np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax).astype(dtype)`` (ONNX QuantizeLinear).
    No argument checks beyond the dtype; NaN and Inf are not reported."""
    qdt, qmin, qmax = qdtype_range(dtype, narrow_range, "quantize_reference")
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point).astype(np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        zp = zp.reshape(shape)
    with np.errstate(over="ignore"):  # x / scale beyond the float32 range is inf, then saturates
        return np.clip(np.rint(x / s) + zp, qmin, qmax).astype(qdt)


# ---------------------------------------------------------------------------- choosing the parameters --

def _reduce_axes(ndim: int, axis: Optional[int]):
    return None if axis is None else tuple(i for i in range(ndim) if i != axis)


def _params_scalar(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool, unsigned: bool):
    """The contract's formulas for one range (float64 arithmetic, float32 scale; native, shared with the
    kernels' per-call activation parameters): (numpy float32 scale, numpy int32 zero point)."""
    scale, zp = _core.qparams(float(lo), float(hi), int(qmin), int(qmax), bool(symmetric), bool(unsigned))
    return np.float32(scale), np.int32(zp)


def _dynamic_params(xa: np.ndarray, qmin: int, qmax: int, fn: str) -> Tuple[np.float32, int]:
    """Asymmetric per-tensor (float32 scale, int zero point) of a non-empty float32 array from its min and max,
    exactly quantize_dynamic's choice, in one native call (ValueError naming the first NaN/Inf)."""
    scale, zp, finite = _core.dynamic_qparams(xa, qmin, qmax)
    if not finite:
        check_finite(xa, "x", fn)
    return np.float32(scale), zp


def _params_from_range(lo, hi, qmin: int, qmax: int, symmetric: bool, unsigned: bool) -> Tuple[np.ndarray, np.ndarray]:
    """_params_scalar over arrays of per-channel ranges."""
    pairs = [_params_scalar(a, b, qmin, qmax, symmetric, unsigned)
             for a, b in zip(np.ravel(lo).tolist(), np.ravel(hi).tolist())]
    return (np.array([p[0] for p in pairs], dtype=np.float32), np.array([p[1] for p in pairs], dtype=np.int32))


def _minmax(xa: np.ndarray, axis: Optional[int], fn: str) -> Tuple[np.ndarray, np.ndarray]:
    if xa.size == 0:
        raise ValueError(f"{fn}: x is empty; there is no range to choose parameters from")
    if axis is None:
        lo, hi, finite = _core.minmax(xa)
        if not finite:
            check_finite(xa, "x", fn)
        return lo, hi
    red = _reduce_axes(xa.ndim, axis)
    lo, hi = xa.min(axis=red), xa.max(axis=red)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        check_finite(xa, "x", fn)
    return lo.astype(np.float64), hi.astype(np.float64)


def _mse_range(xc: np.ndarray, lo: float, hi: float, qmin: int, qmax: int, symmetric: bool, unsigned: bool,
               steps: int = 100) -> Tuple[float, float]:
    """Shrink [lo, hi] by factors in (0, 1] and keep the one with the smallest quantization MSE on xc."""
    sample = xc.ravel()
    if sample.size > (1 << 18):  # a fixed stride: deterministic and fast on large tensors
        sample = sample[:: sample.size // (1 << 18) + 1]
    best, best_err = (lo, hi), np.inf
    for i in range(steps, 0, -1):
        f = i / steps
        s, z = _params_scalar(lo * f, hi * f, qmin, qmax, symmetric, unsigned)
        q = quantize(sample, s, z, np.uint8 if unsigned else np.int8)
        err = float(np.mean((dequantize(q, s, z) - sample) ** 2, dtype=np.float64))
        if err < best_err:
            best, best_err = (lo * f, hi * f), err
    return best


def choose_qparams(x, dtype: DTypeLike = "uint8", symmetric: bool = False, method: str = "minmax",
                   axis: Optional[int] = None, *, narrow_range: bool = False,
                   percentile: float = 99.99) -> QParams:
    """Choose scale and zero point for ``x`` (calibration). Deterministic for a given input.

    Ranges always include 0, so 0.0 quantizes exactly. Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``,
    ``zero_point = clamp(qmin - rint(lo / scale))``. Symmetric: ``scale = max|x| / 127`` with zero point 0
    (int8) or 128 (uint8). A tensor whose range is 0 gets scale 1.0 (and quantizes to the zero point); scales
    never fall below the smallest normal float32 (quantize refuses subnormal scales).

    These are pyquant's formulas (float64 arithmetic, the scale rounded once to float32). ONNX's
    DynamicQuantizeLinear uses the same uint8 formulas in float32 arithmetic, so its scale often differs from
    pyquant's in the last bit, and where ``-min / scale`` is (nearly) a .5 tie its zero point can differ by one;
    ``quantize(x, onnx_scale, onnx_zero_point, "uint8")`` gives DynamicQuantizeLinear's values exactly.

    Args:
        x: float array (as in :func:`quantize`).
        dtype: "uint8" (activations, default) or "int8" (weights).
        symmetric: symmetric range around 0.
        method: "minmax" (full range), "percentile" (clip to the ``percentile`` / ``100 - percentile``
            percentiles), or "mse" (the shrunk range with the smallest quantization error).
        axis: None for one pair, or the channel axis for one pair per channel.
        narrow_range: int8 only: the range [-127, 127].
        percentile: for method="percentile", in (50, 100].
    """
    fn = "choose_qparams"
    qdt, qmin, qmax = qdtype_range(dtype, narrow_range, fn)
    if method not in ("minmax", "percentile", "mse"):
        raise ValueError(f"{fn}: method must be 'minmax', 'percentile' or 'mse', got {method!r}")
    xa = as_float32(x, "x", fn)
    ax = normalize_axis(axis, xa.ndim, fn)
    unsigned = qdt == np.uint8
    lo, hi = _minmax(xa, ax, fn)
    if method == "percentile":
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"{fn}: percentile must be in (50, 100], got {percentile}")
        red = _reduce_axes(xa.ndim, ax)
        lo = np.percentile(xa, 100.0 - percentile, axis=red).astype(np.float64)
        hi = np.percentile(xa, percentile, axis=red).astype(np.float64)
    elif method == "mse":
        if ax is None:
            lo, hi = _mse_range(xa, min(lo, 0.0), max(hi, 0.0), qmin, qmax, symmetric, unsigned)
        else:
            moved = np.moveaxis(xa, ax, 0)
            pairs = [_mse_range(moved[c], float(min(lo[c], 0)), float(max(hi[c], 0)), qmin, qmax, symmetric,
                                unsigned) for c in range(moved.shape[0])]
            lo = np.array([p[0] for p in pairs])
            hi = np.array([p[1] for p in pairs])
    if ax is None:
        return QParams(*_params_scalar(lo, hi, qmin, qmax, symmetric, unsigned))
    return QParams(*_params_from_range(lo, hi, qmin, qmax, symmetric, unsigned))


def quantize_dynamic(x, dtype: DTypeLike = "uint8", symmetric: bool = False, axis: Optional[int] = None, *,
                     narrow_range: bool = False) -> QuantizedArray:
    """Find the range of ``x`` and quantize it with min/max parameters: two passes in the native core.

    The parameters are :func:`choose_qparams`'s (method "minmax"); the values are exactly
    ``quantize(x, scale, zero_point, dtype, axis)`` (the ONNX QuantizeLinear rule).

    Returns ``QuantizedArray(values, scale, zero_point)`` (a named tuple, so it unpacks as three values).
    """
    fn = "quantize_dynamic"
    qdt, qmin, qmax = qdtype_range(dtype, narrow_range, fn)
    xa = as_float32(x, "x", fn)
    ax = normalize_axis(axis, xa.ndim, fn)
    lo, hi = _minmax(xa, ax, fn)
    params = _params_scalar if ax is None else _params_from_range
    scale, zp = params(lo, hi, qmin, qmax, symmetric, qdt == np.uint8)
    values = quantize(xa, scale, zp, qdt, ax, narrow_range=narrow_range)
    return QuantizedArray(values, scale, zp)
