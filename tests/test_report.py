"""`pyquant report` end to end on the built-in generator, in a temporary folder: every file, report.json's
fields and units, PNG sizes, figures against the Python API, the output folder rules."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyquant

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from pyquant import report as rep  # noqa: E402

SAMPLES, BATCH, CALIBRATE, SPARSITY = 32, 16, 32, "0.9"
KEYS = ["float32", "int8_dynamic", "int8_static", "int4_gptq", "pruned90_float32", "pruned90_int8",
        "sparsegpt50_float32"]  # int4 (GPTQ) and SparseGPT 50% (pyquant.model.optimize) are on by default
PLOTS = ["side_by_side.png", "fidelity_vs_size.png", "speed_vs_size.png", "sensitivity.png"]


def _pyquant(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyquant", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _one_line_error(r):
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One small report of the built-in model through the command line (as a user runs it)."""
    out = tmp_path_factory.mktemp("rep") / "my-report"
    r = _pyquant("report", "builtin", "--out", str(out), "--sparsity", SPARSITY, "--calibrate", str(CALIBRATE),
                 "--batch", str(BATCH), "--samples", str(SAMPLES), "--threads", "2", "--no-progress",
                 cwd=str(out.parent))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "report.json", encoding="utf-8") as f:
        data = json.load(f)
    return out, data, r


def test_every_file_written(made):
    out, data, r = made
    expected = {"report.md", "report.json"} | {f"grid_{k}.png" for k in KEYS} | set(PLOTS)
    assert set(os.listdir(out)) == expected
    assert [v["key"] for v in data["variants"]] == KEYS
    # nothing left beside the report (the temporary folder was renamed into place)
    assert sorted(os.listdir(out.parent)) == ["my-report"]
    # report.md embeds every picture by relative path
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in expected - {"report.md", "report.json"}:
        assert f"]({name})" in md
    # the printed summary: a table of every variant and where the files are
    for v in data["variants"]:
        assert v["label"] in r.stdout
    assert "PSNR" in r.stdout and str(out) in r.stdout


def _leaves(node, path=""):
    if isinstance(node, dict):
        if "value" in node:
            yield path, node
            return
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}[{i}]")


def test_report_json_fields_and_units(made):
    _, data, _ = made
    assert data["format"] == "pyquant.report"
    for path, leaf in _leaves(data):
        assert isinstance(leaf.get("unit"), str) and leaf["unit"], path
    env = data["environment"]
    assert env["versions"]["pyquant"] == pyquant.__version__
    assert env["versions"]["numpy"] == np.__version__ and env["versions"]["python"]
    assert env["isa"] == pyquant.isa() and env["threads"] == 2 and env["cpu"]
    assert data["settings"]["batch"] == {"value": BATCH, "unit": "images"}
    units = {"disk_bytes": "bytes", "memory_bytes": "bytes"}
    for v in data["variants"]:
        for k, unit in units.items():
            assert v["size"][k]["unit"] == unit and v["size"][k]["value"] > 0
        sp = v["speed"]
        for k in ("images_per_s_batch1", f"images_per_s_batch{BATCH}"):
            assert sp[k]["unit"] == "images/s" and sp[k]["value"] > 0
        for k in ("latency_batch1", f"latency_batch{BATCH}"):
            assert sp[k]["unit"] == "ms" and sp[k]["value"] > 0
        assert sp[f"speedup_batch{BATCH}"]["unit"].startswith("x")
        assert v["fidelity"]["psnr"]["unit"] == "dB"
        assert v["digits"]["agreement_with_float32"]["unit"] == "fraction of images"
        assert v["digits"]["frechet_distance"]["value"] >= 0
        shares = [l["time_share"]["value"] for l in v["layers"]]
        assert abs(sum(shares) - 1.0) < 1e-6
        assert [l["precision"] for l in v["layers"] if l["kind"] != "reshape"]
        assert v["size"]["disk_bytes"]["value"] >= sum(l["bytes"]["value"] for l in v["layers"])
    f32 = data["variants"][0]
    assert f32["fidelity"]["psnr"]["value"] is None and f32["fidelity"]["max_abs_error"]["value"] == 0
    assert f32["digits"]["agreement_with_float32"]["value"] == 1.0
    pruned = {v["key"]: v for v in data["variants"]}["pruned90_float32"]
    sparse = [l["sparsity"]["value"] for l in pruned["layers"] if l["kind"] != "reshape"]
    assert all(abs(v - 0.9) < 0.01 for v in sparse), sparse  # every weight layer pruned to 90%
    if data["torch_reference"] is not None:  # torch eager on the same weights: the same images
        assert data["torch_reference"]["fidelity"]["max_abs_error"]["value"] < 1e-4


