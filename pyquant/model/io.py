"""pyquant's model file: a safetensors container (a JSON header and raw little-endian arrays; nothing in it
can execute code on load) whose metadata holds the architecture as JSON.

Metadata keys: ``format`` = "pyquant.generator", ``format_version`` = "1", ``architecture`` = JSON
``{"name", "latent_shape", "layout", "layers": [{"name", "kind", "config"}]}``, ``sha256`` = the SHA-256 of
the other metadata and every array (:func:`_digest`). Arrays are named ``"<layer index>.<array name>"``.
Every field is validated on load: a truncated, corrupt or inconsistent file (a flipped byte anywhere, an array
missing, extra, or of the wrong dtype or shape, a config that disagrees with the arrays) is a ValueError
naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .generator import Generator
from .layers import LAYER_TYPES

FORMAT = "pyquant.generator"
FORMAT_VERSION = "1"
SUFFIX = ".pyquant"
_MAX_LAYERS = 10_000
# Sane maxima for the size fields of a file (checked before anything is allocated from them): any one dimension
# (features, channels, kernel, stride, padding, latent and reshape dimensions, batch size); the elements of one
# sample's tensor between two layers; a weight layer's dense-equivalent matrix K x N (a sparse layer stores
# only its non-zeros, so its config alone gives K); the tap table of a transposed convolution (output pixels x
# the kernel taps reaching each one).
_MAX_DIM = 1 << 24
_MAX_SAMPLE_ELEMENTS = 1 << 28
_MAX_WEIGHT_ELEMENTS = 1 << 30
_MAX_TAP_WORK = 1 << 28
_SIZE_KEYS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
              "shape")

__all__ = ["save", "load", "FORMAT_VERSION"]


def _architecture(model: Generator) -> dict:
    return {"name": model.name, "latent_shape": list(model.latent_shape), "layout": model.layout,
            "batch_size": model.batch_size,
            "layers": [{"name": l.name, "kind": l.kind, "config": l.config()} for l in model.layers]}


def _digest(meta: Dict[str, str], tensors: Dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the metadata (every key but "sha256") and of every array (name, dtype, shape, bytes),
    in sorted order: any change to a stored byte that still parses changes it."""
    h = hashlib.sha256()
    for k in sorted(meta):
        if k != "sha256":
            h.update(json.dumps([k, meta[k]]).encode("utf-8"))
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        h.update(json.dumps([k, a.dtype.str, list(a.shape)]).encode("utf-8"))
        h.update(a.tobytes())
    return h.hexdigest()


def save(model: Generator, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    from safetensors.numpy import save as st_save
    if not isinstance(model, Generator):
        raise TypeError(f"save: model must be a pyquant.Generator, got {type(model).__name__}")
    path = Path(path)
    tensors: Dict[str, np.ndarray] = {}
    for i, layer in enumerate(model.layers):
        for key, a in layer.arrays().items():
            tensors[f"{i}.{key}"] = np.ascontiguousarray(a)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "architecture": json.dumps(_architecture(model), separators=(",", ":"))}
    meta["sha256"] = _digest(meta, tensors)
    data = st_save(tensors, metadata=meta)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only: give it the permissions of a normal new file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fail(path, msg: str) -> ValueError:
    return ValueError(f"{path}: not a valid pyquant model file: {msg}")


def _check_ints(value, what: str) -> None:
    """A size field: an int or a list of ints (JSON numbers with no fraction, never bools or floats), each
    within [-_MAX_DIM, _MAX_DIM] (checked before a layer allocates anything from it)."""
    items = value if isinstance(value, list) else [value]
    if len(items) > 8:
        raise ValueError(f"{what}: expected at most 8 values, got {len(items)}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{what}: expected integers, got {value!r}")
        if abs(int(v)) > _MAX_DIM:
            raise ValueError(f"{what}: {int(v)} exceeds the supported maximum {_MAX_DIM}")


