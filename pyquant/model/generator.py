"""The Generator: a chain of layers from a latent vector to an image batch."""
from __future__ import annotations

import os
import threading
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .._validate import as_float32, check_finite
from . import _blas
from .layers import Dense, Layer, QTensor, Reshape, _WeightLayer

__all__ = ["Generator"]

LAYOUTS = ("NCHW", "NHWC")


class Generator:
    """An image generator running on pyquant's kernels.

    Build one with :func:`pyquant.from_torch`, :func:`pyquant.from_keras`, :func:`pyquant.load` or
    :func:`pyquant.builtin_generator`; compress with :func:`pyquant.quantize_model` /
    :func:`pyquant.prune_model` (each returns a new Generator).

    ``model(z)`` maps a float32 latent batch to float32 images in the source framework's layout
    (``layout``: "NCHW" from PyTorch, "NHWC" from Keras). Internally every tensor is channels-last.

    Args:
        layers: the layers, in order (channels-last semantics, see :mod:`pyquant.model.layers`).
        latent_shape: the per-sample input shape in the source layout, e.g. (100,) or (100, 1, 1).
        layout: "NCHW" or "NHWC": the source framework's image layout (inputs and outputs use it).
        name: a display name.
        batch_size: largest batch run at once by ``__call__`` (larger inputs run in chunks).
    """

    def __init__(self, layers: Sequence[Layer], latent_shape: Sequence[int], layout: str = "NHWC",
                 name: str = "generator", batch_size: int = 64):
        if layout not in LAYOUTS:
            raise ValueError(f"Generator: layout must be 'NCHW' or 'NHWC', got {layout!r}")
        self.layers: List[Layer] = list(layers)
        if not self.layers:
            raise ValueError("Generator: needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Generator: layers must be pyquant layers, got {type(layer).__name__}")
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("Generator: layer names must be unique")
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise ValueError(f"Generator: latent_shape must be positive ints, got {latent_shape}")
        self.layout = layout
        self.name = str(name)
        if int(batch_size) < 1:
            raise ValueError(f"Generator: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._shapes = self._infer_shapes()
        self._buffers = threading.local()
        self._handoff = self._plan_handoff()

    # ------------------------------------------------------------------------------------- shapes --
    @property
    def latent_dim(self) -> int:
        return int(np.prod(self.latent_shape))

    def _internal_input_shape(self) -> Tuple[int, ...]:
        s = self.latent_shape
        if len(s) == 3 and self.layout == "NCHW":
            return (s[1], s[2], s[0])
        return s

    def _infer_shapes(self) -> List[Tuple[int, ...]]:
        shapes = [self._internal_input_shape()]
        for layer in self.layers:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        return shapes

    @property
    def output_shape(self) -> Tuple[int, ...]:
        """Per-sample output shape in the source layout, e.g. (3, 64, 64) for NCHW."""
        s = self._shapes[-1]
        if len(s) == 3 and self.layout == "NCHW":
            return (s[2], s[0], s[1])
        return s

    def _plan_handoff(self) -> List[Optional[Tuple[np.float32, int]]]:
        """For each layer, the uint8 parameters its output is requantized to (an int8 layer with static input
        parameters, or a sparse int8 Dense layer, feeding an int8 layer with static input parameters through free
        reshapes only), else None (float32 output)."""
        out = [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            precision = getattr(layer, "precision", None)
            static_int8 = precision in ("int8", "int4") and layer.input_qparams
            sparse_dense = precision == "sparse_int8" and isinstance(layer, Dense)
            if not (static_int8 or sparse_dense):
                continue
            j = i + 1
            while j < len(self.layers) and isinstance(self.layers[j], Reshape):
                j += 1
            if j < len(self.layers):
                nxt = self.layers[j]
                if isinstance(nxt, _WeightLayer) and nxt.precision in ("int8", "int4") and nxt.input_qparams is not None:
                    out[i] = nxt.input_qparams
        return out

    # ------------------------------------------------------------------------------------ running --
    def _check_latents(self, z) -> np.ndarray:
        za = as_float32(z, "z", "Generator")
        s = self.latent_shape
        if za.ndim == 1 and za.shape == (self.latent_dim,):
            za = za.reshape((1,) + s)
        if za.ndim == 2 and za.shape[1] == self.latent_dim and len(s) > 1:
            za = za.reshape((za.shape[0],) + s)
        if za.shape[1:] != s:
            raise ValueError(f"Generator: z must have shape (batch, {', '.join(map(str, s))})"
                             f"{' or (batch, %d)' % self.latent_dim if len(s) > 1 else ''}, got {za.shape}")
        check_finite(za, "z", "Generator")
        return za

    def _run_chunk(self, z: np.ndarray) -> np.ndarray:
        x = z
        if x.ndim == 4 and self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        buffers = getattr(self._buffers, "d", None)  # one set per thread: concurrent calls never share one
        if buffers is None:
            buffers = self._buffers.d = {}
        with _blas.single_threaded_blas():
            for layer, out_q in zip(self.layers, self._handoff):
                x = layer.forward(x, out_q, buffers)  # outputs and scratch arrays reused across calls
        if isinstance(x, QTensor):
            x = (x.values.astype(np.float32) - np.float32(x.zero_point)) * x.scale
        if x.ndim == 4 and self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (a view when there is one channel)
        if any(np.may_share_memory(x, b) for b in buffers.values()):
            x = x.copy()  # the last layer's output lives in a reused buffer: the caller gets its own array
        return x

    def __call__(self, z) -> np.ndarray:
        """Images for the latent batch ``z`` (float32, shape (batch,) + latent_shape, or (batch, latent_dim)),
        float32, shape (batch,) + output_shape. Batches larger than ``batch_size`` run in chunks."""
        za = self._check_latents(z)
        n = za.shape[0]
        if n == 0:  # an empty batch: no kernel call (the int8 kernels reject zero rows)
            return np.empty((0,) + self.output_shape, np.float32)
        if n <= self.batch_size:
            return self._run_chunk(za)
        out = np.empty((n,) + self.output_shape, np.float32)
        for i in range(0, n, self.batch_size):
            out[i:i + self.batch_size] = self._run_chunk(za[i:i + self.batch_size])
        return out

    def latents(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` standard-normal float32 latents from ``numpy.random.default_rng(seed)`` (what
        :meth:`generate` uses)."""
        if int(n) < 0:
            raise ValueError(f"latents: n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        return rng.standard_normal((int(n),) + self.latent_shape, dtype=np.float32)

    def generate(self, n: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
        """``n`` images from standard-normal latents drawn with ``seed`` (the same seed gives the same latents
        for every variant of a model), run ``batch_size`` at a time."""
        if int(batch_size) < 1:
            raise ValueError(f"generate: batch_size must be >= 1, got {batch_size}")
        z = self.latents(n, seed)
        out = np.empty((int(n),) + self.output_shape, np.float32)
        for i in range(0, int(n), int(batch_size)):
            out[i:i + batch_size] = self(z[i:i + batch_size])
        return out

    # ---------------------------------------------------------------------------------- reporting --
    def layer(self, key: Union[int, str]) -> Layer:
        """A layer by index or name."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self.layers[int(key)]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise KeyError(f"no layer named {key!r}; layers: {[l.name for l in self.layers]}")

    @property
    def weight_layers(self) -> List[_WeightLayer]:
        return [l for l in self.layers if isinstance(l, _WeightLayer)]

    @property
    def n_params(self) -> int:
        return sum(l.n_params for l in self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (what the model file stores, without its header)."""
        return sum(l.nbytes for l in self.layers)

    @property
    def float32_nbytes(self) -> int:
        """Bytes the same model takes with every weight in dense float32."""
        total = 0
        for l in self.layers:
            if isinstance(l, _WeightLayer):
                K, N = l._w2_shape()
                total += 4 * (K * N + N)
            else:
                total += l.nbytes
        return total

    def summary(self, file=None) -> str:
        """A table of the layers: name, type, output shape, parameters, bytes, precision, sparsity. Printed
        to ``file`` when given; returned as a string."""
        rows = [("layer", "type", "output shape", "params", "bytes", "precision", "sparsity")]
        for layer, shape in zip(self.layers, self._shapes[1:]):
            kind = layer.kind
            if isinstance(layer, _WeightLayer) and layer.activation != "identity":
                kind += f" + {layer.activation}"
            n_w = 0
            if isinstance(layer, _WeightLayer):
                K, N = layer._w2_shape()
                n_w = K * N + N
            else:
                n_w = layer.n_params
            sp = f"{layer.sparsity:.1%}" if layer.precision.startswith("sparse") else "-"
            rows.append((layer.name, kind, str(tuple(shape)), f"{n_w:,}", f"{layer.nbytes:,}", layer.precision, sp))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        line = "  ".join("-" * w for w in widths)
        out = [f"Generator {self.name!r}: latent {self.latent_shape} -> images {self.output_shape} ({self.layout})",
               "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)), line]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows[1:]]
        ratio = self.float32_nbytes / self.nbytes if self.nbytes else float("inf")
        out += [line, f"parameters: {sum(int(r[3].replace(',', '')) for r in rows[1:]):,}   bytes: {self.nbytes:,} "
                      f"({ratio:.2f}x smaller than float32: {self.float32_nbytes:,})"]
        text = "\n".join(out)
        if file is not None:
            print(text, file=file)
        return text

    def __repr__(self) -> str:
        precisions = sorted({l.precision for l in self.weight_layers})
        return (f"Generator(name={self.name!r}, layers={len(self.layers)}, latent_shape={self.latent_shape}, "
                f"output_shape={self.output_shape}, layout={self.layout!r}, precision={'/'.join(precisions)})")

    # ------------------------------------------------------------------------------------ storage --
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the model to ``path`` (pyquant's model file: safetensors container, JSON architecture, no
        executable content). Written to a temporary file first and renamed: a failed save leaves no partial
        file behind."""
        from .io import save
        save(self, path)

    def with_layers(self, layers: Sequence[Layer], name: Optional[str] = None) -> "Generator":
        """A new Generator with other layers and this one's input, layout and settings."""
        return Generator(layers, self.latent_shape, self.layout, name or self.name, self.batch_size)