def test_pngs_decode_at_expected_sizes(made):
    out, _, _ = made
    # 32 images in 8 columns x 4 rows of 32x32 with 2-pixel gaps, upscaled 3x
    for k in KEYS:
        with Image.open(out / f"grid_{k}.png") as im:
            im.load()
            assert im.size == ((8 * 34 + 2) * 3, (4 * 34 + 2) * 3) and im.mode == "L"
    for name, (w, h) in {"fidelity_vs_size.png": (1240, 440), "speed_vs_size.png": (660, 440)}.items():
        with Image.open(out / name) as im:
            im.load()
            assert im.size == (w, h)
    with Image.open(out / "side_by_side.png") as im:
        im.load()
        assert im.width >= 1200 and im.height >= 6 * 100  # 12 columns, a row per compressed variant
    with Image.open(out / "sensitivity.png") as im:
        im.load()
        assert im.width >= 400 and im.height >= 300


def test_figures_agree_with_the_python_api(made, tmp_path):
    _, data, _ = made
    by_key = {v["key"]: v for v in data["variants"]}
    model = pyquant.builtin_generator()
    ref = model.generate(SAMPLES, seed=0, batch_size=BATCH)
    static = pyquant.quantize_model(model, calibration=model.latents(CALIBRATE, seed=1))
    img = static.generate(SAMPLES, seed=0, batch_size=BATCH)
    psnr = peak_signal_noise_ratio(ref, img, data_range=2)
    ssim = np.mean([structural_similarity(a[0], b[0], data_range=2) for a, b in zip(ref, img)])
    fid = by_key["int8_static"]["fidelity"]
    assert fid["psnr"]["value"] == pytest.approx(psnr, rel=1e-4)
    assert fid["ssim"]["value"] == pytest.approx(ssim, abs=1e-5)
    assert fid["max_abs_error"]["value"] == pytest.approx(float(np.abs(ref - img).max()), rel=1e-3, abs=1e-6)
    # sizes: the model file the API writes and the arrays in memory
    static.save(tmp_path / "s.pyquant")
    assert by_key["int8_static"]["size"]["disk_bytes"]["value"] == os.path.getsize(tmp_path / "s.pyquant")
    assert by_key["int8_static"]["size"]["memory_bytes"]["value"] == static.nbytes
    pruned = pyquant.quantize_model(pyquant.prune_model(model, 0.9, scope="layer"))
    assert by_key["pruned90_int8"]["size"]["memory_bytes"]["value"] == pruned.nbytes
    img_p = pruned.generate(SAMPLES, seed=0, batch_size=BATCH)
    assert by_key["pruned90_int8"]["fidelity"]["psnr"]["value"] == pytest.approx(
        peak_signal_noise_ratio(ref, img_p, data_range=2), rel=1e-4)
    # the digit measures through the scorer
    scorer = rep.DigitsScorer()
    s_ref, s_img = scorer.score(ref), scorer.score(img)
    assert by_key["float32"]["digits"]["frechet_distance"]["value"] == pytest.approx(s_ref["frechet"], rel=1e-4)
    agree = float(np.mean(s_ref["predictions"] == s_img["predictions"]))
    assert by_key["int8_static"]["digits"]["agreement_with_float32"]["value"] == pytest.approx(agree)


def test_sensitivity_and_optimized_variants(made):
    out, data, r = made
    sens = data["sensitivity"]
    assert sens["options"] == ["int8", "int4", "sp90"] and sens["plot"] == "sensitivity.png"
    assert sens["calibration"]["unit"].startswith("latents") and sens["evaluation"]["value"] == min(SAMPLES, 64)
    model = pyquant.builtin_generator()
    weight_names = [l.name for l in model.weight_layers]
    assert [x["name"] for x in sens["rows"]] == [n for n in weight_names for _ in range(4)]
    for row in sens["rows"]:
        assert row["bytes"]["unit"] == "bytes" and row["float32_bytes"]["unit"] == "bytes"
        assert row["psnr"]["unit"].startswith("dB") and row["time"]["unit"].startswith("ms")
        assert row["time"]["value"] > 0 and row["mse"]["value"] >= 0
        if row["option"] == "float32":
            assert row["psnr"]["value"] is None and row["bytes"]["value"] == row["float32_bytes"]["value"]
        else:
            assert 5 < row["psnr"]["value"] < 120, row
    by = {(x["name"], x["option"]): x for x in sens["rows"]}
    for n in weight_names:  # int4 is half of int8, a quarter of float32's weights; int8 the more faithful
        assert by[(n, "int4")]["bytes"]["value"] < by[(n, "int8")]["bytes"]["value"] < by[(n, "float32")]["bytes"][
            "value"]
        assert by[(n, "int8")]["psnr"]["value"] > by[(n, "int4")]["psnr"]["value"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Sensitivity" in md and "Where the bytes and the time went" in md
    # the optimized variants: in the printed table, with their per-layer precision
    by_key = {v["key"]: v for v in data["variants"]}
    assert "int4 (GPTQ)" in r.stdout and "pruned 50% + reconstruction (SparseGPT)" in r.stdout
    assert {l["precision"] for l in by_key["int4_gptq"]["layers"] if l["kind"] != "reshape"} == {"int4"}
    sp = [l["sparsity"]["value"] for l in by_key["sparsegpt50_float32"]["layers"] if l["kind"] != "reshape"]
    assert all(abs(v - 0.5) < 0.01 for v in sp), sp


def test_int4_gptq_agrees_with_the_python_api(made):
    _, data, _ = made
    from pyquant.model.optimize import optimize_model
    model = pyquant.builtin_generator()
    int4 = optimize_model(model, model.latents(CALIBRATE, seed=1), "int4")
    ref = model.generate(SAMPLES, seed=0, batch_size=BATCH)
    img = int4.generate(SAMPLES, seed=0, batch_size=BATCH)
    v = {v["key"]: v for v in data["variants"]}["int4_gptq"]
    # the same weights; threads may change float sums in the reconstruction by a hair
    assert v["fidelity"]["psnr"]["value"] == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=2), abs=0.05)
    assert v["size"]["memory_bytes"]["value"] == int4.nbytes
    assert v["fidelity"]["psnr"]["value"] < by_psnr(data, "int8_static")


