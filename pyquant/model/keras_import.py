"""Import a Keras 3 generator (``keras`` is imported lazily; it is optional)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .build import Spec, batch_norm_affine, build
from .generator import Generator

_KERAS_ACTIVATIONS = {"linear": "identity", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                      "leaky_relu": "leaky_relu"}


def _np(v) -> np.ndarray:
    import keras
    return np.array(keras.ops.convert_to_numpy(v), dtype=np.float32)


def _activation_spec(fn, lname: str, where: str) -> Optional[Spec]:
    """The spec of a layer's ``activation=`` argument (None for linear)."""
    name = getattr(fn, "__name__", str(fn))
    if name not in _KERAS_ACTIVATIONS:
        raise ValueError(f"{where}: activation {name!r} is not supported (supported: "
                         f"{', '.join(_KERAS_ACTIVATIONS)})")
    act = _KERAS_ACTIVATIONS[name]
    if act == "identity":
        return None
    # keras.activations.leaky_relu's default negative slope is 0.2
    return Spec("activation", lname + "/activation", activation=act, alpha=0.2)


def _keras_crops(k: int, s: int, padding: str, output_padding: Optional[int]) -> list:
    """(top, bottom) cropped from the full transposed-convolution output ``(n - 1) * s + k`` along one axis,
    as Keras 3 computes it (its JAX convention, which the torch backend reproduces): the input is padded by
    ``left`` and ``right`` before the stride-1 correlation with the flipped kernel, so the crop is
    ``k - 1 - left`` at the start and ``k - 1 - right`` at the end (negative: the output is extended).

    - "valid": ``left = k - 1``, ``right = k - 1 + output_padding`` (default output_padding ``max(k, s) - k``);
    - "same": total padding ``s + k - 2`` (no output_padding: output length ``n * s``) or
      ``k + k % 2 - 2 + output_padding``; ``left = min(ceil(total / 2), k - 1)``, ``right = total - left``.
    """
    padding = str(padding).lower()
    if padding == "valid":
        o = max(k, s) - k if output_padding is None else int(output_padding)
        left, right = k - 1, k - 1 + o
    elif padding == "same":
        total = s + k - 2 if output_padding is None else k + k % 2 - 2 + int(output_padding)
        left = min(total // 2 + total % 2, k - 1)
        right = total - left
    else:
        raise ValueError(f"padding {padding!r} is not supported (\"same\" or \"valid\")")
    return [k - 1 - left, k - 1 - right]


def _chain(model) -> list:
    """The model's layers in call order, checking that a functional model is a plain chain."""
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    if type(model).__name__ != "Sequential":
        for prev, layer in zip(layers, layers[1:]):
            inbound = [getattr(t, "_keras_history", [None])[0] for node in layer._inbound_nodes
                       for t in node.input_tensors]
            if inbound and any(l is not prev for l in inbound):
                raise ValueError(f"from_keras: layer {layer.name!r} is not fed by the layer before it; only a "
                                 f"plain chain of layers is supported")
    return layers


def from_keras(model, name: Optional[str] = None) -> Generator:
    """A :class:`pyquant.Generator` from a Keras 3 model (Sequential, or a functional chain).

    Supported layers: ``Dense``, ``Conv2DTranspose`` (channels_last, dilation 1, padding "same" or "valid"),
    ``BatchNormalization`` (last axis; moving statistics), ``LeakyReLU`` (Keras 3's default slope 0.3),
    ``ReLU`` (plain), ``Activation``, ``activation=`` on Dense / Conv2DTranspose, ``Reshape``, ``Flatten``,
    ``Dropout`` (skipped). Images come out NHWC, as Keras'. An unsupported layer or option is a ValueError
    naming the layer.
    """
    specs: List[Spec] = []
    for layer in _chain(model):
        t = type(layer).__name__
        lname = layer.name
        where = f"from_keras: layer {lname!r} ({t})"
        if t == "Dense":
            b = _np(layer.bias) if layer.use_bias else None
            specs.append(Spec("dense", lname, weight=_np(layer.kernel), bias=b))
            act = _activation_spec(layer.activation, lname, where)
            if act:
                specs.append(act)
        elif t == "Conv2DTranspose":
            if layer.data_format != "channels_last":
                raise ValueError(f"{where}: data_format {layer.data_format!r} is not supported (channels_last only)")
            if tuple(layer.dilation_rate) != (1, 1):
                raise ValueError(f"{where}: dilation_rate {layer.dilation_rate} is not supported")
            if getattr(layer, "groups", 1) not in (1, None):
                raise ValueError(f"{where}: groups must be 1")
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            op = layer.output_padding
            if str(layer.padding).lower() not in ("same", "valid"):
                raise ValueError(f"{where}: padding {layer.padding!r} is not supported (\"same\" or \"valid\")")
            pads = []
            for k, s, o in ((kh, sh, None if op is None else op[0]), (kw, sw, None if op is None else op[1])):
                pads += _keras_crops(k, s, layer.padding, o)
            w = _np(layer.kernel).transpose(0, 1, 3, 2).copy()  # (kh, kw, Cout, Cin) -> (kh, kw, Cin, Cout)
            b = _np(layer.bias) if layer.use_bias else None
            specs.append(Spec("conv_transpose2d", lname, weight=w, bias=b, stride=(sh, sw),
                              padding=(pads[0], pads[1], pads[2], pads[3])))
            act = _activation_spec(layer.activation, lname, where)
            if act:
                specs.append(act)
        elif t == "BatchNormalization":
            axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
            rank = len(layer.input.shape) if hasattr(layer, "input") else None
            if axis != -1 and (rank is None or axis != rank - 1):
                raise ValueError(f"{where}: only the last axis (channels_last) is supported, got axis {layer.axis}")
            s, sh_ = batch_norm_affine(_np(layer.gamma) if layer.scale else None,
                                       _np(layer.beta) if layer.center else None,
                                       _np(layer.moving_mean), _np(layer.moving_variance), layer.epsilon)
            specs.append(Spec("batch_norm", lname, scale=s, shift=sh_))
        elif t == "LeakyReLU":
            specs.append(Spec("activation", lname, activation="leaky_relu", alpha=float(layer.negative_slope)))
        elif t == "ReLU":
            if layer.max_value is not None or float(layer.negative_slope) != 0 or float(layer.threshold) != 0:
                raise ValueError(f"{where}: only a plain ReLU (no max_value, negative_slope or threshold) is "
                                 f"supported")
            specs.append(Spec("activation", lname, activation="relu"))
        elif t == "Activation":
            act = _activation_spec(layer.activation, lname, where)
            if act:
                act.name = lname
                specs.append(act)
        elif t == "Reshape":
            specs.append(Spec("reshape", lname, shape=tuple(layer.target_shape), order="hwc"))
        elif t == "Flatten":
            specs.append(Spec("flatten", lname, order="hwc"))
        elif t in ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "Identity"):
            continue
        else:
            raise ValueError(f"{where}: unsupported layer type {t} (supported: Dense, Conv2DTranspose, "
                             f"BatchNormalization, LeakyReLU, ReLU, Activation, Reshape, Flatten, Dropout)")
    latent = tuple(int(d) for d in model.input_shape[1:])
    return build(specs, latent, "NHWC", name or model.name)
