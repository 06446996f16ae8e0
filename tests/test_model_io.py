"""pyquant's model file (Generator.save / pyquant.load), against the installed wheel: bit-identical round trips
for every precision, atomic saves, and a clear ValueError naming the file for every truncated, corrupt or
inconsistent file (never a crash, never a silently wrong model).

The models are built from pyquant layers directly (no framework needed) and cover every layer kind and every
array kind the file stores."""
import json
import os
import stat

import numpy as np
import pytest

import pyquant
from pyquant.model import Activation, BatchNorm, ConvTranspose2d, Dense, Flatten, Generator, Reshape
from pyquant.model import io as model_io

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402


# ------------------------------------------------------------------------------------------ models --

def small_generator(seed=0):
    """latent (12,) -> (2, 9, 10) NCHW through every layer kind, odd geometry and non-zero biases."""
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0] if len(s) == 2 else s[0] * s[1] * s[2])).astype(
        np.float32)
    layers = [
        Dense("fc", weight=f(12, 3 * 3 * 8), bias=f(72, 1)[:, 0], activation="leaky_relu", alpha=0.2),
        Reshape("to_image", shape=(3, 3, 8)),
        ConvTranspose2d("ct1", weight=f(3, 3, 8, 6), bias=f(6, 1)[:, 0], stride=(2, 2), padding=(1, 0, 1, 0),
                        activation="relu"),
        BatchNorm("bn", scale=rng.random(6).astype(np.float32) + 0.5, shift=f(6, 1)[:, 0]),
        Activation("act", activation="leaky_relu", alpha=0.1),
        ConvTranspose2d("ct2", weight=f(1, 2, 6, 2), bias=f(2, 1)[:, 0], stride=(1, 1), padding=(0, 0, 1, 0),
                        activation="tanh"),
    ]
    return Generator(layers, (12,), "NCHW", name="small", batch_size=5)


def nhwc_generator(seed=1):
    """image latent (2, 2, 4) NHWC, a channels-first Flatten, a sigmoid Dense."""
    rng = np.random.default_rng(seed)
    layers = [ConvTranspose2d("up", weight=rng.standard_normal((3, 3, 4, 3)).astype(np.float32) * 0.3,
                              bias=rng.standard_normal(3).astype(np.float32), stride=(3, 2), padding=(0, -1, 1, 1)),
              Flatten("flat", order="chw"),
              Dense("out", weight=rng.standard_normal((7 * 3 * 3, 10)).astype(np.float32) * 0.1,
                    bias=None, activation="sigmoid")]
    return Generator(layers, (2, 2, 4), "NHWC", name="nhwc")


@pytest.fixture(scope="module")
def base():
    return small_generator()


@pytest.fixture(scope="module")
def z():
    return np.random.default_rng(7).standard_normal((7, 12)).astype(np.float32)


def variants(g, z):
    pruned = pyquant.prune_model(g, 0.5)
    return {
        "float32": g,
        "int8_dynamic": pyquant.quantize_model(g),
        "int8_static": pyquant.quantize_model(g, calibration=z),
        "sparse_float32": pruned,
        "sparse_int8": pyquant.quantize_model(pruned),
        # every array kind in one file: int8 static, sparse int8 and sparse float32 layers
        "mixed": pyquant.quantize_model(pyquant.prune_model(g, 0.5, skip=[g.weight_layers[0].name]), calibration=z,
                                        skip=[g.weight_layers[-1].name]),
    }


@pytest.fixture(scope="module")
def models(base, z):
    return variants(base, z)


@pytest.fixture
def mixed_file(models, tmp_path):
    path = tmp_path / "mixed.pyquant"
    models["mixed"].save(path)
    return path


def read(path):
    """(tensors, metadata) of a safetensors file."""
    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata())
    return st.load_file(str(path)), meta


