"""Import a PyTorch generator (``torch`` is imported lazily; it is optional)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .build import Spec, batch_norm_affine, build
from .generator import Generator


def _np(t) -> Optional[np.ndarray]:
    return None if t is None else t.detach().cpu().to(dtype=__import__("torch").float32).numpy().copy()


def _sequence(module):
    """The modules of an nn.Sequential, or of the one nn.Sequential child holding all of a module's
    parameters (the PyTorch DCGAN example's ``self.main``), nested Sequentials flattened."""
    import torch.nn as nn
    if isinstance(module, nn.Sequential):
        seq = module
    else:
        total = sum(p.numel() for p in module.parameters())
        seq = None
        for child in module.children():
            if isinstance(child, nn.Sequential) and sum(p.numel() for p in child.parameters()) == total:
                seq = child
                break
        if seq is None:
            raise ValueError(f"from_torch: expected an nn.Sequential, or a module whose parameters all sit in one "
                             f"nn.Sequential child; got {type(module).__name__}")

    def flat(s, prefix):
        for name, m in s.named_children():
            full = f"{prefix}{name}"
            if isinstance(m, nn.Sequential):
                yield from flat(m, full + ".")
            else:
                yield full, m
    return list(flat(seq, ""))


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def from_torch(module, latent_shape: Optional[Sequence[int]] = None, name: Optional[str] = None) -> Generator:
    """A :class:`pyquant.Generator` from a PyTorch generator.

    ``module`` is an ``nn.Sequential`` (or a module whose parameters all sit in one ``nn.Sequential`` child)
    of ``Linear``, ``ConvTranspose2d`` (groups 1, dilation 1, zero padding), ``BatchNorm1d`` / ``BatchNorm2d``
    (inference semantics: the running statistics are used, as in ``module.eval()``), ``ReLU``,
    ``LeakyReLU``, ``Tanh``, ``Sigmoid``, ``Unflatten``, ``Flatten``, ``Dropout`` and ``Identity`` (skipped).
    Images come out NCHW, as PyTorch's. ``latent_shape`` defaults to ``(in_features,)`` for a first Linear
    layer and ``(in_channels, 1, 1)`` for a first ConvTranspose2d (the DCGAN latent).
    An unsupported layer or option is a ValueError naming the layer.
    """
    import torch.nn as nn
    specs: List[Spec] = []
    first = None
    for lname, m in _sequence(module):
        where = f"from_torch: layer {lname!r} ({type(m).__name__})"
        if isinstance(m, nn.Linear):
            first = first or ("dense", m.in_features)
            specs.append(Spec("dense", lname, weight=_np(m.weight).T.copy(), bias=_np(m.bias)))
        elif isinstance(m, nn.ConvTranspose2d):
            first = first or ("conv", m.in_channels)
            if m.groups != 1:
                raise ValueError(f"{where}: groups={m.groups} is not supported (groups must be 1)")
            if _pair(m.dilation) != (1, 1):
                raise ValueError(f"{where}: dilation={m.dilation} is not supported (dilation must be 1)")
            if m.padding_mode != "zeros":
                raise ValueError(f"{where}: padding_mode={m.padding_mode!r} is not supported")
            if isinstance(m.padding, str):
                raise ValueError(f"{where}: padding={m.padding!r} is not supported")
            (ph, pw), (oh, ow) = _pair(m.padding), _pair(m.output_padding)
            w = _np(m.weight).transpose(2, 3, 0, 1).copy()  # (Cin, Cout, kh, kw) -> (kh, kw, Cin, Cout)
            specs.append(Spec("conv_transpose2d", lname, weight=w, bias=_np(m.bias), stride=_pair(m.stride),
                              padding=(ph, ph - oh, pw, pw - ow)))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None or m.running_var is None:
                raise ValueError(f"{where}: needs running statistics (track_running_stats=True)")
            s, t = batch_norm_affine(_np(m.weight) if m.affine else None, _np(m.bias) if m.affine else None,
                                     _np(m.running_mean), _np(m.running_var), m.eps)
            specs.append(Spec("batch_norm", lname, scale=s, shift=t))
        elif isinstance(m, nn.LeakyReLU):
            specs.append(Spec("activation", lname, activation="leaky_relu", alpha=float(m.negative_slope)))
        elif isinstance(m, nn.ReLU):
            specs.append(Spec("activation", lname, activation="relu"))
        elif isinstance(m, nn.Tanh):
            specs.append(Spec("activation", lname, activation="tanh"))
        elif isinstance(m, nn.Sigmoid):
            specs.append(Spec("activation", lname, activation="sigmoid"))
        elif isinstance(m, nn.Unflatten):
            # the input is (batch, features): dim 1 and dim -1 are the feature axis
            if m.dim not in (1, -1) or len(m.unflattened_size) not in (1, 3):
                raise ValueError(f"{where}: only Unflatten(1, (C, H, W)) is supported")
            specs.append(Spec("reshape", lname, shape=tuple(m.unflattened_size), order="chw"))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(1, -1) is supported")
            specs.append(Spec("flatten", lname, order="chw"))
        elif isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue  # identity at inference
        else:
            raise ValueError(f"{where}: unsupported layer type {type(m).__name__} (supported: Linear, "
                             f"ConvTranspose2d, BatchNorm1d/2d, ReLU, LeakyReLU, Tanh, Sigmoid, Unflatten, Flatten, "
                             f"Dropout, Identity)")
    if first is None:
        raise ValueError("from_torch: the module has no Linear or ConvTranspose2d layer")
    if latent_shape is None:
        latent_shape = (first[1],) if first[0] == "dense" else (first[1], 1, 1)
    return build(specs, latent_shape, "NCHW", name or type(module).__name__)
