"""The `pyquant` command line (info, compress, generate; `report` is in test_report.py) and the built-in
trained generator."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyquant


def _pyquant(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyquant", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _one_line_error(r):
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------- built-in --
# The built-in model's float32 images for generate(16, seed=0): the sha256 of their 8-bit pixels (what the
# PNG grid shows, round((x + 1) * 127.5)), and each image's sum and sum of squares, which tell a changed model
# from another CPU's BLAS summation order (that may move a pixel across a rounding boundary).
BUILTIN_PIXELS_SHA256 = "35987a59651e1466484b7e235dae0b4cacb308890d1d268a435c56447d53617b"
BUILTIN_IMAGE_STATS = [
    (-299.783, 628.137), (-309.483, 611.773), (-438.628, 566.747), (-319.805, 624.139), (-433.615, 695.635),
    (-386.95, 627.796), (-320.82, 594.717), (-377.559, 668.041), (-397.873, 681.992), (-286.393, 600.842),
    (-407.612, 742.044), (-464.332, 643.774), (-535.288, 738.658), (-345.012, 626.289), (-399.989, 625.819),
    (-358.684, 612.479)
]


def _pixels(images):
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def test_builtin_generator():
    assert pyquant.builtin_generators() == ["digits32"]
    g = pyquant.builtin_generator()
    assert isinstance(g, pyquant.Generator) and g.name == "digits32"
    assert g.latent_shape == (64,) and g.output_shape == (1, 32, 32) and g.layout == "NCHW"
    assert all(l.precision == "float32" for l in g.weight_layers)
    assert [l.kind for l in g.weight_layers] == ["dense", "conv_transpose2d", "conv_transpose2d", "conv_transpose2d"]
    assert g.weight_layers[-1].activation == "tanh"
    assert pyquant.builtin_generator("digits32").nbytes == g.nbytes
    from pyquant.builtin import builtin_path
    assert os.path.getsize(builtin_path()) < 8 * 1024 * 1024
    with pytest.raises(ValueError, match="no built-in generator named 'nope'"):
        pyquant.builtin_generator("nope")


def test_builtin_images_match_the_stored_checksum():
    images = pyquant.builtin_generator().generate(16, seed=0)
    assert images.shape == (16, 1, 32, 32) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    x = images.reshape(16, -1).astype(np.float64)
    stats = np.stack([x.sum(axis=1), (x * x).sum(axis=1)], axis=1)
    np.testing.assert_allclose(stats, np.array(BUILTIN_IMAGE_STATS), atol=0.01, rtol=0,
                               err_msg="the built-in model's images changed")
    digest = hashlib.sha256(_pixels(images).tobytes()).hexdigest()
    if digest != BUILTIN_PIXELS_SHA256:  # only a one-level move of a pixel on a rounding boundary may explain it
        pytest.xfail(f"pixel checksum {digest} differs (the statistics agree: another BLAS summation order)")


def test_builtin_images_are_digits():
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    from pyquant.report import DigitsScorer
    scorer = DigitsScorer()
    images = pyquant.builtin_generator().generate(256, seed=0)
    s = scorer.score(images)
    # every digit appears, and the images are far closer to real digits than noise is
    assert min(s["histogram"]) > 0, s["histogram"]
    noise = np.tanh(np.random.default_rng(0).standard_normal(images.shape)).astype(np.float32)
    assert s["frechet"] < 0.25 * scorer.score(noise)["frechet"]


# ----------------------------------------------------------------------------------------------- help --
@pytest.mark.parametrize("command", [[], ["info"], ["report"], ["compress"], ["generate"]])
def test_help(command):
    r = _pyquant(*command, "--help")
    assert r.returncode == 0 and r.stderr == ""
    assert "usage: pyquant" in r.stdout
    if command == ["report"]:
        for opt in ("--out", "--sparsity", "--calibrate", "--batch", "--threads"):
            assert opt in r.stdout


def test_console_script_runs_outside_and_inside_the_source_tree(tmp_path):
    exe = shutil.which("pyquant")
    if exe is None:
        pytest.skip("the pyquant console script is not on PATH")
    r = subprocess.run([exe, "info"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "isa:" in r.stdout
    src = os.environ.get("PYQUANT_SOURCE_DIR")
    if src and os.path.isdir(os.path.join(src, "pyquant")):  # where `python -m pyquant` would be shadowed
        r = subprocess.run([exe, "info"], capture_output=True, text=True, cwd=src)
        assert r.returncode == 0 and "isa:" in r.stdout, r.stderr


def test_info():
    r = _pyquant("info")
    assert r.returncode == 0 and "isa:" in r.stdout and "num_threads:" in r.stdout
    r = _pyquant("info", "builtin")
    assert r.returncode == 0 and "Generator 'digits32'" in r.stdout and "conv_transpose2d + tanh" in r.stdout
    r = _pyquant("info", "--json", "builtin:digits32")
    data = json.loads(r.stdout)
    assert data["isa"] == pyquant.isa() and data["model"]["name"] == "digits32"
    assert data["model"]["output_shape"] == [1, 32, 32]


# ---------------------------------------------------------------------------------- compress, generate --
def test_compress(tmp_path):
    out = tmp_path / "d.pyquant"
    r = _pyquant("compress", "builtin", "-o", str(out), "--sparsity", "0.5")
    assert r.returncode == 0, r.stderr
    assert "smaller than float32" in r.stdout and "sparse_int8" in r.stdout
    m = pyquant.load(out)
    assert {l.precision for l in m.weight_layers} == {"sparse_int8"}
    api = pyquant.quantize_model(pyquant.prune_model(pyquant.builtin_generator(), 0.5, scope="layer"))
    np.testing.assert_array_equal(m.generate(8, seed=3), api.generate(8, seed=3))
    out2 = tmp_path / "s.pyquant"
    r = _pyquant("compress", "builtin", "-o", str(out2), "--calibrate", "16", "--skip", "10")
    assert r.returncode == 0, r.stderr
    m2 = pyquant.load(out2)
    assert [l.precision for l in m2.weight_layers] == ["int8", "int8", "int8", "float32"]
    assert m2.weight_layers[0].input_qparams is not None


def test_generate(tmp_path):
    from PIL import Image
    png, npy = tmp_path / "grid.png", tmp_path / "x.npy"
    r = _pyquant("generate", "builtin", "-n", "16", "--seed", "0", "-o", str(png))
    assert r.returncode == 0, r.stderr
    with Image.open(png) as im:
        im.load()
        assert im.size == ((4 * 34 + 2) * 3,) * 2
    r = _pyquant("generate", "builtin", "-n", "16", "--seed", "0", "-o", str(npy))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(npy), pyquant.builtin_generator().generate(16, seed=0))
    r = _pyquant("generate", "builtin", "-n", "8", "--dtype", "int8", "-o", str(npy))
    assert r.returncode == 0
    api = pyquant.quantize_model(pyquant.builtin_generator()).generate(8, seed=0)
    np.testing.assert_array_equal(np.load(npy), api)


# ---------------------------------------------------------------------------------------------- errors --
@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["compress", "builtin"],                         # -o missing
    ["compress", "builtin", "-o", "x.pyquant", "--sparsity", "1"],
    ["generate", "builtin", "-o", "x.gif"],
    ["generate", "builtin", "-n", "0", "-o", "x.png"],
    ["generate", "builtin", "--dtype", "int4", "-o", "x.png"],
    ["info", "builtin:nope"],
    ["compress", "builtin", "-o", "x.pyquant", "--skip", "no_such_layer"],
])
def test_bad_arguments_exit_2_with_one_line(args, tmp_path):
    r = _pyquant(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert _one_line_error(r).startswith("pyquant")
    assert os.listdir(tmp_path) == []


def test_missing_and_corrupt_model_files(tmp_path):
    r = _pyquant("info", str(tmp_path / "nope.pyquant"))
    assert r.returncode == 1 and "model file not found" in _one_line_error(r)
    bad = tmp_path / "bad.pyquant"
    bad.write_bytes(os.urandom(200))
    for cmd in (["info", str(bad)], ["report", str(bad), "--out", str(tmp_path / "r"), "--no-progress"],
                ["compress", str(bad), "-o", str(tmp_path / "c.pyquant")],
                ["generate", str(bad), "-o", str(tmp_path / "g.png")]):
        r = _pyquant(*cmd)
        assert r.returncode == 1, (cmd, r.stderr)
        assert "not a valid pyquant model file" in _one_line_error(r)
    from pyquant.builtin import builtin_path
    truncated = tmp_path / "cut.pyquant"
    truncated.write_bytes(builtin_path().read_bytes()[:5000])
    r = _pyquant("generate", str(truncated), "-o", str(tmp_path / "g.png"))
    assert r.returncode == 1 and "not a valid pyquant model file" in _one_line_error(r)
    assert sorted(os.listdir(tmp_path)) == ["bad.pyquant", "cut.pyquant"]


def test_unwritable_outputs(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    r = _pyquant("generate", "builtin", "-n", "4", "-o", str(blocker / "g.png"))
    assert r.returncode == 1 and "cannot write" in _one_line_error(r)
    r = _pyquant("compress", "builtin", "-o", str(blocker / "c.pyquant"))
    assert r.returncode == 1 and "cannot write" in _one_line_error(r)


def _main(capsys, *args):
    """The command line in this process (fast when torch is already imported): (status, stdout, stderr)."""
    from pyquant.cli import main
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_torch_state_dict_with_arch(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    (tmp_path / "my_arch.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def build():
            return nn.Sequential(nn.Linear(8, 4 * 4 * 8), nn.LeakyReLU(0.2), nn.Unflatten(1, (8, 4, 4)),
                                 nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh())
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_arch", raising=False)
    torch.manual_seed(0)
    net = nn_build = None
    sys.path.insert(0, str(tmp_path))
    try:
        import my_arch
        nn_build = my_arch.build
        net = nn_build().eval()
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(net.state_dict(), tmp_path / "g.pt")
    # as a user runs it: the console entry point in a fresh process, the module found in the current folder
    r = _pyquant("generate", "g.pt", "--arch", "my_arch:build", "-n", "4", "-o", "x.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = net(torch.from_numpy(pyquant.from_torch(net).latents(4, 0))).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), want, atol=1e-5)
    # a .pt needs --arch; a bad --arch; a file that is not a state_dict; an arbitrary pickled object is
    # refused (weights_only=True): one line, no traceback
    status, _, err = _main(capsys, "info", "g.pt")
    assert status == 2 and "--arch" in err and err.count("\n") == 1
    status, _, err = _main(capsys, "info", "g.pt", "--arch", "no_such_module_xyz:build")
    assert status == 1 and "cannot import" in err and err.count("\n") == 1
    (tmp_path / "evil.pt").write_bytes(b"not a zip or pickle at all")
    status, _, err = _main(capsys, "info", "evil.pt", "--arch", "my_arch:build")
    assert status == 1 and "not a loadable PyTorch state_dict" in err and err.count("\n") == 1
    torch.save({"x": np.float64}, tmp_path / "obj.pt")  # a pickled class object
    status, _, err = _main(capsys, "info", "obj.pt", "--arch", "my_arch:build")
    assert status == 1 and "not a loadable PyTorch state_dict" in err and err.count("\n") == 1


def test_corrupt_keras_file(tmp_path, monkeypatch, capsys):
    import importlib.util
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("torch"):
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    status, _, err = _main(capsys, "info", str(bad))
    assert status == 1 and "not a loadable Keras model" in err and err.count("\n") == 1
