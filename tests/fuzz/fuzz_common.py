"""What the fuzz targets share: seed models, input decoders and the contract checks. Used by the atheris
harnesses in this folder (fuzz_*.py) and by tests/test_fuzz.py (hypothesis); no test runs from here.

Contracts checked (issue 14):
- pyquant.load: every input either loads into a model that runs (output of the shape it reports) or raises
  ValueError / OSError with a message; nothing else (no crash, hang, huge allocation, other exception type).
- CSRMatrix(...) / CSRMatrix.from_scipy: TypeError / ValueError, or a matrix that multiplies like its dense
  form.
- PackedWeights from a pickle (any state): TypeError / ValueError on load or first use, or results equal to the
  integer reference.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import copyreg
import struct
import tempfile

import numpy as np

import pyquant
from pyquant.model import Activation, BatchNorm, ConvTranspose2d, Dense, Flatten, Generator, Reshape
from pyquant.model import io as model_io

LOAD_ERRORS = (ValueError, OSError)
API_ERRORS = (TypeError, ValueError)
# an input whose load or run takes longer than this is a finding (hang / huge work from a size field)
MAX_SECONDS = 10.0


class ContractViolation(AssertionError):
    pass


# ----------------------------------------------------------------------------------------- seed models --
def _tiny_float(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    layers = [Dense("fc", weight=f(6, 2 * 2 * 4), bias=f(16), activation="leaky_relu", alpha=0.2),
              Reshape("img", shape=(2, 2, 4)),
              ConvTranspose2d("ct1", weight=f(3, 3, 4, 3), bias=f(3), stride=(2, 2), padding=(1, 0, 1, 0),
                              activation="relu"),
              BatchNorm("bn", scale=np.abs(f(3)) + 0.5, shift=f(3)),
              Activation("act", activation="leaky_relu", alpha=0.1),
              ConvTranspose2d("ct2", weight=f(2, 2, 3, 2), bias=f(2), stride=(1, 1), padding=(0, 0, 1, 0),
                              activation="tanh")]
    return Generator(layers, (6,), "NCHW", name="tiny", batch_size=3)


def _tiny_nhwc(seed=1):
    rng = np.random.default_rng(seed)
    layers = [ConvTranspose2d("up", weight=(rng.standard_normal((3, 3, 2, 3)) * 0.3).astype(np.float32),
                              bias=rng.standard_normal(3).astype(np.float32), stride=(2, 2), padding=(0, -1, 1, 1)),
              Flatten("flat", order="chw"),
              Dense("out", weight=(rng.standard_normal((4 * 3 * 3, 5)) * 0.1).astype(np.float32), bias=None,
                    activation="sigmoid")]
    return Generator(layers, (1, 2, 2), "NHWC", name="nhwc")


def seed_models():
    """Small valid models of every precision and layer kind (a few KB each as files)."""
    g = _tiny_float()
    z = np.random.default_rng(7).standard_normal((5, 6)).astype(np.float32)
    pruned = pyquant.prune_model(g, 0.5)
    return {
        "float32": g,
        "int8_dynamic": pyquant.quantize_model(g),
        "int8_static": pyquant.quantize_model(g, calibration=z),
        "sparse_float32": pruned,
        "sparse_int8": pyquant.quantize_model(pruned),
        "mixed": pyquant.quantize_model(pyquant.prune_model(g, 0.5, skip=["fc"]), calibration=z, skip=["ct2"]),
        "nhwc": _tiny_nhwc(),
    }


# ------------------------------------------------------------------------------------------ model files --
def parse(data: bytes):
    """(tensors, metadata) of a safetensors file's bytes, or None when it does not parse."""
    from safetensors.numpy import load as st_load
    try:
        if len(data) < 8:
            return None
        n = int.from_bytes(data[:8], "little")
        if n > len(data) - 8:
            return None
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            return None
        return st_load(data), dict(meta)
    except BaseException as e:  # safetensors' PanicException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return None


def build(tensors, meta, sign=True) -> bytes:
    """A safetensors file from parts; ``sign``: with a valid checksum, so the load has to judge the content."""
    from safetensors.numpy import save as st_save
    meta = dict(meta)
    if sign:
        meta["sha256"] = model_io._digest(meta, tensors)
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)


def resign(data: bytes):
    """The same file with its checksum made valid (None when it does not parse)."""
    parts = parse(data)
    if parts is None:
        return None
    try:
        return build(*parts)
    except Exception:
        return None


