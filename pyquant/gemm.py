"""Exact int8 GEMM (CONTRACT section 2): packed weights, integer matmul, quantized linear layers and
fixed-point requantization.

    C[m, n] = sum_k (A[m, k] - za) * (B[k, n] - zb[n])        computed exactly in int32

on every ISA path (scalar, AVX2, AVX-VNNI, AVX-512, AVX512-VNNI), for any number of threads, bit for bit.

Inner loops (``PackedWeights.kernel`` says which one runs):

- ``scalar``: plain C++ (the oracle).
- ``avx2-vpmaddwd-s16``: activations and weights widened to int16, ``vpmaddwd``: exact for every input.
- ``avx2-vpmaddubsw-u8s8``: u8 x s8 ``vpmaddubsw``, about twice as fast, but its int16 pair sums saturate in
  general. pyquant runs it only when exactness is PROVEN: at packing time every adjacent weight pair along K
  (k = 2j, 2j + 1) must satisfy ``|b0| + |b1| <= 128`` (then 255 * 128 = 32640 fits int16); pairs that do not
  are clipped and their remainder is kept as an exact sparse int32 correction, as long as they are at most
  ``max_split_fraction`` of all pairs (else the exact int16 loop runs). Reduced-range activations
  (``linear_int8(..., reduce_range=True)``: uint8 in [0, 127]) are a second proof and use it unsplit.
- ``avxvnni-vpdpbusd-ymm`` / ``avx512vnni-vpdpbusd-zmm``: ``vpdpbusd`` sums four u8 x s8 products in int32
  with no intermediate saturation: exact for every input. int8 activations are shifted by +128 into uint8 and
  corrected with the weights' column sums.
- ``avx512-vpmaddwd-s16``: the int16 loop on zmm (AVX-512 without VNNI).

Execution: activations are packed per call (uint8 or int16 rows, zero padded to the k group; float inputs are
quantized straight into that layout), then the output is cut into fixed tiles of rows x columns (from the
shape only, never the thread count) that run on the thread pool; each micro-tile is accumulated over the
full K in registers and leaves through the fused epilogue (zero-point corrections, then int32 store, or
``float32(acc) * scale[n] + bias[n]``, activation and float32 store or requantization). So every result is
independent of the thread count and bit-identical across the ISA paths.

int32 overflow guard: a ValueError is raised before computing when ``K * max|a - za| * max|b - zb|`` could
exceed 2**31 - 1, with ``max|a - za|`` taken from the activation dtype's range (or the quantization range)
and the zero point, and ``max|b - zb|`` from the ACTUAL packed weights (their per-column min and max).
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Tuple, Union

import numpy as np

from . import _core
from ._validate import activation_id, as_float32, check_finite, check_out, qdtype_range
from .quantization import _dynamic_params, choose_qparams, quantize

__all__ = [
    "PackedWeights",
    "pack_weights",
    "matmul_int8",
    "linear_int8",
    "QuantizedLinear",
    "quantize_multiplier",
    "requantize_fixed_point",
    "matmul_int8_requantize",
]

_INT32_MAX = 2**31 - 1
_MAX_K = 1 << 24

# Output modes of _core.gemm_run.
_MODE_INT32, _MODE_FLOAT, _MODE_QUANT, _MODE_FIXED = 0, 1, 2, 3
_PATH_AVX2_FAST = 2


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _finite_float(v, name: str, fn: str, positive: bool = False) -> np.float32:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(v).__name__}")
    f = np.float32(v)
    if not np.isfinite(f) or (positive and not f > 0):
        raise ValueError(f"{fn}: {name} must be a finite{' positive' if positive else ''} float32, got {v!r}")
    return f


def _per_channel_float(v, name: str, n: int, fn: str, positive: bool = False) -> np.ndarray:
    """A scalar or an (n,) array as a float32 (n,) array, finite (and > 0 when positive)."""
    a = np.asarray(v)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"{fn}: {name} must be a float scalar or array, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(n, a, dtype=np.float64)
    elif a.shape != (n,):
        raise ValueError(f"{fn}: {name} must be a scalar or have shape ({n},), got shape {a.shape}")
    a64 = a.astype(np.float64)
    if not np.all(np.isfinite(a64)):
        check_finite(a64, name, fn)
    out = a64.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{fn}: {name} overflows float32")
    if positive and not np.all(out > 0):
        raise ValueError(f"{fn}: {name} must be > 0 (and not underflow float32)")
    return np.ascontiguousarray(out)


def _per_channel_int(v, name: str, n: int, lo: int, hi: int, fn: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {name} must be an int or an integer array, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(n, int(a), dtype=np.int64)
    elif a.shape != (n,):
        raise ValueError(f"{fn}: {name} must be a scalar or have shape ({n},), got shape {a.shape}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}]")
    return np.ascontiguousarray(a, dtype=np.int32)


class PackedWeights:
    """int8 weights (K, N) packed once for the active ISA's inner loop (create with :func:`pack_weights`).

    Holds the original int8 weights (read-only copy), column sums, per-output-channel scales and the float
    bias (when given), and the packed layout(s). Reusable across calls and threads. If the active ISA changes
    (``pyquant.set_isa`` / ``use_isa``), the weights are repacked lazily for the now-active path. Pickling
    stores the original weights and parameters; the loading machine repacks for its own ISA.
    """

    def __init__(self, weights: np.ndarray, scale: Optional[np.ndarray], bias: Optional[np.ndarray],
                 fast_path: bool, max_split_fraction: float):
        self._w = weights
        self._w.flags.writeable = False
        self.scale = scale
        self.bias = bias
        self.fast_path = bool(fast_path)
        self.max_split_fraction = float(max_split_fraction)
        self._derive()

    def _derive(self):
        w = self._w
        self.col_sums = w.sum(axis=0, dtype=np.int64)
        self.col_min = w.min(axis=0).astype(np.int32)
        self.col_max = w.max(axis=0).astype(np.int32)
        self._max_abs = int(max(np.max(self.col_max), -np.min(self.col_min), 0))
        self._lock = threading.Lock()
        self._cache = {}

    # ---------------------------------------------------------------- pickling: weights, not layouts --
    def __getstate__(self):
        return {"weights": np.array(self._w), "scale": self.scale, "bias": self.bias, "fast_path": self.fast_path,
                "max_split_fraction": self.max_split_fraction}

    def __setstate__(self, state):
        # a pickle may come from anywhere: check the state as pack_weights checks its arguments
        fn = "PackedWeights (unpickling)"
        keys = {"weights", "scale", "bias", "fast_path", "max_split_fraction"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError(f"{fn}: the state must be a dict with {sorted(keys)}")
        w = state["weights"]
        if not isinstance(w, np.ndarray) or w.dtype != np.int8 or w.ndim != 2 or min(w.shape) < 1 or w.shape[0] > _MAX_K:
            raise ValueError(f"{fn}: weights must be a 2-D int8 array with K in [1, {_MAX_K}] and N >= 1")
        N = w.shape[1]
        state = dict(state)
        state["scale"] = None if state["scale"] is None else _per_channel_float(state["scale"], "scale", N, fn, True)
        state["bias"] = None if state["bias"] is None else _per_channel_float(state["bias"], "bias", N, fn)
        if not isinstance(state["fast_path"], (bool, np.bool_)):
            raise ValueError(f"{fn}: fast_path must be a bool")
        msf = state["max_split_fraction"]
        if isinstance(msf, bool) or not isinstance(msf, (int, float)) or not 0.0 <= float(msf) <= 1.0:
            raise ValueError(f"{fn}: max_split_fraction must be a number in [0, 1]")
        self._w = np.ascontiguousarray(state["weights"], dtype=np.int8)
        self._w.flags.writeable = False
        self.scale = state["scale"]
        self.bias = state["bias"]
        self.fast_path = state["fast_path"]
        self.max_split_fraction = state["max_split_fraction"]
        self._derive()

    # ---------------------------------------------------------------------------------- properties --
    @property
    def weights(self) -> np.ndarray:
        """The original int8 weights (K, N), read-only."""
        return self._w

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self._w.shape)

    @property
    def K(self) -> int:
        return int(self._w.shape[0])

    @property
    def N(self) -> int:
        return int(self._w.shape[1])

    def max_abs_deviation(self, zero_point=0) -> int:
        """max |b - zb| over the actual weights (zb: scalar or per column)."""
        if zero_point is None or (_is_int(zero_point) and zero_point == 0):
            return self._max_abs
        zb = np.asarray(zero_point, dtype=np.int64)
        return int(max(np.max(self.col_max - zb), np.max(zb - self.col_min), 0))

    def folded_bias(self, input_zero_point: int = 0, input_dtype="uint8") -> np.ndarray:
        """The int32 term ``-za * colsum[n]`` that folds the activation zero point into a per-channel bias:
        ``(a - za) @ w == a @ w + folded_bias(za)`` (the kernels add it in the fused store). For int8
        activations the kernels run on ``a + 128`` and fold ``za + 128`` instead; this returns the term for
        the dtype given."""
        dt, lo, hi = qdtype_range(input_dtype, False, "folded_bias")
        za = _zero_point(input_zero_point, "input_zero_point", lo, hi, "folded_bias")
        v = -np.int64(za) * self.col_sums
        if np.any(np.abs(v) > _INT32_MAX):
            raise ValueError("folded_bias: the term does not fit in int32")
        return v.astype(np.int32)

    # ---------------------------------------------------------------------------------- packing --
    def _pack(self, path: int, max_corrections: int):
        key = (path, max_corrections < 0)
        pk = self._cache.get(key)
        if pk is None:
            with self._lock:
                pk = self._cache.get(key)
                if pk is None:
                    pk = _core.gemm_pack(self._w, path, max_corrections)
                    self._cache[key] = pk if pk is not None else False
        return pk

    def _packed(self, reduced_range: bool = False):
        """The _core._PackedB for the active ISA (packing it on first use)."""
        exact, fast = _core.gemm_paths()
        if fast >= 0 and reduced_range:
            return self._pack(fast, -1)
        if fast >= 0 and self.fast_path:
            pairs = (self.K // 2) * self.N
            pk = self._pack(fast, int(math.floor(self.max_split_fraction * pairs)))
            if pk:
                return pk
        return self._pack(exact, 0)

    @property
    def kernel(self) -> str:
        """Name of the inner loop the active ISA will use for these weights."""
        return self._packed().kernel

    @property
    def layout(self) -> str:
        """The packed layout for the active ISA."""
        return self._packed().layout

    @property
    def fast_path_proven(self) -> bool:
        """True when the active path runs the u8 x s8 saturating instruction, proven exact for these weights."""
        return self._packed().path == _PATH_AVX2_FAST

    @property
    def n_corrections(self) -> int:
        """Weight pairs split out of the fast path into the exact sparse correction (active ISA)."""
        return int(self._packed().n_corrections)

    def info(self) -> dict:
        pk = self._packed()
        return {"shape": self.shape, "isa": _core.isa(), "kernel": pk.kernel, "layout": pk.layout,
                "fast_path_proven": pk.path == _PATH_AVX2_FAST, "n_corrections": int(pk.n_corrections),
                "packed_bytes": int(pk.nbytes), "per_channel_scale": self.scale is not None and self.scale.size > 1,
                "has_bias": self.bias is not None}

    def __repr__(self) -> str:
        return f"PackedWeights(shape={self.shape}, kernel={self.kernel!r})"


def pack_weights(w, scale=None, bias=None, *, fast_path: bool = True, max_split_fraction: float = 0.02
                 ) -> PackedWeights:
    """Pack int8 weights ``w`` (K, N) once for repeated :func:`matmul_int8` / :func:`linear_int8` calls.

    Args:
        w: int8 array (K, N), any values in [-128, 127] (symmetric [-127, 127] is the usual case).
        scale: optional weight scale(s) for :func:`linear_int8`: a scalar (per tensor) or (N,) (per output
            channel), finite and > 0.
        bias: optional float bias (N,) for :func:`linear_int8`.
        fast_path: allow the proven-exact u8 x s8 loop on AVX2 (see the module docstring).
        max_split_fraction: the largest fraction of weight pairs that may be split out into the exact sparse
            correction for the fast path (in [0, 1]).
    """
    fn = "pack_weights"
    if isinstance(w, PackedWeights):
        raise TypeError(f"{fn}: w is already packed")
    wa = np.asarray(w)
    if wa.dtype != np.int8:
        raise TypeError(f"{fn}: w must be an int8 array (quantize float weights first, e.g. QuantizedLinear), "
                        f"got dtype {wa.dtype}")
    if wa.ndim != 2:
        raise ValueError(f"{fn}: w must be 2-D (K, N), got shape {wa.shape}")
    K, N = wa.shape
    if K < 1 or N < 1:
        raise ValueError(f"{fn}: w must have K >= 1 and N >= 1, got shape {wa.shape}")
    if K > _MAX_K:
        raise ValueError(f"{fn}: K = {K} is larger than the supported {_MAX_K}")
    if not 0.0 <= float(max_split_fraction) <= 1.0:
        raise ValueError(f"{fn}: max_split_fraction must be in [0, 1], got {max_split_fraction}")
    sc = None if scale is None else _per_channel_float(scale, "scale", N, fn, positive=True)
    bs = None if bias is None else _per_channel_float(bias, "bias", N, fn)
    return PackedWeights(np.array(wa, dtype=np.int8, order="C", copy=True), sc, bs, fast_path, max_split_fraction)


def _activation_matrix(a, fn: str) -> np.ndarray:
    aa = np.asarray(a)
    if aa.dtype not in (np.uint8, np.int8):
        raise TypeError(f"{fn}: a must be a uint8 or int8 array, got dtype {aa.dtype}")
    if aa.ndim != 2:
        raise ValueError(f"{fn}: a must be 2-D (M, K), got shape {aa.shape}")
    if aa.shape[0] > 1 and aa.shape[1] > 1 and (aa.strides[1] != 1 or aa.strides[0] < aa.shape[1]):
        aa = np.ascontiguousarray(aa)
    elif not (aa.flags.c_contiguous or aa.strides[1] == 1):
        aa = np.ascontiguousarray(aa)
    return aa


def _as_packed(b, fn: str) -> PackedWeights:
    if isinstance(b, PackedWeights):
        return b
    bb = np.asarray(b)
    if bb.dtype != np.int8:
        raise TypeError(f"{fn}: b must be an int8 array (K, N) or PackedWeights, got dtype {bb.dtype}")
    if bb.ndim != 2:
        raise ValueError(f"{fn}: b must be 2-D (K, N), got shape {bb.shape}")
    return pack_weights(bb)


def _check_k(a: np.ndarray, pw: PackedWeights, fn: str) -> None:
    if a.shape[1] != pw.K:
        raise ValueError(f"{fn}: a has K = {a.shape[1]} columns but the weights have K = {pw.K} rows")


def _check_overflow(K: int, a_dev: int, b_dev: int, fn: str) -> None:
    if K * a_dev * b_dev > _INT32_MAX:
        raise ValueError(f"{fn}: the int32 accumulator could overflow: K * max|a - za| * max|b - zb| = "
                         f"{K} * {a_dev} * {b_dev} = {K * a_dev * b_dev} > 2**31 - 1; split K into parts")


def _zero_point(v, name: str, lo: int, hi: int, fn: str) -> int:
    if not _is_int(v):
        raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}], got {int(v)}")
    return int(v)


def _int8_operands(a, b, a_zero_point, fn: str):
    """Checked integer GEMM operands: (a matrix, PackedWeights, a is int8, a's zero point, max |a - za|)."""
    aa = _activation_matrix(a, fn)
    pw = _as_packed(b, fn)
    _check_k(aa, pw, fn)
    is_s8 = aa.dtype == np.int8
    lo, hi = (-128, 127) if is_s8 else (0, 255)
    za = _zero_point(a_zero_point, "a_zero_point", lo, hi, fn)
    return aa, pw, is_s8, za, max(za - lo, hi - za)


def matmul_int8(a, b, a_zero_point=0, b_zero_point=0, *, out=None) -> np.ndarray:
    """Exact int32 ``(a - a_zero_point) @ (b - b_zero_point)``.

    Args:
        a: uint8 or int8 array (M, K); M may be 0. Rows must have unit column stride, otherwise a contiguous
            copy is made.
        b: int8 array (K, N) or :class:`PackedWeights` (pack once with :func:`pack_weights` to reuse).
        a_zero_point: int in the range of a's dtype.
        b_zero_point: int in [-128, 127], or an (N,) integer array (one per column).
        out: optional C-contiguous int32 (M, N) array to write into.

    Raises ValueError when the int32 result could overflow (see the module docstring).
    """
    fn = "matmul_int8"
    aa, pw, is_s8, za, a_dev = _int8_operands(a, b, a_zero_point, fn)
    if isinstance(b_zero_point, (bool, np.bool_)):
        raise TypeError(f"{fn}: b_zero_point must be an int or an integer array")
    if _is_int(b_zero_point) and b_zero_point == 0:
        zb_arg = None
    else:
        zb = _per_channel_int(b_zero_point, "b_zero_point", pw.N, -128, 127, fn)
        zb_arg = zb if np.any(zb) else None
    _check_overflow(pw.K, a_dev, pw.max_abs_deviation(zb_arg), fn)
    M = aa.shape[0]
    if out is None:
        result = np.empty((M, pw.N), dtype=np.int32)
    else:
        result = check_out(out, (M, pw.N), np.dtype(np.int32), fn, [aa] if zb_arg is None else [aa, zb_arg])
    _core.gemm_run(pw._packed(), aa, 1 if is_s8 else 0, za, 1.0, 255, zb_arg, None, _MODE_INT32, result, None, None,
                   0, 0.0, 1.0, 0, 0, 0, None, None)
    return result


def linear_int8(x, weights: PackedWeights, bias=None, activation: str = "identity", alpha: float = 0.01, *,
                input_scale=None, input_zero_point=None, input_dtype="uint8", reduce_range: bool = False,
                output_dtype="float32", output_scale=None, output_zero_point=0, out=None) -> np.ndarray:
    """Quantized linear layer in one call: ``act(x @ W + bias)`` with int8 weights and quantized activations.

    Steps (one native call after the parameters are known): quantize ``x`` per tensor to ``input_dtype``
    while packing it for the GEMM, with the ONNX QuantizeLinear rule of :func:`pyquant.quantize`
    (``clamp(rint(x / input_scale) + input_zero_point)``, one float32 division per element: the same values
    ``quantize`` gives); exact int8 GEMM; fused epilogue per element
    ``y = float32(acc) * (sa * sw[n]) + bias[n]`` (the product ``sa * sw[n]`` is one float32 multiply), then
    the activation, then a float32 store or requantization to int8/uint8 with the same rule
    (``clamp(rint(y / output_scale) + output_zero_point)``).

    Args:
        x: float array (..., K) (float32; float16/float64 converted; NaN/Inf raise ValueError), or an already
            quantized uint8/int8 array with its ``input_scale`` and ``input_zero_point`` (the output of a
            previous layer's requantizing epilogue: no float round trip).
        weights: :class:`PackedWeights` made with a ``scale`` (per tensor or per output channel).
        bias: float (N,) overriding the packed bias (default: the packed bias, or zeros).
        activation: "identity", "relu", "leaky_relu" (slope ``alpha`` below 0), "tanh" or "sigmoid".
        input_scale, input_zero_point: static activation parameters; None (default) chooses them per call from
            the min/max of x (asymmetric, range including 0; :func:`pyquant.choose_qparams`).
        input_dtype: "uint8" (default) or "int8" activations.
        reduce_range: quantize activations to [0, 127] (uint8 only). On AVX2 this proves the fast u8 x s8 loop
            exact for any weights, so it is used; elsewhere it only costs precision.
        output_dtype: "float32" (default), "int8" or "uint8" (then output_scale is required).
        out: optional C-contiguous output array of shape (..., N) and the output dtype.
    Returns the (..., N) output.
    """
    fn = "linear_int8"
    if not isinstance(weights, PackedWeights):
        raise TypeError(f"{fn}: weights must be PackedWeights (from pack_weights or QuantizedLinear), "
                        f"got {type(weights).__name__}")
    if weights.scale is None:
        raise ValueError(f"{fn}: the packed weights have no scale; pass scale= to pack_weights")
    act = activation_id(activation, fn)
    alpha32 = _finite_float(alpha, "alpha", fn)
    xq = isinstance(x, np.ndarray) and x.dtype in (np.uint8, np.int8)
    if xq:  # already quantized: the values go into the GEMM as they are
        if input_scale is None or input_zero_point is None:
            raise ValueError(f"{fn}: a quantized (uint8/int8) x needs input_scale and input_zero_point")
        if reduce_range:
            raise ValueError(f"{fn}: reduce_range applies to float x only")
        input_dtype = x.dtype
        xa = np.ascontiguousarray(x)
    else:
        xa = as_float32(x, "x", fn)
    if xa.ndim < 1 or xa.shape[-1] != weights.K:
        raise ValueError(f"{fn}: x must have shape (..., {weights.K}), got {xa.shape}")
    lead = xa.shape[:-1]
    x2 = xa.reshape(-1, weights.K)
    M, N = x2.shape[0], weights.N

    in_dt, qmin, qmax = qdtype_range(input_dtype, False, fn)
    if reduce_range:
        if in_dt != np.uint8:
            raise ValueError(f"{fn}: reduce_range needs input_dtype='uint8'")
        qmax = 127
    if input_scale is None:
        if input_zero_point is not None:
            raise ValueError(f"{fn}: input_zero_point given without input_scale")
        sa, za = _dynamic_params(x2, qmin, qmax, fn) if x2.size else (np.float32(1), qmin)
    else:
        sa = _finite_float(input_scale, "input_scale", fn, positive=True)
        za = _zero_point(0 if input_zero_point is None else input_zero_point, "input_zero_point", qmin, qmax, fn)
    za_u8 = za + 128 if in_dt == np.int8 else za  # int8 activations run as uint8 with zero point + 128
    a_qmax = qmax + 128 if in_dt == np.int8 else qmax
    _check_overflow(weights.K, max(za - qmin, qmax - za), weights.max_abs_deviation(0), fn)

    scale_n = (sa * weights.scale).astype(np.float32)  # one float32 multiply per channel
    if not np.all(np.isfinite(scale_n)):
        raise ValueError(f"{fn}: input_scale * weight scale overflows float32")
    if bias is not None:
        bias_n = _per_channel_float(bias, "bias", N, fn)
    elif weights.bias is not None:
        bias_n = weights.bias
    else:
        bias_n = np.zeros(N, dtype=np.float32)

    try:
        want_float = np.dtype(output_dtype) == np.float32
    except TypeError:
        want_float = False
    if want_float:
        out_dt, mode = np.dtype(np.float32), _MODE_FLOAT
        o_scale, o_zp, o_min, o_max = 1.0, 0, 0, 0
    else:
        out_dt, o_min, o_max = qdtype_range(output_dtype, False, fn)
        mode = _MODE_QUANT
        if output_scale is None:
            raise ValueError(f"{fn}: output_scale is required for output_dtype={output_dtype!r}")
        o_scale = _finite_float(output_scale, "output_scale", fn, positive=True)
        o_zp = _zero_point(output_zero_point, "output_zero_point", o_min, o_max, fn)
    shape = lead + (N,)
    if out is None:
        result = np.empty(shape, dtype=out_dt)
    else:
        result = check_out(out, shape, out_dt, fn, [xa])
    a_kind = (1 if xa.dtype == np.int8 else 0) if xq else 2
    ok = _core.gemm_run(weights._packed(reduced_range=bool(reduce_range)), x2, a_kind, za if xq else za_u8, float(sa),
                        a_qmax, None, None, mode, result.reshape(M, N), scale_n, bias_n, act, float(alpha32),
                        float(o_scale), o_zp,
                        o_min, o_max, None, None)
    if not ok:
        check_finite(xa, "x", fn)
    return result


def _fused_gemm(weights: PackedWeights, a: np.ndarray, a_kind: int, sa, za: int, out: np.ndarray, scale_n: np.ndarray,
                bias_n: np.ndarray, act: int, alpha: float, out_q=None, **tables) -> bool:
    """One native quantize + GEMM + epilogue call for callers that validated everything already (the model
    layers): ``a`` uint8 (a_kind 0) or float32 (a_kind 2, quantized with ``sa``, ``za`` while packing);
    ``scale_n = sa * weight scale`` per column; a float32 ``out``, or uint8 / int8 requantized with
    ``out_q = (scale, zero point)``. ``tables``: the row tables of ``_core.gemm_run`` (a convolution's
    gathered input segments and scattered output rows). False when a float input held NaN or Inf."""
    if out_q is None:
        mode, o_scale, o_zp, o_min, o_max = _MODE_FLOAT, 1.0, 0, 0, 0
    else:
        mode, o_scale, o_zp = _MODE_QUANT, float(np.float32(out_q[0])), int(out_q[1])
        o_min, o_max = (0, 255) if out.dtype == np.uint8 else (-128, 127)
    return _core.gemm_run(weights._packed(), a, a_kind, int(za), float(np.float32(sa)), 255, None, None, mode, out,
                          scale_n, bias_n, act, float(alpha), o_scale, o_zp, o_min, o_max, None, None, **tables)


class QuantizedLinear:
    """A Dense / Linear layer with int8 weights: ``act(x @ weight + bias)``.

    ``weight`` is float (in_features, out_features) = (K, N), the Keras Dense kernel layout (for a PyTorch
    ``nn.Linear`` pass ``weight.T``). Weights are quantized symmetrically per output channel to [-127, 127]
    (``per_channel=False``: one scale) and packed once; each call quantizes the input (dynamic per call, or the
    static ``input_scale``/``input_zero_point``) and runs :func:`linear_int8`.
    """

    def __init__(self, weight, bias=None, activation: str = "identity", alpha: float = 0.01, *,
                 per_channel: bool = True, input_scale=None, input_zero_point=None, reduce_range: bool = False,
                 fast_path: bool = True):
        fn = "QuantizedLinear"
        w = as_float32(weight, "weight", fn)
        if w.ndim != 2:
            raise ValueError(f"{fn}: weight must be 2-D (in_features, out_features), got shape {w.shape}")
        check_finite(w, "weight", fn)
        axis = 1 if per_channel else None
        qp = choose_qparams(w, "int8", symmetric=True, axis=axis, narrow_range=True)
        q = quantize(w, qp.scale, qp.zero_point, "int8", axis=axis, narrow_range=True)
        self.activation = activation
        self.alpha = alpha
        activation_id(activation, fn)
        self.input_scale = input_scale
        self.input_zero_point = input_zero_point
        self.reduce_range = reduce_range
        self.packed = pack_weights(q, scale=qp.scale, bias=bias, fast_path=fast_path)

    @property
    def in_features(self) -> int:
        return self.packed.K

    @property
    def out_features(self) -> int:
        return self.packed.N

    def __call__(self, x, *, output_dtype="float32", output_scale=None, output_zero_point=0, out=None):
        return linear_int8(x, self.packed, None, self.activation, self.alpha, input_scale=self.input_scale,
                           input_zero_point=self.input_zero_point, reduce_range=self.reduce_range,
                           output_dtype=output_dtype, output_scale=output_scale,
                           output_zero_point=output_zero_point, out=out)

    def __repr__(self) -> str:
        return (f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation!r}, kernel={self.packed.kernel!r})")


