"""Compression of a whole Generator: int8 quantization and magnitude pruning (new models; the input model is
left as it is)."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..pruning import _sparsity, magnitude_mask, prune_global
from ..quantization import choose_qparams
from .generator import Generator
from .layers import QTensor, _float, _WeightLayer

__all__ = ["quantize_model", "prune_model", "layer_inputs"]


def _selected(model: Generator, skip: Iterable[Union[int, str]], fn: str) -> List[int]:
    """Indices of the weight layers not named in ``skip`` (names or indices into ``model.layers``)."""
    if isinstance(skip, (str, int)):
        skip = (skip,)
    skipped = set()
    for key in skip:
        try:
            layer = model.layer(key)
        except (KeyError, IndexError):
            raise ValueError(f"{fn}: skip names no layer of the model: {key!r} (layers: "
                             f"{[l.name for l in model.layers]})") from None
        skipped.add(layer.name)
    return [i for i, l in enumerate(model.layers) if isinstance(l, _WeightLayer) and l.name not in skipped]


def layer_inputs(model: Generator, z, indices: Optional[Sequence[int]] = None) -> Dict[int, np.ndarray]:
    """The float32 input of each layer (or of those in ``indices``) for the latent batch ``z``, running the
    model as it is."""
    x = model._check_latents(z)
    if x.ndim == 4 and model.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    want = set(range(len(model.layers)) if indices is None else indices)
    out = {}
    for i, layer in enumerate(model.layers):
        if i in want:
            out[i] = np.array(_float(x), dtype=np.float32)
        x = layer.forward(x, None)
    return out


def quantize_model(model: Generator, dtype: str = "int8", *, calibration=None,
                   skip: Iterable[Union[int, str]] = ()) -> Generator:
    """A new Generator whose weight layers run int8 (symmetric per output channel, ``[-127, 127]``).

    Args:
        model: the Generator (float32, or pruned: sparse float32 layers become sparse int8).
        dtype: "int8".
        calibration: None for activations quantized per call from their min/max (the design's "dynamic
            range"); or a latent batch: each int8 layer gets static uint8 input parameters from the min/max of
            its input over that batch, and an int8 layer feeding another one requantizes its output straight
            into the next layer's uint8 input in its fused epilogue (no float round trip).
        skip: layers (names or indices into ``model.layers``) that keep their precision: mixed precision.
    """
    fn = "quantize_model"
    if not isinstance(model, Generator):
        raise TypeError(f"{fn}: model must be a pyquant.Generator, got {type(model).__name__}")
    if dtype != "int8":
        raise ValueError(f"{fn}: dtype must be 'int8', got {dtype!r}")
    chosen = _selected(model, skip, fn)
    params: Dict[int, tuple] = {}
    if calibration is not None:
        inputs = layer_inputs(model, calibration, chosen)
        for i, x in inputs.items():
            qp = choose_qparams(x, "uint8")
            params[i] = (np.float32(qp.scale), int(qp.zero_point))
    layers = list(model.layers)
    for i in chosen:
        layer = layers[i]
        static = params.get(i) if layer.precision in ("float32", "int8") else None
        layers[i] = layer.quantized(input_qparams=static)
    return model.with_layers(layers)


def prune_model(model: Generator, sparsity: float, *, skip: Iterable[Union[int, str]] = (),
                scope: str = "global") -> Generator:
    """A new Generator whose weight layers keep only their largest-magnitude weights, stored sparse (CSR).

    ``scope="global"`` keeps the ``round((1 - sparsity) * n)`` largest ``|w|`` over all selected layers
    together (one threshold for the model); ``"layer"`` prunes each layer to ``sparsity`` on its own. A float32
    layer becomes sparse float32 and an int8 layer sparse int8 (the same int8 values and scales; magnitudes
    compared as dequantized weights). Quantize after pruning for sparse int8 with fresh scales.
    """
    fn = "prune_model"
    if not isinstance(model, Generator):
        raise TypeError(f"{fn}: model must be a pyquant.Generator, got {type(model).__name__}")
    s = _sparsity(sparsity, fn)
    if scope not in ("global", "layer"):
        raise ValueError(f"{fn}: scope must be 'global' or 'layer', got {scope!r}")
    chosen = _selected(model, skip, fn)
    mats = [np.abs(model.layers[i]._to_w2(model.layers[i].dense_weight())) for i in chosen]
    if scope == "global":
        masks = prune_global(mats, s, return_masks=True)[1]
    else:
        masks = [magnitude_mask(m, s) for m in mats]
    layers = list(model.layers)
    for i, mask in zip(chosen, masks):
        layers[i] = layers[i].pruned(np.asarray(mask, bool).reshape(mats[chosen.index(i)].shape))
    return model.with_layers(layers)
