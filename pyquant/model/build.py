"""From a framework's layer list to a Generator: BatchNorm folding, activation fusion, channels-last layout.

Importers describe a model as a list of framework-neutral specs (below); :func:`build` turns them into
pyquant layers:

- a BatchNorm right after a weight layer (through reshapes only) is folded into its weights and bias
  (``W' = W * s``, ``b' = b * s + t`` per output channel, with ``s = gamma / sqrt(var + eps)`` and
  ``t = beta - mean * s``); otherwise it runs as a per-channel scale and shift;
- an activation right after a weight layer (through reshapes and folded BatchNorms) runs in that layer's
  fused epilogue; otherwise as a layer of its own;
- a reshape of a Dense output to a channels-first image (PyTorch's ``Unflatten(1, (C, H, W))``) permutes the
  Dense's output columns into channels-last order, so the reshape is a free view.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .generator import Generator
from .layers import Activation, BatchNorm, ConvTranspose2d, Dense, Flatten, Layer, Reshape, _WeightLayer


@dataclass
class Spec:
    """One source layer. kind: "dense" (weight (in, out), bias), "conv_transpose2d" (weight (kh, kw, Cin, Cout),
    bias, stride, padding (top, bottom, left, right)), "batch_norm" (scale, shift), "activation"
    (activation, alpha), "reshape" (shape, order "chw" | "hwc"), "flatten" (order)."""
    kind: str
    name: str
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int, int, int] = (0, 0, 0, 0)
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    activation: str = "identity"
    alpha: float = 0.01
    shape: Tuple[int, ...] = ()
    order: str = "hwc"
    extra: dict = field(default_factory=dict)


def batch_norm_affine(gamma, beta, mean, var, eps) -> Tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as ``x * scale + shift`` (computed in float64, stored float32)."""
    mean = np.asarray(mean, np.float64)
    var = np.asarray(var, np.float64)
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
    s = gamma / np.sqrt(var + float(eps))
    return s.astype(np.float32), (beta - mean * s).astype(np.float32)


