"""``pyquant report``: compress a generator every way pyquant can and compare size, speed and fidelity with
the float32 model on the same latents.

Variants: float32; int8 with dynamic activations (quantized per call); int8 with static activations
(calibrated on ``calibrate`` latents); magnitude-pruned (each weight layer to the sparsity, one shot) at each
sparsity, in float32 and in int8; with ``optimize`` (default), the layer-wise reconstruction of
:mod:`pyquant.model.optimize` on the same calibration latents: int4 with GPTQ and SparseGPT pruning at
``optimized_sparsities`` (listed next to the plain variants), and a sensitivity analysis (each weight layer alone
at int8, int4 and each sparsity -> the whole model's PSNR, the layer's bytes and time: a table in report.md,
``sensitivity`` in report.json, ``sensitivity.png``). With torch installed, torch float32 eager on the same
weights is a reference row.

Figures (all in ``report.json`` as ``{"value": ..., "unit": ...}``):

- size: bytes of the model file on disk and of the arrays in memory, and how many times smaller than float32;
- speed: images/s at batch 1 and at ``batch``, latency per batch, speed-up over float32 (median of timed
  repeats after a warm-up of at least ``min_time`` seconds);
- fidelity to float32 on the same ``samples`` latents (images made in batches of ``batch``, as
  ``Generator.generate(samples, seed, batch_size=batch)`` makes them): PSNR over all images and mean per-image
  SSIM (scikit-image, ``data_range`` 2 for tanh images in [-1, 1]) and the largest absolute difference;
- for a model trained on scikit-learn's digits (the built-in ``digits32``): an MLP digit classifier
  (scikit-learn, fit on the 1797 real 8x8 digits) reads each image block-averaged to 8x8
  (``skimage.measure.block_reduce``); the report gives how often a variant's predicted digit agrees with
  float32's, and the Frechet distance between the classifier's hidden-layer features of the real digits and of
  the generated images (``scipy.linalg.sqrtm``), with float32's own distance as the reference;
- per layer ("where the bytes and the time went", every variant): precision, sparsity, bytes and share of the
  time at batch ``batch``.

Files: ``report.md``, ``report.json``, ``grid_<variant>.png`` (the first 64 images of every variant, same
latents), ``side_by_side.png`` (float32 | variant | amplified difference), ``fidelity_vs_size.png``,
``speed_vs_size.png``, ``sensitivity.png``. Needs the ``report`` extra: pillow, matplotlib, scikit-image, scikit-learn (and tqdm
for the progress bar).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _runtime
from .model import Generator, prune_model, quantize_model
from .model.layers import _WeightLayer

__all__ = ["make_report", "fidelity", "DigitsScorer", "image_grid", "variant_specs", "REPORT_FORMAT",
           "DEFAULT_SPARSITIES", "OPTIMIZED_SPARSITIES"]

REPORT_FORMAT = "pyquant.report"
REPORT_FORMAT_VERSION = 1
DEFAULT_SPARSITIES = (0.5, 0.75, 0.9)
DATA_RANGE = 2.0        # tanh images lie in [-1, 1]
DIFF_AMPLIFICATION = 10.0
GRID_IMAGES = 64
PRUNE_SCOPE = "layer"
OPTIMIZED_SPARSITIES = (0.5,)   # SparseGPT variants (pyquant.model.optimize); each costs a layer-wise pass
OPTIMIZE_METHODS = ("gptq", "sparsegpt", "bias_correction")
# The sensitivity table compresses each layer alone with plain rounding / magnitude pruning: it ranks the layers
# by how much each option costs them, in a fraction of the reconstruction's time (the report stays under a
# minute on 2 cores).
SENSITIVITY_METHODS = ()
SENSITIVITY_LATENTS = 64  # the sensitivity analysis uses the first 64 calibration and 64 sample latents (time)

_REPORT_PACKAGES = {"matplotlib": "matplotlib", "PIL": "pillow", "skimage": "scikit-image",
                    "sklearn": "scikit-learn", "scipy": "scipy"}


def require_report_dependencies() -> None:
    """ImportError naming what is missing (and the extra that installs it) when a report cannot be made."""
    import importlib.util
    missing = [pip for mod, pip in _REPORT_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"pyquant report needs {', '.join(missing)}: pip install 'pyquant[report]' "
                          f"(or pip install {' '.join(missing)})")


def _v(value, unit: str) -> dict:
    """One figure with its unit (None when it does not apply; never NaN or Inf in the JSON)."""
    if value is not None:
        value = float(value) if not isinstance(value, (int, np.integer)) or isinstance(value, bool) else int(value)
        if isinstance(value, float) and not np.isfinite(value):
            value = None
    return {"value": value, "unit": unit}


# ------------------------------------------------------------------------------------------------ images --
def to_nhwc(images: np.ndarray, layout: str) -> np.ndarray:
    """(N, H, W, C) view of a batch of images in ``layout`` ("NCHW" or "NHWC"); (N, F) vectors as (N, 1, F, 1)."""
    x = np.asarray(images)
    if x.ndim == 2:
        return x[:, None, :, None]
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    return x.transpose(0, 2, 3, 1) if layout == "NCHW" else x


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, layout: str = "NCHW", cols: Optional[int] = None, pad: int = 2,
               scale: Optional[int] = None):
    """A PIL image: ``images`` (values in [-1, 1]) in a grid, ``cols`` per row (default: a square), ``pad``
    grey pixels between them, upscaled ``scale`` times with nearest neighbours (default: to about 96 pixels
    per image). One channel gives a greyscale image, three an RGB one (other counts show the first channel)."""
    from PIL import Image
    x = to_nhwc(images, layout)
    n, h, w, c = x.shape
    if n == 0:
        raise ValueError("image_grid: no images")
    if c not in (1, 3):
        x, c = x[..., :1], 1
    cols = int(cols or int(np.ceil(np.sqrt(n))))
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    pix = _to_uint8(x)
    for i in range(n):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = pix[i]
    img = Image.fromarray(np.ascontiguousarray(grid[..., 0] if c == 1 else grid))  # uint8: "L" or "RGB"
    scale = int(scale or max(1, 96 // max(h, w)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), getattr(Image, "Resampling", Image).NEAREST)
    return img


# ---------------------------------------------------------------------------------------------- metrics --
def fidelity(reference: np.ndarray, images: np.ndarray, layout: str = "NCHW",
             data_range: float = DATA_RANGE) -> Dict[str, Optional[float]]:
    """PSNR (dB, over all images: one mean squared error), mean per-image SSIM and the largest absolute
    difference of ``images`` against ``reference`` (same shape), with scikit-image's metrics."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    ref = np.asarray(reference, np.float32)
    img = np.asarray(images, np.float32)
    if ref.shape != img.shape:
        raise ValueError(f"fidelity: shapes differ: {ref.shape} and {img.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical images: PSNR is +inf
        psnr = float(peak_signal_noise_ratio(ref, img, data_range=data_range))
    r4, i4 = to_nhwc(ref, layout), to_nhwc(img, layout)
    side = min(r4.shape[1], r4.shape[2])
    win = min(7, side if side % 2 else side - 1)
    ssim = None
    if win >= 3:
        vals = []
        for a, b in zip(r4, i4):
            if a.shape[-1] == 1:
                vals.append(structural_similarity(a[..., 0], b[..., 0], data_range=data_range, win_size=win))
            else:
                vals.append(structural_similarity(a, b, data_range=data_range, win_size=win, channel_axis=-1))
        ssim = float(np.mean(vals))
    return {"psnr_db": psnr, "ssim": ssim, "max_abs_error": float(np.max(np.abs(ref - img))) if ref.size else 0.0}


class DigitsScorer:
    """Distribution measures for generators of scikit-learn's handwritten digits (``load_digits``).

    An ``MLPClassifier`` (scikit-learn, 64 hidden ReLU units, ``random_state``) is fit on the 1797 real 8x8
    digits (values 0..16 scaled to 0..1). A generated image (1 channel, any size that is a multiple of 8, values
    in [-1, 1]) is block-averaged to 8x8 with ``skimage.measure.block_reduce`` and scaled to 0..1, the inverse
    of how ``train_builtin.py`` made its 32x32 training images. ``features`` are the classifier's hidden-layer
    activations; ``frechet_distance`` compares their Gaussian statistics (the FID formula, with
    ``scipy.linalg.sqrtm``) with those of the real digits.
    """

    def __init__(self, random_state: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        digits = load_digits()
        self.real = (digits.data / 16.0).astype(np.float64)
        self.target = digits.target
        self.classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(self.real, self.target)
        self.train_accuracy = float(self.classifier.score(self.real, self.target))
        self.real_stats = self._stats(self.features(self.real))

    @staticmethod
    def applies_to(model: Generator) -> bool:
        s = model.output_shape
        shape = s if model.layout == "NHWC" else (s[1], s[2], s[0]) if len(s) == 3 else s
        return len(shape) == 3 and shape[2] == 1 and shape[0] == shape[1] and shape[0] % 8 == 0

    @staticmethod
    def to_8x8(images: np.ndarray, layout: str = "NCHW") -> np.ndarray:
        """(N, 64) digits in 0..1 from generated images in [-1, 1]."""
        from skimage.measure import block_reduce
        x = to_nhwc(images, layout)[..., 0]
        f = x.shape[1] // 8
        small = block_reduce(x, (1, f, f), np.mean)
        return np.clip((small.reshape(len(x), 64) + 1.0) / 2.0, 0.0, 1.0).astype(np.float64)

    def features(self, x64: np.ndarray) -> np.ndarray:
        """The classifier's hidden-layer (ReLU) activations for (N, 64) digits in 0..1."""
        clf = self.classifier
        return np.maximum(x64 @ clf.coefs_[0] + clf.intercepts_[0], 0.0)

    def predict(self, x64: np.ndarray) -> np.ndarray:
        return self.classifier.predict(x64)

    @staticmethod
    def _stats(f: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return f.mean(axis=0), np.cov(f, rowvar=False)

    def frechet_distance(self, features: np.ndarray) -> float:
        """Frechet distance between the Gaussian statistics of ``features`` and of the real digits' features:
        ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))``."""
        from scipy import linalg
        mu1, s1 = self._stats(features)
        mu2, s2 = self.real_stats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's LinAlgWarning for a singular product: handled below
            covmean = linalg.sqrtm(s1 @ s2)
            if not np.all(np.isfinite(covmean)):  # a singular covariance: offset both diagonals (as FID does)
                eye = np.eye(len(s1)) * 1e-6
                covmean = linalg.sqrtm((s1 + eye) @ (s2 + eye))
        covmean = np.real(covmean)
        return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))

    def score(self, images: np.ndarray, layout: str = "NCHW") -> dict:
        x64 = self.to_8x8(images, layout)
        pred = self.predict(x64)
        return {"predictions": pred, "frechet": self.frechet_distance(self.features(x64)),
                "histogram": np.bincount(pred, minlength=10).tolist()}


# ----------------------------------------------------------------------------------------------- timing --
def _time_block(fn: Callable[[], object], min_time: float, repeats: int = 5, block: float = 0.02) -> float:
    """Seconds per call of ``fn``: warm up for at least ``min_time`` s (and one call), then the median over
    ``repeats`` blocks of calls, each block at least ``block`` s long."""
    t0 = time.perf_counter()
    n = 0
    while n < 1 or time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    k = max(1, int(block / max(per_call, 1e-9)))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(k):
            fn()
        times.append((time.perf_counter() - t) / k)
    return statistics.median(times)


def _layer_times(model: Generator, z: np.ndarray) -> List[float]:
    """Seconds in each layer's forward for the latent batch ``z`` (one pass, the model's own hand-off plan)."""
    x = model._check_latents(z)
    if x.ndim == 4 and model.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = []
    for layer, out_q in zip(model.layers, model._handoff):
        t = time.perf_counter()
        x = layer.forward(x, out_q)
        out.append(time.perf_counter() - t)
    return out


def _run_and_time(call: Callable[[np.ndarray], np.ndarray], z: np.ndarray, zb: np.ndarray, min_time: float,
                  min_repeats: int = 3) -> Tuple[np.ndarray, float]:
    """Images for all of ``z`` made ``len(zb)`` at a time, and the median seconds per batch of that size: a
    warm-up of at least ``min_time`` s on ``zb``, every full batch of ``z`` timed, more calls on ``zb`` until
    there are ``min_repeats`` timings."""
    batch = len(zb)
    t0 = time.perf_counter()
    n = 0
    while n < 1 or time.perf_counter() - t0 < min_time:
        call(zb)
        n += 1
    outs, times = [], []
    for i in range(0, len(z), batch):
        chunk = z[i:i + batch]
        t = time.perf_counter()
        outs.append(call(chunk))
        if len(chunk) == batch:
            times.append(time.perf_counter() - t)
    while len(times) < min_repeats:
        t = time.perf_counter()
        call(zb)
        times.append(time.perf_counter() - t)
    return np.concatenate(outs), statistics.median(times)


# ------------------------------------------------------------------------------------------- variants --
def variant_specs(sparsities: Sequence[float], optimized_sparsities: Sequence[float] = ()) -> List[dict]:
    """The variants a report compares: key, label, kind and sparsity, in order. ``optimized_sparsities``
    (None: no optimized variants; () by default for backward compatibility): add "int4 (GPTQ)" after the int8
    ones and a SparseGPT variant per sparsity, right after the plain pruned ones of the same sparsity (or at the
    end)."""
    out = [{"key": "float32", "label": "float32", "kind": "float32", "sparsity": 0.0},
           {"key": "int8_dynamic", "label": "int8 dynamic", "kind": "int8_dynamic", "sparsity": 0.0},
           {"key": "int8_static", "label": "int8 static", "kind": "int8_static", "sparsity": 0.0}]
    optimize = optimized_sparsities is not None
    opt = [float(s) for s in (optimized_sparsities or ())]
    if optimize:
        out.append({"key": "int4_gptq", "label": "int4 (GPTQ)", "kind": "int4_gptq", "sparsity": 0.0})

    def sparsegpt(s):
        pct = f"{s * 100:.4g}"
        return {"key": f"sparsegpt{pct}_float32", "label": f"pruned {pct}% + reconstruction (SparseGPT)",
                "kind": "sparsegpt_float32", "sparsity": float(s)}

    for s in sparsities:
        pct = f"{s * 100:.4g}"
        out.append({"key": f"pruned{pct}_float32", "label": f"pruned {pct}% float32", "kind": "pruned_float32",
                    "sparsity": float(s)})
        out.append({"key": f"pruned{pct}_int8", "label": f"pruned {pct}% int8", "kind": "pruned_int8",
                    "sparsity": float(s)})
        if float(s) in opt:
            out.append(sparsegpt(float(s)))
    out += [sparsegpt(s) for s in opt if s not in [float(v) for v in sparsities]]
    return out


def _build_variant(model: Generator, spec: dict, calibration: Optional[np.ndarray]) -> Generator:
    kind = spec["kind"]
    if kind == "float32":
        return model
    if kind == "int8_dynamic":
        return quantize_model(model)
    if kind == "int8_static":
        return quantize_model(model, calibration=calibration)
    if kind in ("int4_gptq", "sparsegpt_float32"):
        # layer-wise reconstruction on the calibration latents (each layer on the compressed inputs), with bias
        # correction: pyquant.model.optimize.optimize_model, as a user calls it
        from .model.optimize import Choice, optimize_model
        choice = Choice(4) if kind == "int4_gptq" else Choice(None, float(spec["sparsity"]))
        return optimize_model(model, calibration, choice, methods=OPTIMIZE_METHODS)
    # each layer to the sparsity on its own: one global threshold empties whole layers of this kind of model at
    # high sparsity (the 4x4 ConvTranspose2d of the built-in model at 90%)
    pruned = prune_model(model, spec["sparsity"], scope=PRUNE_SCOPE)
    if kind == "pruned_float32":
        return pruned
    # every weight layer is sparse now: sparse int8 layers quantize their input per call (no calibration)
    return quantize_model(pruned)


def parse_sparsities(text: Union[str, Sequence[float]]) -> List[float]:
    """``"0.5,0.75,0.9"`` -> [0.5, 0.75, 0.9]; each in (0, 1), no repeats ("" or "none": no pruned variants)."""
    if isinstance(text, str):
        t = text.strip().lower()
        if t in ("", "none"):
            return []
        try:
            vals = [float(p) for p in t.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"--sparsity must be comma-separated numbers in (0, 1), got {text!r}") from None
    else:
        vals = [float(v) for v in text]
    for v in vals:
        if not 0.0 < v < 1.0:
            raise ValueError(f"--sparsity values must lie strictly between 0 and 1, got {v:g}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"--sparsity has repeated values: {text!r}")
    return vals


# ------------------------------------------------------------------------------------ torch reference --
def torch_reference(model: Generator):
    """A torch ``nn.Module`` computing ``model`` in float32 eager mode with the same (dequantized, densified)
    weights, NCHW inside, taking and returning tensors in the model's layout. Needs torch."""
    import torch
    import torch.nn.functional as F

    def act(x, kind, alpha):
        if kind == "relu":
            return F.relu(x)
        if kind == "leaky_relu":
            return F.leaky_relu(x, alpha)
        if kind == "tanh":
            return torch.tanh(x)
        if kind == "sigmoid":
            return torch.sigmoid(x)
        return x

    steps: List[Callable] = []
    layers = model.layers
    params = []
    chw_ready = set()  # indices of Reshape layers whose Dense input already came out in (C, H, W) order
    for i, layer in enumerate(layers):
        kind = layer.kind
        if kind == "dense":
            w2 = np.asarray(layer._to_w2(layer.dense_weight()), np.float32)
            b = np.asarray(layer.bias, np.float32)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if nxt is not None and nxt.kind == "reshape" and len(nxt.shape) == 3:
                h, w, c = nxt.shape
                perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
                w2, b = w2[:, perm], b[perm]
                chw_ready.add(i + 1)
            W = torch.from_numpy(np.ascontiguousarray(w2.T))
            B = torch.from_numpy(np.ascontiguousarray(b))
            params += [W, B]
            steps.append(lambda x, W=W, B=B, a=layer.activation, al=layer.alpha: act(F.linear(x, W, B), a, al))
        elif kind == "conv_transpose2d":
            w = layer.dense_weight()  # (kh, kw, Cin, Cout)
            W = torch.from_numpy(np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 0, 1)))
            B = torch.from_numpy(np.asarray(layer.bias, np.float32).copy())
            (sh, sw), (pt, pb, pl, pr) = layer.stride, layer.padding
            if 0 <= pt - pb < sh and 0 <= pl - pr < sw:
                steps.append(lambda x, W=W, B=B, s=(sh, sw), p=(pt, pl), op=(pt - pb, pl - pr), a=layer.activation,
                             al=layer.alpha: act(F.conv_transpose2d(x, W, B, s, p, op), a, al))
            else:  # full output, then crop (or extend) and add the bias
                steps.append(lambda x, W=W, B=B, s=(sh, sw), p=(-pl, -pr, -pt, -pb), a=layer.activation,
                             al=layer.alpha: act(F.pad(F.conv_transpose2d(x, W, None, s), p) + B.view(1, -1, 1, 1),
                                                 a, al))
        elif kind == "batch_norm":
            S, T = torch.from_numpy(layer.scale.copy()), torch.from_numpy(layer.shift.copy())
            steps.append(lambda x, S=S, T=T: x * (S.view(1, -1, 1, 1) if x.ndim == 4 else S)
                         + (T.view(1, -1, 1, 1) if x.ndim == 4 else T))
        elif kind == "activation":
            steps.append(lambda x, a=layer.activation, al=layer.alpha: act(x, a, al))
        elif kind == "reshape":
            shape = layer.shape
            if len(shape) == 3:
                h, w, c = shape
                if i in chw_ready:
                    steps.append(lambda x, s=(c, h, w): x.reshape((x.shape[0],) + s))
                else:
                    steps.append(lambda x, s=(h, w, c): x.reshape((x.shape[0],) + s).permute(0, 3, 1, 2))
            else:
                steps.append(lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.ndim == 4
                             else x.reshape(x.shape[0], -1))
        elif kind == "flatten":
            if layer.order == "hwc":
                steps.append(lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.ndim == 4 else x)
            else:
                steps.append(lambda x: x.reshape(x.shape[0], -1))
        else:
            raise ValueError(f"torch_reference: layer kind {kind!r} is not supported")
    nhwc_in = len(model.latent_shape) == 3 and model.layout == "NHWC"
    nhwc_out = len(model.output_shape) == 3 and model.layout == "NHWC"

    class Reference(torch.nn.Module):
        def forward(self, x):
            if nhwc_in:
                x = x.permute(0, 3, 1, 2)
            for step in steps:
                x = step(x)
            return x.permute(0, 2, 3, 1) if nhwc_out else x

    return Reference().eval()