def by_psnr(data, key):
    return {v["key"]: v for v in data["variants"]}[key]["fidelity"]["psnr"]["value"]


def test_report_replaces_an_earlier_report_whole(tmp_path):
    model = pyquant.builtin_generator()
    out = tmp_path / "r"
    kw = dict(source="builtin:digits32", sparsities=[], calibrate=8, batch=4, samples=8, torch_ref=False,
              min_time=0.0, progress=False, dataset=None, optimize=False)
    rep.make_report(model, out, **kw)
    (out / "stale.txt").write_text("from an earlier run")
    data = rep.make_report(model, out, **kw)
    assert "stale.txt" not in os.listdir(out)
    assert set(os.listdir(out)) == {"report.md", "report.json", "side_by_side.png", "fidelity_vs_size.png",
                                    "speed_vs_size.png", "grid_float32.png", "grid_int8_dynamic.png",
                                    "grid_int8_static.png"}
    assert sorted(os.listdir(tmp_path)) == ["r"] and data["files"]["folder"] == str(out)


def test_report_refuses_a_folder_that_is_not_a_report(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = _pyquant("report", "--out", str(out), "--sparsity", "none", "--no-torch", "--no-progress")
    assert r.returncode == 1
    line = _one_line_error(r)
    assert line.startswith("pyquant: error:") and "holds something other than a pyquant report" in line
    assert os.listdir(out) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_report_unwritable_output(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    r = _pyquant("report", "--out", str(blocker / "sub"), "--no-progress")
    assert r.returncode == 1
    assert _one_line_error(r).startswith("pyquant: error: cannot write the report to")
    r = _pyquant("report", "--out", str(blocker), "--no-progress")
    assert r.returncode == 1 and "not a folder" in _one_line_error(r)


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "between 0 and 1"),
    (["--sparsity", "a,b"], "comma-separated"),
    (["--batch", "0"], "integer >= 1"),
    (["--calibrate", "-3"], "integer >= 1"),
    (["--threads", "x"], "integer >= 1"),
    (["builtin:nope"], "no built-in generator named 'nope'"),
])
def test_report_bad_arguments(args, message):
    r = _pyquant("report", *args, "--no-progress")
    assert r.returncode == 2, r.stderr
    line = _one_line_error(r)
    assert message in line and line.startswith("pyquant")


def test_fidelity_and_grid_helpers():
    rng = np.random.default_rng(0)
    a = np.tanh(rng.standard_normal((4, 1, 16, 16))).astype(np.float32)
    b = np.clip(a + 0.01, -1, 1)
    f = rep.fidelity(a, b)
    assert f["psnr_db"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=2))
    assert f["max_abs_error"] == pytest.approx(0.01, abs=1e-6)
    assert rep.fidelity(a, a)["max_abs_error"] == 0
    rgb = np.tanh(rng.standard_normal((5, 8, 8, 3))).astype(np.float32)
    g = rep.image_grid(rgb, "NHWC", cols=3, pad=1, scale=2)
    assert g.mode == "RGB" and g.size == ((3 * 9 + 1) * 2, (2 * 9 + 1) * 2)
    assert rep.fidelity(rgb, rgb * 0.5, "NHWC")["ssim"] < 1
    with pytest.raises(ValueError):
        rep.parse_sparsities("0.5,0.5")
    assert rep.parse_sparsities("none") == []