def check_load(data: bytes, folder: str) -> str:
    """Loads ``data`` as a model file and checks the contract. Returns "loaded" or "rejected"."""
    import time
    path = os.path.join(folder, "fuzz.pyquant")
    with open(path, "wb") as f:
        f.write(data)
    t0 = time.perf_counter()
    try:
        model = pyquant.load(path)
    except LOAD_ERRORS as e:
        if not str(e):
            raise ContractViolation(f"{type(e).__name__} without a message") from e
        if isinstance(e, ValueError) and path not in str(e):
            raise ContractViolation(f"ValueError that does not name the file: {e}") from e
        return "rejected"
    except Exception as e:
        raise ContractViolation(f"load raised {type(e).__name__}: {e}") from e
    # loaded: it must run and give what it reports
    try:
        z = model.latents(2, seed=0)
        y = model(z)
    except ValueError as e:  # a NaN/Inf reaching an int8 layer's input is the documented error
        if "NaN or Inf" in str(e):
            return "loaded"
        raise ContractViolation(f"a loaded model failed to run: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise ContractViolation(f"a loaded model failed to run: {type(e).__name__}: {e}") from e
    if y.shape != (2,) + tuple(model.output_shape) or y.dtype != np.float32:
        raise ContractViolation(f"output {y.shape} {y.dtype}, the model reports {model.output_shape}")
    if time.perf_counter() - t0 > MAX_SECONDS:
        raise ContractViolation(f"load + run took {time.perf_counter() - t0:.1f} s")
    return "loaded"


# ---------------------------------------------------------------------------- structured mutations --
def mutate_structure(tensors, meta, choices):
    """Applies mutations to the parts of a model file. ``choices`` is a callable choices(n) -> int in [0, n)
    (from hypothesis or atheris' FuzzedDataProvider). The result is signed by the caller."""
    tensors = dict(tensors)
    meta = dict(meta)
    for _ in range(1 + choices(3)):
        op = choices(6)
        if op == 0 and tensors:  # an array: other dtype, shape or values
            k = sorted(tensors)[choices(len(tensors))]
            a = tensors[k]
            how = choices(6)
            if how == 0:
                tensors[k] = a.astype([np.float64, np.int8, np.int32, np.int64, np.uint8, np.float32][choices(6)])
            elif how == 1:
                tensors[k] = a.reshape(-1)[: choices(max(a.size, 1) + 1)].copy()
            elif how == 2 and a.size:
                b = a.copy().reshape(-1)
                special = [0, -1, 1, 127, -128, 255, 2**31 - 1, -2**31, 2**40, np.nan, np.inf, -np.inf, 1e30]
                v = special[choices(len(special))]
                try:
                    b[choices(b.size)] = v
                except (OverflowError, ValueError):
                    pass
                tensors[k] = b.reshape(a.shape)
            elif how == 3:
                del tensors[k]
            elif how == 4:
                tensors[k] = np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]) if a.size else a
            else:
                tensors[k + "x" if choices(2) else str(choices(20)) + ".bias"] = a
        elif "architecture" in meta:  # the architecture JSON
            try:
                arch = json.loads(meta["architecture"])
            except ValueError:
                continue
            _mutate_json(arch, choices)
            meta["architecture"] = json.dumps(arch)
    return tensors, meta


_SPECIAL_VALUES = [0, 1, -1, 2, 3, 7, 2**31, 2**31 - 1, -2**31, 2**32 + 3, 2**62, 2**63, 2**64 + 1, 10**30,
                   -(10**9), 1.5, 2.0, 1e308, float("inf"), float("nan"), True, None, "", "x", "int8", "float32",
                   "sparse_int8", "relu", [], [1], [2, 2], [1, 1, 1], [0, 0, 0, 0], [-5000, -5000, -5000, -5000],
                   [2**40, 2], [4, 2**33, 1], {}, {"a": 1}]


def _mutate_json(node, choices, depth=0):
    """Replaces, deletes or adds one value somewhere in a JSON tree (in place)."""
    if isinstance(node, dict) and node:
        keys = sorted(node)
        k = keys[choices(len(keys))]
        child = node[k]
        if depth < 6 and isinstance(child, (dict, list)) and child and choices(3):
            return _mutate_json(child, choices, depth + 1)
        how = choices(4)
        if how == 0:
            del node[k]
        elif how == 1:
            node[k + "_x"] = _SPECIAL_VALUES[choices(len(_SPECIAL_VALUES))]
        else:
            node[k] = _SPECIAL_VALUES[choices(len(_SPECIAL_VALUES))]
    elif isinstance(node, list) and node:
        i = choices(len(node))
        child = node[i]
        if depth < 6 and isinstance(child, (dict, list)) and child and choices(3):
            return _mutate_json(child, choices, depth + 1)
        how = choices(4)
        if how == 0:
            del node[i]
        elif how == 1:
            node.insert(i, node[choices(len(node))] if choices(2) else _SPECIAL_VALUES[choices(len(_SPECIAL_VALUES))])
        elif how == 2:
            node[i], node[-1] = node[-1], node[i]
        else:
            node[i] = _SPECIAL_VALUES[choices(len(_SPECIAL_VALUES))]