# ----------------------------------------------------------------------------------------- the output --
def _is_report_folder(path: Path) -> bool:
    try:
        with open(path / "report.json", encoding="utf-8") as f:
            return json.load(f).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class _OutputFolder:
    """Files are written into a fresh temporary folder beside ``out``; ``commit`` then replaces ``out`` whole
    (an earlier report there is removed, never mixed with the new files). A folder that exists, is not empty
    and holds no pyquant report is never touched: ValueError before any work."""

    def __init__(self, out: Union[str, os.PathLike]):
        self.out = Path(out)
        if self.out.exists():
            if not self.out.is_dir():
                raise ValueError(f"--out {self.out}: exists and is not a folder")
            if any(self.out.iterdir()) and not _is_report_folder(self.out):
                raise ValueError(f"--out {self.out}: the folder exists and holds something other than a pyquant "
                                 f"report; choose another folder or remove it")
        parent = self.out.parent if str(self.out.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=parent))
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the report is an ordinary folder
        except OSError as e:
            raise OSError(f"cannot write the report to {self.out}: {e.strerror or e}") from None

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self) -> None:
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.tmp.parent))
            os.rmdir(old)
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _versions(torch_used: bool) -> Dict[str, str]:
    from importlib import metadata
    from . import __version__
    out = {"pyquant": __version__, "python": sys.version.split()[0], "numpy": np.__version__}
    for dist in ("safetensors", "scikit-learn", "scikit-image", "scipy", "matplotlib", "pillow", "tqdm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if torch_used:
        import torch
        out["torch"] = torch.__version__
    return out


class _Progress:
    """A tqdm bar on stderr (shown on a terminal), or nothing."""

    def __init__(self, total: int, enabled: Optional[bool]):
        self.bar = None
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc="pyquant report", unit="step", file=sys.stderr, leave=False,
                        disable=None if enabled is None else not enabled, dynamic_ncols=True)

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)

    def set(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ the report --
def make_report(model: Generator, out: Union[str, os.PathLike] = "pyquant-report", *, source: str = "",
                sparsities: Sequence[float] = DEFAULT_SPARSITIES, calibrate: int = 256, batch: int = 64,
                samples: int = 256, seed: int = 0, threads: Optional[int] = None, dataset: Optional[str] = "auto",
                torch_ref: Optional[bool] = None, min_time: float = 0.3, progress: Optional[bool] = None,
                optimize: bool = True, optimized_sparsities: Sequence[float] = OPTIMIZED_SPARSITIES,
                sensitivity_options: Optional[Sequence[str]] = None) -> dict:
    """Make the report for ``model`` in the folder ``out`` (replaced whole if it holds an earlier report) and
    return what ``report.json`` holds.

    Args:
        model: the float32 Generator (every weight layer float32).
        source: how the model was named (e.g. "builtin:digits32"), for the report.
        sparsities: pruned variants (the fraction of each weight layer's weights removed, smallest magnitudes).
        calibrate: latents (seed ``seed + 1``) the int8 static variant is calibrated on.
        batch: the larger batch size timed (images are made ``batch`` at a time).
        samples: latents (seed ``seed``) every variant turns into images for the fidelity measures.
        threads: kernel threads (None: pyquant's current setting); also torch's and, with threadpoolctl,
            numpy's BLAS threads during the report.
        dataset: "sklearn-digits" for the digit measures, None for none, "auto" when the model is a built-in
            one trained on digits.
        torch_ref: time torch eager on the same weights (None: when torch is installed).
        min_time: seconds of warm-up before every timing.
        progress: a progress bar on stderr (None: when stderr is a terminal).
        optimize: add the variants of :mod:`pyquant.model.optimize` (layer-wise reconstruction on the
            ``calibrate`` latents: "int4 (GPTQ)" and SparseGPT pruning at each of ``optimized_sparsities``) and
            the per-layer sensitivity analysis (each weight layer alone at each of ``sensitivity_options``,
            default int8, int4 and every sparsity of ``sparsities``, held-out PSNR on the ``samples`` latents).
    """
    require_report_dependencies()
    if not isinstance(model, Generator):
        raise TypeError(f"make_report: model must be a pyquant.Generator, got {type(model).__name__}")
    not_float = [l.name for l in model.weight_layers if l.precision != "float32"]
    if not_float:
        raise ValueError(f"the report compresses a float32 model; layers {not_float} are already compressed")
    sparsities = parse_sparsities(sparsities)
    optimized_sparsities = parse_sparsities(optimized_sparsities) if optimize else None
    if optimize:
        from .model.optimize import Choice
        if sensitivity_options is None:
            sensitivity_options = ["int8", "int4"] + [f"sp{s * 100:.4g}" for s in sparsities]
        sensitivity_options = [Choice.parse(o).label for o in sensitivity_options]  # ValueError on a bad one
    for name, v, lo in (("calibrate", calibrate, 1), ("batch", batch, 1), ("samples", samples, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"--{name} must be an integer >= {lo}, got {v!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
    if dataset == "auto":
        from .builtin import DATASETS
        dataset = DATASETS.get(model.name) if source.startswith("builtin") else None
    if dataset not in (None, "sklearn-digits"):
        raise ValueError(f"unknown dataset {dataset!r}")
    if dataset and not DigitsScorer.applies_to(model):
        dataset = None
    if torch_ref is None:
        import importlib.util
        torch_ref = importlib.util.find_spec("torch") is not None

    folder = _OutputFolder(out)  # fails early (before the long work) on a bad or unwritable --out
    try:
        with _thread_limits(threads):
            result = _make(model, folder, source, sparsities, int(calibrate), int(batch), int(samples), int(seed),
                           dataset, bool(torch_ref), float(min_time), progress, optimized_sparsities,
                           sensitivity_options if optimize else None)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    result["files"]["folder"] = str(folder.out)
    return result


class _thread_limits:
    """pyquant's threads (and numpy's BLAS threads, with threadpoolctl) set to ``n`` inside."""

    def __init__(self, n: Optional[int]):
        self.n, self.ctx, self.prev = n, None, None

    def __enter__(self):
        if self.n is None:
            return self
        self.prev = _runtime.get_num_threads()
        _runtime.set_num_threads(int(self.n))
        try:
            from threadpoolctl import threadpool_limits
            self.ctx = threadpool_limits(int(self.n))
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.restore_original_limits()
        if self.prev is not None:
            _runtime.set_num_threads(self.prev)
        return False


def _make(model: Generator, folder: _OutputFolder, source: str, sparsities: List[float], calibrate: int,
          batch: int, samples: int, seed: int, dataset: Optional[str], torch_ref: bool, min_time: float,
          progress: Optional[bool], optimized_sparsities: Optional[List[float]] = None,
          sensitivity_options: Optional[List[str]] = None) -> dict:
    t_start = time.perf_counter()
    specs = variant_specs(sparsities, optimized_sparsities)
    bar = _Progress(total=len(specs) + 3 + int(torch_ref) + int(dataset is not None)
                    + int(sensitivity_options is not None), enabled=progress)
    try:
        z = model.latents(samples, seed)
        zb = z[:batch] if samples >= batch else model.latents(batch, seed)
        z1 = z[:1]
        calibration = model.latents(calibrate, seed + 1)
        scorer = None
        if dataset is not None:
            bar.set("digit classifier")
            scorer = DigitsScorer(random_state=0)
            bar.step("digit classifier")

        rows: List[dict] = []
        images: Dict[str, np.ndarray] = {}
        for spec in specs:
            bar.set(f"{spec['label']}: compressing")
            t0 = time.perf_counter()
            variant = _build_variant(model, spec, calibration)
            build_s = time.perf_counter() - t0
            variant.batch_size = max(variant.batch_size, batch)
            disk = _disk_bytes(variant, folder)
            bar.set(f"{spec['label']}: generating and timing")
            imgs, t_batch = _run_and_time(variant, z, zb, min_time)
            t_one = _time_block(lambda: variant(z1), min_time)
            layer_s = _layer_times(variant, zb)
            images[spec["key"]] = imgs
            rows.append({**spec, "model": variant, "disk": disk, "memory": variant.nbytes, "t_batch": t_batch,
                         "t_one": t_one, "layer_s": layer_s, "build_s": build_s})
            bar.step(spec["label"])

        sens = None
        if sensitivity_options is not None:
            bar.set("sensitivity: each layer alone")
            sens = _sensitivity(model, calibration, z, sensitivity_options, seed)
            bar.step("sensitivity")

        ref_row = None
        if torch_ref:
            bar.set("torch float32 eager")
            ref_row = _torch_row(model, z, zb, z1, batch, min_time)
            images["torch"] = ref_row.pop("images")
            bar.step("torch")

        bar.set("fidelity")
        base = images["float32"]
        for row in rows:
            row["fidelity"] = fidelity(base, images[row["key"]], model.layout) if row["key"] != "float32" else None
        if ref_row is not None:
            ref_row["fidelity"] = fidelity(base, images["torch"], model.layout)
        digits = None
        if scorer is not None:
            scores = {r["key"]: scorer.score(images[r["key"]], model.layout) for r in rows}
            real_half = _real_frechet(scorer, samples)
            digits = {"scores": scores, "real_reference": real_half}
            p0 = scores["float32"]["predictions"]
            for row in rows:
                s = scores[row["key"]]
                row["digits"] = {"agreement": float(np.mean(s["predictions"] == p0)), "frechet": s["frechet"],
                                 "histogram": s["histogram"]}
        bar.step("fidelity")

        bar.set("images and plots")
        files = _write_images(folder, rows, images, model)
        files += _write_plots(folder, rows, ref_row, batch, digits is not None)
        if sens is not None:
            from .model.optimize import plot_sensitivity
            plot_sensitivity(sens["rows"], folder.path("sensitivity.png"))
            files.append("sensitivity.png")
        bar.step("images and plots")

        report = _assemble(model, source, rows, ref_row, scorer, digits, sparsities, calibrate, batch, samples,
                           seed, files, time.perf_counter() - t_start, sens, optimized_sparsities)
        bar.set("writing")
        _write_markdown(folder.path("report.md"), report, rows)
        with open(folder.path("report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        bar.step("written")
    finally:
        bar.close()
    return report


def _sensitivity(model: Generator, calibration: np.ndarray, z: np.ndarray, options: List[str], seed: int) -> dict:
    """:func:`pyquant.model.optimize.sensitivity` on the report's latents: each weight layer compressed alone
    (the others float32) on the calibration latents, the whole model's PSNR on the ``samples`` latents."""
    from .model.optimize import sensitivity
    t0 = time.perf_counter()
    zc, ze = calibration[:SENSITIVITY_LATENTS], z[:SENSITIVITY_LATENTS]
    rows = sensitivity(model, zc, ze, options, methods=SENSITIVITY_METHODS, seed=seed)
    return {"rows": rows, "options": list(options), "seconds": time.perf_counter() - t0,
            "calibration": len(zc), "evaluation": len(ze)}


def _disk_bytes(variant: Generator, folder: _OutputFolder) -> int:
    path = folder.path(".size-probe.pyquant")
    variant.save(path)
    try:
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def _torch_row(model: Generator, z, zb, z1, batch: int, min_time: float) -> dict:
    import torch
    net = torch_reference(model)

    def call(x):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    previous = torch.get_num_threads()
    torch.set_num_threads(_runtime.get_num_threads())  # the same thread count as pyquant's kernels
    try:
        imgs, t_batch = _run_and_time(call, z, zb, min_time)
        t_one = _time_block(lambda: call(z1), min_time)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    return {"key": "torch_float32", "label": "torch float32 eager", "kind": "torch_reference", "images": imgs,
            "t_batch": t_batch, "t_one": t_one, "memory": model.float32_nbytes, "threads": threads,
            "version": torch.__version__}


def _real_frechet(scorer: DigitsScorer, samples: int) -> Optional[float]:
    """Frechet distance of ``samples`` real digits (a fixed random subset) to all of them: the floor a perfect
    generator would reach with this many images."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(scorer.real), size=min(samples, len(scorer.real)), replace=False)
    return scorer.frechet_distance(scorer.features(scorer.real[idx]))


def _write_images(folder: _OutputFolder, rows: List[dict], images: Dict[str, np.ndarray],
                  model: Generator) -> List[str]:
    files = []
    for row in rows:
        name = f"grid_{row['key']}.png"
        image_grid(images[row["key"]][:GRID_IMAGES], model.layout, cols=8).save(folder.path(name))
        row["grid"] = name
        files.append(name)
    others = [r for r in rows if r["key"] != "float32"]
    if others:
        _side_by_side(folder.path("side_by_side.png"), others, images, model.layout)
        files.append("side_by_side.png")
    return files


def _side_by_side(path: Path, rows: List[dict], images: Dict[str, np.ndarray], layout: str,
                  n_show: int = 4, scale: int = 3, pad: int = 4) -> None:
    """One picture: a row per compressed variant; for ``n_show`` samples, float32 | variant | |difference|
    amplified DIFF_AMPLIFICATION times (magma colour map, clipped at 1). Composed as one array, labelled with
    matplotlib (one axes: fast)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    base = to_nhwc(images["float32"], layout)
    n_show = min(n_show, len(base))
    h, w = base.shape[1], base.shape[2]
    th, tw = h * scale, w * scale
    gap = 3 * pad
    width = n_show * (3 * (tw + pad) + gap) - gap
    height = len(rows) * (th + pad) - pad
    canvas = np.ones((height, width, 3), np.float32)
    cmap = matplotlib.colormaps["magma"]

    def rgb(x):  # (h, w, c) in [-1, 1] -> (h, w, 3) in [0, 1]
        x = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
        return np.repeat(x[..., :1], 3, axis=-1) if x.shape[-1] != 3 else x

    for r, row in enumerate(rows):
        var = to_nhwc(images[row["key"]], layout)
        y = r * (th + pad)
        for j in range(n_show):
            diff = np.clip(np.abs(base[j] - var[j]).max(axis=-1) * DIFF_AMPLIFICATION, 0.0, 1.0)
            tiles = (rgb(base[j]), rgb(var[j]), cmap(diff)[..., :3])
            for k, tile in enumerate(tiles):
                x = j * (3 * (tw + pad) + gap) + k * (tw + pad)
                canvas[y:y + th, x:x + tw] = np.kron(tile, np.ones((scale, scale, 1)))
    dpi = 100
    # long variant names wrap onto two lines; the left margin fits the longest line (~7 px a character at 9 pt)
    labels = [textwrap.fill(row["label"], 28) for row in rows]
    left = max(150, 20 + 7 * max((len(line) for lab in labels for line in lab.splitlines()), default=0))
    top, bottom = 46, 8
    fig = plt.figure(figsize=((width + left + 8) / dpi, (height + top + bottom) / dpi), dpi=dpi)
    ax = fig.add_axes([left / (width + left + 8), bottom / (height + top + bottom), width / (width + left + 8),
                       height / (height + top + bottom)])
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for j in range(n_show):
        for k, title in enumerate(("float32", "variant", f"|diff| x{DIFF_AMPLIFICATION:g}")):
            x = j * (3 * (tw + pad) + gap) + k * (tw + pad) + tw / 2
            ax.text(x, -6, title, ha="center", va="bottom", fontsize=8)
    for r, label in enumerate(labels):
        ax.text(-10, r * (th + pad) + th / 2, label, ha="right", va="center", fontsize=9)
    fig.suptitle(f"float32 vs each variant, same latents (difference x{DIFF_AMPLIFICATION:g}: full colour = "
                 f"{1 / DIFF_AMPLIFICATION:g} in image units)", fontsize=9, y=1 - 8 / (height + top + bottom),
                 va="top")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _size_axis(ax) -> None:
    """A log x axis of file sizes, labelled in MB (major ticks only)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g} MB"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model file size (log scale)")


def _write_plots(folder: _OutputFolder, rows: List[dict], ref_row: Optional[dict], batch: int,
                 digits: bool) -> List[str]:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    files = []
    sizes = [r["disk"] for r in rows]
    others = [r for r in rows if r["key"] != "float32"]
    # fidelity vs size
    n_panels = 2 if digits else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6.2 * n_panels, 4.4), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(others):
        ax.scatter(r["disk"], r["fidelity"]["psnr_db"], s=30)
        ax.annotate(r["label"], (r["disk"], r["fidelity"]["psnr_db"]), fontsize=7,
                    xytext=(4, 3 if i % 2 == 0 else -9), textcoords="offset points")
    _size_axis(ax)
    ax.margins(x=0.3, y=0.1)  # room for the labels
    ax.set_ylabel("PSNR vs float32 (dB, higher is closer)")
    ax.set_title("fidelity vs size")
    ax.grid(True, alpha=0.3)
    if digits:
        ax = axes[0, 1]
        for i, r in enumerate(rows):
            ax.scatter(r["disk"], r["digits"]["frechet"], s=30)
            ax.annotate(r["label"], (r["disk"], r["digits"]["frechet"]), fontsize=7,
                        xytext=(4, 3 if i % 2 == 0 else -9), textcoords="offset points")
        ax.axhline(rows[0]["digits"]["frechet"], color="grey", ls="--", lw=0.8, label="float32")
        _size_axis(ax)
        ax.margins(x=0.3, y=0.1)
        ax.set_ylabel("Frechet distance to real digits (lower is better)")
        ax.set_title("distance to the training data vs size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.09 if n_panels == 1 else 0.06, right=0.97, bottom=0.12, top=0.92, wspace=0.25)
    fig.savefig(folder.path("fidelity_vs_size.png"), dpi=100)
    plt.close(fig)
    files.append("fidelity_vs_size.png")
    # speed vs size
    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    ax.scatter(sizes, [batch / r["t_batch"] for r in rows], marker="o", label=f"batch {batch}")
    ax.scatter(sizes, [1 / r["t_one"] for r in rows], marker="s", label="batch 1")
    for i, r in enumerate(rows):
        ax.annotate(r["label"], (r["disk"], batch / r["t_batch"]), fontsize=7,
                    xytext=(4, 3 if i % 2 == 0 else -9), textcoords="offset points")
    if ref_row is not None:
        ax.axhline(batch / ref_row["t_batch"], color="grey", ls="--", lw=0.8, label=f"torch float32, batch {batch}")
        ax.axhline(1 / ref_row["t_one"], color="grey", ls=":", lw=0.8, label="torch float32, batch 1")
    _size_axis(ax)
    ax.set_yscale("log")
    ax.margins(x=0.3, y=0.1)
    ax.set_ylabel("images / s (log scale)")
    ax.set_title("speed vs size")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(folder.path("speed_vs_size.png"), dpi=100)
    plt.close(fig)
    files.append("speed_vs_size.png")
    return files


def _assemble(model, source, rows, ref_row, scorer, digits, sparsities, calibrate, batch, samples, seed, files,
              elapsed, sens: Optional[dict] = None, optimized_sparsities: Optional[List[float]] = None) -> dict:
    cfg = _runtime.config()
    f32 = rows[0]
    variants = []
    for r in rows:
        layers = []
        total = sum(r["layer_s"]) or 1.0
        for layer, t in zip(r["model"].layers, r["layer_s"]):
            layers.append({"name": layer.name, "kind": layer.kind,
                           "activation": getattr(layer, "activation", None) if isinstance(layer, _WeightLayer)
                           else None,
                           "precision": layer.precision, "sparsity": _v(layer.sparsity, "fraction"),
                           "bytes": _v(layer.nbytes, "bytes"), "time": _v(t * 1e3, f"ms per batch of {batch}"),
                           "time_share": _v(t / total, "fraction")})
        fid = r["fidelity"] or {"psnr_db": None, "ssim": None, "max_abs_error": 0.0}
        entry = {
            "key": r["key"], "label": r["label"], "kind": r["kind"],
            "sparsity": _v(r["sparsity"], "fraction"),
            "size": {"disk_bytes": _v(r["disk"], "bytes"), "memory_bytes": _v(r["memory"], "bytes"),
                     "smaller_than_float32": _v(f32["disk"] / r["disk"], "x (disk)"),
                     "memory_smaller_than_float32": _v(f32["memory"] / r["memory"], "x (memory)")},
            "speed": _speed(r, f32, batch),
            "fidelity": {"psnr": _v(fid["psnr_db"], "dB"), "ssim": _v(fid["ssim"], "1 (mean per image)"),
                         "max_abs_error": _v(fid["max_abs_error"], "image units ([-1, 1] range)")},
            "layers": layers,
            "compress_time": _v(r["build_s"], "s"),
            "grid": r["grid"],
        }
        if digits is not None:
            d = r["digits"]
            entry["digits"] = {"agreement_with_float32": _v(d["agreement"], "fraction of images"),
                               "frechet_distance": _v(d["frechet"], "squared classifier-feature units"),
                               "predicted_class_histogram": {"value": d["histogram"], "unit": "images per digit 0-9"}}
        variants.append(entry)
    reference = None
    if ref_row is not None:
        fid = ref_row["fidelity"]
        reference = {"key": ref_row["key"], "label": ref_row["label"], "kind": ref_row["kind"],
                     "torch_threads": ref_row["threads"],
                     "size": {"memory_bytes": _v(ref_row["memory"], "bytes")},
                     "speed": _speed(ref_row, f32, batch),
                     "fidelity": {"psnr": _v(fid["psnr_db"], "dB"), "ssim": _v(fid["ssim"], "1 (mean per image)"),
                                  "max_abs_error": _v(fid["max_abs_error"], "image units ([-1, 1] range)")}}
    out = {
        "format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": source or model.name, "name": model.name, "latent_shape": list(model.latent_shape),
                  "output_shape": list(model.output_shape), "layout": model.layout,
                  "parameters": _v(model.n_params, "count")},
        "settings": {"sparsities": {"value": list(sparsities), "unit": "fraction"}, "calibrate": _v(calibrate, "latents"),
                     "calibration_seed": seed + 1, "batch": _v(batch, "images"), "samples": _v(samples, "images"),
                     "seed": seed, "warm_up": _v(0.3, "s"),
                     "timing": "median of timed calls after the warm-up; batch 1: median of 5 blocks of calls"},
        "environment": {"versions": _versions(reference is not None), "cpu": cfg["cpu"],
                        "machine": cfg["machine"], "platform": cfg["platform"], "isa": cfg["isa"],
                        "available_isas": cfg["available_isas"], "threads": cfg["num_threads"],
                        "cpu_count": os.cpu_count()},
        "variants": variants,
        "torch_reference": reference,
        "elapsed": _v(elapsed, "s"),
        "files": {"report": "report.md", "json": "report.json", "images": files},
    }
    if optimized_sparsities is not None:
        out["settings"]["optimize"] = {
            "methods": list(OPTIMIZE_METHODS), "optimized_sparsities": {"value": list(optimized_sparsities),
                                                                        "unit": "fraction"},
            "how": "pyquant.model.optimize.optimize_model(model, calibration latents, plan) with each layer "
                   "reconstructed on the compressed model's inputs"}
    if sens is not None:
        out["sensitivity"] = _sensitivity_json(sens)
    if digits is not None:
        out["digits"] = {
            "dataset": "sklearn.datasets.load_digits (1797 8x8 images)",
            "classifier": "sklearn MLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0) on the "
                          "8x8 digits / 16",
            "classifier_train_accuracy": _v(scorer.train_accuracy, "fraction"),
            "images_to_8x8": "skimage.measure.block_reduce mean over 4x4 blocks, (x + 1) / 2",
            "features": "the classifier's 64 hidden ReLU activations",
            "frechet_real_subset": _v(digits["real_reference"], "squared classifier-feature units"),
            "frechet_real_subset_note": f"{samples} real digits vs all 1797: the floor for {samples} images",
        }
    return out


def _sensitivity_json(sens: dict) -> dict:
    rows = []
    for r in sens["rows"]:
        sp = r["sparsity"]
        rows.append({"layer": r["layer"], "name": r["name"], "option": r["option"], "precision": r["precision"],
                     "bits": r["bits"], "sparsity": {"value": sp, "unit": "pattern"} if isinstance(sp, str)
                     else _v(sp, "fraction"),
                     "bytes": _v(r["bytes"], "bytes"), "float32_bytes": _v(r["float32_bytes"], "bytes"),
                     "smaller_than_float32": _v(r["float32_bytes"] / r["bytes"], "x (layer bytes)"),
                     "time": _v(r["time_ms"], "ms per forward of the layer (64 latents' input, best of 5)"),
                     "psnr": _v(r["psnr"], "dB (whole model, this layer alone compressed; None: identical)"),
                     "mse": _v(r["mse"], "mean squared error vs float32 (image units^2)"),
                     "calibration_error": _v(r["err_calib"], "sum of squared pre-activation errors (calibration)"),
                     "fallback": bool(r["fallback"])})
    return {"what": "each weight layer compressed alone (the other layers float32) with each option -> the whole "
                    "model's fidelity to float32 on the held-out samples latents",
            "function": "pyquant.model.optimize.sensitivity", "methods": list(SENSITIVITY_METHODS),
            "options": sens["options"],
            "calibration": _v(sens["calibration"], "latents (the first of the report's calibration latents)"),
            "evaluation": _v(sens["evaluation"], "latents (the first of the report's sample latents)"),
            "seconds": _v(sens["seconds"], "s"),
            "plot": "sensitivity.png", "rows": rows}


def _speed(r: dict, f32: dict, batch: int) -> dict:
    return {"images_per_s_batch1": _v(1.0 / r["t_one"], "images/s"),
            "latency_batch1": _v(r["t_one"] * 1e3, "ms"),
            f"images_per_s_batch{batch}": _v(batch / r["t_batch"], "images/s"),
            f"latency_batch{batch}": _v(r["t_batch"] * 1e3, "ms"),
            "speedup_batch1": _v(f32["t_one"] / r["t_one"], "x vs pyquant float32"),
            f"speedup_batch{batch}": _v(f32["t_batch"] / r["t_batch"], "x vs pyquant float32")}


# ------------------------------------------------------------------------------------ text and markdown --
def _fmt(v, spec: str = ".3g", none: str = "-") -> str:
    if isinstance(v, dict):
        v = v.get("value")
    if v is None:
        return none
    return format(v, spec)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary_rows(report: dict) -> Tuple[List[str], List[List[str]]]:
    """The summary table (header, rows) that ``pyquant report`` prints and report.md opens with."""
    batch = report["settings"]["batch"]["value"]
    digits = "digits" in report
    head = ["variant", "file", "x smaller", "img/s b1", f"img/s b{batch}", f"x faster b{batch}", "PSNR dB", "SSIM",
            "max err"]
    if digits:
        head += ["agree", "FD"]
    rows = []
    for v in report["variants"] + ([report["torch_reference"]] if report.get("torch_reference") else []):
        sp, fi, sz = v["speed"], v["fidelity"], v["size"]
        is_ref = v["kind"] == "torch_reference"
        row = [v["label"], _mb(sz["disk_bytes"]["value"]) if "disk_bytes" in sz else "-",
               _fmt(sz.get("smaller_than_float32"), ".2f"),
               _fmt(sp["images_per_s_batch1"], ".0f"), _fmt(sp[f"images_per_s_batch{batch}"], ".0f"),
               _fmt(sp[f"speedup_batch{batch}"], ".2f"),
               _fmt(fi["psnr"], ".1f", "inf" if v["key"] == "float32" else "-"),
               _fmt(fi["ssim"], ".4f", "1" if v["key"] == "float32" else "-"),
               _fmt(fi["max_abs_error"], ".3g")]
        if digits:
            d = v.get("digits")
            row += ["-" if d is None else f"{d['agreement_with_float32']['value']:.1%}",
                    "-" if d is None else _fmt(d["frechet_distance"], ".3f")]
            if is_ref:
                row[-2:] = ["-", "-"]
        rows.append(row)
    return head, rows


def _sensitivity_markdown(sens: dict) -> List[str]:
    rows = sens["rows"]
    layers, options = [], [o for o in sens["options"]]
    for r in rows:
        if (r["layer"], r["name"]) not in layers:
            layers.append((r["layer"], r["name"]))
    cell = {(r["layer"], r["option"]): r for r in rows}
    L = ["## Sensitivity: each layer alone", "",
         f"Each weight layer compressed alone (every other layer float32) with each option "
         f"({', '.join(sens['methods']) or 'plain rounding and magnitude pruning'}; calibrated on the first "
         f"{sens['calibration']['value']} calibration latents); "
         f"PSNR of the whole model's images against float32's on the first {sens['evaluation']['value']} sample "
         f"latents (held out). The lower the "
         f"PSNR, the more that layer costs in fidelity: keep it at higher precision.", "",
         "![per-layer sensitivity](sensitivity.png)", "",
         "| layer | float32 kB | " + " | ".join(f"{o} PSNR dB" for o in options) + " |",
         "|---|--:|" + "--:|" * len(options)]
    for li, name in layers:
        f32 = cell.get((li, "float32"))
        vals = [_fmt(cell[(li, o)]["psnr"], ".1f", "inf") if (li, o) in cell else "-" for o in options]
        L.append(f"| {name} | {_fmt(f32['bytes']['value'] / 1e3 if f32 else None, '.1f')} | " + " | ".join(vals)
                 + " |")
    L += ["", "| layer | option | precision | bytes | x smaller | time (ms) | PSNR alone (dB) | MSE |",
          "|---|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        L.append(f"| {r['name']} | {r['option']} | {r['precision']} | {r['bytes']['value']:,} | "
                 f"{_fmt(r['smaller_than_float32'], '.2f')} | {_fmt(r['time'], '.2f')} | "
                 f"{_fmt(r['psnr'], '.1f', 'inf')} | {_fmt(r['mse'], '.2e')} |")
    L += ["", "*time*: one forward pass of the layer alone on the layer inputs of 64 latents (best of 5).", ""]
    return L


def format_table(head: List[str], rows: List[List[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(head)))
                 + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _write_markdown(path: Path, report: dict, rows: List[dict]) -> None:
    env, st, m = report["environment"], report["settings"], report["model"]
    batch = st["batch"]["value"]
    head, table = summary_rows(report)
    L = [f"# pyquant report: {m['name']} ({m['source']})", "",
         f"The float32 generator and every compressed variant turn the same {st['samples']['value']} latents "
         f"(seed {st['seed']}) into images, {batch} at a time; fidelity is measured against float32's images. "
         f"Latent {tuple(m['latent_shape'])} -> images {tuple(m['output_shape'])} ({m['layout']}), "
         f"{m['parameters']['value']:,} parameters.", "",
         f"Machine: {env['cpu']}, ISA path `{env['isa']}`, {env['threads']} pyquant threads; pyquant "
         f"{env['versions']['pyquant']}, numpy {env['versions']['numpy']}, python {env['versions']['python']}"
         + (f", torch {env['versions']['torch']}" if "torch" in env["versions"] else "") + ". "
         f"Made {report['created']} in {report['elapsed']['value']:.1f} s.", "",
         "## Summary", "", format_table(head, table, markdown=True), "",
         f"*file*: the model file's size; *x smaller*: float32's file size / the variant's; *img/s*: images per "
         f"second at batch 1 and batch {batch} (median of timed runs after a warm-up of at least "
         f"{st['warm_up']['value']} s); *x faster*: float32's time / the variant's at batch {batch}; *PSNR*, "
         f"*SSIM* (scikit-image, data range 2) and *max err* compare with float32's images on the same latents.",
         ""]
    if "digits" in report:
        d = report["digits"]
        L += [f"*agree*: how often a digit classifier (scikit-learn MLP, {d['classifier_train_accuracy']['value']:.1%}"
              f" on the real digits it was fit on) reads the same digit in the variant's image as in float32's; "
              f"*FD*: Frechet distance between the classifier's hidden features of the real digits and of the "
              f"generated images (lower is closer to the real data; float32's own value is the reference, and "
              f"{st['samples']['value']} real digits score {d['frechet_real_subset']['value']:.3f}).", ""]
    if report.get("torch_reference"):
        L += ["*torch float32 eager*: the same float32 weights run by PyTorch (reference row, "
              f"{report['torch_reference']['torch_threads']} torch threads).", ""]
    L += ["## Float32 vs each variant", "", "![float32 vs each variant](side_by_side.png)", "",
          "## Size, fidelity and speed", "", "![fidelity vs size](fidelity_vs_size.png)", "",
          "![speed vs size](speed_vs_size.png)", "", "## Image grids (the same latents)", ""]
    for v in report["variants"]:
        L += [f"### {v['label']}", "", f"![{v['label']}]({v['grid']})", ""]
    if report.get("sensitivity"):
        L += _sensitivity_markdown(report["sensitivity"])
    L += [f"## Where the bytes and the time went: per layer (time at batch {batch})", ""]
    for v in report["variants"]:
        L += [f"### {v['label']}", "", "| layer | type | precision | sparsity | bytes | time (ms) | time share |",
              "|---|---|---|--:|--:|--:|--:|"]
        for l in v["layers"]:
            kind = l["kind"] + (f" + {l['activation']}" if l.get("activation") not in (None, "identity") else "")
            sp = l["sparsity"]["value"]
            L.append(f"| {l['name']} | {kind} | {l['precision']} | {sp:.1%} | {l['bytes']['value']:,} | "
                     f"{l['time']['value']:.2f} | {l['time_share']['value']:.1%} |")
        L.append(f"| total | | | | {sum(l['bytes']['value'] for l in v['layers']):,} | "
                 f"{sum(l['time']['value'] for l in v['layers']):.2f} | 100% |")
        L.append("")
    L += ["## How", "",
          f"- int8: weights symmetric per output channel; *dynamic* quantizes activations per call, *static* uses "
          f"ranges calibrated on {st['calibrate']['value']} latents (seed {st['calibration_seed']}).",
          "- pruned: in every weight layer, that fraction of its weights with the smallest magnitudes removed "
          "(one-shot, no retraining), the rest stored sparse (CSR); *int8* quantizes the kept weights and the "
          "activations per call.",
          *([f"- int4 (GPTQ) and pruned + reconstruction (SparseGPT): `pyquant.model.optimize.optimize_model` on "
              f"the same {st['calibrate']['value']} calibration latents, layer by layer (each layer fitted on the "
              f"already-compressed layers' outputs): int4 symmetric per output channel with a searched clipping "
              f"scale and GPTQ error feedback; SparseGPT removes that fraction of each layer's weights and updates "
              f"the kept ones to reconstruct the layer's output; then per-channel bias correction. The int4 "
              f"weights are stored packed (two per byte) and run through the int8 kernels."]
            if "optimize" in st else []),
          "- Every figure, with its unit, is in `report.json`.", ""]
    path.write_text("\n".join(L), encoding="utf-8")
