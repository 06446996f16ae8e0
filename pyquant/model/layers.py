"""The layers of a :class:`pyquant.Generator`.

Every tensor inside a generator is channels-last: (batch, features) or (batch, height, width, channels)
(NHWC), whatever the source framework; the model converts at its input and output only. Between layers a
tensor is either a float32 array or a :class:`QTensor` (uint8 values with a per-tensor scale and zero point,
handed from one int8 layer straight to the next).

Weight layers (:class:`Dense`, :class:`ConvTranspose2d`) see their weights as one matrix ``W2`` of shape
(K, N): rows are inputs (for a transposed convolution, ``(ky * kw + kx) * Cin + ci``), columns are output
channels. ``precision`` says how they run:

- ``"float32"``: Dense layers on numpy / OpenBLAS GEMM; transposed convolutions with 16+ output channels on
  pyquant's float32 implicit GEMM per sub-pixel phase (``_core.convf32_run``), fewer channels as one BLAS GEMM
  over all taps + the native col2im;
- ``"int8"``: int8 weights, symmetric per output channel (``[-127, 127]``), on pyquant's exact int8 GEMM with
  the bias, folded BatchNorm and activation in the fused epilogue; activations quantized per call (dynamic)
  or with calibrated static parameters (``input_qparams``);
- ``"int4"``: weights symmetric per output channel in ``[-7, 7]`` (scale ``weight_scale`` (N,)), stored packed
  two per byte (``qweight4``: the layer-shaped array's C-order values, element ``2i`` in the low nibble, ``2i+1``
  in the high nibble, two's complement; see :func:`pack_int4`); unpacked exactly into int8 when the kernels
  are packed, so it runs on the int8 kernels with exact integer sums;
- ``"sparse_float32"`` / ``"sparse_int8"``: the pruned matrix as a :class:`pyquant.CSRMatrix` on the CSR
  kernels (int8: per-channel scales, exact int32 sums, fused epilogue).
"""
from __future__ import annotations

import threading
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from .. import _core
from .._validate import activation_id
from ..gemm import PackedWeights, _fused_gemm, pack_weights
from ..quantization import _dynamic_params, choose_qparams, quantize
from ..sparse import CSRMatrix, _frozen, _spmm_s8_native, spmm
from . import _blas, _convt

__all__ = ["QTensor", "Layer", "Dense", "ConvTranspose2d", "BatchNorm", "Activation", "Reshape", "Flatten",
           "PRECISIONS", "ACTIVATION_NAMES"]

PRECISIONS = ("float32", "int8", "int4", "sparse_float32", "sparse_int8")
ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "tanh", "sigmoid")


class QTensor(NamedTuple):
    """A quantized activation tensor: uint8 ``values`` with ``x ~ (values - zero_point) * scale``."""
    values: np.ndarray
    scale: np.float32
    zero_point: int


def _float(x) -> np.ndarray:
    """A tensor as float32 (dequantizing a QTensor)."""
    if isinstance(x, QTensor):
        return (x.values.astype(np.float32) - np.float32(x.zero_point)) * x.scale
    return x


def apply_activation(y: np.ndarray, kind: str, alpha: float) -> np.ndarray:
    """The activation in place on a float32 array (float32 layers; int8 layers do it in the kernel)."""
    if kind == "relu":
        np.maximum(y, 0, out=y)
    elif kind == "leaky_relu":  # y < 0 ? y * alpha : y, without a mask array
        a = np.float32(alpha)
        if 0 <= alpha <= 1:
            np.maximum(y, y * a, out=y)
        elif alpha > 1:
            np.minimum(y, y * a, out=y)
        else:
            np.multiply(y, a, out=y, where=y < 0)
    elif kind == "tanh":
        np.tanh(y, out=y)
    elif kind == "sigmoid":  # 0.5 + 0.5 tanh(y / 2): no overflow for large |y|
        np.multiply(y, np.float32(0.5), out=y)
        np.tanh(y, out=y)
        np.multiply(y, np.float32(0.5), out=y)
        np.add(y, np.float32(0.5), out=y)
    return y


def _check_activation(activation: str, alpha: float, where: str) -> Tuple[str, float]:
    if activation is None:
        activation = "identity"
    code = activation_id(activation, where)
    name = ACTIVATION_NAMES[code]
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise ValueError(f"{where}: alpha must be finite, got {alpha}")
    return name, alpha


class Layer:
    """Base class: a named step of the forward pass. Subclasses define ``kind``, ``forward``,
    ``output_shape``, ``config`` and ``arrays`` (what the model file stores) and ``from_parts``."""

    kind = "layer"

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__}: name must be a non-empty str, got {name!r}")
        self.name = name

    # the model file: JSON-able config and named arrays
    def config(self) -> dict:
        return {}

    def arrays(self) -> Dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_parts(cls, name: str, config: dict, arrays: Dict[str, np.ndarray]) -> "Layer":
        return cls(name=name, **config, **arrays)

    def output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x, out_q: Optional[Tuple[np.float32, int]] = None, buffers: Optional[dict] = None):
        """The layer's output for the batch ``x`` (float32 array or QTensor). ``out_q``: requantize the output
        to uint8 with these (scale, zero point) (int8 layers feeding int8 layers). ``buffers``: a dict in which
        the layer keeps its output array between calls (the Generator passes one per thread)."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return int(sum(a.size for a in self.arrays().values()))

    @property
    def nbytes(self) -> int:
        """Bytes of this layer's arrays (what the model file stores for it)."""
        return int(sum(a.nbytes for a in self.arrays().values()))

    precision = "-"
    sparsity = 0.0

    def describe(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.describe()})"


# ---------------------------------------------------------------------------------------------------------
# Weight layers
# ---------------------------------------------------------------------------------------------------------