# ----------------------------------------------------------------------------------------------- CSR --
def encode_csr(indptr, indices, data, shape, flags=0) -> bytes:
    """The byte form decode_csr reads (used to write the seed corpus)."""
    ip = np.asarray(indptr, np.int64)
    ix = np.asarray(indices, np.int32)
    d = np.asarray(data)
    if d.dtype == np.int8:
        flags |= 4
    head = struct.pack("<Biiii", flags, shape[0], shape[1], ip.size, ix.size)
    return head + ip.tobytes() + ix.tobytes() + d.astype(np.int8 if flags & 4 else np.float32).tobytes()


def decode_csr(b: bytes):
    """(indptr, indices, data, shape, row_scales, via_scipy) from fuzz bytes; short input is zero padded,
    array lengths are capped at 4096 entries."""
    b = bytes(b) + bytes(max(0, 17 - len(b)))
    flags, nrows, ncols, n_ip, n_ix = struct.unpack("<Biiii", b[:17])
    n_ip, n_ix = min(abs(n_ip), 4096), min(abs(n_ix), 4096)
    rest = b[17:]

    def take(n, dtype):
        nonlocal rest
        size = n * np.dtype(dtype).itemsize
        chunk = rest[:size] + bytes(max(0, size - len(rest)))
        rest = rest[size:]
        return np.frombuffer(chunk, dtype).copy()

    ip = take(n_ip, np.int64)
    ix = take(n_ix, np.int32)
    data = take(n_ix, np.int8) if flags & 4 else take(n_ix, np.float32)
    if flags & 1:
        ix = ix.astype(np.int64)
        if flags & 32 and ix.size:
            ix[0] += 2**33
    if flags & 2:
        ip = ip.astype(np.int32)
    rs = None
    if flags & 8:
        rs = take(min(max(nrows, 0), 4096), np.float32)
    if flags & 64:
        data = data.astype(np.float64)
    return ip, ix, data, (nrows, ncols), rs, bool(flags & 16)


def check_csr(b: bytes) -> str:
    ip, ix, data, shape, rs, via_scipy = decode_csr(b)
    try:
        if via_scipy:
            import scipy.sparse as sp
            try:
                m = sp.csr_matrix((data, ix, ip), shape=shape)
            except Exception:
                return "rejected by scipy"
            w = pyquant.CSRMatrix.from_scipy(m)
        else:
            w = pyquant.CSRMatrix(ip, ix, data, shape, row_scales=rs)
    except API_ERRORS as e:
        if not str(e):
            raise ContractViolation(f"{type(e).__name__} without a message") from e
        return "rejected"
    except Exception as e:
        raise ContractViolation(f"CSRMatrix raised {type(e).__name__}: {e}") from e
    # accepted: the structure must be what was given, and it must multiply like its dense form
    nrows, ncols = w.shape
    if w.indptr.shape != (nrows + 1,) or w.indices.shape != (w.nnz,) or w.data.shape != (w.nnz,):
        raise ContractViolation("accepted matrix with inconsistent arrays")
    if w.nnz and (int(w.indices.min()) < 0 or int(w.indices.max()) >= ncols):
        raise ContractViolation("accepted matrix with out-of-range column indices")
    if nrows * ncols > 1 << 22 or ncols > 1 << 22:  # (x below has ncols rows, even when W has no rows)
        return "accepted (too large to check densely)"
    dense = w.to_dense()
    ref = np.zeros((nrows, ncols), np.float64)
    rows = np.repeat(np.arange(nrows), np.diff(np.asarray(w.indptr)))
    vals = np.asarray(w.dequantize().data, np.float64)
    np.add.at(ref, (rows, np.asarray(w.indices)), vals)
    if not np.allclose(dense, ref, rtol=1e-5, atol=1e-5):
        raise ContractViolation("to_dense differs from the stored entries")
    x = np.random.default_rng(0).standard_normal((ncols, 3)).astype(np.float32)
    y = pyquant.spmm(w, x)
    if y.shape != (nrows, 3):
        raise ContractViolation(f"spmm gave shape {y.shape}")
    if w.dtype == np.float32:
        ref_y = np.abs(ref) @ np.abs(x.astype(np.float64))
        ok = ref_y < 1e30  # float32 sums may overflow to inf (documented): compare where they cannot
        want = ref @ x.astype(np.float64)
        if not np.allclose(y[ok], want[ok], rtol=1e-4, atol=1e-4 * (1 + ref_y[ok])):
            raise ContractViolation("spmm differs from the dense product")
    try:  # duplicates summed may leave int8's range: a clear ValueError is the contract there
        w.canonical()
    except ValueError as e:
        if not str(e):
            raise ContractViolation("canonical: ValueError without a message") from e
    return "accepted"