def write(path, tensors, meta, sign=True):
    """Write a crafted file; ``sign`` gives it a valid checksum, so that only the crafted inconsistency (not the
    checksum) can make the load fail."""
    meta = dict(meta)
    if sign and hasattr(model_io, "_digest"):
        meta["sha256"] = model_io._digest(meta, tensors)
    st.save_file(tensors, str(path), metadata=meta)


def assert_bad(path, match=None):
    with pytest.raises(ValueError) as e:
        pyquant.load(path)
    assert str(path) in str(e.value)
    if match is not None:
        assert any(m in str(e.value) for m in ([match] if isinstance(match, str) else match)), str(e.value)
    return e


# ------------------------------------------------------------------------------------- round trip --

@pytest.mark.parametrize("kind", ["float32", "int8_dynamic", "int8_static", "sparse_float32", "sparse_int8",
                                  "mixed"])
def test_round_trip_bit_identical(models, z, tmp_path, kind):
    g = models[kind]
    path = tmp_path / f"{kind}.pyquant"
    g.save(path)
    h = pyquant.load(path)
    assert isinstance(h, Generator)
    out = g(z)
    np.testing.assert_array_equal(h(z), out)
    assert [l.precision for l in h.layers] == [l.precision for l in g.layers]
    assert [type(l) for l in h.layers] == [type(l) for l in g.layers]
    assert [l.name for l in h.layers] == [l.name for l in g.layers]
    assert h.summary() == g.summary()
    assert repr(h) == repr(g)
    assert (h.latent_shape, h.layout, h.name, h.batch_size, h.output_shape) == \
        (g.latent_shape, g.layout, g.name, g.batch_size, g.output_shape)
    assert h._handoff == g._handoff
    for lg, lh in zip(g.layers, h.layers):
        assert lh.config() == lg.config()
        ag, ah = lg.arrays(), lh.arrays()
        assert ag.keys() == ah.keys()
        for k in ag:
            assert ah[k].dtype == ag[k].dtype
            np.testing.assert_array_equal(ah[k], ag[k])
    # saving the loaded model writes the same contents
    again = tmp_path / "again.pyquant"
    h.save(str(again))
    (t1, m1), (t2, m2) = read(path), read(again)
    assert m1 == m2 and t1.keys() == t2.keys()
    for k in t1:
        assert t1[k].dtype == t2[k].dtype
        np.testing.assert_array_equal(t1[k], t2[k])
    # chunked runs of the loaded model (batch_size 5 < 7) agree with the original's
    if kind != "int8_dynamic":
        np.testing.assert_array_equal(h(np.concatenate([z, z])), g(np.concatenate([z, z])))


def test_round_trip_nhwc_image_latent(tmp_path):
    g = nhwc_generator()
    zz = np.random.default_rng(3).standard_normal((4, 2, 2, 4)).astype(np.float32)
    for kind, v in variants(g, zz).items():
        path = tmp_path / f"{kind}.pyquant"
        v.save(path)
        h = pyquant.load(path)
        np.testing.assert_array_equal(h(zz), v(zz))
        assert h.layout == "NHWC" and h.latent_shape == (2, 2, 4) and h.layers[1].order == "chw"


def test_file_is_safetensors_with_json_architecture(models, mixed_file):
    tensors, meta = read(mixed_file)
    assert meta["format"] == "pyquant.generator" and meta["format_version"] == "1"
    arch = json.loads(meta["architecture"])
    assert [l["name"] for l in arch["layers"]] == [l.name for l in models["mixed"].layers]
    assert "0.qweight" in tensors and tensors["0.qweight"].dtype == np.int8
    assert tensors["2.csr_data"].dtype == np.int8 and tensors["5.csr_data"].dtype == np.float32
    # the header is JSON (no pickle anywhere)
    data = mixed_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    json.loads(data[8:8 + n])


def test_saved_file_permissions(models, tmp_path):
    path = tmp_path / "perm.pyquant"
    models["float32"].save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ------------------------------------------------------------------------------------ atomic save --

