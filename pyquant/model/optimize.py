"""Optimization after compression (the design's step 3): layer-wise reconstruction from a calibration latent
batch, per-layer sensitivity, and :func:`compress`, which picks each layer's precision and sparsity for a
fidelity target. numpy / LAPACK only.

**The layer as a least-squares problem.** A weight layer computes ``Y = A @ W2`` (pre-activation, plus the
bias) where ``W2`` (K, N) has the inputs as rows. Changing ``W2`` by ``dW`` changes the calibration output by
``||A dW||^2 = sum_n dW[:, n]^T H dW[:, n]`` with ``H = A^T A`` (K, K), the same for every output channel, so
the optimal brain surgeon machinery applies column-parallel (GPTQ / SparseGPT): walk the rows of ``W2`` in
order; prune or round row ``k`` and spread its error over the rows not yet fixed with the inverse Hessian
(through the upper Cholesky factor ``U`` of ``H^-1``: ``W[k+1:] -= U[k, k+1:]^T e / U[k, k]``), in blocks of
128 rows with the lazy batch update between blocks.

**Which A for a transposed convolution.** A stride-s transposed convolution is ``s_h * s_w`` ordinary
convolutions, one per output "phase" (see :mod:`pyquant.model._convt`): every output pixel of one phase is
``im2col_phase(x) @ W2[rows of the phase's taps]``, and a kernel tap belongs to exactly one phase. So the exact
Hessian of the layer's output error is BLOCK-DIAGONAL over phases, each block over (tap, input channel) pairs
of that phase: ``H_phase = A_phase^T A_phase`` with ``A_phase`` the phase's im2col (zeros outside the input
grid, exactly as the layer runs). That is the full im2col Hessian without its zero blocks: for the usual
kernel 4 / stride 2 it is four (4 Cin)^2 blocks instead of one (16 Cin)^2 (Cin = 512: 2048^2, 32 MB in
float64, instead of 8192^2). We use it rather than the Cin-only Hessian (one ``X^T X`` over input pixels,
shared by every tap), which ignores how the taps of one output pixel interact (neighbouring input pixels are
strongly correlated in a generator's feature maps) and the borders. A phase with more than ``max_block``
(default 2048) rows (a stride-1 5x5 kernel over 256 channels: 6400) is split into groups of whole taps, each
with its own diagonal block (the cross-tap blocks between groups are dropped: a block-diagonal
approximation; with one tap per group this is exactly the Cin-level view). Dense layers: ``H = X^T X``.

**What is fitted.** Layers are compressed in order, each on the inputs produced by the already-compressed
layers before it (``A`` is the compressed stream); the target of the reconstruction is the layer's float
weights on those inputs. Bias correction then adds, per output channel, the mean of (float layer on the float
model's inputs) - (compressed layer on the compressed inputs), pre-activation: it also absorbs the drift of the
earlier layers. Every reconstruction is checked against its starting point (round-to-nearest / magnitude
pruning of the same layer on the same inputs): if the reconstructed layer's calibration error is not lower,
the starting point is kept, so reconstruction never makes a layer worse on the calibration data.

**Quantization.** int8 ``[-127, 127]`` and int4 ``[-7, 7]``, symmetric per output channel (per-group scales
along the input are not offered: the int8 kernel's epilogue takes one scale per output column, so groups would
need one GEMM each). Round-to-nearest ("rtn") takes ``max |w| / qmax`` as the scale; "gptq" rounds with error
feedback. At int8 its scale is a clipped one per channel minimizing the ``diag(H)``-weighted rounding error (a
proxy); at int4 each group's rows are processed in descending ``diag(H)`` order ("act order") and each channel's
clip is the one whose whole error-feedback rounding has the least exact calibration error ``e^T H e`` (the
channels are independent given their scales, so all candidate clips run in one sweep over tiled weights).
A Dense layer's Hessian is shrunk toward its mean diagonal (damping ``K / n`` for ``n`` calibration rows):
with a few hundred latents for ~100 inputs the sample Hessian is mostly noise, and feeding the error back
along it fits that noise (better on the calibration latents, worse on held-out ones). Pruning is unstructured (exactly ``round((1 - s) K N)`` weights kept per layer, like
:func:`pyquant.prune_model`) or 2:4 (exactly 2 of every 4 consecutive inputs per output channel). Joint
pruning and quantization give a sparse int8 layer.

Fidelity is PSNR (dB) of the compressed model's images against the float32 model's on the same latents,
over the peak-to-peak range 2 (tanh images in [-1, 1]).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _blas, _convt
from .generator import Generator
from .layers import ConvTranspose2d, Dense, _float, _WeightLayer, pack_int4

__all__ = ["Choice", "psnr", "compress_layer", "optimize_model", "sensitivity", "plot_sensitivity",
           "compress", "CompressTable", "DEFAULT_SENSITIVITY_OPTIONS"]

BLOCKSIZE = 128
DAMP = 0.01
MAX_BLOCK = 2048
MAX_ROWS_PER_DIM = 16  # calibration rows per Hessian dimension kept for a transposed convolution
_QMAX = {8: 127, 4: 7}
_CLIP_GRID = np.linspace(1.0, 0.55, 10)
# dense GPTQ at these bit widths: rows in act order and each channel's clip chosen by the exact calibration
# error of the whole error-feedback rounding (measured, int4: +0.2 dB on the built-in model, +0.15 dB on the
# trained DCGAN 28x28; int8: no change, so int8 keeps the cheaper diag(H)-proxy scale and the natural order)
QUANT_SEARCH_BITS = (4,)
QUANT_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


# ------------------------------------------------------------------------------------------- choices --

@dataclass(frozen=True)
class Choice:
    """One way to compress a layer: ``bits`` (None: float32, 8, 4) and ``sparsity`` (0.0 .. <1, or "2:4")."""
    bits: Optional[int] = None
    sparsity: Union[float, str] = 0.0

    def __post_init__(self):
        if self.bits not in (None, 8, 4):
            raise ValueError(f"Choice: bits must be None, 8 or 4, got {self.bits!r}")
        if isinstance(self.sparsity, str):
            if self.sparsity != "2:4":
                raise ValueError(f"Choice: sparsity must be a float in [0, 1) or '2:4', got {self.sparsity!r}")
        elif not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"Choice: sparsity must lie in [0, 1), got {self.sparsity!r}")
        if self.bits == 4 and self.sparse:
            raise ValueError("Choice: int4 is dense only (sparse layers store int8 values)")

    @property
    def sparse(self) -> bool:
        return self.sparsity == "2:4" or float(self.sparsity) > 0

    @property
    def label(self) -> str:
        parts = []
        if self.sparse:
            parts.append("2:4" if self.sparsity == "2:4" else f"sp{round(100 * float(self.sparsity))}")
        if self.bits:
            parts.append(f"int{self.bits}")
        return "+".join(parts) if parts else "float32"

    @classmethod
    def parse(cls, spec) -> "Choice":
        """From a Choice, a label ("float32", "int8", "int4", "sp50", "sp75+int8", "2:4", "2:4+int8"), a bit width
        (8 or 4) or a sparsity (a float)."""
        if isinstance(spec, Choice):
            return spec
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and int(spec) in (8, 4):
            return cls(int(spec))           # a bit width
        if isinstance(spec, (float, np.floating)):
            return cls(None, float(spec))   # a sparsity
        if not isinstance(spec, str):
            raise TypeError(f"Choice: expected a Choice or a label, got {type(spec).__name__}")
        bits, sp = None, 0.0
        for part in spec.lower().split("+"):
            if part in ("int8", "int4"):
                bits = int(part[3:])
            elif part == "2:4":
                sp = "2:4"
            elif re.fullmatch(r"sp\d+(\.\d+)?", part):
                sp = float(part[2:]) / 100
            elif part != "float32":
                raise ValueError(f"Choice: cannot read {spec!r} (e.g. 'int8', 'int4', 'sp50', 'sp75+int8', '2:4')")
        return cls(bits, sp)


DEFAULT_SENSITIVITY_OPTIONS = ("int8", "int4", "sp50", "sp75", "2:4")
_SIZE_OPTIONS = ("int4", "int8")
_SPEED_OPTIONS = ("int8", "sp50+int8", "sp75+int8", "2:4+int8")  # int4 runs as int8, without the hand-off


def psnr(out: np.ndarray, ref: np.ndarray, peak_to_peak: float = 2.0) -> float:
    """PSNR (dB) of ``out`` against ``ref`` over the range ``peak_to_peak`` (2 for tanh images)."""
    mse = float(np.mean((np.asarray(out, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


# The reconstruction makes thousands of small and medium numpy products between pyquant's own multi-threaded
# kernels; OpenBLAS's spinning worker threads would fight pyquant's pool and any other process for the cores
# (measured: compress(objective="speed") on the built-in model 10 s with one BLAS thread, 26 s with two, on a loaded
# 2-core machine). So the entry points run with BLAS held to one thread (single_threaded_blas, a context manager
# and so also a decorator). Results do not depend on pyquant's thread count either way.
_one_blas_thread = _blas.single_threaded_blas()


# --------------------------------------------------------------------------------------- Hessians --

def _hessian_groups(layer: _WeightLayer, x: np.ndarray, max_block: int = MAX_BLOCK,
                    x_float: Optional[np.ndarray] = None, W2: Optional[np.ndarray] = None):
    """[(rows, H, D)]: disjoint sets of W2 rows (ascending int64) with the float64 Hessian block over them
    (``A^T A / n`` from the layer's float32 input batch ``x``) and, when the float model's input ``x_float`` (same
    latents) and the weights ``W2`` are given, the drift term ``D = A^T (A_float - A) W2 / n`` over those rows
    (None otherwise). Rows that reach no output get an identity block."""
    K, N = layer._w2_shape()
    drift = x_float is not None and W2 is not None
    groups = []
    if isinstance(layer, Dense):
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], K)
        n = max(1, a.shape[0])
        r = ((np.asarray(x_float, np.float32).reshape(a.shape) - a) @ W2.astype(np.float32)) if drift else None
        for r0 in range(0, K, max_block):
            sl = slice(r0, min(K, r0 + max_block))
            groups.append((np.arange(sl.start, sl.stop, dtype=np.int64),
                           (a[:, sl].T @ a[:, sl]).astype(np.float64) / n,
                           None if r is None else (a[:, sl].T @ r).astype(np.float64) / n))
        return groups
    if not isinstance(layer, ConvTranspose2d):
        raise TypeError(f"not a weight layer: {type(layer).__name__}")
    B, Hh, Ww, C = x.shape
    kh, kw = layer.kernel_size
    pt, _, pl, _ = layer.padding
    ho, wo = layer.output_hw(Hh, Ww)
    covered = np.zeros(K, bool)
    x = np.ascontiguousarray(x, dtype=np.float32)
    xf = np.ascontiguousarray(x_float, dtype=np.float32) if drift else None
    for ph in _convt.phases_2d((Hh, Ww), layer.kernel_size, layer.stride, (pt, pl), (ho, wo)):
        if not ph.taps:
            continue
        T = len(ph.taps)
        per = max(1, max_block // C)  # whole taps per group
        spans = [(t0, min(T, t0 + per)) for t0 in range(0, T, per)]
        all_rows = np.concatenate([np.arange(C, dtype=np.int64) + (ky * kw + kx) * C for ky, kx in ph.taps])
        wp = W2[all_rows].astype(np.float32) if drift else None
        hs = [np.zeros(((t1 - t0) * C,) * 2, np.float64) for t0, t1 in spans]
        ds = [np.zeros(((t1 - t0) * C, N), np.float64) for t0, t1 in spans] if drift else None
        pix = ph.py.count * ph.px.count
        # rows beyond MAX_ROWS_PER_DIM * (rows of the largest block) add little: a fixed pseudo-random subset of
        # the pixels of all images (a plain stride would alias with the image grid) bounds the cost of A^T A
        keep_every = max(1, (B * pix) // max(1, MAX_ROWS_PER_DIM * min(T * C, per * C)))
        step = max(1, (32 << 20) // max(1, 4 * pix * T * C))
        n = 0
        for b0 in range(0, B, step):
            a = _convt.im2col(x[b0:b0 + step], ph, np.float32(0))
            af = _convt.im2col(xf[b0:b0 + step], ph, np.float32(0)) if drift else None
            if keep_every > 1:
                pick = np.random.default_rng(b0).random(a.shape[0]) * keep_every < 1.0
                a = a[pick]
                af = af[pick] if drift else None
            n += a.shape[0]
            r = ((af - a) @ wp) if drift else None
            for j, ((t0, t1), h) in enumerate(zip(spans, hs)):
                sa = a[:, t0 * C:t1 * C]
                # the largest products of the reconstruction: on pyquant's threads (BLAS is held to one), in
                # row blocks fixed by the shape (the result never depends on the thread count)
                h += _blas.matmul(sa.T, sa, np.empty((sa.shape[1],) * 2, np.float32))
                if drift:
                    ds[j] += sa.T @ r
        for j, ((t0, t1), h) in enumerate(zip(spans, hs)):
            rows = all_rows[t0 * C:t1 * C]
            covered[rows] = True
            groups.append((rows, h / max(1, n), ds[j] / max(1, n) if drift else None))
    rest = np.flatnonzero(~covered)
    if rest.size:
        groups.append((rest.astype(np.int64), np.eye(rest.size), None))
    return groups


def _lower_inverse(L: np.ndarray, leaf: int = 256) -> np.ndarray:
    """The inverse of the lower-triangular ``L`` by 2x2 block recursion, ``[[A, 0], [C, D]]^-1 =
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``: about n^3 / 3 multiply-adds in matrix products, where a general
    ``numpy.linalg.inv`` (LU, then solves against the identity) does ~6x the work for the same result (it was
    the largest single cost of :func:`compress` on the DCGAN 28x28: 2048^2 blocks)."""
    n = L.shape[0]
    if n <= leaf:
        return np.tril(np.linalg.inv(L))
    h = n // 2
    Ai = _lower_inverse(L[:h, :h], leaf)
    Di = _lower_inverse(L[h:, h:], leaf)
    out = np.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Di
    out[h:, :h] = -(Di @ (L[h:, :h] @ Ai))
    return out


def _inverse_factor(H: np.ndarray, damp: float = DAMP) -> Tuple[np.ndarray, np.ndarray]:
    """(U, dead): the upper Cholesky factor of the dampened ``H^-1`` (``H^-1 = U^T U``) and the rows whose
    input was always zero (their weights are free: pruned first / set to 0)."""
    H = np.array(H, np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    mean_diag = float(np.mean(np.diag(H)))
    lam = damp * mean_diag if mean_diag > 0 else 1.0
    Hr = H[::-1, ::-1]
    for _ in range(6):
        try:
            L = np.linalg.cholesky(Hr + lam * np.eye(H.shape[0]))
            break
        except np.linalg.LinAlgError:
            lam *= 10
    else:  # pragma: no cover - a Hessian that no damping makes positive definite
        L = np.eye(H.shape[0])
    # with J the order reversal, J H J = L L^T gives H = R R^T with R = J L J upper, so H^-1 = U^T U with
    # U = R^-1 = J L^-1 J upper: one Cholesky factorization and one triangular inverse
    U = _lower_inverse(L)[::-1, ::-1]
    return np.ascontiguousarray(U), dead


# ------------------------------------------------------------------------------------ the solver --

def _block_prune_counts(sizes: Sequence[int], sparsity: float) -> List[int]:
    """Weights to prune in each block (sizes in processing order) so the layer keeps exactly
    ``round((1 - sparsity) * total)`` (Python's round), as :func:`pyquant.prune_model` does."""
    cum = np.cumsum(np.asarray(sizes, np.int64))
    pruned = [int(c) - int(round((1.0 - sparsity) * int(c))) for c in cum]
    return [p - q for p, q in zip(pruned, [0] + pruned[:-1])]


def _obs_group(W: np.ndarray, U: np.ndarray, dead: np.ndarray, *, scale: Optional[np.ndarray], qmax: int,
               prune_counts: Optional[List[int]], nm: bool, blocksize: int = BLOCKSIZE):
    """Optimal-brain-surgeon sweep over the rows of ``W`` (k, N) float64 with the inverse-Hessian factor ``U``.
    Returns (values (k, N) float64: the final weights, keep mask (k, N) bool). ``scale`` (N,) with ``qmax``:
    round kept weights to ``q * scale``; ``prune_counts``: weights to prune per block (unstructured);
    ``nm``: 2:4 along the rows."""
    W = W.copy()
    W[dead] = 0.0
    k, N = W.shape
    out = np.zeros_like(W)
    keep = np.ones((k, N), bool)
    inv_scale = None if scale is None else 1.0 / scale
    for bi, i1 in enumerate(range(0, k, blocksize)):
        i2 = min(k, i1 + blocksize)
        W1 = W[i1:i2]   # a view: updated in place
        U1 = U[i1:i2, i1:i2]
        d = np.diag(U1)
        err = np.zeros((i2 - i1, N))
        prune1 = np.zeros((i2 - i1, N), bool)
        if prune_counts is not None and prune_counts[bi] > 0:
            sal = (W1 / d[:, None]) ** 2
            sal[dead[i1:i2]] = -1.0  # dead inputs: pruning them costs nothing
            order = np.argsort(sal, axis=None, kind="stable")[:prune_counts[bi]]
            prune1.flat[order] = True
        for j in range(i2 - i1):
            if nm and j % 4 == 0:
                sal = (W1[j:j + 4] / d[j:j + 4, None]) ** 2
                low = np.argsort(sal, axis=0, kind="stable")[:2]   # the 2 of 4 with the least saliency
                np.put_along_axis(prune1[j:j + 4], low, True, axis=0)
            w = W1[j]
            if scale is not None:
                q = np.clip(np.rint(w * inv_scale), -qmax, qmax) * scale
            else:
                q = w.copy()
            q[prune1[j]] = 0.0
            out[i1 + j] = q
            e = (w - q) / d[j]
            err[j] = e
            W1[j + 1:] -= np.outer(U1[j, j + 1:], e)
        keep[i1:i2] = ~prune1
        if i2 < k:
            W[i2:] -= U[i1:i2, i2:].T @ err
    return out, keep


def _channel_scales(W2: np.ndarray, qmax: int, diag: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 (N,) symmetric per-channel scales: ``max |w| / qmax``, or (``diag`` given) the clipped scale from
    a small grid minimizing the ``diag``-weighted rounding error of each channel."""
    amax = np.max(np.abs(W2), axis=0)
    amax = np.where(amax > 0, amax, 1.0)
    if diag is None:
        return (amax / qmax).astype(np.float32)
    best, best_err = None, None
    for f in _CLIP_GRID:
        s = (amax * f / qmax).astype(np.float32).astype(np.float64)
        q = np.clip(np.rint(W2 / s), -qmax, qmax) * s
        e = diag @ (W2 - q) ** 2
        if best is None:
            best, best_err = s.copy(), e
        else:
            better = e < best_err
            best[better], best_err[better] = s[better], e[better]
    return best.astype(np.float32)


# ---------------------------------------------------------------------------------- one layer --

def _preact(layer: _WeightLayer, x: np.ndarray) -> np.ndarray:
    """The layer's pre-activation output (float32) for the float32 batch ``x``. A sparse float layer runs as the
    dense float layer with the same weights (the same products; the dense kernels are faster here)."""
    if layer.precision == "sparse_float32":
        layer = layer._replace(precision="float32", weight=layer.dense_weight(), csr=None)
    return np.asarray(_float(layer._replace(activation="identity").forward(x)), np.float32)


def _channel_mean(y: np.ndarray) -> np.ndarray:
    return y.reshape(-1, y.shape[-1]).mean(axis=0, dtype=np.float64)


def _act(layer: _WeightLayer, pre: np.ndarray) -> np.ndarray:
    from .layers import apply_activation
    return apply_activation(pre.astype(np.float32, copy=True), layer.activation, layer.alpha)


def _act_mean(layer: _WeightLayer, pre: np.ndarray) -> np.ndarray:
    """Per-channel mean of the layer's activation applied to its pre-activation output ``pre``."""
    from .layers import apply_activation
    return _channel_mean(apply_activation(pre.astype(np.float32, copy=True), layer.activation, layer.alpha))


def _bias_shift(layer: _WeightLayer, pre: np.ndarray, target_mean: np.ndarray, iters: int = 40,
                tol: float = 1e-7) -> np.ndarray:
    """Per channel, the shift ``c`` with mean(act(pre + c)) == target_mean. The activations are monotonic, so
    ``f(c) = mean(act(pre + c)) - target`` is increasing in ``c``: solved by regula falsi with the Illinois
    modification on a bracket (a secant step that keeps the root bracketed), with a bisection step after any
    secant step that did not halve the bracket (so never much slower than bisection): typically ~8 passes over
    ``pre`` where plain bisection made 32, and each pass is the cost. Identity: the plain mean difference. Channels whose
    target is out of the activation's reach (a saturated tanh) get the bracket's end point."""
    from .layers import apply_activation
    y = pre.reshape(-1, pre.shape[-1]).astype(np.float32)
    if layer.activation == "identity":
        return target_mean - _channel_mean(y)

    def f(c):
        return _channel_mean(apply_activation(y + c.astype(np.float32), layer.activation, layer.alpha)) - target_mean

    spread = float(np.max(np.abs(y))) + 1.0
    lo = np.full(y.shape[1], -spread)
    hi = np.full(y.shape[1], spread)
    flo, fhi = f(lo), f(hi)
    c = np.where(flo >= 0, lo, hi)          # out of reach: the end point nearest the target
    active = (flo < 0) & (fhi > 0)
    last = np.zeros(y.shape[1], np.int8)    # which end moved last (-1 lo, +1 hi): Illinois halves the other
    bisect = np.zeros(y.shape[1], bool)     # the last secant step did not halve the bracket: bisect once
    for _ in range(iters):
        if not active.any():
            break
        width = hi - lo
        sec = (lo * fhi - hi * flo) / np.where(active, fhi - flo, 1.0)
        cm = np.where(active, np.where(bisect, 0.5 * (lo + hi), sec), c)
        fm = f(cm)
        c = np.where(active, cm, c)
        done = active & (np.abs(fm) <= tol)
        up = active & ~done & (fm < 0)       # the root lies above cm
        dn = active & ~done & (fm > 0)
        fhi = np.where(up & (last == -1), 0.5 * fhi, fhi)
        flo = np.where(dn & (last == 1), 0.5 * flo, flo)
        lo, flo = np.where(up, cm, lo), np.where(up, fm, flo)
        hi, fhi = np.where(dn, cm, hi), np.where(dn, fm, fhi)
        last = np.where(up, -1, np.where(dn, 1, last)).astype(np.int8)
        bisect = ~bisect & (hi - lo > 0.5 * width)  # a slow secant (the flat part of a ReLU): bisect next
        active &= ~done & (hi - lo > 1e-12 * spread)
    return c


def _build(layer: _WeightLayer, values2: np.ndarray, keep2: np.ndarray, choice: Choice,
           scale: Optional[np.ndarray]) -> _WeightLayer:
    """The compressed layer from the final W2 values (float64; on the quantization grid when quantized)."""
    if choice.bits is None:
        new = layer._replace(precision="float32", weight=layer._from_w2(values2.astype(np.float32)), qweight=None,
                             weight_scale=None, csr=None)
    else:
        q2 = np.rint(values2 / scale.astype(np.float64)).astype(np.int8)
        if choice.bits == 4:
            new = layer._replace(precision="int4", qweight4=pack_int4(layer._from_w2(q2)), weight_scale=scale,
                                 weight=None, qweight=None, csr=None)
        else:
            new = layer._replace(precision="int8", qweight=layer._from_w2(q2), weight_scale=scale, weight=None,
                                 csr=None)
    if choice.sparse:
        new = new.pruned(keep2)
    return new


def _baseline(W2: np.ndarray, choice: Choice, scale: Optional[np.ndarray]):
    """Magnitude pruning (per layer; 2:4 along the inputs) and round-to-nearest: (values2, keep2)."""
    from ..pruning import magnitude_mask, prune_n_m
    K, N = W2.shape
    if choice.sparsity == "2:4":
        keep = prune_n_m(np.ascontiguousarray(W2.T), 2, 4, return_mask=True)[1].T
    elif choice.sparse:
        keep = magnitude_mask(W2, float(choice.sparsity))
    else:
        keep = np.ones((K, N), bool)
    v = np.where(keep, W2, 0.0)
    if scale is not None:
        s = scale.astype(np.float64)
        v = np.clip(np.rint(v / s), -_QMAX[choice.bits], _QMAX[choice.bits]) * s
        v[~keep] = 0.0
    return v, np.ascontiguousarray(keep)


class _LayerProblem:
    """One layer's calibration problem: its Hessian groups and inverse factors (computed once, shared by every
    choice), and its target output on the compressed-stream inputs."""

    def __init__(self, layer: _WeightLayer, x: np.ndarray, max_block: int = MAX_BLOCK, damp: float = DAMP,
                 x_float: Optional[np.ndarray] = None):
        self.layer, self.x = layer, x
        self.x_float = x_float if x_float is not None and x_float is not x else None
        self.W2 = np.asarray(layer._to_w2(layer.dense_weight()), np.float64)
        self._W2t = None
        self._groups = self._groups_ao = self._H = None
        if isinstance(layer, Dense):
            # few calibration rows per input (a latent batch of 256 for 100 latent dimensions): the sample
            # Hessian's spectrum is spread far beyond the true one's (Marchenko-Pastur), and the error feedback
            # fits that noise: better on the calibration latents, WORSE on held-out ones (measured: int4 GPTQ
            # of the trained DCGAN 28x28's Dense layer lost 0.2 dB to round-to-nearest). Shrink H toward its
            # mean diagonal with the Ledoit-Wolf intensity for an isotropic target, rho = K / (n + K), i.e. a
            # damping of rho / (1 - rho) = K / n (0.39 there; 0.125 for the built-in model's 64 x 512)
            damp = max(damp, layer._w2_shape()[0] / max(1, int(np.prod(x.shape[:-1]))))
        self.max_block, self.damp = max_block, damp
        self._target = self._target_act = None

    @property
    def groups(self):
        """[(rows, U, dead, diag(H))] in the natural row order (the order pruning needs: 2:4 groups)."""
        if self._groups is None:
            self._groups, self._H, W2t = [], [], self.W2.copy()
            for rows, H, D in _hessian_groups(self.layer, self.x, self.max_block, self.x_float, self.W2):
                U, dead = _inverse_factor(H, self.damp)
                self._groups.append((rows, U, dead, np.diag(H).copy()))
                self._H.append(H)
                if D is not None:  # least-squares refit to the float outputs: W + H^-1 A^T (A_float - A) W
                    W2t[rows] += U.T @ (U @ D)
            self._W2t = W2t
        return self._groups

    @property
    def groups_act_order(self):
        """The groups with each group's rows in descending ``diag(H)`` order ("act order"): the inputs that carry
        the most signal are rounded first, while many rows are left to absorb their error; the rows the
        feedback cannot compensate any more (the last ones) are the least important."""
        if self._groups_ao is None:
            self.groups
            self._groups_ao = []
            for (rows, _, _, dg), H in zip(self._groups, self._H):
                perm = np.argsort(-dg, kind="stable")
                U, dead = _inverse_factor(H[np.ix_(perm, perm)], self.damp)
                self._groups_ao.append((rows[perm], U, dead, dg[perm]))
        return self._groups_ao

    def hessian_error(self, values: np.ndarray) -> np.ndarray:
        """(N,) per output channel, the calibration output error ``e^T H e`` of ``W2t - values`` (the exact
        quadratic form of the least-squares problem; block-diagonal H)."""
        self.groups
        err = np.zeros(values.shape[1])
        for (rows, *_), H in zip(self._groups, self._H):
            e = self._W2t[rows] - values[rows]
            err += np.einsum("kn,kn->n", e, H @ e)
        return err

    @property
    def W2t(self) -> np.ndarray:
        """The weights the reconstruction compresses: W2, refitted to the float model's outputs when the float
        inputs are known (the least-squares optimum on the compressed inputs)."""
        self.groups
        return self._W2t

    @property
    def target(self) -> np.ndarray:
        """The float layer's pre-activation output on the float model's inputs (on ``x`` when unknown)."""
        if self._target is None:
            self._target = _preact(self.layer, self.x if self.x_float is None else self.x_float)
        return self._target

    @property
    def target_act(self) -> np.ndarray:
        """The target after the layer's activation (cached: every choice's bias correction compares to it)."""
        if self._target_act is None:
            self._target_act = _act(self.layer, self.target)
        return self._target_act

    @property
    def target_act_mean(self) -> np.ndarray:
        return _channel_mean(self.target_act)

    def error(self, layer: _WeightLayer) -> float:
        """Mean squared pre-activation error of ``layer`` against the float layer on the calibration inputs."""
        return self.error_of(_preact(layer, self.x))

    def error_of(self, pre: np.ndarray) -> float:
        """:meth:`error` from a layer's pre-activation output on the calibration inputs."""
        return float(np.mean((pre.astype(np.float64) - self.target) ** 2))

    def solve(self, choice: Choice, *, quant: str, prune: str):
        """(values2, keep2, scale) for ``choice``; quant / prune: "obs" (error feedback / SparseGPT) or
        "baseline" (round-to-nearest / magnitude)."""
        K, N = self.W2.shape
        qmax = _QMAX.get(choice.bits)
        diag = None
        if quant == "obs" and qmax:
            diag = np.zeros(K)
            for rows, _, _, dg in self.groups:
                diag[rows] = dg
        use_obs = (quant == "obs" and qmax is not None) or (prune == "obs" and choice.sparse)
        Wt = self.W2t if use_obs else self.W2
        scale = None if qmax is None else _channel_scales(Wt, qmax, diag)
        if not use_obs:
            v, keep = _baseline(self.W2, choice, scale)
            return v, keep, scale
        if not choice.sparse and quant == "obs" and choice.bits in QUANT_SEARCH_BITS:
            return self._solve_quant(qmax)
        if choice.sparse and prune != "obs":  # magnitude mask, then error-feedback rounding of the kept weights
            _, mask = _baseline(self.W2, choice, None)
        else:
            mask = None
        if choice.sparsity == "2:4" and prune == "obs":
            self._check_nm()
        sizes = []
        for rows, U, _, _ in self.groups:
            sizes += [min(BLOCKSIZE, rows.size - i) * N for i in range(0, rows.size, BLOCKSIZE)]
        counts = (_block_prune_counts(sizes, float(choice.sparsity))
                  if choice.sparse and choice.sparsity != "2:4" and mask is None else None)
        values = np.zeros((K, N))
        keep = np.ones((K, N), bool)
        b = 0
        s64 = None if scale is None else scale.astype(np.float64)
        for rows, U, dead, _ in self.groups:
            nb = -(-rows.size // BLOCKSIZE)
            W = Wt[rows]
            if mask is not None:
                W = np.where(mask[rows], W, 0.0)
            pc = None if counts is None else counts[b:b + nb]
            v, k = _obs_group(W, U, dead, scale=s64, qmax=qmax or 0, prune_counts=pc,
                              nm=(choice.sparsity == "2:4" and mask is None))
            if mask is not None:  # weights outside the fixed mask stay pruned
                k = mask[rows]
                v[~k] = 0.0
            values[rows], keep[rows] = v, k
            b += nb
        return values, keep, scale

    def _solve_quant(self, qmax: int):
        """Dense GPTQ with the scale chosen per channel by the exact calibration error of the whole rounding
        with error feedback, not by a proxy: the channels (columns of W2) are independent problems given their
        scales, so one sweep over the weights tiled once per candidate clip factor gives every channel's result
        under every factor, and each channel keeps its best. Rows in act order."""
        K, N = self.W2.shape
        Wt = self.W2t
        amax = np.max(np.abs(Wt), axis=0)
        amax = np.where(amax > 0, amax, 1.0)
        F = len(QUANT_CLIPS)
        scales = np.concatenate([(amax * f / qmax).astype(np.float32) for f in QUANT_CLIPS]).astype(np.float64)
        groups = self.groups_act_order
        values = np.zeros((K, F * N))
        for rows, U, dead, _ in groups:
            values[rows], _ = _obs_group(np.tile(Wt[rows], (1, F)), U, dead, scale=scales, qmax=qmax,
                                         prune_counts=None, nm=False)
        err = np.stack([self.hessian_error(values[:, f * N:(f + 1) * N]) for f in range(F)])   # (F, N)
        best = np.argmin(err, axis=0)   # first minimum: ties go to the larger scale
        cols = best * N + np.arange(N)
        return values[:, cols], np.ones((K, N), bool), scales[cols].astype(np.float32)

    def _check_nm(self):
        K, _ = self.W2.shape
        for rows, *_ in self.groups:
            r = rows.reshape(-1, 4) if rows.size % 4 == 0 else None
            if r is None or np.any(r[:, 0] % 4) or np.any(np.diff(r, axis=1) != 1):
                raise ValueError(f"layer {self.layer.name!r}: 2:4 pruning needs the inputs of each kernel tap in "
                                 f"groups of 4 (input channels a multiple of 4)")


@_one_blas_thread
def compress_layer(layer: _WeightLayer, x: np.ndarray, choice, *, quant: str = "obs", prune: str = "obs",
                   bias_correction: bool = False, float_mean: Optional[np.ndarray] = None,
                   problem: Optional[_LayerProblem] = None, guard: bool = True,
                   x_float: Optional[np.ndarray] = None) -> Tuple[_WeightLayer, dict]:
    """Compress one weight layer on its calibration inputs ``x`` (float32, as the layer receives them).

    Args:
        choice: a :class:`Choice` or label ("int8", "int4", "sp50", "sp75+int8", "2:4", ...).
        quant: "obs" (GPTQ: clipped per-channel scale, rounding with error feedback) or "rtn".
        prune: "obs" (SparseGPT: second-order mask and update of the kept weights) or "magnitude".
        bias_correction: shift each output channel's bias so the mean of its output AFTER the activation
            matches the float layer's: ``float_mean`` (N,) is that mean for the float layer on the float model's
            inputs (default: on ``x``). (Matching the pre-activation mean instead is harmful before a saturating
            activation: tanh's saturated background pixels dominate the mean and move the others.)
        guard: keep the round-to-nearest / magnitude layer when the reconstruction does not lower the
            calibration error.

    Returns (layer, info) with info: calibration errors "err_start" (rtn / magnitude), "err" (the result,
    before bias correction), "fallback", "err_final", "nnz".
    """
    choice = Choice.parse(choice)
    qm = "obs" if quant in ("obs", "gptq") else "baseline"
    pm = "obs" if prune in ("obs", "sparsegpt") else "baseline"
    if choice.bits is None and not choice.sparse:
        return layer, {"err_start": 0.0, "err": 0.0, "err_final": 0.0, "fallback": False, "nnz": None}
    P = problem if problem is not None else _LayerProblem(layer, x, x_float=x_float)
    info = {"fallback": False}
    s0 = None if choice.bits is None else _channel_scales(P.W2, _QMAX[choice.bits])
    base = _build(layer, *_baseline(P.W2, choice, s0), choice, s0)
    pre = None  # the result's pre-activation output on x, once computed (each forward pass costs)
    if qm == "baseline" and (pm == "baseline" or not choice.sparse):
        new = base
        if guard:
            pre = _preact(base, x)
            info["err_start"] = info["err"] = P.error_of(pre)
        else:
            info["err_start"] = info["err"] = float("nan")
    else:
        v, keep, scale = P.solve(choice, quant=qm, prune=pm)
        new = _build(layer, v, keep, choice, scale)
        if guard:
            pre_base, pre = _preact(base, x), _preact(new, x)
            info["err_start"] = P.error_of(pre_base)
            info["err"] = P.error_of(pre)
            if not info["err"] < info["err_start"]:
                new, info["err"], info["fallback"] = base, info["err_start"], True
                pre = pre_base
    if bias_correction:
        fm = float_mean if float_mean is not None else P.target_act_mean
        if pre is None:
            pre = _preact(new, x)
        shift = _bias_shift(new, pre, fm)
        # kept only when it lowers the calibration error after the activation (against the float layer on
        # the float inputs when known): on a layer already close to float the shift is mostly sampling noise
        tgt = P.target_act
        shifted = pre + shift.astype(np.float32)
        before = float(np.mean((_act(layer, pre) - tgt) ** 2))
        after = float(np.mean((_act(layer, shifted) - tgt) ** 2))
        info["bias_corrected"] = after < before
        if after < before:
            new = new._replace(bias=(new.bias.astype(np.float64) + shift).astype(np.float32))
            pre = shifted  # the bias enters after the products: the new layer's output up to float rounding
    if guard and pre is None:
        pre = _preact(new, x)
    info["err_final"] = P.error_of(pre) if guard else float("nan")
    info["nnz"] = int(new.csr.nnz) if new.precision.startswith("sparse") else None
    return new, info


# ------------------------------------------------------------------------------- whole models --

def _latents(model: Generator, z, seed: int) -> np.ndarray:
    if isinstance(z, (int, np.integer)) and not isinstance(z, bool):
        return model.latents(int(z), seed)
    return model._check_latents(z)


def _internal(model: Generator, z: np.ndarray) -> np.ndarray:
    x = model._check_latents(z)
    if x.ndim == 4 and model.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def _methods(methods) -> Tuple[str, str, bool]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    known = {"gptq", "sparsegpt", "bias_correction"}
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"methods must be among {sorted(known)}, got {bad}")
    return ("obs" if "gptq" in methods else "rtn", "obs" if "sparsegpt" in methods else "magnitude",
            "bias_correction" in methods)


@_one_blas_thread
def optimize_model(model: Generator, calibration, plan, *, methods=("gptq", "sparsegpt", "bias_correction"),
                   seed: int = 0, return_info: bool = False, refit="auto"):
    """Compress ``model`` layer by layer on the calibration latents (each layer on the inputs produced by the
    already-compressed layers before it). ``plan``: one choice for every weight layer (a :class:`Choice` or
    label), or a dict {layer index or name: choice} (layers not named stay as they are). ``methods``: any of
    "gptq" (else round-to-nearest), "sparsegpt" (else magnitude pruning), "bias_correction". A new
    Generator (and the per-layer info list when ``return_info``)."""
    if not isinstance(model, Generator):
        raise TypeError(f"optimize_model: model must be a pyquant.Generator, got {type(model).__name__}")
    quant, prune, bc = _methods(methods)
    z = _latents(model, calibration, seed)
    wl = [i for i, l in enumerate(model.layers) if isinstance(l, _WeightLayer)]
    if isinstance(plan, dict):
        per = {}
        for key, c in plan.items():
            i = key if isinstance(key, (int, np.integer)) else model.layers.index(model.layer(key))
            if int(i) not in wl:
                raise ValueError(f"optimize_model: layer {key!r} is not a weight layer")
            per[int(i)] = Choice.parse(c)
    else:
        c = Choice.parse(plan)
        per = {i: c for i in wl}
    xc = xf = _internal(model, z)
    layers, infos = list(model.layers), []
    for i, layer in enumerate(model.layers):
        if i in per and (per[i].bits is not None or per[i].sparse):
            xc32, xf32 = np.asarray(_float(xc), np.float32), np.asarray(_float(xf), np.float32)
            fm = _act_mean(layer, _preact(layer, xf32)) if bc else None
            rf = (per[i].sparse or per[i].bits == 4) if refit == "auto" else bool(refit)
            new, info = compress_layer(layer, xc32, per[i], quant=quant, prune=prune, bias_correction=bc,
                                       float_mean=fm, x_float=xf32 if rf else None)
            info.update(layer=i, name=layer.name, choice=per[i].label)
            infos.append(info)
            layers[i] = new
            # the next layer's calibration input (a sparse float layer runs as the dense layer with its
            # weights: the same values, faster here)
            run = new._replace(precision="float32", weight=new.dense_weight(), csr=None) \
                if new.precision == "sparse_float32" else new
            xc = run.forward(xc32)
            xf = layer.forward(xf32)
        else:
            same = xc is xf
            xf = layer.forward(xf)
            xc = xf if same else layer.forward(xc)
    out = model.with_layers(layers)
    return (out, infos) if return_info else out


def _best_times(calls: Dict, repeats: int) -> Dict:
    """Best-of-``repeats`` wall time (ms) of each zero-argument call, the calls taking turns (on a shared machine
    a burst of other work then slows one round of every call alike, not one call's whole measurement); one
    untimed call each first (packing, plans)."""
    for f in calls.values():
        f()
    best = {k: math.inf for k in calls}
    for _ in range(repeats):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: 1e3 * v for k, v in best.items()}


def _time_layer(layer: _WeightLayer, x: np.ndarray, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time (ms) of one forward pass of ``layer`` on ``x``."""
    return _best_times({0: lambda: layer.forward(x)}, repeats)[0]


class _Evaluator:
    """Held-out evaluation: the float model's images and each layer's float input on the evaluation latents,
    so a model with only layer i changed runs from layer i onward."""

    def __init__(self, model: Generator, z_eval: np.ndarray):
        self.model = model
        xs, x = [], _internal(model, z_eval)
        for layer in model.layers:
            xs.append(x)
            x = layer.forward(x)
        self.inputs = xs
        self.ref = model(z_eval)
        self.z = z_eval

    def with_layer(self, i: int, layer) -> np.ndarray:
        """The images of the model with layer ``i`` replaced by ``layer`` (no static hand-off), run from layer
        ``i`` on its stored float input, in the model's chunks (a dynamic int8 layer's input range is per call)."""
        m = self.model
        xi = self.inputs[i]
        bs = m.batch_size
        outs = []
        for b0 in range(0, xi.shape[0], bs):
            x = xi[b0:b0 + bs]
            for l in [layer] + list(m.layers[i + 1:]):
                x = l.forward(x)
            x = np.asarray(_float(x), np.float32)
            if x.ndim == 4 and m.layout == "NCHW":
                x = x.transpose(0, 3, 1, 2)
            outs.append(x)
        return np.ascontiguousarray(np.concatenate(outs))

    def psnr(self, out) -> float:
        return psnr(out, self.ref)


@_one_blas_thread
def sensitivity(model: Generator, calibration, evaluation=None, options=DEFAULT_SENSITIVITY_OPTIONS, *,
                methods=("gptq", "sparsegpt", "bias_correction"), seed: int = 0, timing: bool = True,
                _state: Optional[dict] = None, _layer_options: Optional[Dict[int, list]] = None,
                _times: Optional[Dict[tuple, float]] = None) -> List[dict]:
    """Each weight layer compressed ALONE (the others float32) with each option -> fidelity.

    ``calibration`` / ``evaluation``: latent batches (or counts: drawn with ``seed`` / ``seed + 1``; evaluation
    latents default to 256 held out). Returns one row per (layer, option): layer index and name, option label,
    precision, sparsity, bytes (the compressed layer's arrays) and float32 bytes, forward time (ms, on the
    evaluation batch's first 64 latents; ``timing=False``: not measured), held-out PSNR of the whole model
    (dB), its mean squared error, and the drop from float32 (the PSNR is infinite for the float model: "mse"
    is the additive measure). A "float32" row per layer gives the reference bytes and time."""
    if not isinstance(model, Generator):
        raise TypeError(f"sensitivity: model must be a pyquant.Generator, got {type(model).__name__}")
    quant, prune, bc = _methods(methods)
    zc = _latents(model, calibration, seed)
    ze = _latents(model, 256 if evaluation is None else evaluation, seed + 1)
    opts = [Choice.parse(o) for o in options]
    ev = _Evaluator(model, ze)
    xs, x = [], _internal(model, zc)
    for layer in model.layers:
        xs.append(x)
        x = layer.forward(x)
    rows = []
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, _WeightLayer):
            continue
        xi = np.asarray(_float(xs[i]), np.float32)
        P = _LayerProblem(layer, xi)
        xt = np.asarray(_float(ev.inputs[i]), np.float32)[:64]
        f32_bytes = 4 * (layer._w2_shape()[0] * layer._w2_shape()[1] + layer._w2_shape()[1])
        times = _times or {}
        t_float = times.get((i, "float32")) or (_time_layer(layer, xt) if timing else float("nan"))
        rows.append(dict(layer=i, name=layer.name, option="float32", bits=None, sparsity=0.0, precision="float32",
                         bytes=int(layer.nbytes), float32_bytes=f32_bytes, time_ms=t_float, psnr=math.inf,
                         mse=0.0, err_calib=0.0, fallback=False))
        for c in (opts if _layer_options is None else _layer_options[i]):
            new, info = compress_layer(layer, xi, c, quant=quant, prune=prune, bias_correction=bc, problem=P)
            out = ev.with_layer(i, new)
            mse = float(np.mean((out.astype(np.float64) - ev.ref) ** 2))
            rows.append(dict(layer=i, name=layer.name, option=c.label, bits=c.bits,
                             sparsity=c.sparsity if isinstance(c.sparsity, str) else float(c.sparsity),
                             precision=new.precision, bytes=int(new.nbytes), float32_bytes=f32_bytes,
                             time_ms=(times.get((i, c.label)) or _time_layer(new, xt)) if timing else float("nan"),
                             psnr=ev.psnr(out), mse=mse,
                             err_calib=info["err_final"], fallback=info["fallback"]))
            if _state is not None:
                _state.setdefault("layers", {})[(i, c.label)] = new
    return rows


def plot_sensitivity(rows: Sequence[dict], path) -> None:
    """Bar chart of :func:`sensitivity` rows: held-out PSNR (dB, capped at 80) per layer and option, to
    ``path`` (any format matplotlib writes). Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = []
    for r in rows:
        if (r["layer"], r["name"]) not in layers:
            layers.append((r["layer"], r["name"]))
    options = []
    for r in rows:
        if r["option"] != "float32" and r["option"] not in options:
            options.append(r["option"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(layers) * max(1, len(options)) / 2), 4))
    width = 0.8 / max(1, len(options))
    for j, o in enumerate(options):
        vals = []
        for li, _ in layers:
            v = [r["psnr"] for r in rows if r["layer"] == li and r["option"] == o]
            vals.append(min(80.0, v[0]) if v else np.nan)
        ax.bar(np.arange(len(layers)) + (j - (len(options) - 1) / 2) * width, vals, width, label=o)
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels([f"{n}" for _, n in layers])
    ax.set_xlabel("layer (compressed alone)")
    ax.set_ylabel("PSNR vs float32 (dB, held-out latents)")
    ax.set_title("Per-layer sensitivity")
    ax.legend(fontsize=8, ncol=min(5, len(options)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------- compress --

class CompressTable(list):
    """The per-layer choices of :func:`compress` (a list of dicts, one per weight layer) with ``summary``: a
    dict of the result (held-out PSNR, bytes, time) next to plain int8 of every layer and float32, and
    ``sensitivity``: the rows the choice was made from."""
    summary: dict
    sensitivity: list


def _static_inputs(model: Generator, z: np.ndarray) -> Generator:
    """``model`` with static uint8 input parameters (min/max over the latents ``z``) on its int8 / int4
    layers."""
    from ..quantization import choose_qparams
    from .compress import layer_inputs
    idx = [i for i, l in enumerate(model.layers) if getattr(l, "precision", None) in ("int8", "int4")]
    if not idx:
        return model
    layers = list(model.layers)
    for i, x in layer_inputs(model, z, idx).items():
        qp = choose_qparams(x, "uint8")
        layers[i] = layers[i]._replace(input_qparams=(np.float32(qp.scale), int(qp.zero_point)))
    return model.with_layers(layers)


FAST_MARGIN = 0.95


def _fast_options(model: Generator, z: np.ndarray, options: Sequence[Choice]):
    """For the speed objective: per weight layer, the options worth a reconstruction, and the measured times.

    The time of a layer depends only on its structure (precision, sparsity pattern's density), not on the
    values a reconstruction picks, so each option is timed on a quickly built stand-in (round-to-nearest /
    magnitude pruning) first; a sparse option that is not clearly faster (``FAST_MARGIN``) than the layer at
    int8 (its most accurate quantized option; float32 when int8 is not offered) can never be the better pick:
    it loses fidelity (pruning on top of the same rounding) for no time, so it is not reconstructed at all.
    Returns ({layer index: [Choice]}, {(layer index, label): ms})."""
    x = _internal(model, z[:64])
    per, times = {}, {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, _WeightLayer):
            xt = np.asarray(_float(x), np.float32)
            W2 = np.asarray(layer._to_w2(layer.dense_weight()), np.float64)
            cands = {"float32": layer}
            for c in options:
                s0 = None if c.bits is None else _channel_scales(W2, _QMAX[c.bits])
                cands[c.label] = _build(layer, *_baseline(W2, c, s0), c, s0)
            for label, ms in _best_times({k: (lambda l=l: l.forward(xt)) for k, l in cands.items()}, 7).items():
                times[(i, label)] = ms
            ref = times.get((i, "int8"), times[(i, "float32")])
            per[i] = [c for c in options if not c.sparse or times[(i, c.label)] < FAST_MARGIN * ref]
        x = layer.forward(x)
    return per, times


def _greedy(cands: Dict[int, List[dict]], key: str, budget_mse: Optional[float], max_cost: Optional[float]):
    """Per layer, the index of the chosen candidate: start from the cheapest (by ``key``) of every layer, then
    upgrade the layer with the largest mse decrease per unit of cost until the predicted mse (sum of the
    layers' alone-mse) is within ``budget_mse`` (or, with ``max_cost``, while the total cost allows)."""
    pick = {}
    for i, cs in cands.items():
        pick[i] = min(range(len(cs)), key=lambda j: (cs[j][key], cs[j]["mse"], j))

    def total(field):
        return sum(cands[i][pick[i]][field] for i in cands)

    while True:
        pred = total("mse")
        if budget_mse is not None and pred <= budget_mse:
            return pick
        best = None
        for i in sorted(cands):
            cur = cands[i][pick[i]]
            for j, c in enumerate(cands[i]):
                dm = cur["mse"] - c["mse"]
                if dm <= 0:
                    continue
                dc = c[key] - cur[key]
                if max_cost is not None and total(key) + dc > max_cost:
                    continue
                gain = math.inf if dc <= 0 else dm / dc
                if best is None or gain > best[0] or (gain == best[0] and dm > best[3]):
                    best = (gain, i, j, dm)
        if best is None:
            return pick
        pick[best[1]] = best[2]


@_one_blas_thread
def compress(model: Generator, calibration=256, *, target_psnr: Optional[float] = None,
             max_bytes: Optional[int] = None, objective: str = "size",
             methods=("gptq", "sparsegpt", "bias_correction"), evaluation=None, options=None, seed: int = 0,
             max_rounds: int = 6, static_activations: Optional[bool] = None) -> Tuple[Generator, CompressTable]:
    """Pick each weight layer's precision and sparsity so the model meets a fidelity floor with the best
    objective, using the layer-wise reconstruction methods.

    Args:
        model: the float32 Generator.
        calibration: calibration latents (array) or their count (drawn with ``seed``).
        target_psnr: the floor (dB, vs the float32 model) on HELD-OUT latents (``evaluation``; default 256
            latents drawn with ``seed + 1``, never the calibration ones).
        max_bytes: a size cap (weights' bytes). Alone: the best fidelity within the cap. With target_psnr:
            both must hold (ValueError otherwise).
        objective: "size" (fewest bytes; options int4 / int8 / float32) or "speed" (least measured layer time;
            options int8 / int4 / sparse int8 50%, 75%, 2:4 / float32).
        methods: "gptq", "sparsegpt", "bias_correction" (omit one for round-to-nearest / magnitude / none).
        options: the per-layer options to choose from (labels), default by objective; float32 is always one.
        static_activations: give the int8 / int4 layers static uint8 input parameters from the calibration
            latents (as :func:`pyquant.quantize_model` with ``calibration``): no per-call min/max, and an int8
            layer hands its output to the next int8 layer as uint8. Default: True for objective "speed".

    The choice: each layer alone at each option gives its held-out error (:func:`sensitivity`); a greedy
    search starts from each layer's cheapest option and upgrades the layer with the largest error decrease
    per byte (or ms) until the predicted error (the sum of the layers' errors) meets the floor; the model is
    then built layer by layer (each on the compressed inputs) and its held-out PSNR MEASURED; when short, the
    error budget shrinks by the shortfall and the search repeats (at most ``max_rounds``; the last resort is
    float32 for every layer). Deterministic for a given seed (objective "size"; "speed" depends on measured
    times). For "speed", each option is first timed on a quickly built stand-in of the same structure and a
    sparse option not faster than the layer at int8 is dropped before any reconstruction
    (``table.summary["options_not_faster"]``).

    Returns (Generator, table): the table lists per layer the option, precision, sparsity, bytes, time and
    alone-PSNR; ``table.summary`` has the held-out PSNR, total bytes and time of the result, of plain int8
    (:func:`pyquant.quantize_model`) and of float32, and the runtime."""
    from .compress import quantize_model
    t_start = time.perf_counter()
    if not isinstance(model, Generator):
        raise TypeError(f"compress: model must be a pyquant.Generator, got {type(model).__name__}")
    if objective not in ("size", "speed"):
        raise ValueError(f"compress: objective must be 'size' or 'speed', got {objective!r}")
    if target_psnr is None and max_bytes is None:
        raise ValueError("compress: give target_psnr (dB) and/or max_bytes")
    if target_psnr is not None and not (isinstance(target_psnr, (int, float)) and target_psnr > 0):
        raise ValueError(f"compress: target_psnr must be a positive number of dB, got {target_psnr!r}")
    quant, prune, bc = _methods(methods)
    zc = _latents(model, calibration, seed)
    ze = _latents(model, 256 if evaluation is None else evaluation, seed + 1)
    if options is None:
        options = _SIZE_OPTIONS if objective == "size" else _SPEED_OPTIONS
    key = "bytes" if objective == "size" else "time_ms"
    if static_activations is None:
        static_activations = objective == "speed"
    layer_options = times = None
    if objective == "speed":  # reconstruct only the options that can win on time
        layer_options, times = _fast_options(model, ze, [Choice.parse(o) for o in options])
    rows = sensitivity(model, zc, ze, options, methods=methods, seed=seed, timing=(objective == "speed"),
                       _layer_options=layer_options, _times=times)
    cands: Dict[int, List[dict]] = {}
    for r in rows:
        cands.setdefault(r["layer"], []).append(r)
    ref = model(ze)
    peak = 2.0
    budget = None if target_psnr is None else peak ** 2 / 10 ** (target_psnr / 10)
    non_weight = sum(l.nbytes for l in model.layers if not isinstance(l, _WeightLayer))
    max_cost = None
    if max_bytes is not None and target_psnr is None:
        if objective != "size":
            raise ValueError("compress: max_bytes without target_psnr needs objective='size'")
        max_cost = max_bytes - non_weight
    result = None
    scale = 1.0
    for round_ in range(max_rounds + 1):
        if round_ == max_rounds:
            pick = {i: next(j for j, c in enumerate(cs) if c["option"] == "float32") for i, cs in cands.items()}
        else:
            pick = _greedy(cands, key, None if budget is None else budget * scale, max_cost)
        plan = {i: cands[i][j]["option"] for i, j in pick.items()}
        out_model, infos = optimize_model(model, zc, plan, methods=methods, seed=seed, return_info=True)
        if static_activations:
            out_model = _static_inputs(out_model, zc)
        out = out_model(ze)
        got = psnr(out, ref)
        result = (out_model, plan, pick, got, infos)
        if target_psnr is None or got >= target_psnr:
            break
        mse = peak ** 2 / 10 ** (got / 10)
        scale *= 0.8 * budget / mse  # the measured error was mse / budget too large: aim lower
    out_model, plan, pick, got, infos = result
    if max_bytes is not None and out_model.nbytes > max_bytes:
        raise ValueError(f"compress: cannot meet target_psnr={target_psnr} within max_bytes={max_bytes} "
                         f"(smallest found: {out_model.nbytes} bytes)")
    table = CompressTable()
    by_layer = {inf["layer"]: inf for inf in infos}
    for i in sorted(pick):
        c = cands[i][pick[i]]
        layer = out_model.layers[i]
        inf = by_layer.get(i, {})
        table.append(dict(layer=i, name=layer.name, kind=layer.kind, option=c["option"], precision=layer.precision,
                          sparsity=float(layer.sparsity), bytes=int(layer.nbytes), float32_bytes=c["float32_bytes"],
                          time_ms_alone=c["time_ms"], psnr_alone=c["psnr"], err_calib_start=inf.get("err_start"),
                          err_calib=inf.get("err_final"), fallback=inf.get("fallback", False)))
    int8 = quantize_model(model)
    zt = ze[:64]
    if objective == "speed":
        int8s = quantize_model(model, calibration=zc)
        summary_static = dict(int8_static_psnr=psnr(int8s(ze), ref))
        models = {"time_ms": out_model, "int8_time_ms": int8, "int8_static_time_ms": int8s, "float32_time_ms": model}
        summary_static.update(_best_times({k: (lambda m=m: m(zt)) for k, m in models.items()}, 21))
        summary_static["speedup_vs_int8_static"] = summary_static["int8_static_time_ms"] / summary_static["time_ms"]
        # the same kernels as plain static int8 everywhere: any measured speedup is timing noise
        summary_static["same_kernels_as_int8_static"] = all(
            a.precision == b.precision and (a.input_qparams is None) == (b.input_qparams is None)
            for a, b in zip(out_model.weight_layers, int8s.weight_layers))
    summary = dict(target_psnr=target_psnr, max_bytes=max_bytes, objective=objective, methods=list(methods),
                   psnr=got, bytes=int(out_model.nbytes), int8_psnr=psnr(int8(ze), ref), int8_bytes=int(int8.nbytes),
                   float32_bytes=int(model.nbytes), n_calibration=int(zc.shape[0]), n_evaluation=int(ze.shape[0]),
                   rounds=round_ + 1, seconds=None)
    if objective == "speed":
        summary.update(time_batch=int(zt.shape[0]), **summary_static)
    summary["static_activations"] = bool(static_activations)
    if layer_options is not None:  # the speed objective's options not reconstructed (no faster than int8)
        summary["options_not_faster"] = {model.layers[i].name: [Choice.parse(o).label for o in options
                                                                if Choice.parse(o) not in cs]
                                         for i, cs in layer_options.items()}
    summary["seconds"] = time.perf_counter() - t_start
    table.summary = summary
    table.sensitivity = rows
    return out_model, table