# ----------------------------------------------------------------------------------- PackedWeights pickles --
def packed_pickle(state) -> bytes:
    """A real pickle of a PackedWeights whose state is ``state`` (what a crafted or corrupted pickle holds):
    unpickling calls PackedWeights.__setstate__(state)."""
    from pyquant.gemm import PackedWeights
    template = pyquant.pack_weights(np.ones((1, 1), np.int8))

    class P(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is template:
                return copyreg.__newobj__, (PackedWeights,), state
            return NotImplemented

    buf = io.BytesIO()
    P(buf, protocol=4).dump(template)
    return buf.getvalue()


def packed_state(choices, raw: bytes):
    """A PackedWeights state from fuzz input: mostly valid, with one or more fields made odd."""
    rng = np.random.default_rng(int.from_bytes(raw[:4].ljust(4, b"\0"), "little"))
    k, n = 1 + choices(40), 1 + choices(12)
    w = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    state = {"weights": w, "scale": np.full(n, 0.01, np.float32), "bias": np.zeros(n, np.float32),
             "fast_path": True, "max_split_fraction": 0.02}
    odd = [np.zeros((0, 3), np.int8), np.zeros((3, 0), np.int8), w.reshape(-1), w.reshape(1, k, n), w.astype(np.float32) * 3.7,
           w.astype(np.int16) * 300, np.array(5, np.int8), "weights", None, [[1, 2], [3]], w.T, w[:, ::2],
           np.zeros((2**25, 1), np.int8)[:1]]
    odd_scale = [None, 0.0, -1.0, np.nan, np.float32(0.5), np.ones(n + 1, np.float32), "s", np.ones((n, 1), np.float32),
                 np.full(n, np.inf, np.float32), np.ones(n, np.float64)]
    odd_flag = [False, 0, 1, "yes", None, 2.5]
    odd_frac = [0.0, 1.0, -1.0, 2.0, float("nan"), float("inf"), "0.5", None, 1e300]
    for _ in range(1 + choices(2)):
        field = choices(6)
        if field == 0:
            state["weights"] = odd[choices(len(odd))]
        elif field == 1:
            state["scale"] = odd_scale[choices(len(odd_scale))]
        elif field == 2:
            state["bias"] = odd_scale[choices(len(odd_scale))]
        elif field == 3:
            state["fast_path"] = odd_flag[choices(len(odd_flag))]
        elif field == 4:
            state["max_split_fraction"] = odd_frac[choices(len(odd_frac))]
        else:
            state.pop(["weights", "scale", "bias", "fast_path", "max_split_fraction"][choices(5)], None)  # may be gone
    return state


def check_packed(state) -> str:
    """Unpickles a PackedWeights with ``state`` and uses it: TypeError / ValueError, or exact results."""
    from pyquant.gemm import matmul_int8
    data = packed_pickle(state)
    try:
        pw = pickle.loads(data)
        w = np.asarray(pw.weights)
        a = np.random.default_rng(1).integers(0, 256, size=(3, pw.K)).astype(np.uint8)
        got = matmul_int8(a, pw)
    except API_ERRORS as e:
        if not str(e):
            raise ContractViolation(f"{type(e).__name__} without a message") from e
        return "rejected"
    except Exception as e:
        raise ContractViolation(f"PackedWeights from a pickle raised {type(e).__name__}: {e}") from e
    want = a.astype(np.int64) @ w.astype(np.int64)
    if not np.array_equal(np.asarray(got, np.int64), want):
        raise ContractViolation("matmul_int8 with unpickled weights differs from the integer product")
    sw = state.get("weights")
    if not (isinstance(sw, np.ndarray) and sw.dtype == np.int8 and np.array_equal(sw, w)):
        raise ContractViolation(f"unpickled weights {w.dtype} {w.shape} differ from the pickled "
                                f"{getattr(sw, 'dtype', type(sw).__name__)} {getattr(sw, 'shape', '')} (silently "
                                f"converted)")
    return "accepted"