# ------------------------------------------------------------------------ fixed-point requantization --

def quantize_multiplier(real_multiplier) -> Tuple[Union[np.int32, np.ndarray], Union[np.int32, np.ndarray]]:
    """Turn real multiplier(s) in (0, 1) into (multiplier, shift) for the integer-only requantization.

    ``real ~= multiplier * 2**-31 * 2**-shift`` with multiplier in [2**30, 2**31) (Q0.31) and shift in
    [0, 31], multiplier rounded to nearest (ties to even). Multipliers below 2**-32 give (0, 0), i.e. an
    all-zero-point output. Returns numpy int32 scalars for a scalar input, else (n,) int32 arrays.
    """
    fn = "quantize_multiplier"
    r = np.asarray(real_multiplier, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r <= 0) or np.any(r >= 1):
        raise ValueError(f"{fn}: real_multiplier must be finite and in (0, 1)")
    mant, exp = np.frexp(r)  # r = mant * 2**exp, mant in [0.5, 1)
    q = np.rint(mant * 2.0**31).astype(np.int64)
    carry = q == 2**31
    q = np.where(carry, q // 2, q)
    exp = np.where(carry, exp + 1, exp)
    shift = (-exp).astype(np.int64)
    tiny = shift > 31
    q = np.where(tiny, 0, q).astype(np.int32)
    shift = np.where(tiny, 0, shift).astype(np.int32)
    if r.ndim == 0:
        return np.int32(q.reshape(())), np.int32(shift.reshape(()))
    return q, shift


def _fixed_params(multiplier, shift, n: int, fn: str) -> Tuple[np.ndarray, np.ndarray]:
    m = _per_channel_int(multiplier, "multiplier", n, -2**31, 2**31 - 1, fn)
    s = _per_channel_int(shift, "shift", n, 0, 31, fn)
    return m, s


def requantize_fixed_point(acc, multiplier, shift, zero_point=0, dtype="int8") -> np.ndarray:
    """Integer-only requantization of int32 accumulators (no floating point anywhere).

    ``q = clamp(zero_point + RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc, multiplier), shift))``
    with gemmlowp's rounding: the high multiply is ``(acc * multiplier + nudge) / 2**31`` truncated, nudge =
    2**30 (or 1 - 2**30 for negative products), saturating the single overflow case INT32_MIN * INT32_MIN; the
    shift rounds to nearest with ties away from zero. multiplier/shift are per tensor or per channel along the
    last axis (from :func:`quantize_multiplier`).
    """
    fn = "requantize_fixed_point"
    a = np.asarray(acc)
    if a.dtype != np.int32:
        raise TypeError(f"{fn}: acc must be an int32 array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a)
    dt, qmin, qmax = qdtype_range(dtype, False, fn)
    channels = a.shape[-1] if a.ndim else 1
    if a.ndim == 0 or (np.ndim(multiplier) == 0 and np.ndim(shift) == 0):
        channels = 1
    m, s = _fixed_params(multiplier, shift, channels, fn)
    zp = _zero_point(zero_point, "zero_point", qmin, qmax, fn)
    result = np.empty(a.shape, dtype=dt)
    if a.size:
        _core.fixed_point_requantize(a, m, s, zp, qmin, qmax, result, channels)
    return result


def matmul_int8_requantize(a, b, multiplier, shift, a_zero_point=0, *, bias=None, output_zero_point=0,
                           output_dtype="int8", out=None) -> np.ndarray:
    """Integer-only quantized matmul: the exact int32 ``(a - za) @ b + bias`` requantized in the fused store
    with :func:`requantize_fixed_point`'s rule (per-column multiplier/shift), int8 or uint8 output.

    Args:
        a: uint8/int8 (M, K). b: int8 (K, N) or PackedWeights. multiplier, shift: scalars or (N,) int arrays
            (from :func:`quantize_multiplier`). bias: optional int32 (N,) added to the accumulator.
    """
    fn = "matmul_int8_requantize"
    aa, pw, is_s8, za, a_dev = _int8_operands(a, b, a_zero_point, fn)
    _check_overflow(pw.K, a_dev, pw.max_abs_deviation(0), fn)
    m, s = _fixed_params(multiplier, shift, pw.N, fn)
    bias_i32 = None
    if bias is not None:
        bias_i32 = _per_channel_int(bias, "bias", pw.N, -2**31, 2**31 - 1, fn)
        bound = pw.K * a_dev * pw.max_abs_deviation(0) + int(np.max(np.abs(bias_i32.astype(np.int64))))
        if bound > _INT32_MAX:
            raise ValueError(f"{fn}: the int32 accumulator plus bias could overflow (bound {bound} > 2**31 - 1)")
    dt, qmin, qmax = qdtype_range(output_dtype, False, fn)
    zp = _zero_point(output_zero_point, "output_zero_point", qmin, qmax, fn)
    M = aa.shape[0]
    inputs = [aa, m, s] + ([] if bias_i32 is None else [bias_i32])  # per-channel arrays may be the caller's own
    result = np.empty((M, pw.N), dtype=dt) if out is None else check_out(out, (M, pw.N), dt, fn, inputs)
    _core.gemm_run(pw._packed(), aa, 1 if is_s8 else 0, za, 1.0, 255, None, bias_i32, _MODE_FIXED, result, None, None,
                   0, 0.0, 1.0, zp, qmin, qmax, m, s)
    return result