class _WeightLayer(Layer):
    """Shared machinery of Dense and ConvTranspose2d over the (K, N) weight matrix W2."""

    def __init__(self, name: str, *, bias, activation="identity", alpha=0.01, precision="float32",
                 weight=None, qweight=None, weight_scale=None, csr=None, input_qparams=None, n_out: int,
                 qweight4=None):
        super().__init__(name)
        where = f"{type(self).__name__} {name!r}"
        self.activation, self.alpha = _check_activation(activation, alpha, where)
        if precision not in PRECISIONS:
            raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        b = np.zeros(n_out, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if b.shape != (n_out,):
            raise ValueError(f"{where}: bias must have shape ({n_out},), got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"{where}: bias has non-finite values")
        self.bias = b
        self.weight = weight            # float32, layer-specific shape (float32 precision)
        self.qweight = qweight          # int8, same shape (int8 precision)
        self.weight_scale = weight_scale  # float32 (N,) (int8, int4 and sparse_int8)
        self.qweight4 = None if qweight4 is None else np.ascontiguousarray(qweight4)  # packed uint8 (int4)
        self.csr = csr                  # CSRMatrix of W2^T (N, K) (sparse precisions)
        self.input_qparams = None
        if input_qparams is not None:
            s, z = input_qparams
            s = np.float32(s)
            if not (np.isfinite(s) and s > 0) or not 0 <= int(z) <= 255:
                raise ValueError(f"{where}: input_qparams must be (scale > 0, zero point in [0, 255])")
            self.input_qparams = (s, int(z))
        self._check_representation(where)
        self._lock = threading.Lock()
        self._cache: dict = {}

    # -- the weight matrix ------------------------------------------------------------------------------
    def _w2_shape(self) -> Tuple[int, int]:
        raise NotImplementedError

    def _to_w2(self, w: np.ndarray) -> np.ndarray:
        """The layer-shaped weight array as the (K, N) matrix (a view where possible)."""
        return w.reshape(self._w2_shape())

    def _from_w2(self, w2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_representation(self, where: str) -> None:
        K, N = self._w2_shape()
        p = self.precision
        if p == "float32":
            if self.weight is None:
                raise ValueError(f"{where}: float32 precision needs float weights")
            if self.weight.dtype != np.float32 or not np.all(np.isfinite(self.weight)):
                raise ValueError(f"{where}: weights must be finite float32")
        elif p == "int8":
            if self.qweight is None or self.weight_scale is None:
                raise ValueError(f"{where}: int8 precision needs qweight and weight_scale")
            if self.qweight.dtype != np.int8:
                raise ValueError(f"{where}: qweight must be int8, got {self.qweight.dtype}")
        elif p == "int4":
            q4 = self.qweight4
            if q4 is None or self.weight_scale is None:
                raise ValueError(f"{where}: int4 precision needs qweight4 and weight_scale")
            if q4.dtype != np.uint8 or q4.shape != ((K * N + 1) // 2,):
                raise ValueError(f"{where}: qweight4 must be uint8 of shape ({(K * N + 1) // 2},) (two int4 "
                                 f"values per byte), got {q4.dtype} {q4.shape}")
            if np.any((q4 & 0xF) == 8) or np.any((q4 >> 4) == 8) or (K * N % 2 and q4[-1] >> 4):
                raise ValueError(f"{where}: qweight4 values must lie in [-7, 7] (an odd count pads with 0)")
        else:
            if not isinstance(self.csr, CSRMatrix):
                raise ValueError(f"{where}: sparse precision needs a CSRMatrix")
            if self.csr.shape != (N, K):
                raise ValueError(f"{where}: the sparse matrix must have shape {(N, K)}, got {self.csr.shape}")
            want = np.int8 if p == "sparse_int8" else np.float32
            if self.csr.dtype != want:
                raise ValueError(f"{where}: {p} needs {np.dtype(want)} values, got {self.csr.dtype}")
        if p in ("int8", "int4"):
            ws = np.asarray(self.weight_scale)
            if ws.shape != (N,) or ws.dtype != np.float32 or not np.all(np.isfinite(ws)) or np.any(ws <= 0):
                raise ValueError(f"{where}: weight_scale must be float32 ({N},), finite and > 0")
            if p == "int8" and self.qweight.size and int(self.qweight.min()) < -127:
                raise ValueError(f"{where}: qweight must lie in [-127, 127]")

    def dense_weight(self) -> np.ndarray:
        """The float32 weights this layer computes with (dequantized / densified), in the layer's shape."""
        p = self.precision
        if p == "float32":
            return self.weight
        if p == "int8":
            w2 = self._to_w2(self.qweight).astype(np.float32) * self.weight_scale
            return self._from_w2(w2)
        if p == "int4":
            return self._from_w2(self._to_w2(self.int8_weights()).astype(np.float32) * self.weight_scale)
        w2t = self.csr.dequantize().to_dense() if p == "sparse_int8" else self.csr.to_dense()
        return self._from_w2(np.ascontiguousarray(w2t.T))

    @property
    def in_features(self) -> int:
        return self._w2_shape()[0]

    @property
    def out_features(self) -> int:
        return self._w2_shape()[1]

    @property
    def sparsity(self) -> float:
        if self.precision.startswith("sparse"):
            return 1.0 - self.csr.density
        return 0.0

    def arrays(self) -> Dict[str, np.ndarray]:
        out = {"bias": self.bias}
        p = self.precision
        if p == "float32":
            out["weight"] = self.weight
        elif p == "int8":
            out["qweight"] = self.qweight
            out["weight_scale"] = self.weight_scale
        elif p == "int4":
            out["qweight4"] = self.qweight4
            out["weight_scale"] = self.weight_scale
        else:
            out["csr_indptr"] = np.asarray(self.csr.indptr)
            out["csr_indices"] = np.asarray(self.csr.indices)
            out["csr_data"] = np.asarray(self.csr.data)
            if p == "sparse_int8":
                out["weight_scale"] = np.asarray(self.csr.row_scales)
        return out

    def config(self) -> dict:
        cfg = {"activation": self.activation, "alpha": self.alpha, "precision": self.precision}
        if self.input_qparams is not None:
            cfg["input_qparams"] = [float(self.input_qparams[0]), int(self.input_qparams[1])]
        return cfg

    @staticmethod
    def _split_arrays(cfg: dict, arrays: Dict[str, np.ndarray], K: int, N: int) -> dict:
        """Constructor keyword arguments from stored arrays (CSR parts assembled and validated)."""
        kw = dict(cfg)
        kw["bias"] = arrays.get("bias")
        p = cfg.get("precision", "float32")
        if p == "float32":
            kw["weight"] = arrays.get("weight")
        elif p == "int8":
            kw["qweight"] = arrays.get("qweight")
            kw["weight_scale"] = arrays.get("weight_scale")
        elif p == "int4":
            kw["qweight4"] = arrays.get("qweight4")
            kw["weight_scale"] = arrays.get("weight_scale")
        elif p in ("sparse_float32", "sparse_int8"):
            try:
                parts = [arrays["csr_indptr"], arrays["csr_indices"], arrays["csr_data"]]
            except KeyError as e:
                raise ValueError(f"missing array {e.args[0]!r}") from None
            rs = arrays.get("weight_scale") if p == "sparse_int8" else None
            kw["csr"] = CSRMatrix(*parts, (N, K), row_scales=rs)
        if kw.get("input_qparams") is not None:
            kw["input_qparams"] = tuple(kw["input_qparams"])
        return kw

    def describe(self) -> str:
        act = self.activation if self.activation != "leaky_relu" else f"leaky_relu({self.alpha:g})"
        return f"{self.precision}, activation={act}"

    # -- compression: new layers, the original is left as it is -------------------------------------------
    def _replace(self, **changes) -> "_WeightLayer":
        cfg = self._geometry()
        kw = dict(name=self.name, bias=self.bias, activation=self.activation, alpha=self.alpha,
                  precision=self.precision, weight=self.weight, qweight=self.qweight,
                  weight_scale=self.weight_scale, csr=self.csr, input_qparams=self.input_qparams,
                  qweight4=self.qweight4)
        kw.update(cfg)
        kw.update(changes)
        if kw["precision"] != "int4":
            kw["qweight4"] = None
        return type(self)(**kw)

    def int8_weights(self) -> np.ndarray:
        """The integer weights of an int8 or int4 layer as int8, in the layer's shape (int4: unpacked)."""
        if self.precision == "int4":
            K, N = self._w2_shape()
            return self._from_w2(unpack_int4(self.qweight4, K * N).reshape(K, N))
        if self.precision != "int8":
            raise ValueError(f"layer {self.name!r}: {self.precision} has no integer weight array")
        return self.qweight

    def _int8_twin(self) -> "_WeightLayer":
        """An int4 layer's runtime form: the same layer with its weights unpacked exactly into int8, built once
        when the kernels are first packed (the int8 kernels then run it; the results are those of an int8 layer
        holding the same integers)."""
        return self._cached(("int8_twin",), lambda: self._replace(precision="int8", qweight=self.int8_weights()))

    def _geometry(self) -> dict:
        return {}

    def quantized(self, input_qparams=None) -> "_WeightLayer":
        """This layer with int8 weights (symmetric per output channel, [-127, 127]); a sparse float layer
        becomes sparse int8 (the same non-zeros)."""
        if self.precision in ("sparse_float32", "sparse_int8"):
            csr = self.csr if self.precision == "sparse_int8" else self.csr.quantize()
            return self._replace(precision="sparse_int8", csr=csr, weight=None, qweight=None,
                                 weight_scale=np.asarray(csr.row_scales), input_qparams=input_qparams)
        w2 = np.ascontiguousarray(self._to_w2(self.dense_weight()))
        qp = choose_qparams(w2, "int8", symmetric=True, axis=1, narrow_range=True)
        q2 = quantize(w2, qp.scale, qp.zero_point, "int8", axis=1, narrow_range=True)
        return self._replace(precision="int8", qweight=self._from_w2(q2), weight=None, csr=None,
                             weight_scale=np.asarray(qp.scale, np.float32), input_qparams=input_qparams)

    def pruned(self, mask2: np.ndarray) -> "_WeightLayer":
        """This layer with the weights outside ``mask2`` (a boolean (K, N) mask over W2) removed, as a
        sparse CSR layer: float32 values for a float layer, int8 (same scales) for an int8 layer."""
        if self.precision in ("int8", "int4"):
            q2t = np.ascontiguousarray(self._to_w2(self.int8_weights()).T)
            m = np.ascontiguousarray(mask2.T)
            csr = _csr_from_masked(q2t, m, row_scales=self.weight_scale)
            return self._replace(precision="sparse_int8", csr=csr, qweight=None, weight=None)
        w2t = np.ascontiguousarray(self._to_w2(self.dense_weight()).T)
        csr = _csr_from_masked(w2t, np.ascontiguousarray(mask2.T))
        if self.precision == "sparse_int8":
            csr = csr.quantize()
            return self._replace(precision="sparse_int8", csr=csr, weight_scale=np.asarray(csr.row_scales))
        return self._replace(precision="sparse_float32", csr=csr, weight=None, qweight=None, weight_scale=None)

    # -- execution ---------------------------------------------------------------------------------------
    def _cached(self, key, make):
        v = self._cache.get(key)
        if v is None:
            with self._lock:
                v = self._cache.get(key)
                if v is None:
                    v = make()
                    self._cache[key] = v
        return v

    def _kernel_rows(self, rows: Optional[np.ndarray]):
        """Runtime weights for the W2 rows ``rows`` (None: all): float (K', N), PackedWeights, or CSR (N, K')."""
        def make():
            p = self.precision
            if p == "float32":
                w2 = self._to_w2(self.weight)
                return np.ascontiguousarray(w2 if rows is None else w2[rows])
            if p == "int8":
                q2 = self._to_w2(self.qweight)
                q2 = np.ascontiguousarray(q2 if rows is None else q2[rows])
                if q2.shape[0] * 255 * 127 > 2**31 - 1:
                    raise ValueError(f"layer {self.name!r}: {q2.shape[0]} inputs per output could overflow the "
                                     f"int32 accumulator")
                return pack_weights(q2, scale=self.weight_scale, bias=self.bias)
            if rows is None:
                return self.csr
            return _csr_columns(self.csr, rows)
        return self._cached(("rows", None if rows is None else rows.tobytes()), make)

    def _input_params(self, x) -> Tuple[np.float32, int]:
        """Activation (scale, zero point) of this call: static when calibrated, else min/max of x."""
        if isinstance(x, QTensor):
            return x.scale, x.zero_point
        if self.input_qparams is not None:
            return self.input_qparams
        if x.size == 0:
            return np.float32(1), 0
        s, z, finite = _core.dynamic_qparams(x, 0, 255)
        if not finite:
            raise ValueError(f"layer {self.name!r}: its input has NaN or Inf values")
        return np.float32(s), int(z)

    def _int8_call(self, a: np.ndarray, in_q, packed: PackedWeights, out: np.ndarray, out_q, col_scale=None,
                   col_bias=None, **tables) -> None:
        """The fused int8 GEMM: quantize (float ``a``) or take (uint8 ``a``) the input, exact int32 sums, then
        ``float32(acc) * (sa * sw[n]) + bias[n]``, the activation, and a float32 or requantized uint8 store.
        ``col_scale`` / ``col_bias``: per-column weight scale and bias when the columns are not the channels."""
        sa, za = in_q
        ws = self.weight_scale if col_scale is None else col_scale
        scale_n = (np.float32(sa) * ws).astype(np.float32)  # one float32 multiply per column
        bias = self.bias if col_bias is None else col_bias
        ok = _fused_gemm(packed, a, 0 if a.dtype == np.uint8 else 2, sa, za, out, scale_n, bias,
                         activation_id(self.activation, "layer"), self.alpha, out_q, **tables)
        if not ok:
            raise ValueError(f"layer {self.name!r}: its input has NaN or Inf values")

    def _matmul(self, a: np.ndarray, w, in_q, out: np.ndarray, out_q) -> None:
        """out (M, N) = act(a @ W + bias) with the layer's precision; ``a`` (M, K) float32, or uint8 with
        ``in_q`` = (scale, zero point); int8 layers requantize into uint8 ``out`` when ``out_q`` is given."""
        p = self.precision
        if p == "int8":
            self._int8_call(a, in_q, w, out, out_q)
            return
        if a.dtype == np.uint8:  # a quantized input reaching a float or sparse layer
            a = (a.astype(np.float32) - np.float32(in_q[1])) * np.float32(in_q[0])
        if p == "float32":
            _blas.matmul(a, w, out)
            out += self.bias
            apply_activation(out, self.activation, self.alpha)
        elif p == "sparse_float32":
            y = spmm(w, _transposed(a))
            _core.transpose(y, out)
            out += self.bias
            apply_activation(out, self.activation, self.alpha)
        else:  # sparse_int8: X quantized per call, epilogue fused in the kernel; with out_q requantized there to
            # the next int8 layer's uint8 input (a quarter of the bytes to move)
            oq = (1.0, 0, -128, 127) if out_q is None else (float(np.float32(out_q[0])), int(out_q[1]), 0, 255)
            _spmm_s8_native(w, np.ascontiguousarray(a, np.float32), True, self.bias,
                            activation_id(self.activation, "layer"), float(self.alpha), out, oq, True, True,
                            f"layer {self.name!r}")

    def _out_buffer(self, shape, out_q, buffers=None, purpose: str = "out"):
        """The layer's ``purpose`` buffer (its output, or a scratch array), uint8 for a requantized output, else
        float32; reused across calls through the model's ``buffers``."""
        dtype = np.uint8 if out_q is not None else np.float32
        if buffers is None:
            return np.empty(shape, dtype)
        key = self.name if purpose == "out" else (self.name, purpose)
        y = buffers.get(key)
        if y is None or y.shape != shape or y.dtype != dtype:
            y = buffers[key] = np.empty(shape, dtype)
        return y

    def _wrap(self, y, out_q):
        return QTensor(y, np.float32(out_q[0]), int(out_q[1])) if out_q is not None else y

    def _prepare_input(self, x):
        """(array, in_q): uint8 values with their params for int8 layers fed a QTensor, float otherwise;
        int8 layers also get their per-call / static parameters for float input."""
        if self.precision == "int8":
            in_q = self._input_params(x)
            return (x.values if isinstance(x, QTensor) else x), in_q
        if isinstance(x, QTensor):
            return x.values, (x.scale, x.zero_point)
        return x, None


def pack_int4(q) -> np.ndarray:
    """Pack integers in [-7, 7] two per byte: the C-order values, element ``2i`` in the low nibble and ``2i+1``
    in the high nibble of byte ``i``, each as a two's complement nibble (an odd count pads with 0)."""
    q = np.asarray(q)
    if q.size and (int(q.min()) < -7 or int(q.max()) > 7):
        raise ValueError("pack_int4: values must lie in [-7, 7]")
    flat = q.astype(np.int8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nib = flat.view(np.uint8) & np.uint8(0xF)
    return np.ascontiguousarray(nib[0::2] | (nib[1::2] << np.uint8(4)))


def unpack_int4(packed: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` int8 values packed by :func:`pack_int4` (1-D)."""
    p = np.asarray(packed, np.uint8)
    out = np.empty(2 * p.size, np.int8)
    out[0::2] = (p & np.uint8(0xF)).view(np.int8)
    out[1::2] = (p >> np.uint8(4)).view(np.int8)
    out[out > 7] -= 16
    return out[:int(size)]


def _transposed(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of a 2-D array's transpose (native blocked transpose)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    t = np.empty((a.shape[1], a.shape[0]), np.float32)
    _core.transpose(a, t)
    return t


def _csr_from_masked(w: np.ndarray, mask: np.ndarray, row_scales=None) -> CSRMatrix:
    """CSR (rows x cols) of the entries of ``w`` where ``mask`` is True (kept even when the value is 0, so the
    stored count is exactly the mask's)."""
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(w.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return CSRMatrix(indptr, cols.astype(np.int32), np.ascontiguousarray(w[rows, cols]), w.shape,
                     row_scales=row_scales)


def _csr_columns(csr: CSRMatrix, cols: np.ndarray) -> CSRMatrix:
    """The CSR matrix restricted to the columns ``cols`` (renumbered 0..len(cols)-1, storage order kept)."""
    new_index = np.full(csr.shape[1], -1, np.int64)
    new_index[cols] = np.arange(cols.size)
    mapped = new_index[csr.indices]
    keep = mapped >= 0
    row_of = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    counts = np.bincount(row_of[keep], minlength=csr.shape[0])
    indptr = np.zeros(csr.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return CSRMatrix(indptr, mapped[keep].astype(np.int32), np.asarray(csr.data)[keep], (csr.shape[0], cols.size),
                     row_scales=csr.row_scales)


class Dense(_WeightLayer):
    """A fully connected layer ``act(x @ weight + bias)`` with ``weight`` of shape (in, out) (the Keras
    layout; a PyTorch ``nn.Linear`` weight is transposed on import)."""

    kind = "dense"

    def __init__(self, name: str, *, in_features: Optional[int] = None, out_features: Optional[int] = None,
                 weight=None, qweight=None, **kw):
        w = weight if weight is not None else qweight
        if w is None and (in_features is None or out_features is None):
            if kw.get("csr") is not None:
                out_features, in_features = kw["csr"].shape
            else:
                raise ValueError(f"Dense {name!r}: weights are required")
        if w is not None:
            w = np.asarray(w)
            if w.ndim != 2:
                raise ValueError(f"Dense {name!r}: weight must be 2-D (in, out), got shape {w.shape}")
            in_features, out_features = w.shape
        self._in, self._out = int(in_features), int(out_features)
        if weight is not None:
            weight = np.ascontiguousarray(weight, dtype=np.float32)
        if qweight is not None:
            qweight = np.ascontiguousarray(qweight)
        super().__init__(name, weight=weight, qweight=qweight, n_out=self._out, **kw)

    def _w2_shape(self):
        return (self._in, self._out)

    def _from_w2(self, w2):
        return np.ascontiguousarray(w2)

    def _geometry(self):
        return {"in_features": self._in, "out_features": self._out}

    def config(self):
        return {**self._geometry(), **super().config()}

    @classmethod
    def from_parts(cls, name, config, arrays):
        cfg = dict(config)
        K, N = int(cfg["in_features"]), int(cfg["out_features"])
        return cls(name=name, **cls._split_arrays(cfg, arrays, K, N))

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self._in,):
            raise ValueError(f"Dense {self.name!r}: expects inputs of shape ({self._in},), got {tuple(input_shape)}")
        return (self._out,)

    def forward(self, x, out_q=None, buffers=None):
        if self.precision == "int4":  # runs on the int8 kernels (weights unpacked exactly)
            return self._int8_twin().forward(x, out_q, buffers)
        a, in_q = self._prepare_input(x)
        if a.ndim != 2:
            raise ValueError(f"Dense {self.name!r}: expects (batch, {self._in}) inputs, got {a.shape}")
        y = self._out_buffer((a.shape[0], self._out), out_q, buffers)
        self._matmul(a, self._kernel_rows(None), in_q, y, out_q)
        return self._wrap(y, out_q)

    def describe(self):
        return f"{self._in} -> {self._out}, " + super().describe()


# Below this many output channels an int8 transposed convolution runs as GEMM + col2im (see _plan).
_COL2IM_MAX_CHANNELS = 16
# Sparse int8 transposed convolutions on at most this many images compute their tap products per input pixel
# (measured on DCGAN 28x28 at 90%, 1 thread: 5x5 layer 274 -> 116 us at one image, 319 -> 215 us at two, slower
# from four: the transposed taps' runs of pixels x images get long enough).
_TAPS_PER_PIXEL_MAX_BATCH = 2
# Sparse int8 transposed convolutions run in the direct form from this many images on (half as many with 12+ taps
# per output pixel: ConvTranspose2d._direct_fits).
_DIRECT_MIN_BATCH = 16


class ConvTranspose2d(_WeightLayer):
    """A 2-D transposed convolution on NHWC tensors, groups 1, dilation 1.

    ``weight`` has shape (kh, kw, Cin, Cout) ("tap-major": PyTorch's (Cin, Cout, kh, kw) and Keras's
    (kh, kw, Cout, Cin) are transposed on import). ``padding = (top, bottom, left, right)`` is what is cropped
    from the full output ``(H - 1) * stride + k`` on each side; a negative bottom/right extends the output
    (PyTorch's ``output_padding``, Keras' "valid" with kernel < stride). So
    ``H_out = (H - 1) * stride_h + kh - top - bottom``.
    """

    kind = "conv_transpose2d"

    def __init__(self, name: str, *, kernel_size=None, in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None, stride=(1, 1), padding=(0, 0, 0, 0), weight=None,
                 qweight=None, **kw):
        w = weight if weight is not None else qweight
        if w is not None:
            w = np.asarray(w)
            if w.ndim != 4:
                raise ValueError(f"ConvTranspose2d {name!r}: weight must be 4-D (kh, kw, Cin, Cout), "
                                 f"got shape {w.shape}")
            kernel_size = w.shape[:2]
            in_channels, out_channels = w.shape[2], w.shape[3]
        if kernel_size is None or in_channels is None or out_channels is None:
            raise ValueError(f"ConvTranspose2d {name!r}: weights (or kernel_size, in/out_channels) are required")
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        where = f"ConvTranspose2d {name!r}"
        if len(self.kernel_size) != 2 or min(self.kernel_size) < 1:
            raise ValueError(f"{where}: kernel_size must be two positive ints, got {kernel_size}")
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise ValueError(f"{where}: stride must be two positive ints, got {stride}")
        if len(self.padding) != 4 or self.padding[0] < 0 or self.padding[2] < 0:
            raise ValueError(f"{where}: padding must be (top, bottom, left, right) with top, left >= 0, "
                             f"got {padding}")
        if min(self.in_channels, self.out_channels) < 1:
            raise ValueError(f"{where}: channel counts must be positive")
        if weight is not None:
            weight = np.ascontiguousarray(weight, dtype=np.float32)
        if qweight is not None:
            qweight = np.ascontiguousarray(qweight)
        super().__init__(name, weight=weight, qweight=qweight, n_out=self.out_channels, **kw)

    def _w2_shape(self):
        kh, kw = self.kernel_size
        return (kh * kw * self.in_channels, self.out_channels)

    def _from_w2(self, w2):
        kh, kw = self.kernel_size
        return np.ascontiguousarray(w2).reshape(kh, kw, self.in_channels, self.out_channels)

    def _geometry(self):
        return {"kernel_size": list(self.kernel_size), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "stride": list(self.stride), "padding": list(self.padding)}

    def config(self):
        return {**self._geometry(), **super().config()}

    @classmethod
    def from_parts(cls, name, config, arrays):
        cfg = dict(config)
        kh, kw = cfg["kernel_size"]
        K, N = int(kh) * int(kw) * int(cfg["in_channels"]), int(cfg["out_channels"])
        return cls(name=name, **cls._split_arrays(cfg, arrays, K, N))

    def output_hw(self, h: int, w: int) -> Tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pb, pl, pr) = self.kernel_size, self.stride, self.padding
        return (h - 1) * sh + kh - pt - pb, (w - 1) * sw + kw - pl - pr

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.in_channels:
            raise ValueError(f"ConvTranspose2d {self.name!r}: expects inputs of shape (H, W, {self.in_channels}), "
                             f"got {tuple(input_shape)}")
        ho, wo = self.output_hw(input_shape[0], input_shape[1])
        if ho < 1 or wo < 1:
            raise ValueError(f"ConvTranspose2d {self.name!r}: the output would be empty ({ho} x {wo})")
        return (ho, wo, self.out_channels)

    def _plan(self, h: int, w: int):
        """How an (h, w) input runs, cached per input size: ("dense", weights, column scale, column bias) when
        the input is 1 x 1 (each output position then sees at most one kernel tap: a Dense layer from Cin to
        (H_out, W_out, Cout)), else ("phases", [(phase, W2 rows, input row table, output row table), ...])."""
        def make():
            ho, wo = self.output_hw(h, w)
            (kh, kw_), (pt, _, pl, _) = self.kernel_size, self.padding
            cin, cout = self.in_channels, self.out_channels
            if h == 1 and w == 1 and self.precision in ("float32", "int8"):
                src = self.weight if self.precision == "float32" else self.qweight
                wd = np.zeros((cin, ho, wo, cout), src.dtype)
                for y in range(ho):
                    for x in range(wo):
                        if 0 <= y + pt < kh and 0 <= x + pl < kw_:
                            wd[:, y, x, :] = src[y + pt, x + pl]
                wd = wd.reshape(cin, ho * wo * cout)
                col_bias = np.tile(self.bias, ho * wo)
                if self.precision == "int8":
                    col_scale = np.tile(self.weight_scale, ho * wo)
                    return "dense", pack_weights(wd, scale=col_scale, bias=col_bias), col_scale, col_bias
                return "dense", wd, None, col_bias
            if self.precision == "int8" and cout < _COL2IM_MAX_CHANNELS:
                # few output channels: one GEMM over the input pixels against all kh * kw taps at once (its
                # columns well used), then the native col2im sums the taps into each output pixel
                wt = np.ascontiguousarray(self.qweight.transpose(2, 0, 1, 3).reshape(cin, kh * kw_ * cout))
                if cin * kh * kw_ * 255 * 127 > 2**31 - 1:
                    raise ValueError(f"layer {self.name!r}: too many inputs per output for the int32 accumulator")
                return "col2im", pack_weights(wt, scale=np.ones(kh * kw_ * cout, np.float32))
            if self.precision == "sparse_int8" and cout < _COL2IM_MAX_CHANNELS:
                # few output channels (an RGB or grey last layer): one to three CSR rows per output pixel are too
                # little work for the sparse kernels' per-row costs, so the int8 weights, zeros included, run on
                # the fused int8 GEMM + col2im below (exact int32 sums over all taps, as in the direct form)
                csr = self.csr
                q = np.zeros(csr.shape, np.int8)
                q[csr._entry_rows(), csr.indices] = csr.data
                wt = np.ascontiguousarray(q.T.reshape(kh, kw_, cin, cout).transpose(2, 0, 1, 3).reshape(cin, -1))
                if cin * kh * kw_ * 255 * 127 > 2**31 - 1:
                    raise ValueError(f"layer {self.name!r}: too many inputs per output for the int32 accumulator")
                return "col2im", pack_weights(wt, scale=np.ones(kh * kw_ * cout, np.float32))
            if self.precision in ("sparse_float32", "sparse_int8"):
                return "sparse_col2im", self._csr_taps()
            if self.precision == "float32" and cout < _COL2IM_MAX_CHANNELS:
                # few output channels: one float GEMM over the input pixels against all taps, then the native
                # col2im (bias and activation fused; taps added in a fixed order)
                return "col2im", np.ascontiguousarray(self.weight.transpose(2, 0, 1, 3).reshape(cin, kh * kw_ * cout))
            phases = _convt.phases_2d((h, w), self.kernel_size, self.stride, (pt, pl), (ho, wo))
            (sy, sx), plan = self.stride, []
            for ph in phases:
                if not ph.taps:
                    plan.append((ph, None, None, None))
                    continue
                rows = np.concatenate([np.arange(cin) + (ky * kw_ + kx) * cin for ky, kx in ph.taps]).astype(np.int64)
                qy = ph.py.q0 + np.arange(ph.py.count)
                qx = ph.px.q0 + np.arange(ph.px.count)
                jy = np.arange(ph.py.taps)
                jx = np.arange(ph.px.taps)
                iy = qy[:, None, None, None] - jy[None, None, :, None]   # (ny, 1, ty, 1)
                ix = qx[None, :, None, None] - jx[None, None, None, :]   # (1, nx, 1, tx)
                valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
                a_rows = np.where(valid, (iy * w + ix) * cin, -1).astype(np.int64)
                a_rows = np.ascontiguousarray(a_rows.reshape(ph.py.count * ph.px.count, ph.py.taps * ph.px.taps))
                oy = ph.py.out0 + sy * np.arange(ph.py.count)
                ox = ph.px.out0 + sx * np.arange(ph.px.count)
                out_rows = np.ascontiguousarray(((oy[:, None] * wo + ox[None, :]) * cout).ravel().astype(np.int64))
                plan.append((ph, rows, a_rows, out_rows))
            return "phases", plan
        return self._cached(("plan", h, w), make)

    def _f32_panels(self, h: int, w: int):
        """Per phase of the (h, w) plan, its float32 weight rows packed for the active path's implicit GEMM
        (_core.convf32_run): panels of nr columns, each K x nr contiguous, zero padded (cached per width)."""
        nr = int(_core.convf32_nr())
        phases = self._plan(h, w)[1]  # (outside make: the cache lock is held there)

        def make():
            w2 = self.weight.reshape(-1, self.out_channels)
            n_pad = -self.out_channels % nr
            out = []
            for _, rows, _, _ in phases:
                if rows is None:
                    out.append(None)
                    continue
                wk = np.pad(w2[rows], ((0, 0), (0, n_pad)))
                out.append(np.ascontiguousarray(wk.reshape(len(rows), -1, nr).transpose(1, 0, 2)))
            return out
        return self._cached(("f32 panels", h, w, nr), make)

    def _float_col2im(self, a2, bhw, out_hw, y, n_taps: int, product, transposed: bool, buffers=None) -> None:
        """y = act(col2im(tap products) + bias) for float32 and sparse layers, in batch blocks of ~8 MB of tap
        products (memory stays bounded for large batches; the block's buffer is reused across calls through
        ``buffers``): ``product(x_block, out)`` writes the block's taps into ``out``: (pixels, n_taps) from the
        block's (pixels, Cin) input; or, when ``transposed``, (n_taps, pixels) from its input with the pixels
        batch-minor: ``(H * W * images, Cin)``."""
        B, H, W = bhw
        step = min(B, max(1, (8 << 20) // (4 * H * W * n_taps)))
        flat = self._out_buffer((step * H * W * n_taps,), None, buffers, "taps")
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            xb = a2[b0 * H * W:b1 * H * W]
            pixels = (b1 - b0) * H * W
            if transposed:
                xb = np.ascontiguousarray(xb.reshape(b1 - b0, H * W, -1).transpose(1, 0, 2)).reshape(pixels, -1)
            taps = flat[:pixels * n_taps].reshape((n_taps, pixels) if transposed else (pixels, n_taps))
            product(xb, taps)
            _core.col2im(taps, b1 - b0, H, W, *out_hw, *self.kernel_size, *self.stride, self.padding[0],
                         self.padding[2], self.bias, self.bias, activation_id(self.activation, "layer"), self.alpha,
                         y[b0:b1], 1.0, 0, 0, 255, taps_transposed=transposed)

    def _direct_plan(self, h: int, w: int, bands: int = 1):
        """The (h, w) plan of the direct sparse int8 form (_core.spconv_s8) with ``bands`` bands of output
        columns: ((Hp, Wp, pad_top, pad_left, band_shift, band_dox), phases), each phase (indptr, offsets, data,
        row_sums, max_abs_row_sum, base_rows, out_pixels, bands_valid). The input is padded so that every tap of
        every phase pixel reads a real or padding pixel; X's virtual row of padded pixel (iy_p, ix_p) and channel
        ci is (iy_p * Wp + ix_p) * Cin + ci, so an entry's offset is its tap's pixel shift and its channel, and a
        phase pixel's base row is its top-left tap's pixel. Band g computes the phase columns g * band_shift on,
        from its images shifted left by as many input columns: the plan lists band 0's pixels, each with the
        number of bands it exists in. The phase matrices are cached per input size, the pixel tables per size
        and band count."""
        phases, (hp, wp, top, left) = self._direct_geometry(h, w)
        mats = self._cached(("direct", h, w), lambda: self._direct_matrices(phases, wp))

        def make():
            (ho, wo), (sy, sx), cin = self.output_hw(h, w), self.stride, self.in_channels
            shift = -(-max(ph.px.count for ph in phases) // bands)  # phase (= input) columns per band
            out = []
            for ph, m in zip(phases, mats):
                ty, tx = ph.py.taps, ph.px.taps
                lx = np.arange(min(shift, ph.px.count))  # band 0's phase columns
                qy = ph.py.q0 + np.arange(ph.py.count)
                qx = ph.px.q0 + lx
                base = (((qy[:, None] + top - (ty - 1)) * wp + (qx[None, :] + left - (tx - 1))) * cin).ravel()
                if not ph.taps:
                    base[:] = 0
                oy = ph.py.out0 + sy * np.arange(ph.py.count)
                ox = ph.px.out0 + sx * lx
                opix = (oy[:, None] * wo + ox[None, :]).ravel()
                valid = np.minimum(bands, -(-(ph.px.count - lx) // shift))
                out.append(m + (base.astype(np.int64), opix.astype(np.int64),
                                np.ascontiguousarray(np.broadcast_to(valid, (ph.py.count, lx.size)).ravel(), np.int64)))
            return (hp, wp, top, left, shift, shift * sx), out
        return self._cached(("direct pixels", h, w, bands), make)

    def _direct_matrices(self, phases, wp: int):
        """Per phase of the direct form, its CSR matrix over the output channels with the entries' row offsets as
        column indices: (indptr, offsets, data, row_sums, max_abs_row_sum) (see _direct_plan), frozen: in range
        by construction (base row + offset < Hp * Wp * Cin), so the native core trusts them as it trusts pyquant's
        frozen CSR matrices instead of re-checking them on every call."""
        kw_, (sy, sx), cin = self.kernel_size[1], self.stride, self.in_channels
        csr = self.csr  # (Cout, kh * kw * Cin), column (ky * kw + kx) * Cin + ci
        cols, data = np.asarray(csr.indices), np.asarray(csr.data)
        rows = csr._entry_rows()
        tap, ci = np.divmod(cols.astype(np.int64), cin)
        ky, kx = np.divmod(tap, kw_)
        out = []
        for ph in phases:  # (a phase without taps stays: its rows are empty, its pixels get bias and activation)
            ty, tx = ph.py.taps, ph.px.taps
            sel = (ky % sy == ph.py.r) & (kx % sx == ph.px.r)
            jy, jx = (ky[sel] - ph.py.r) // sy, (kx[sel] - ph.px.r) // sx
            offsets = (((ty - 1 - jy) * wp + (tx - 1 - jx)) * cin + ci[sel]).astype(np.int32)
            d = np.ascontiguousarray(data[sel])
            p_indptr = np.zeros(self.out_channels + 1, np.int64)
            np.cumsum(np.bincount(rows[sel], minlength=self.out_channels), out=p_indptr[1:])
            d64 = d.astype(np.int64)
            sums = np.bincount(rows[sel], weights=d64, minlength=self.out_channels).astype(np.int64)
            abs_sums = np.bincount(rows[sel], weights=np.abs(d64), minlength=self.out_channels)
            out.append((_frozen(p_indptr), _frozen(offsets), _frozen(d), _frozen(sums),
                        int(abs_sums.max()) if abs_sums.size else 0))
        return out

    def _direct_geometry(self, h: int, w: int):
        """(phases, (Hp, Wp, pad_top, pad_left)): the phases of an (h, w) input and the padded input every tap of
        every phase pixel reads inside (cached per input size)."""
        def make():
            ho, wo = self.output_hw(h, w)
            phases = _convt.phases_2d((h, w), self.kernel_size, self.stride, (self.padding[0], self.padding[2]),
                                      (ho, wo))
            top = max([0] + [ph.py.taps - 1 - ph.py.q0 for ph in phases])
            left = max([0] + [ph.px.taps - 1 - ph.px.q0 for ph in phases])
            hp = top + max([h] + [ph.py.q0 + ph.py.count for ph in phases])
            wp = left + max([w] + [ph.px.q0 + ph.px.count for ph in phases])
            return phases, (hp, wp, top, left)
        return self._cached(("direct geometry", h, w), make)

    def _direct_fits(self, batch: int, h: int, w: int) -> bool:
        """Whether an int8 sparse call runs in the direct form, decided by the shapes alone (never the ISA: the
        two forms round differently). The direct form fills its strips of 64 virtual images with bands of output
        columns, but with few images its bands are narrow and its packing duplicates their halos, while the
        tap-product form then stays in cache. Measured (DCGAN 28x28 and DCGAN-64, 90% sparse, 2 threads, AVX-512
        VNNI and AVX2): the direct form from 16 images, or from 8 when an output pixel gathers 12+ kernel taps
        (kh * kw >= 12 * sy * sx); and while the padded input's row offsets fit int32. (Layers of fewer than 16
        output channels run on the fused int8 GEMM + col2im instead: see _plan.)"""
        (kh, kw_), (sy, sx) = self.kernel_size, self.stride
        least = _DIRECT_MIN_BATCH // (2 if kh * kw_ >= 12 * sy * sx else 1)
        if self.precision != "sparse_int8" or self.out_channels < _COL2IM_MAX_CHANNELS or batch < least:
            return False
        hp, wp = self._direct_geometry(h, w)[1][:2]
        return hp * wp * self.in_channels * _core.SELL_STRIDE < 2**31

    def _direct_bands(self, batch: int, h: int, w: int) -> int:
        """Bands of output columns for the direct form: with fewer than 64 images, enough to fill a strip of 64
        virtual images (a layout choice only: every band count gives the same bits)."""
        count = max(ph.px.count for ph in self._direct_geometry(h, w)[0])
        return max(1, min(64 // max(batch, 1), count))

    def _int8_phases(self, h: int, w: int):
        """Per phase of the (h, w) plan of an int8 layer: (its packed weights, its segment sums) or None, cached
        per input size: one lookup per call (the per-phase caches are keyed by the phases' row lists, and hashing
        those cost ~15 us per phase and call at DCGAN 28x28's 5x5 layer)."""
        key = ("int8 phases", h, w)
        v = self._cache.get(key)
        if v is None:  # built outside _cached: the per-phase lookups take the cache lock themselves
            built = [None if rows is None else (self._kernel_rows(rows), self._segment_sums(rows))
                     for _, rows, _, _ in self._plan(h, w)[1]]
            v = self._cached(key, lambda: built)
        return v

    def _segment_sums(self, rows: np.ndarray) -> np.ndarray:
        """int32 (segments, N): the int8 weight sums of each kernel tap's ``in_channels`` rows of the W2 rows
        ``rows`` (what a tap reading padding, the zero point, adds per unit of zero point)."""
        def make():
            q = self._to_w2(self.qweight)[rows].astype(np.int32)
            return np.ascontiguousarray(q.reshape(-1, self.in_channels, q.shape[1]).sum(axis=1, dtype=np.int32))
        return self._cached(("segment sums", rows.tobytes()), make)

    def _quantized_input(self, a_in: np.ndarray, in_q, buffers) -> np.ndarray:
        """float32 ``a_in`` quantized to uint8 with this call's (scale, zero point) (section 1), into a buffer
        reused across calls."""
        a_in = np.ascontiguousarray(a_in, dtype=np.float32)
        q = self._out_buffer(a_in.shape, in_q, buffers, "quantized input")
        if a_in.size and not _core.quantize_tensor(a_in, q, float(in_q[0]), int(in_q[1]), 0, 255):
            raise ValueError(f"layer {self.name!r}: its input has NaN or Inf values")
        return q

    def _sparse_int8_input(self, a_in: np.ndarray, in_q):
        """(a_in as float32, its uint8 (scale, zero point) for this call): a sparse int8 layer quantizes its input
        per call (section 1, min / max), a uint8 input after dequantizing it."""
        if a_in.dtype == np.uint8:
            a_in = _float(QTensor(a_in, *in_q))
        a_in = np.ascontiguousarray(a_in, dtype=np.float32)
        return a_in, (_dynamic_params(a_in, 0, 255, f"layer {self.name!r}") if a_in.size else (np.float32(1), 0))

    def _direct(self, a_in: np.ndarray, in_q, y: np.ndarray, out_q) -> None:
        """y = the layer on float32 NHWC a_in quantized with in_q (_sparse_int8_input), direct sparse int8 form
        (see _direct_plan): exact int32 sums over all taps of each output pixel, fused epilogue."""
        B, H, W, _ = a_in.shape
        bands = self._direct_bands(B, H, W)
        (hp, wp, top, left, shift, dox), phases = self._direct_plan(H, W, bands)
        o_scale, o_zp = (1.0, 0) if out_q is None else (float(np.float32(out_q[0])), int(out_q[1]))
        _core.spconv_s8(a_in, float(in_q[0]), int(in_q[1]), hp, wp, top, left, bands, shift, dox, phases, True,
                        np.asarray(self.csr.row_scales, np.float32), self.bias, activation_id(self.activation, "layer"),
                        self.alpha, y, o_scale, o_zp, 0, 255)

    def _csr_taps(self) -> CSRMatrix:
        """The sparse weights with one row per (ky, kx, co) and one column per input channel: W_taps, so that
        ``W_taps @ X^T`` gives every input pixel's tap products (rows in col2im's order)."""
        kh, kw_ = self.kernel_size
        cin, cout = self.in_channels, self.out_channels
        csr = self.csr  # (Cout, kh * kw * Cin), column (ky * kw + kx) * Cin + ci
        co = np.repeat(np.arange(cout), np.diff(csr.indptr))
        tap, ci = np.divmod(np.asarray(csr.indices, np.int64), cin)
        rows = tap * cout + co
        order = np.argsort(rows, kind="stable")  # storage order kept within a row
        indptr = np.zeros(kh * kw_ * cout + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=kh * kw_ * cout), out=indptr[1:])
        scales = None if csr.row_scales is None else np.tile(np.asarray(csr.row_scales), kh * kw_)
        return CSRMatrix(indptr, ci[order].astype(np.int32), np.asarray(csr.data)[order], (kh * kw_ * cout, cin),
                         row_scales=scales)

    def forward(self, x, out_q=None, buffers=None):
        if self.precision == "int4":  # runs on the int8 kernels (weights unpacked exactly)
            return self._int8_twin().forward(x, out_q, buffers)
        a_in, in_q = self._prepare_input(x)
        if a_in.ndim != 4 or a_in.shape[3] != self.in_channels:
            raise ValueError(f"ConvTranspose2d {self.name!r}: expects (batch, H, W, {self.in_channels}) inputs, "
                             f"got {a_in.shape}")
        B, H, W, C = a_in.shape
        ho, wo = self.output_hw(H, W)
        N = self.out_channels
        plan = self._plan(H, W)
        y = self._out_buffer((B, ho, wo, N), out_q, buffers)
        if plan[0] == "dense":
            _, wd, col_scale, col_bias = plan
            a2 = a_in.reshape(B, C)
            y2 = y.reshape(B, -1)
            if self.precision == "int8":
                self._int8_call(a2, in_q, wd, y2, out_q, col_scale, col_bias)
            else:
                a2 = _float(QTensor(a2, *in_q)) if a2.dtype == np.uint8 else a2
                _blas.matmul(a2, wd, y2)
                y2 += col_bias
                apply_activation(y2, self.activation, self.alpha)
            return self._wrap(y, out_q)
        if plan[0] == "sparse_col2im" and self._direct_fits(B, H, W):
            self._direct(*self._sparse_int8_input(a_in, in_q), y, out_q)
            return self._wrap(y, out_q)
        if plan[0] == "sparse_col2im" or (plan[0] == "col2im" and self.precision == "float32"):
            a2 = a_in.reshape(B * H * W, C)
            if a2.dtype == np.uint8:
                a2 = _float(QTensor(a2, *in_q))
            if plan[0] == "sparse_col2im":  # W_taps (kh*kw*Cout x Cin, CSR) @ X^T: the tap products
                csr_t = plan[1]
                if self.precision == "sparse_int8":  # X^T read in cache, natively
                    # one or two images: taps stored per input pixel (Y^T, transposed in cache by spmm), so col2im
                    # adds whole kernel rows; more: transposed taps, summed as runs of pixels x images (each form
                    # adds in its own fixed order: chosen by the batch size alone)
                    per_pixel = B <= _TAPS_PER_PIXEL_MAX_BATCH
                    where = f"layer {self.name!r}"
                    product = lambda xb, t: _spmm_s8_native(csr_t, xb, True, None, 0, 0.0, t, (1.0, 0, -128, 127),
                                                            True, per_pixel, where)
                    self._float_col2im(a2, (B, H, W), (ho, wo), y, csr_t.shape[0], product, not per_pixel, buffers)
                else:
                    self._float_col2im(a2, (B, H, W), (ho, wo), y, csr_t.shape[0],
                                       lambda xb, t: spmm(csr_t, _transposed(xb), out=t), True, buffers)
            else:  # X @ W_taps (Cin x kh*kw*Cout) on BLAS
                wt = plan[1]
                self._float_col2im(a2, (B, H, W), (ho, wo), y, wt.shape[1], lambda xb, t: _blas.matmul(xb, wt, t),
                                   False, buffers)
            return self._wrap(y, out_q)
        if plan[0] == "col2im":  # int8: the GEMM over all taps and col2im, fused in one native call
            if self.precision == "sparse_int8":
                a_in, in_q = self._sparse_int8_input(a_in, in_q)
                w_scale = np.asarray(self.csr.row_scales, np.float32)
            else:
                w_scale = self.weight_scale
            sa, za = in_q
            if a_in.dtype != np.uint8:
                a_in = self._quantized_input(a_in, in_q, buffers)
            o_scale, o_zp = (1.0, 0) if out_q is None else (float(np.float32(out_q[0])), int(out_q[1]))
            _core.gemm_col2im(plan[1]._packed(), a_in.reshape(B * H * W, C), za, B, H, W, ho, wo, *self.kernel_size,
                              *self.stride, self.padding[0], self.padding[2],
                              (np.float32(sa) * w_scale).astype(np.float32), self.bias,
                              activation_id(self.activation, "layer"), self.alpha, y, o_scale, o_zp, 0, 255)
            return self._wrap(y, out_q)
        if self.precision == "int8" and a_in.dtype != np.uint8:
            # float input (dynamic, or a float layer before): quantize once, not once per tap and phase
            a_in = self._quantized_input(a_in, in_q, buffers)
        if self.precision == "float32":
            if a_in.dtype == np.uint8:
                a_in = _float(QTensor(a_in, *in_q))
            a_in = np.ascontiguousarray(a_in, dtype=np.float32)
            panels = self._f32_panels(H, W)
        pad_value = in_q[1] if a_in.dtype == np.uint8 else 0
        for i_ph, (ph, rows, a_rows, out_rows) in enumerate(plan[1]):
            if rows is None:  # no kernel tap reaches this phase: bias and activation only
                _convt.phase_view(y, ph, self.stride)[...] = self._bias_only(out_q)
                continue
            if self.precision == "float32":  # an implicit GEMM: gathered and scattered in the native call too
                _core.convf32_run(panels[i_ph], len(rows), N, a_in, a_rows, B, H * W * C, y, out_rows, ho * wo * N,
                                  self.bias, activation_id(self.activation, "layer"), self.alpha, batch_minor=True)
                continue
            if self.precision == "int8":  # gathered and scattered inside the native call: no im2col copy
                # rows pixel-major (batch_minor): a kernel tile is one pixel of several images, so the kernel taps
                # that fall on padding for that pixel are skipped (their zero-point products come from pad sums)
                packed, sums = self._int8_phases(H, W)[i_ph]
                self._int8_call(a_in, in_q, packed, y, out_q, a_rows=a_rows, n_images=B, a_image_stride=H * W * C,
                                out_rows=out_rows, out_image_stride=ho * wo * N, a_pad_sums=sums, batch_minor=True)
                continue
            view = _convt.phase_view(y, ph, self.stride)
            a = _convt.im2col(a_in, ph, pad_value)
            tmp = np.empty((a.shape[0], N), y.dtype)
            self._matmul(a, self._kernel_rows(rows), in_q, tmp, out_q)
            view[...] = tmp.reshape(view.shape)
        return self._wrap(y, out_q)

    def _bias_only(self, out_q):
        v = apply_activation(self.bias.copy(), self.activation, self.alpha)
        if out_q is None:
            return v
        return quantize(v, out_q[0], out_q[1], "uint8")

    def describe(self):
        return (f"{self.in_channels} -> {self.out_channels}, kernel {self.kernel_size}, stride {self.stride}, "
                f"padding {self.padding}, " + super().describe())


# ---------------------------------------------------------------------------------------------------------
# Other layers
# ---------------------------------------------------------------------------------------------------------

class BatchNorm(Layer):
    """Inference BatchNorm that could not be folded into a weight layer: ``y = x * scale + shift`` per channel
    (the last axis)."""

    kind = "batch_norm"

    def __init__(self, name: str, *, scale, shift):
        super().__init__(name)
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.shift = np.ascontiguousarray(shift, dtype=np.float32)
        if self.scale.ndim != 1 or self.shift.shape != self.scale.shape:
            raise ValueError(f"BatchNorm {name!r}: scale and shift must be 1-D of one length")
        if not (np.all(np.isfinite(self.scale)) and np.all(np.isfinite(self.shift))):
            raise ValueError(f"BatchNorm {name!r}: scale and shift must be finite")

    @classmethod
    def from_parts(cls, name, config, arrays):
        return cls(name=name, scale=arrays.get("scale"), shift=arrays.get("shift"))

    def arrays(self):
        return {"scale": self.scale, "shift": self.shift}

    def output_shape(self, input_shape):
        if input_shape[-1] != self.scale.size:
            raise ValueError(f"BatchNorm {self.name!r}: expects {self.scale.size} channels, got shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x, out_q=None, buffers=None):
        y = _float(x) * self.scale
        y += self.shift
        return y

    def describe(self):
        return f"{self.scale.size} channels"


class Activation(Layer):
    """An activation function on its own (one that follows no weight layer it could be fused into)."""

    kind = "activation"

    def __init__(self, name: str, *, activation: str = "identity", alpha: float = 0.01):
        super().__init__(name)
        self.activation, self.alpha = _check_activation(activation, alpha, f"Activation {name!r}")

    def config(self):
        return {"activation": self.activation, "alpha": self.alpha}

    def forward(self, x, out_q=None, buffers=None):
        y = _float(x)
        y = y.copy() if y is x else y
        return apply_activation(y, self.activation, self.alpha)

    def describe(self):
        return self.activation if self.activation != "leaky_relu" else f"leaky_relu({self.alpha:g})"


class Reshape(Layer):
    """Reshape each sample to ``shape`` (channels-last: (features,) or (H, W, C)). A reshape the source
    framework wrote in channels-first order has already been turned into this form on import (the weight
    layer before it has its outputs permuted), so it is a free view here."""

    kind = "reshape"

    def __init__(self, name: str, *, shape):
        super().__init__(name)
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or min(self.shape) < 1 or len(self.shape) not in (1, 3):
            raise ValueError(f"Reshape {name!r}: shape must be (features,) or (H, W, C), got {shape}")

    def config(self):
        return {"shape": list(self.shape)}

    def output_shape(self, input_shape):
        if int(np.prod(input_shape)) != int(np.prod(self.shape)):
            raise ValueError(f"Reshape {self.name!r}: cannot reshape {tuple(input_shape)} to {self.shape}")
        return self.shape

    def forward(self, x, out_q=None, buffers=None):
        if isinstance(x, QTensor):
            return QTensor(x.values.reshape((-1,) + self.shape), x.scale, x.zero_point)
        return x.reshape((-1,) + self.shape)

    def describe(self):
        return f"to {self.shape}"


class Flatten(Layer):
    """Flatten each sample. ``order="chw"`` flattens an image in channels-first order (PyTorch's
    ``nn.Flatten`` on NCHW), ``"hwc"`` in channels-last order (Keras)."""

    kind = "flatten"

    def __init__(self, name: str, *, order: str = "hwc"):
        super().__init__(name)
        if order not in ("hwc", "chw"):
            raise ValueError(f"Flatten {name!r}: order must be 'hwc' or 'chw', got {order!r}")
        self.order = order

    def config(self):
        return {"order": self.order}

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, out_q=None, buffers=None):
        y = _float(x)
        if self.order == "chw" and y.ndim == 4:
            y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
        return y.reshape(y.shape[0], -1)

    def describe(self):
        return f"order {self.order}"


LAYER_TYPES = {cls.kind: cls for cls in (Dense, ConvTranspose2d, BatchNorm, Activation, Reshape, Flatten)}