def _channel_of_columns(layer: _WeightLayer, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """For each output column of ``layer``, its channel in the current (channels-last) tensor ``shape`` (the
    layer's output seen through reshapes), or None when a channel is not a function of the column (a
    per-channel BatchNorm there cannot be folded into the weights).

    Element ``j`` of the flattened tensor has channel ``j % C``. A Dense layer's column is ``j`` itself; a
    transposed convolution's column is ``j % Cout`` (its output is (H, W, Cout)), so the channel follows from
    the column only when C divides Cout (e.g. not after a Flatten: C is then H * W * Cout)."""
    n, c = layer.out_features, shape[-1]
    if isinstance(layer, ConvTranspose2d):
        return np.arange(n) % c if n % c == 0 else None
    return np.arange(n) % c


def _resolve_shape(target: Tuple[int, ...], size: int, where: str) -> Tuple[int, ...]:
    """A reshape target with at most one -1 (inferred from the element count ``size``)."""
    target = tuple(int(t) for t in target)
    unknown = [i for i, t in enumerate(target) if t == -1]
    if len(unknown) > 1 or any(t < 1 and t != -1 for t in target):
        raise ValueError(f"{where}: invalid reshape target {target}")
    if unknown:
        known = int(np.prod([t for t in target if t != -1]))
        if known == 0 or size % known:
            raise ValueError(f"{where}: cannot reshape {size} features to {target}")
        target = tuple(size // known if t == -1 else t for t in target)
    return target


def build(specs: Sequence[Spec], latent_shape: Sequence[int], layout: str, name: str) -> Generator:
    """The Generator of a spec list (see the module docstring)."""
    g_in = Generator.__new__(Generator)  # only for the input-shape rule
    g_in.latent_shape, g_in.layout = tuple(latent_shape), layout
    shape = Generator._internal_input_shape(g_in)
    layers: List[Layer] = []
    last_w: Optional[_WeightLayer] = None  # the weight layer the current tensor comes from (through views)
    fused_act = False  # an activation was fused into last_w already
    for sp in specs:
        where = f"layer {sp.name!r}"
        if sp.kind == "dense":
            if len(shape) != 1:
                raise ValueError(f"{where}: Dense needs a flat input, got per-sample shape {shape} (add a Flatten)")
            if sp.weight.shape[0] != shape[0]:
                raise ValueError(f"{where}: Dense expects {sp.weight.shape[0]} inputs, the model gives {shape[0]}")
            layer = Dense(sp.name, weight=sp.weight, bias=sp.bias)
        elif sp.kind == "conv_transpose2d":
            if len(shape) != 3:
                raise ValueError(f"{where}: ConvTranspose2d needs an image input, got per-sample shape {shape}")
            layer = ConvTranspose2d(sp.name, weight=sp.weight, bias=sp.bias, stride=sp.stride, padding=sp.padding)
        elif sp.kind == "reshape":
            target = _resolve_shape(sp.shape, int(np.prod(shape)), where)
            if len(target) == 3 and sp.order == "chw":
                c, h, w = target
                if len(shape) != 1:
                    raise ValueError(f"{where}: a channels-first reshape of an image input is not supported")
                if not (isinstance(last_w, Dense) and layers and layers[-1] is last_w):
                    raise ValueError(f"{where}: a channels-first reshape is supported right after a Linear layer "
                                     f"only")
                if c * h * w != shape[0]:
                    raise ValueError(f"{where}: cannot reshape {shape[0]} features to {target}")
                perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
                last_w.weight = np.ascontiguousarray(last_w.weight[:, perm])
                last_w.bias = np.ascontiguousarray(last_w.bias[perm])
                target = (h, w, c)
            elif len(target) == 1 and len(shape) == 3 and sp.order == "chw":
                layer = Flatten(sp.name, order="chw")
                layers.append(layer)
                shape = layer.output_shape(shape)
                last_w = None
                continue
            layer = Reshape(sp.name, shape=target)
            shape = layer.output_shape(shape)
            layers.append(layer)
            continue  # a view: last_w stays
        elif sp.kind == "flatten":
            order = sp.order if len(shape) == 3 else "hwc"
            if order == "hwc":
                layer = Reshape(sp.name, shape=(int(np.prod(shape)),))
                shape = layer.output_shape(shape)
                layers.append(layer)
                continue
            layer = Flatten(sp.name, order=order)
        elif sp.kind == "batch_norm":
            if sp.scale.shape != (shape[-1],):
                raise ValueError(f"{where}: BatchNorm has {sp.scale.size} channels, its input has {shape[-1]}")
            ch = None
            if last_w is not None and not fused_act and last_w.precision == "float32":
                ch = _channel_of_columns(last_w, shape)
            if ch is not None:
                s, t = sp.scale[ch], sp.shift[ch]
                w2 = last_w._to_w2(last_w.weight) * s
                last_w.weight = last_w._from_w2(w2.astype(np.float32))
                last_w.bias = (last_w.bias * s + t).astype(np.float32)
                continue
            layer = BatchNorm(sp.name, scale=sp.scale, shift=sp.shift)
        elif sp.kind == "activation":
            if sp.activation == "identity":
                continue
            if last_w is not None and not fused_act:
                last_w.activation, last_w.alpha = sp.activation, float(sp.alpha)
                fused_act = True
                continue
            layer = Activation(sp.name, activation=sp.activation, alpha=sp.alpha)
        else:
            raise ValueError(f"{where}: unknown layer kind {sp.kind!r}")
        shape = layer.output_shape(shape)
        layers.append(layer)
        last_w = layer if isinstance(layer, _WeightLayer) else None
        fused_act = False
    # folding changed weights in place: validate them once more
    for layer in layers:
        if isinstance(layer, _WeightLayer):
            layer._check_representation(f"layer {layer.name!r}")
    return Generator(layers, latent_shape, layout, name)
