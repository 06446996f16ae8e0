"""Sparse weights: magnitude pruning, a validated CSR matrix type, and sparse x dense matmul (CONTRACT 3).

    Y = W @ X      W: CSRMatrix of shape (out, in);  X: dense float32 of shape (in, ncols), ncols = batch x pixels

Each output element is summed over W's stored entries of its row IN STORAGE ORDER: float32 products added one
by one, a separate float32 multiply and add per step (no FMA) starting from +0.0, so every ISA path and every
thread count gives the same bits. Unsorted column indices and duplicate entries are accepted as they are:
every stored entry contributes once, in the order stored (duplicates are therefore summed, as in scipy).
``CSRMatrix.canonical()`` sorts a row's indices and sums duplicates when a canonical form is wanted.

int8 CSR (symmetric per-row int8 values with float32 row scales) multiplies activations quantized per call
(dynamic, per tensor, uint8 or int8, with :func:`pyquant.quantize`'s ONNX QuantizeLinear rule) with exact int32
accumulation, then runs the shared fused epilogue: ``y = float32(acc) * (sa * sw[row]) + bias[row]``,
activation, float32 or requantized output.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import numpy as np

from . import _core
from ._validate import activation_id, as_float32, check_finite, check_out, qdtype_range
from .pruning import magnitude_mask, prune_global, prune_magnitude, prune_n_m
from .quantization import _dynamic_params, quantize

__all__ = ["CSRMatrix", "spmm", "prune_magnitude", "prune_global", "prune_n_m", "magnitude_mask"]

_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT32_MAX = 2**31 - 1


def _frozen(a: np.ndarray) -> np.ndarray:
    """An immutable copy: backed by a bytes object, so its WRITEABLE flag can never be set again. The native
    core then trusts the validation done here instead of re-checking the structure on every call."""
    a = np.ascontiguousarray(a)
    return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)


def _shape(shape, fn: str) -> Tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"{fn}: shape must be a (nrows, ncols) tuple, got {shape!r}")
    dims = []
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{fn}: shape entries must be ints, got {shape!r}")
        if v < 0:
            raise ValueError(f"{fn}: shape entries must be >= 0, got {tuple(shape)}")
        dims.append(int(v))
    if dims[1] > _INT32_MAX:
        raise ValueError(f"{fn}: ncols must be < 2**31, got {dims[1]}")
    return dims[0], dims[1]


def _index_array(a, name: str, fn: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{fn}: {name} must have dtype int32 or int64, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{fn}: {name} must be 1-D, got shape {arr.shape}")
    return arr


class CSRMatrix:
    """A validated, immutable compressed-sparse-row matrix with float32 or int8 values.

    ``CSRMatrix(indptr, indices, data, shape, *, row_scales=None)``

    - ``indptr``: int32/int64, length nrows + 1, starts at 0, non-decreasing, ends at nnz.
    - ``indices``: int32/int64 column indices in [0, ncols), length nnz. Unsorted and duplicate indices are
      accepted: each stored entry contributes once, in storage order (see :meth:`canonical`).
    - ``data``: float32 (finite) or int8 values, length nnz.
    - ``row_scales``: int8 data only: float32 scale per row, finite and > 0; the value of an entry is
      ``float32(q) * row_scales[row]``. Default: 1.0 for every row (the int8 values as they are).

    Malformed input raises TypeError (dtypes) or ValueError (shapes / values) before anything else runs.
    The arrays are copied (indptr to int64, indices to int32) into immutable buffers: they are read-only and
    cannot be made writeable, so the structure validated here stays valid for every later call.
    """

    __slots__ = ("_indptr", "_indices", "_data", "_row_scales", "_shape", "_row_stats")

    def __init__(self, indptr, indices, data, shape, *, row_scales=None):
        fn = "CSRMatrix"
        nrows, ncols = _shape(shape, fn)
        ip = _index_array(indptr, "indptr", fn)
        ix = _index_array(indices, "indices", fn)
        d = np.asarray(data)
        if d.dtype not in (np.dtype(np.float32), np.dtype(np.int8)):
            raise TypeError(f"{fn}: data must have dtype float32 or int8, got {d.dtype}")
        if d.ndim != 1:
            raise ValueError(f"{fn}: data must be 1-D, got shape {d.shape}")
        if ip.shape[0] != nrows + 1:
            raise ValueError(f"{fn}: indptr must have nrows + 1 = {nrows + 1} entries, got {ip.shape[0]}")
        nnz = ix.shape[0]
        if d.shape[0] != nnz:
            raise ValueError(f"{fn}: data and indices must have the same length, got {d.shape[0]} and {nnz}")
        if ip[0] != 0:
            raise ValueError(f"{fn}: indptr[0] must be 0, got {ip[0]}")
        if nrows and np.any(ip[1:] < ip[:-1]):
            r = int(np.argmax(ip[1:] < ip[:-1]))
            raise ValueError(f"{fn}: indptr must be non-decreasing; indptr[{r + 1}] = {ip[r + 1]} < "
                             f"indptr[{r}] = {ip[r]}")
        if ip[-1] != nnz:
            raise ValueError(f"{fn}: indptr[-1] must equal nnz = {nnz}, got {ip[-1]}")
        if nnz:
            bad = (ix < 0) | (ix >= ncols)
            if np.any(bad):
                k = int(np.argmax(bad))
                raise ValueError(f"{fn}: indices must lie in [0, ncols = {ncols}); indices[{k}] = {ix[k]}")
        if d.dtype == np.float32:
            check_finite(d, "data", fn)
            if row_scales is not None:
                raise ValueError(f"{fn}: row_scales applies to int8 data only")
            rs = None
        else:
            rs = np.ones(nrows, np.float32) if row_scales is None else np.asarray(row_scales)
            if rs.dtype.kind not in "fiu" or rs.dtype == np.bool_:
                raise TypeError(f"{fn}: row_scales must be real numbers, got dtype {rs.dtype}")
            if rs.shape != (nrows,):
                raise ValueError(f"{fn}: row_scales must have shape ({nrows},), got {rs.shape}")
            rs = rs.astype(np.float32)
            if not np.all(np.isfinite(rs)) or np.any(rs <= 0):
                raise ValueError(f"{fn}: row_scales must be finite and > 0")
            rs = _frozen(rs)
        self._shape = (nrows, ncols)
        self._indptr = _frozen(ip.astype(np.int64, copy=False))
        self._indices = _frozen(ix.astype(np.int32, copy=False))
        self._data = _frozen(d)
        self._row_scales = rs
        self._row_stats = None
        _core.csr_check(self._indptr, self._indices, nrows, ncols)

    # ------------------------------------------------------------------ properties --
    shape = property(lambda self: self._shape, doc="(nrows, ncols) = (out, in)")
    indptr = property(lambda self: self._indptr, doc="int64 row pointers (read-only)")
    indices = property(lambda self: self._indices, doc="int32 column indices (read-only)")
    data = property(lambda self: self._data, doc="float32 or int8 values (read-only)")
    row_scales = property(lambda self: self._row_scales, doc="float32 per-row scales of int8 data, else None")
    dtype = property(lambda self: self._data.dtype, doc="dtype of the stored values (float32 or int8)")

    @property
    def nnz(self) -> int:
        """Number of stored entries (explicit zeros and duplicates included)."""
        return int(self._data.shape[0])

    @property
    def density(self) -> float:
        """nnz / (nrows * ncols) (0.0 for an empty shape)."""
        size = self._shape[0] * self._shape[1]
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of values + column indices + row pointers (+ row scales for int8)."""
        n = self._data.nbytes + self._indices.nbytes + self._indptr.nbytes
        return n + (self._row_scales.nbytes if self._row_scales is not None else 0)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same matrix stored dense in float32."""
        return self._shape[0] * self._shape[1] * 4

    def info(self) -> dict:
        """nnz, density, sparsity, bytes (values + indices + row pointers) next to the dense float32 size."""
        return {"shape": self._shape, "dtype": str(self.dtype), "nnz": self.nnz, "density": self.density,
                "sparsity": 1.0 - self.density, "nbytes": self.nbytes, "dense_nbytes": self.dense_nbytes,
                "compression": (self.dense_nbytes / self.nbytes) if self.nbytes else float("inf")}

    def __repr__(self) -> str:
        return (f"CSRMatrix(shape={self._shape}, dtype={self.dtype}, nnz={self.nnz}, density={self.density:.4f}, "
                f"nbytes={self.nbytes}, dense_nbytes={self.dense_nbytes})")

    @property
    def has_canonical_format(self) -> bool:
        """True when every row's column indices are strictly increasing (sorted, no duplicates)."""
        if self.nnz < 2:
            return True
        step = np.diff(self._indices.astype(np.int64))
        # positions where a new row starts may decrease freely
        row_start = np.zeros(self.nnz, dtype=bool)
        starts = self._indptr[1:-1]
        row_start[starts[starts < self.nnz]] = True
        return bool(np.all((step > 0) | row_start[1:]))

    def _int8_row_stats(self):
        """(per-row sums of the int8 values as an immutable int64 array, largest per-row sum of |values|, the
        sliced ELL form of a matrix of short rows or None), computed once: the native core uses them for the
        zero-point correction, the int32 overflow proof and its short-row kernels."""
        if self._row_stats is None:
            nrows = self._shape[0]
            d = self._data.astype(np.int64)
            rows = self._entry_rows()
            sums = np.zeros(nrows, np.int64)
            abs_sums = np.zeros(nrows, np.int64)
            np.add.at(sums, rows, d)
            np.add.at(abs_sums, rows, np.abs(d))
            short = self.nnz <= _SELL_MAX_MEAN * nrows and self._shape[1] * _SELL_STRIDE <= _INT32_MAX
            sell = self._sliced_ell() if short else None
            self._row_stats = (_frozen(sums), int(abs_sums.max()) if nrows else 0, sell)
        return self._row_stats

    def _sliced_ell(self):
        """The int8 matrix as sliced ELL chunks (layout in csrc/kernels/spmm.hpp, SellView): rows sorted by
        length within windows of _SELL_WINDOW rows (the windows in order, so that the output is still written
        nearly sequentially), taken _SELL_ROWS at a time, each chunk's rows padded with zero weights at column
        0 to the chunk's largest number of quads; each entry's column stored as the byte offset of its packed X
        row (column * _SELL_STRIDE). Returns frozen (rows, ptr, offsets, data)."""
        nrows, nnz, c = self._shape[0], self.nnz, _SELL_ROWS
        lengths = np.diff(self._indptr)
        pos_row = np.arange(nrows, dtype=np.int64)
        order = np.lexsort((pos_row, lengths, pos_row // _SELL_WINDOW))
        nch = -(-nrows // c)
        rows = np.full(nch * c, -1, np.int64)
        rows[:nrows] = order
        quads = np.zeros(nch * c, np.int64)
        quads[:nrows] = (lengths[order] + 3) // 4
        ptr = np.zeros(nch + 1, np.int64)
        np.cumsum(quads.reshape(nch, c).max(axis=1) * (4 * c), out=ptr[1:])
        pos = np.empty(nrows, np.int64)
        pos[order] = pos_row
        er = self._entry_rows()
        j = np.arange(nnz, dtype=np.int64) - self._indptr[er]  # entry's place in its row
        p = pos[er]
        dest = ptr[p // c] + ((j // 4) * c + p % c) * 4 + j % 4
        offsets = np.zeros(int(ptr[-1]), np.int32)
        data = np.zeros(int(ptr[-1]), np.int8)
        offsets[dest] = self._indices * np.int32(_SELL_STRIDE)
        data[dest] = self._data
        return _frozen(rows), _frozen(ptr), _frozen(offsets), _frozen(data)

    # ------------------------------------------------------------------ constructors --
    @classmethod
    def from_dense(cls, w, dtype="float32") -> "CSRMatrix":
        """CSR of the non-zero entries of a 2-D array (sorted indices). ``dtype="int8"`` also quantizes the
        values symmetrically per row (see :meth:`quantize`)."""
        fn = "CSRMatrix.from_dense"
        kind = _value_dtype(dtype, fn)
        a = as_float32(w, "w", fn)
        if a.ndim != 2:
            raise ValueError(f"{fn}: w must be 2-D (out, in), got shape {a.shape}")
        check_finite(a, "w", fn)
        nz = a != 0
        indptr = np.zeros(a.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(nz, axis=1), out=indptr[1:])
        rows, cols = np.nonzero(nz)
        m = cls(indptr, cols.astype(np.int32), a[rows, cols], a.shape)
        return m.quantize() if kind == "int8" else m

    @classmethod
    def from_scipy(cls, m, dtype=None) -> "CSRMatrix":
        """From any scipy.sparse matrix or array (converted to CSR; float values become float32)."""
        if not callable(getattr(m, "tocsr", None)):
            raise TypeError(f"CSRMatrix.from_scipy: expected a scipy.sparse matrix or array, got {type(m).__name__}")
        csr = m.tocsr()
        data = csr.data
        if data.dtype != np.int8:
            data = as_float32(data, "data", "CSRMatrix.from_scipy")
        out = cls(csr.indptr.astype(np.int64), csr.indices.astype(np.int32), data, csr.shape,
                  row_scales=np.ones(csr.shape[0], np.float32) if data.dtype == np.int8 else None)
        if dtype is not None and _value_dtype(dtype, "CSRMatrix.from_scipy") == "int8":
            return out.quantize()
        return out

    def to_scipy(self):
        """scipy.sparse.csr_matrix with float32 values (int8 values dequantized). Needs scipy."""
        try:
            import scipy.sparse as sp
        except ImportError as e:  # pragma: no cover
            raise ImportError("CSRMatrix.to_scipy needs scipy (pip install scipy)") from e
        f = self.dequantize()
        return sp.csr_matrix((f._data.copy(), f._indices.copy(), f._indptr.copy()), shape=self._shape)

    # ------------------------------------------------------------------ conversions --
    def _entry_rows(self) -> np.ndarray:
        return np.repeat(np.arange(self._shape[0], dtype=np.int64), np.diff(self._indptr))

    def quantize(self) -> "CSRMatrix":
        """Symmetric per-row int8: ``scale = max|row| / 127`` (1.0 for a row of zeros), values
        ``clamp(rint(v / scale), -127, 127)`` (:func:`pyquant.quantize`'s ONNX QuantizeLinear rule, one float32
        division per value). int8 matrices are returned as is."""
        if self.dtype == np.int8:
            return self
        nrows = self._shape[0]
        amax = np.zeros(nrows, dtype=np.float32)
        if self.nnz:
            np.maximum.at(amax, self._entry_rows(), np.abs(self._data))
        scales = np.where(amax > 0, amax.astype(np.float64) / 127.0, 1.0)
        scales = np.maximum(scales, np.finfo(np.float32).tiny).astype(np.float32)
        if self.nnz:
            q = quantize(self._data.reshape(1, -1), np.repeat(scales, np.diff(self._indptr)), 0, "int8", axis=1,
                         narrow_range=True).reshape(-1)
        else:
            q = np.zeros(0, dtype=np.int8)
        return CSRMatrix(self._indptr, self._indices, q, self._shape, row_scales=scales)

    def dequantize(self) -> "CSRMatrix":
        """float32 CSR with values ``float32(q) * row_scales[row]``; float32 matrices are returned as is."""
        if self.dtype == np.float32:
            return self
        vals = self._data.astype(np.float32) * self._row_scales[self._entry_rows()]
        return CSRMatrix(self._indptr, self._indices, vals.astype(np.float32), self._shape)

    def canonical(self) -> "CSRMatrix":
        """Sorted column indices with duplicates summed (float32 sums in storage order; int8 duplicates are
        summed in int32 and must fit in int8, else ValueError)."""
        if self.has_canonical_format:
            return self
        rows = self._entry_rows()
        order = np.lexsort((np.arange(self.nnz), self._indices, rows))  # stable: storage order among equals
        r, c, v = rows[order], self._indices[order], self._data[order]
        first = np.ones(len(r), dtype=bool)
        first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
        groups = np.cumsum(first) - 1
        if self.dtype == np.int8:
            sums = np.zeros(int(first.sum()), dtype=np.int64)
            np.add.at(sums, groups, v.astype(np.int64))
            if np.any(sums < -128) or np.any(sums > 127):
                raise ValueError("CSRMatrix.canonical: summed int8 duplicates overflow int8")
            vals = sums.astype(np.int8)
        else:
            vals = np.zeros(int(first.sum()), dtype=np.float32)
            np.add.at(vals, groups, v)
        indptr = np.zeros(self._shape[0] + 1, dtype=np.int64)
        np.add.at(indptr, r[first] + 1, 1)
        np.cumsum(indptr, out=indptr)
        return CSRMatrix(indptr, c[first], vals, self._shape, row_scales=self._row_scales)

    def to_dense(self) -> np.ndarray:
        """float32 dense array (int8 values dequantized; duplicates summed in storage order)."""
        f = self.dequantize()
        out = np.zeros(self._shape, dtype=np.float32)
        if self.nnz:
            np.add.at(out, (f._entry_rows(), f._indices), f._data)
        return out

    toarray = to_dense

    # numpy defers ``x @ W`` to __rmatmul__ instead of treating W as an object array
    __array_ufunc__ = None

    def __matmul__(self, x):
        if isinstance(x, CSRMatrix):
            return NotImplemented
        return spmm(self, x)

    def __rmatmul__(self, x):
        raise TypeError(f"X @ W with a sparse W on the right is not supported; compute W @ X with W of shape "
                        f"(out, in) and X of shape (in, ncols) (this W is {self._shape})")


# int8 short-row layout (sliced ELL): used for matrices of at most _SELL_MAX_MEAN entries per row on average,
# _SELL_ROWS rows per chunk (the native kernels' kSellRows), rows sorted by length within _SELL_WINDOW rows
_SELL_MAX_MEAN = 16
_SELL_ROWS = _core.SELL_ROWS
_SELL_STRIDE = _core.SELL_STRIDE
_SELL_WINDOW = _core.SELL_WINDOW


def _value_dtype(dtype, fn: str) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt == np.float32:
        return "float32"
    if dt == np.int8:
        return "int8"
    raise TypeError(f"{fn}: dtype must be 'float32' or 'int8', got {dtype!r}")


def spmm(w_csr: CSRMatrix, x, *, bias=None, activation: Optional[str] = None, alpha: float = 0.01,
         act_dtype="uint8", out_dtype="float32", out_scale: Optional[float] = None, out_zero_point: int = 0,
         out: Optional[np.ndarray] = None, transposed: Union[bool, str] = False) -> np.ndarray:
    """``Y = W @ X`` with W a :class:`CSRMatrix` of shape (out, in) and X dense of shape (in, ncols) (or a
    vector of shape (in,), giving a vector of shape (out,)).

    ``transposed=True``: the Linear-layer layout, ``Y^T = X^T @ W^T``: x has shape (ncols, in) and the result
    (ncols, out), with the same values as ``spmm(w_csr, x.T).T``; ``transposed="x"``: x has shape (ncols, in)
    and the result (out, ncols), the values of ``spmm(w_csr, x.T)``. (int8 W: the transposes happen in cache
    inside the native call, never as separate passes over memory.)

    float32 W: float32 result; each element sums its row's products in CSR storage order (separate float32
    multiply and add), bit-identical on every ISA path and thread count. Only plain ``W @ X`` here: the
    epilogue arguments below need an int8 W (``w_csr.quantize()``).

    int8 W (per-row scales ``sw``): X is quantized per call, per tensor, to ``act_dtype`` ("uint8"
    asymmetric min/max, or "int8"), with scale ``sa`` and zero point ``za`` (CONTRACT section 1); then
    ``acc = sum_k q_w[k] * (q_x[idx[k], j] - za)`` exactly in int32 and the fused epilogue
    ``y = float32(acc) * (sa * sw[row]) + bias[row]``, the activation ("identity", "relu", "leaky_relu" with
    slope ``alpha``, "tanh", "sigmoid"), and a float32 store or, with ``out_dtype`` "int8"/"uint8", the
    requantization ``clamp(rint(y / out_scale) + out_zero_point)`` (one float32 division, the ONNX QuantizeLinear
    rule of :func:`pyquant.quantize`; X is quantized with the same rule, so its values are what
    ``quantize_dynamic(x, act_dtype)`` gives). A row whose int32 sum could overflow
    is a ValueError.

    ``out``: optional C-contiguous array of the result's shape and dtype, not overlapping the inputs.
    """
    fn = "spmm"
    if not isinstance(w_csr, CSRMatrix):
        raise TypeError(f"{fn}: w_csr must be a pyquant.CSRMatrix (see CSRMatrix.from_dense / from_scipy), got "
                        f"{type(w_csr).__name__}")
    x_in = x
    xa = as_float32(x, "x", fn)
    vector = xa.ndim == 1
    if vector:
        xa = xa.reshape(-1, 1)
    if transposed not in (False, True, "x"):
        raise ValueError(f"{fn}: transposed must be False, True or 'x', got {transposed!r}")
    x_t, y_t = bool(transposed), transposed is True
    if xa.ndim != 2 or (x_t and vector):
        raise ValueError(f"{fn}: x must be " + ("2-D (ncols, in)" if x_t else "1-D or 2-D (in, ncols)")
                         + f", got shape {np.shape(x_in)}")
    nrows, ncols = w_csr.shape
    k_axis = 1 if x_t else 0
    if xa.shape[k_axis] != ncols:
        raise ValueError(f"{fn}: x has {xa.shape[k_axis]} {'columns' if x_t else 'rows'} but W has {ncols} "
                         f"columns (W is {w_csr.shape})")
    n = xa.shape[1 - k_axis]
    shape = (nrows,) if vector else ((n, nrows) if y_t else (nrows, n))
    act = activation_id(activation, fn)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise TypeError(f"{fn}: alpha must be a finite real number, got {alpha!r}")
    try:
        odt = np.dtype(out_dtype)
    except TypeError:
        odt = None
    if odt not in (np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"{fn}: out_dtype must be 'float32', 'int8' or 'uint8', got {out_dtype!r}")
    # out must be writeable, and W's arrays live in immutable bytes objects: only X (and bias) can overlap it
    inputs = (np.asarray(x_in),)

    if w_csr.dtype == np.float32:
        if bias is not None or act != 0 or odt != np.float32:
            raise ValueError(f"{fn}: bias, activation and out_dtype need an int8 CSRMatrix (w_csr.quantize()); "
                             f"for float32 W apply them to the result")
        result = np.empty(shape, np.float32) if out is None else check_out(out, shape, np.dtype(np.float32), fn,
                                                                             inputs)
        xn = np.ascontiguousarray(xa.T) if x_t else xa  # (no native transposed forms for float32 W)
        if y_t:
            y = np.empty((nrows, n), np.float32)
            _core.spmm_f32(w_csr.indptr, w_csr.indices, w_csr.data, nrows, ncols, xn, y, True)
            _core.transpose(y, result)
        else:
            _core.spmm_f32(w_csr.indptr, w_csr.indices, w_csr.data, nrows, ncols, xn, result.reshape(nrows, n), True)
        return result

    # ---- int8 W
    adt, _, _ = qdtype_range(act_dtype, False, fn)
    b = None
    if bias is not None:
        b = as_float32(bias, "bias", fn)
        if b.shape != (nrows,):
            raise ValueError(f"{fn}: bias must have shape ({nrows},), got {b.shape}")
        check_finite(b, "bias", fn)
        b = np.ascontiguousarray(b)
    o_scale, ozp, qmin, qmax = 1.0, 0, -128, 127
    if odt != np.float32:
        _, qmin, qmax = qdtype_range(odt, False, fn)
        if out_scale is None:
            raise ValueError(f"{fn}: out_dtype {odt} needs out_scale (and out_zero_point)")
        s = float(out_scale)
        if not np.isfinite(s) or not np.isfinite(np.float32(s)) or not np.float32(s) > 0:
            raise ValueError(f"{fn}: out_scale must be finite and > 0, got {out_scale}")
        o_scale = float(np.float32(s))
        if isinstance(out_zero_point, bool) or not isinstance(out_zero_point, numbers.Integral):
            raise TypeError(f"{fn}: out_zero_point must be an int, got {out_zero_point!r}")
        ozp = int(out_zero_point)
        if not qmin <= ozp <= qmax:
            raise ValueError(f"{fn}: out_zero_point must lie in [{qmin}, {qmax}], got {ozp}")
    elif out_scale is not None:
        raise ValueError(f"{fn}: out_scale applies to int8/uint8 out_dtype only")
    result = np.empty(shape, odt) if out is None else check_out(out, shape, odt, fn,
                                                                inputs if bias is None else inputs + (np.asarray(bias),))
    _spmm_s8_native(w_csr, xa, adt == np.uint8, b, act, float(alpha), result.reshape(shape if y_t else (nrows, n)),
                    (o_scale, ozp, qmin, qmax), x_t, y_t, fn)
    return result


def _spmm_s8_native(w_csr: CSRMatrix, xa: np.ndarray, x_u8: bool, bias: Optional[np.ndarray], act: int, alpha: float,
                    out: np.ndarray, out_q: Tuple[float, int, int, int], x_t: bool, y_t: bool, fn: str) -> None:
    """The native int8 spmm on checked arguments (spmm's, or a pyquant layer's own: a float32 2-D ``xa``, the
    layer's bias, its output buffer of the right shape and dtype; no per-call validation in Python).
    ``out_q``: (output scale, zero point, qmin, qmax); (1.0, 0, -128, 127) for a float32 ``out``."""
    # dynamic per-tensor parameters, exactly as quantize_dynamic(x, act_dtype) chooses them; the native core
    # quantizes X with them (section-1 rule, the quantize kernels) while packing it
    qmin, qmax = (0, 255) if x_u8 else (-128, 127)
    sa, za = _dynamic_params(xa, qmin, qmax, fn) if xa.size else (1.0, 0)
    # the kernels scale row r by the float32 product row_scales[r] * sa
    nrows, ncols = w_csr.shape
    _core.spmm_s8(w_csr.indptr, w_csr.indices, w_csr.data, w_csr.row_scales, sa, nrows, ncols, xa, za, x_u8, bias,
                  act, alpha, out, *out_q, True, *w_csr._int8_row_stats(), x_t, y_t)