def _check_sizes(model: Generator) -> None:
    """Every tensor and table the model allocates when it runs stays under the sane maxima (Python ints: no
    wrap-around)."""
    from .layers import ConvTranspose2d, _WeightLayer
    for i, (layer, in_shape, shape) in enumerate(zip(model.layers, model._shapes, model._shapes[1:])):
        n = math.prod(int(d) for d in shape)
        if n > _MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"layer {i} ({layer.name!r}): output of {n} elements per sample exceeds the supported "
                             f"maximum {_MAX_SAMPLE_ELEMENTS}")
        if isinstance(layer, _WeightLayer):
            K, N = (int(v) for v in layer._w2_shape())
            if K * N > _MAX_WEIGHT_ELEMENTS:
                raise ValueError(f"layer {i} ({layer.name!r}): a {K} x {N} weight matrix exceeds the supported "
                                 f"maximum of {_MAX_WEIGHT_ELEMENTS} elements")
        if isinstance(layer, ConvTranspose2d):
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            taps = -(-kh // sh) * -(-kw // sw)
            if shape[0] * shape[1] * taps > _MAX_TAP_WORK:
                raise ValueError(f"layer {i} ({layer.name!r}): {shape[0]} x {shape[1]} outputs with {taps} kernel "
                                 f"taps each exceed the supported maximum of {_MAX_TAP_WORK}")
            # a 1 x 1 input runs as one dense matrix (in_channels x every output element)
            if tuple(in_shape[:2]) == (1, 1) and layer.in_channels * n > _MAX_WEIGHT_ELEMENTS:
                raise ValueError(f"layer {i} ({layer.name!r}): {layer.in_channels} inputs x {n} outputs exceed the "
                                 f"supported maximum of {_MAX_WEIGHT_ELEMENTS} weights")


def load(path: Union[str, os.PathLike]) -> Generator:
    """Read a model written by :meth:`Generator.save`. Raises OSError when the file cannot be read and
    ValueError (naming the file) when it is not a valid pyquant model file."""
    from safetensors.numpy import load as st_load
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    # the header: 8-byte little-endian length, then JSON (checked here so a corrupt size never allocates)
    if len(data) < 8:
        raise _fail(path, "the file is too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100_000_000:
        raise _fail(path, f"header length {n} exceeds the file size {len(data)}")
    try:
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        raise _fail(path, f"corrupt header ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, "no pyquant metadata (format != 'pyquant.generator')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.get('format_version')!r} is not supported (this pyquant reads "
                          f"version {FORMAT_VERSION})")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(path, "corrupt metadata (keys and values must be strings)")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors reports some malformed headers as a Rust panic (PanicException)
        raise _fail(path, f"corrupt array data ({type(e).__name__}: {e})") from None
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        raise _fail(path, f"corrupt array data ({type(e).__name__}: {e})") from None
    if "sha256" not in meta:
        raise _fail(path, "no checksum (metadata 'sha256')")
    if _digest(meta, tensors) != meta["sha256"]:
        raise _fail(path, "checksum mismatch: the file is corrupt (metadata 'sha256' does not match the contents)")
    try:
        arch = json.loads(meta["architecture"])
        if not isinstance(arch, dict):
            raise ValueError("the architecture must be a JSON object")
        specs = arch["layers"]
        if not isinstance(specs, list) or not 0 < len(specs) <= _MAX_LAYERS:
            raise ValueError("layers must be a non-empty list")
        layers = []
        used = set()
        for i, spec in enumerate(specs):
            kind, name, cfg = spec["kind"], spec["name"], spec["config"]
            if kind not in LAYER_TYPES:
                raise ValueError(f"layer {i}: unknown kind {kind!r}")
            if not isinstance(cfg, dict):
                raise ValueError(f"layer {i}: config must be an object")
            for key in _SIZE_KEYS:
                if key in cfg:
                    _check_ints(cfg[key], f"layer {i}: {key}")
            prefix = f"{i}."
            arrays = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            used.update(prefix + k for k in arrays)
            try:
                layer = LAYER_TYPES[kind].from_parts(name, cfg, arrays)
            except (TypeError, KeyError) as e:
                raise ValueError(f"layer {i} ({name!r}): {e}") from None
            # the rebuilt layer must store exactly the file's arrays (no conversion, nothing defaulted) and
            # have exactly the file's config (the arrays must not silently override it)
            stored = layer.arrays()
            for k, v in arrays.items():
                if k not in stored:
                    raise ValueError(f"layer {i} ({name!r}): unexpected array {k!r}")
            for k, v in stored.items():
                if k not in arrays:
                    raise ValueError(f"layer {i} ({name!r}): missing array {k!r}")
                a = arrays[k]
                if a.dtype != v.dtype or a.shape != v.shape:
                    raise ValueError(f"layer {i} ({name!r}): array {k!r} has dtype {a.dtype} and shape {a.shape}, "
                                     f"expected {v.dtype} {v.shape}")
            if json.loads(json.dumps(layer.config())) != cfg:
                raise ValueError(f"layer {i} ({name!r}): inconsistent config {cfg} (the arrays give "
                                 f"{layer.config()})")
            layers.append(layer)
        extra = set(tensors) - used
        if extra:
            raise ValueError(f"arrays that belong to no layer: {sorted(extra)[:5]}")
        if not isinstance(arch["latent_shape"], list):
            raise ValueError(f"latent_shape must be a list, got {arch['latent_shape']!r}")
        _check_ints(arch["latent_shape"], "latent_shape")
        _check_ints(arch.get("batch_size", 64), "batch_size")
        if not isinstance(arch.get("name", ""), str):
            raise ValueError(f"name must be a string, got {arch['name']!r}")
        model = Generator(layers, arch["latent_shape"], arch["layout"], arch.get("name", path.stem),
                          arch.get("batch_size", 64))
        if math.prod(model.latent_shape) > _MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"latent_shape {list(model.latent_shape)} exceeds the supported maximum of "
                             f"{_MAX_SAMPLE_ELEMENTS} elements")
        _check_sizes(model)
    except ValueError as e:
        raise _fail(path, str(e)) from None
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        raise _fail(path, f"inconsistent architecture ({type(e).__name__}: {e})") from None
    return model