def _boom(*a, **k):
    raise OSError("disk full (injected)")


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_failed_save_leaves_nothing_and_keeps_the_old_file(models, z, tmp_path, monkeypatch, where):
    path = tmp_path / "model.pyquant"
    models["float32"].save(path)
    before = path.read_bytes()
    if where == "replace":
        monkeypatch.setattr(os, "replace", _boom)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _boom)
    else:
        real_fdopen = os.fdopen

        class Broken:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[:len(data) // 2])  # half written, then the disk fills up
                raise OSError("disk full (injected)")

        monkeypatch.setattr(os, "fdopen", lambda *a, **k: Broken(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="injected"):
        models["sparse_int8"].save(path)
    with pytest.raises(OSError, match="injected"):
        models["sparse_int8"].save(tmp_path / "new.pyquant")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pyquant"]  # no temporary file, no new file
    assert path.read_bytes() == before
    np.testing.assert_array_equal(pyquant.load(path)(z), models["float32"](z))


def test_interrupted_save_cleans_up(models, tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        models["float32"].save(tmp_path / "m.pyquant")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_save_errors(models, tmp_path):
    with pytest.raises(OSError):
        models["float32"].save(tmp_path / "no" / "such" / "dir.pyquant")
    with pytest.raises(TypeError):
        model_io.save("not a model", tmp_path / "x.pyquant")
    with pytest.raises(OSError):
        pyquant.load(tmp_path / "missing.pyquant")


# --------------------------------------------------------------------------------- corrupt files --

def test_truncated_at_many_offsets(mixed_file, tmp_path):
    data = mixed_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    offsets = sorted(set(list(range(0, 24)) + list(range(0, 8 + n, 37)) + [8 + n - 1, 8 + n, 8 + n + 1]
                         + list(range(8 + n, len(data), max(1, (len(data) - 8 - n) // 40))) + [len(data) - 1]))
    bad = tmp_path / "truncated.pyquant"
    for off in offsets:
        bad.write_bytes(data[:off])
        assert_bad(bad)


def test_flipped_bytes_in_header(mixed_file, tmp_path):
    data = mixed_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "flipped.pyquant"
    positions = list(range(0, 8 + n, 5))
    for i, pos in enumerate(positions):
        b = bytearray(data)
        b[pos] ^= (0x01, 0x02, 0x20, 0x80, 0x04)[i % 5]
        bad.write_bytes(bytes(b))
        assert_bad(bad)


def test_flipped_bytes_in_arrays(mixed_file, tmp_path):
    # a flipped weight bit still parses: only the checksum can tell
    data = mixed_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "flipped.pyquant"
    rng = np.random.default_rng(0)
    for pos in rng.choice(np.arange(8 + n, len(data)), size=40, replace=False):
        b = bytearray(data)
        b[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(b))
        assert_bad(bad, "checksum")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 8, b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
                                     b"\x02\x00\x00\x00\x00\x00\x00\x00[]", b"\x04\x00\x00\x00\x00\x00\x00\x00null",
                                     b"\x00\x00\x00\x00\x00\x00\x00\x00", b"PK\x03\x04 zip file"])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "garbage.pyquant"
    path.write_bytes(content)
    assert_bad(path)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "random.pyquant"
    for size in (8, 9, 100, 5000):
        for _ in range(5):
            path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            assert_bad(path)
    # a plausible header length followed by random bytes
    path.write_bytes((200).to_bytes(8, "little") + rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    assert_bad(path)


def test_non_pyquant_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    st.save_file({"weight": np.zeros((3, 4), np.float32)}, str(path))
    assert_bad(path, "format")
    st.save_file({"weight": np.zeros((3, 4), np.float32)}, str(path), metadata={"format": "pt"})
    assert_bad(path, "format")


def test_directory_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        pyquant.load(tmp_path)


@pytest.mark.parametrize("version", ["2", "0", "1.0", ""])
def test_unknown_format_version(mixed_file, tmp_path, version):
    tensors, meta = read(mixed_file)
    meta["format_version"] = version
    path = tmp_path / "v.pyquant"
    write(path, tensors, meta)
    assert_bad(path, "version")
    del meta["format_version"]
    write(path, tensors, meta)
    assert_bad(path, "version")


def test_checksum_required_and_checked(mixed_file, tmp_path):
    tensors, meta = read(mixed_file)
    path = tmp_path / "c.pyquant"
    del meta["sha256"]
    write(path, tensors, meta, sign=False)
    assert_bad(path, "checksum")
    meta["sha256"] = "0" * 64
    write(path, tensors, meta, sign=False)
    assert_bad(path, "checksum")
    # the crafting helper itself gives a loadable file (so the tests below fail for their own reason)
    write(path, tensors, meta)
    pyquant.load(path)


def _mutate_arrays(fn):
    def mutate(tensors, meta):
        fn(tensors)
        return tensors, meta
    return mutate


def _mutate_arch(fn):
    def mutate(tensors, meta):
        arch = json.loads(meta["architecture"])
        fn(arch)
        meta["architecture"] = json.dumps(arch)
        return tensors, meta
    return mutate


def _set(d, key, value):
    d[key] = value


INCONSISTENT = {
    # arrays: the mixed model is [fc int8 static, to_image, ct1 sparse_int8, bn, act, ct2 sparse_float32]
    "weight dtype float32 -> float64 (int8 layer)": (_mutate_arrays(
        lambda t: _set(t, "0.qweight", t["0.qweight"].astype(np.float64))), "float64"),
    "bias dtype float64": (_mutate_arrays(lambda t: _set(t, "0.bias", t["0.bias"].astype(np.float64))), "dtype"),
    "bias wrong shape": (_mutate_arrays(lambda t: _set(t, "0.bias", t["0.bias"][:-1].copy())), "shape"),
    "bias missing": (_mutate_arrays(lambda t: t.pop("0.bias")), "bias"),
    "bn scale missing": (_mutate_arrays(lambda t: t.pop("3.scale")), "scale"),
    "weight_scale missing": (_mutate_arrays(lambda t: t.pop("0.weight_scale")), "weight_scale"),
    "csr data missing": (_mutate_arrays(lambda t: t.pop("5.csr_data")), "csr_data"),
    "csr row scales missing": (_mutate_arrays(lambda t: t.pop("2.weight_scale")), None),
    "extra array in a layer": (_mutate_arrays(lambda t: _set(t, "0.weight", np.zeros((12, 72), np.float32))),
                               "weight"),
    "array of no layer": (_mutate_arrays(lambda t: _set(t, "17.bias", np.zeros(3, np.float32))), "17.bias"),
    "array on a reshape": (_mutate_arrays(lambda t: _set(t, "1.bias", np.zeros(3, np.float32))), "bias"),
    "qweight out of range": (_mutate_arrays(lambda t: t["0.qweight"].flat.__setitem__(0, -128)), "127"),
    "qweight shape": (_mutate_arrays(lambda t: _set(t, "0.qweight", t["0.qweight"][:, :-8].copy())), None),
    "csr index out of range": (_mutate_arrays(lambda t: t["5.csr_indices"].__setitem__(0, 10 ** 6)), None),
    "csr indptr not monotone": (_mutate_arrays(lambda t: t["5.csr_indptr"].__setitem__(1, 10 ** 6)), None),
    "csr float data as float64": (_mutate_arrays(lambda t: _set(t, "5.csr_data", t["5.csr_data"].astype(np.float64))),
                                  None),
    "NaN scale": (_mutate_arrays(lambda t: t["0.weight_scale"].__setitem__(0, np.nan)), None),
    "NaN batchnorm": (_mutate_arrays(lambda t: t["3.shift"].__setitem__(0, np.inf)), None),
    "zero weight scale": (_mutate_arrays(lambda t: t["0.weight_scale"].__setitem__(0, 0.0)), None),
    # architecture
    "architecture not JSON": (lambda t, m: (t, {**m, "architecture": "{not json"}), None),
    "architecture missing": (lambda t, m: (t, {k: v for k, v in m.items() if k != "architecture"}), None),
    "unknown layer kind": (_mutate_arch(lambda a: a["layers"][4].__setitem__("kind", "conv2d")), "conv2d"),
    "no layers": (_mutate_arch(lambda a: a.__setitem__("layers", [])), None),
    "layers not a list": (_mutate_arch(lambda a: a.__setitem__("layers", {"0": 1})), None),
    "layer spec not an object": (_mutate_arch(lambda a: a["layers"].__setitem__(1, ["reshape"])), None),
    "config disagrees with arrays": (_mutate_arch(lambda a: a["layers"][0]["config"].__setitem__("in_features", 11)),
                                     None),
    "unknown precision": (_mutate_arch(lambda a: a["layers"][0]["config"].__setitem__("precision", "int4")), None),
    "precision int8 -> float32": (_mutate_arch(lambda a: a["layers"][0]["config"].__setitem__("precision",
                                                                                                "float32")), None),
    "unknown config key": (_mutate_arch(lambda a: a["layers"][4]["config"].__setitem__("gain", 2)), None),
    "unknown activation": (_mutate_arch(lambda a: a["layers"][4]["config"].__setitem__("activation", "gelu")), None),
    "infinite alpha": (_mutate_arch(lambda a: a["layers"][4]["config"].__setitem__("alpha", float("inf"))), None),
    "bad input_qparams": (_mutate_arch(lambda a: a["layers"][0]["config"].__setitem__("input_qparams", [0.0, 300])),
                          None),
    "reshape to wrong size": (_mutate_arch(lambda a: a["layers"][1]["config"].__setitem__("shape", [3, 3, 7])),
                              None),
    "wrong latent shape": (_mutate_arch(lambda a: a.__setitem__("latent_shape", [13])), None),
    "huge latent shape": (_mutate_arch(lambda a: a.__setitem__("latent_shape", [1e400])), None),
    "bad layout": (_mutate_arch(lambda a: a.__setitem__("layout", "NWHC")), None),
    "bad batch size": (_mutate_arch(lambda a: a.__setitem__("batch_size", 0)), None),
    "duplicate layer names": (_mutate_arch(lambda a: a["layers"][4].__setitem__("name", "fc")), None),
    "empty layer name": (_mutate_arch(lambda a: a["layers"][4].__setitem__("name", "")), None),
    "stride zero": (_mutate_arch(lambda a: a["layers"][2]["config"].__setitem__("stride", [0, 2])), None),
    "channels disagree": (_mutate_arch(lambda a: a["layers"][5]["config"].__setitem__("in_channels", 3)), None),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_inconsistent_files(mixed_file, tmp_path, case):
    mutate, match = INCONSISTENT[case]
    tensors, meta = read(mixed_file)
    tensors, meta = mutate(tensors, meta)
    path = tmp_path / "bad.pyquant"
    write(path, tensors, meta)
    assert_bad(path, match)


def test_float_layer_with_nan_weight(models, tmp_path):
    path = tmp_path / "f.pyquant"
    models["float32"].save(path)
    tensors, meta = read(path)
    tensors["0.weight"][3, 4] = np.nan
    write(path, tensors, meta)
    assert_bad(path, "finite")
    tensors["0.weight"] = tensors["0.weight"][:, :-1].copy()
    write(path, tensors, meta)
    assert_bad(path)


@pytest.mark.parametrize("layer,key,value", [(2, "kernel_size", [3, 2]), (2, "out_channels", 5), (2, "in_channels", 7),
                                             (0, "in_features", 11), (0, "out_features", 70)])
def test_float_config_must_match_weights(models, tmp_path, layer, key, value):
    # float32 weights carry their own shape: a config that disagrees must not be silently overridden by them
    path = tmp_path / "f.pyquant"
    models["float32"].save(path)
    tensors, meta = read(path)
    arch = json.loads(meta["architecture"])
    arch["layers"][layer]["config"][key] = value
    meta["architecture"] = json.dumps(arch)
    write(path, tensors, meta)
    assert_bad(path)
