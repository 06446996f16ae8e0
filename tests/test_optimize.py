"""pyquant.model.optimize: layer-wise reconstruction (SparseGPT / GPTQ / bias correction), int4 weights,
sensitivity and compress() to a fidelity target. On the built-in trained generator (no torch needed) and a small
hand-built generator; PSNR over the tanh range (peak-to-peak 2) against the float32 model."""
import math

import numpy as np
import pytest

import pyquant
from pyquant.model import ConvTranspose2d, Dense, Generator, Reshape
from pyquant.model import optimize as O
from pyquant.model.layers import pack_int4, unpack_int4


@pytest.fixture(scope="module")
def g():
    return pyquant.builtin_generator()


@pytest.fixture(scope="module")
def zc(g):
    return g.latents(128, seed=0)


@pytest.fixture(scope="module")
def ze(g):
    return g.latents(128, seed=1)


def small_model(seed=0):
    """Dense -> reshape -> two transposed convolutions (kernel 4 / stride 2, kernel 5 / stride 2 with output
    padding), leaky ReLU then tanh."""
    rng = np.random.default_rng(seed)
    layers = [
        Dense("fc", weight=rng.standard_normal((16, 4 * 4 * 32)).astype(np.float32) * 0.3,
              bias=rng.standard_normal(512).astype(np.float32) * 0.1, activation="leaky_relu", alpha=0.2),
        Reshape("r", shape=(4, 4, 32)),
        ConvTranspose2d("c1", weight=rng.standard_normal((4, 4, 32, 16)).astype(np.float32) * 0.08,
                        bias=rng.standard_normal(16).astype(np.float32) * 0.1, stride=(2, 2), padding=(1, 1, 1, 1),
                        activation="leaky_relu", alpha=0.2),
        ConvTranspose2d("c2", weight=rng.standard_normal((5, 5, 16, 3)).astype(np.float32) * 0.05,
                        bias=np.zeros(3, np.float32), stride=(2, 2), padding=(2, 1, 2, 1), activation="tanh"),
    ]
    return Generator(layers, (16,), "NHWC", name="small")


def csr_mask(layer):
    """The kept-weight mask of a sparse layer over W2 (K, N)."""
    N, K = layer.csr.shape
    m = np.zeros((N, K), bool)
    rows = np.repeat(np.arange(N), np.diff(np.asarray(layer.csr.indptr)))
    m[rows, np.asarray(layer.csr.indices)] = True
    return m.T


def same_arrays(a, b):
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert la.config() == lb.config()
        aa, ab = la.arrays(), lb.arrays()
        assert sorted(aa) == sorted(ab)
        for k in aa:
            assert aa[k].dtype == ab[k].dtype and aa[k].shape == ab[k].shape
            assert aa[k].tobytes() == ab[k].tobytes(), (la.name, k)


# ------------------------------------------------------------------------------------------- int4 --

@pytest.mark.parametrize("n", [0, 1, 2, 7, 15, 16, 1001])
def test_int4_pack_round_trip(n):
    q = np.random.default_rng(n).integers(-7, 8, size=n).astype(np.int8)
    p = pack_int4(q)
    assert p.dtype == np.uint8 and p.shape == ((n + 1) // 2,)
    np.testing.assert_array_equal(unpack_int4(p, n), q)
    if n >= 2:  # low nibble first, two's complement
        assert p[0] == ((int(q[0]) & 0xF) | ((int(q[1]) & 0xF) << 4))


def test_int4_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_int4(np.array([8], np.int8))
    with pytest.raises(ValueError):
        pack_int4(np.array([-8], np.int8))


def test_int4_layer_is_exactly_int8_with_the_same_integers(g, zc, ze):
    m4 = O.optimize_model(g, zc, "int4", methods=())
    twin_layers = []
    for l in m4.layers:
        if getattr(l, "precision", None) == "int4":
            q = l.int8_weights()
            assert q.dtype == np.int8 and q.min() >= -7 and q.max() <= 7
            assert l.qweight4.nbytes == (q.size + 1) // 2          # packed two per byte, in memory too
            assert l.qweight is None
            l = l._replace(precision="int8", qweight=q)
        twin_layers.append(l)
    m8 = g.with_layers(twin_layers)
    a, b = m4(ze), m8(ze)
    assert a.tobytes() == b.tobytes()
    # 8x smaller weights than float32 (plus the per-channel scales)
    for l4, lf in zip(m4.weight_layers, g.weight_layers):
        assert l4.arrays()["qweight4"].nbytes * 8 == pytest.approx(lf.weight.nbytes, abs=8)


def test_int4_invalid_nibble_rejected(g, zc):
    m4 = O.optimize_model(g, zc, {0: "int4"}, methods=())
    l = m4.layers[0]
    bad = l.qweight4.copy()
    bad[0] = 0x08  # -8 is outside [-7, 7]
    with pytest.raises(ValueError):
        l._replace(qweight4=bad)


# -------------------------------------------------------------------------------- reconstruction --

@pytest.mark.parametrize("choice", ["int8", "int4", "sp50", "sp75", "2:4", "sp50+int8"])
def test_reconstruction_never_worse_per_layer(choice):
    m = small_model()
    _, infos = O.optimize_model(m, m.latents(48, 0), choice, return_info=True)
    assert len(infos) == 3
    for inf in infos:
        # against the float layer's outputs on the calibration data, each layer on the compressed inputs
        assert inf["err"] <= inf["err_start"] + 1e-12, inf


def test_reconstruction_never_worse_per_layer_builtin(g, zc):
    _, infos = O.optimize_model(g, zc, "int4", return_info=True)
    for inf in infos:
        assert inf["err"] <= inf["err_start"], inf


def test_reconstruction_beats_baselines_on_held_out(g, zc, ze):
    ref = g(ze)
    for choice, gain in (("int4", 2.0),):
        base = O.psnr(O.optimize_model(g, zc, choice, methods=())(ze), ref)
        ours = O.psnr(O.optimize_model(g, zc, choice)(ze), ref)
        assert ours > base + gain, (choice, base, ours)
    rtn8 = O.psnr(pyquant.quantize_model(g)(ze), ref)
    gptq8 = O.psnr(O.optimize_model(g, zc, "int8")(ze), ref)
    assert gptq8 >= rtn8 - 0.05


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_exact_sparsity_counts(sparsity):
    m = small_model()
    z = m.latents(32, seed=3)
    for methods in ((), ("sparsegpt", "gptq")):
        out = O.optimize_model(m, z, O.Choice(None, sparsity), methods=methods)
        for l in out.weight_layers:
            K, N = l._w2_shape()
            assert l.precision == "sparse_float32"
            assert l.csr.nnz == round((1 - sparsity) * K * N)


def test_exact_2_4():
    m = small_model()
    z = m.latents(32, seed=3)
    for choice in ("2:4", "2:4+int8"):
        out = O.optimize_model(m, z, choice)
        for l in out.weight_layers:
            mask = csr_mask(l)
            K, N = mask.shape
            per_group = mask.reshape(K // 4, 4, N).sum(axis=1)
            assert np.all(per_group == 2), l.name


def test_sparse_int8_keeps_mask_and_scales():
    m = small_model()
    z = m.latents(32, seed=3)
    out = O.optimize_model(m, z, "sp75+int8")
    for l in out.weight_layers:
        K, N = l._w2_shape()
        assert l.precision == "sparse_int8" and l.csr.nnz == round(0.25 * K * N)
        assert np.abs(np.asarray(l.csr.data)).max() <= 127


def test_hessian_blocks_match_im2col():
    """The phase-block Hessian of a transposed convolution is the exact im2col Hessian (no approximation)
    when no phase is split: check its quadratic form against the layer's own output change."""
    m = small_model()
    layer = m.layers[2]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 4, 32)).astype(np.float32)
    groups = O._hessian_groups(layer, x)
    K, N = layer._w2_shape()
    assert sorted(np.concatenate([r for r, _, _ in groups]).tolist()) == list(range(K))
    dW = rng.standard_normal((K, N)) * 0.01
    quad = sum(np.einsum("kn,kj,jn->", dW[r], H, dW[r]) for r, H, _ in groups)
    l2 = layer._replace(weight=layer._from_w2((layer._to_w2(layer.weight) + dW).astype(np.float32)))
    y1, y2 = O._preact(layer, x), O._preact(l2, x)
    direct = float(np.sum((y2.astype(np.float64) - y1) ** 2))
    ratio = direct / quad
    # H is normalized by its im2col rows; every output pixel of a kernel-4 stride-2 layer is one row of one
    # phase: B * Ho * Wo / 4 rows per phase
    assert ratio == pytest.approx(6 * 8 * 8 / 4, rel=1e-3)


def test_deterministic():
    m = small_model()
    z = m.latents(32, 5)
    plan = {"fc": "int4", "c1": "sp50+int8", "c2": "2:4"}
    same_arrays(O.optimize_model(m, z, plan), O.optimize_model(m, z, plan))


# ------------------------------------------------------------------------------ save / load --

@pytest.mark.parametrize("plan", [{"fc": "int4", "c1": "sp50+int8", "c2": "2:4"},
                                  {"fc": "sp75", "c1": "int8", "c2": "int4"}])
def test_save_load_int4_and_mixed_choices(plan, tmp_path):
    g = small_model()
    ze = g.latents(16, 9)
    m = O.optimize_model(g, g.latents(32, 0), plan)
    assert [l.precision for l in m.weight_layers] == [{"int4": "int4", "int8": "int8", "sp75": "sparse_float32",
                                                       "sp50+int8": "sparse_int8", "2:4": "sparse_float32"}[c]
                                                      for c in plan.values()]
    p = tmp_path / "mixed.pyquant"
    m.save(p)
    back = pyquant.load(p)
    same_arrays(m, back)
    assert [(l.precision, l.sparsity) for l in back.weight_layers] == [(l.precision, l.sparsity)
                                                                        for l in m.weight_layers]
    assert m(ze).tobytes() == back(ze).tobytes()
    # int4 on disk: the packed bytes
    for l in back.weight_layers:
        if l.precision == "int4":
            assert l.arrays()["qweight4"].dtype == np.uint8


# ------------------------------------------------------------------------- sensitivity / compress --

def test_sensitivity_rows_and_plot(tmp_path):
    m = small_model()
    rows = O.sensitivity(m, m.latents(32, 0), m.latents(32, 1), ("int8", "int4", "sp50"), timing=False)
    assert len(rows) == 3 * 4
    for r in rows:
        assert r["option"] == "float32" or math.isfinite(r["psnr"])
        assert r["bytes"] > 0
    int4 = [r for r in rows if r["option"] == "int4"]
    f32 = [r for r in rows if r["option"] == "float32"]
    assert all(a["bytes"] < b["bytes"] for a, b in zip(int4, f32))
    pytest.importorskip("matplotlib")
    O.plot_sensitivity(rows, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_compress_meets_target_on_held_out_latents(g):
    target = 35.0
    model, table = O.compress(g, 128, target_psnr=target, objective="size", seed=0)
    ze = g.latents(256, seed=1)          # compress's held-out latents (seed + 1), never the calibration ones
    zc = g.latents(128, seed=0)
    assert not np.any(np.all(ze[:, None] == zc[None], axis=-1))
    got = O.psnr(model(ze), g(ze))
    assert got >= target
    assert table.summary["psnr"] == pytest.approx(got)
    assert model.nbytes < pyquant.quantize_model(g).nbytes      # smaller than plain int8 everywhere
    assert [r["name"] for r in table] == [l.name for l in g.weight_layers]
    assert {r["precision"] for r in table} <= {"int4", "int8", "float32"}


def test_compress_small_model_deterministic():
    m = small_model()
    a, ta = O.compress(m, 32, evaluation=m.latents(32, 7), target_psnr=30, objective="size")
    b, tb = O.compress(m, 32, evaluation=m.latents(32, 7), target_psnr=30, objective="size")
    same_arrays(a, b)
    assert [r["option"] for r in ta] == [r["option"] for r in tb]
    assert ta.summary["psnr"] >= 30


def test_compress_arguments():
    m = small_model()
    with pytest.raises(ValueError):
        O.compress(m, 8)
    with pytest.raises(ValueError):
        O.compress(m, 8, target_psnr=30, objective="fast")
    with pytest.raises(ValueError):
        O.compress(m, 8, target_psnr=30, methods=("obs",))
    assert O.Choice.parse("sp75+int8") == O.Choice(8, 0.75)
    assert O.Choice.parse("2:4").label == "2:4"
    with pytest.raises(ValueError):
        O.Choice.parse("int3")


# ----------------------------------------------------------------------------- solver details --

@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "tanh", "sigmoid", "identity"])
def test_bias_shift_matches_target_mean(activation):
    """The bracketed secant solve reaches the target mean of every reachable channel (flat ReLU parts too)."""
    from pyquant.model.layers import apply_activation
    rng = np.random.default_rng(1)
    layer = Dense("d", weight=np.zeros((2, 48), np.float32), bias=np.zeros(48, np.float32), activation=activation,
                  alpha=0.2)
    pre = (rng.standard_normal((4000, 48)) * rng.uniform(0.1, 3, 48) + rng.uniform(-2, 2, 48)).astype(np.float32)
    shift = rng.uniform(-0.5, 0.5, 48).astype(np.float32)
    target = O._channel_mean(apply_activation(pre + shift, activation, 0.2))
    c = O._bias_shift(layer, pre, target)
    got = O._channel_mean(apply_activation(pre + c.astype(np.float32), activation, 0.2))
    np.testing.assert_allclose(got, target, atol=1e-6)


def test_int4_clip_search_never_worse_than_full_range():
    """Each channel keeps the clip with the least exact calibration error, so no channel is worse than with
    the full-range scale (clip 1.0, one of the candidates) under the same error-feedback rounding."""
    m = small_model()
    x = O._internal(m, m.latents(48, 0))
    x = m.layers[0].forward(x)
    x = m.layers[1].forward(x)
    layer = m.layers[2]
    P = O._LayerProblem(layer, np.asarray(x, np.float32))
    v, keep, scale = P.solve(O.Choice(4), quant="obs", prune="obs")
    assert keep.all() and np.all(np.abs(np.rint(v / scale.astype(np.float64))) <= 7)
    clips = O.QUANT_CLIPS
    try:
        O.QUANT_CLIPS = (1.0,)
        v1, _, _ = P.solve(O.Choice(4), quant="obs", prune="obs")
    finally:
        O.QUANT_CLIPS = clips
    assert np.all(P.hessian_error(v) <= P.hessian_error(v1) + 1e-12)


def test_evaluator_runs_from_the_replaced_layer(g, ze):
    """The held-out evaluation of one replaced layer (run from that layer on its stored input) gives the images
    of the whole model with that layer replaced."""
    ev = O._Evaluator(g, ze)
    m = O.optimize_model(g, g.latents(64, 0), {2: "int8"}, methods=())
    a = ev.with_layer(2, m.layers[2])
    b = m(ze)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_compress_speed_objective_runs_and_reports():
    m = small_model()
    model, table = O.compress(m, 32, evaluation=m.latents(32, 7), target_psnr=30, objective="speed")
    s = table.summary
    assert s["psnr"] >= 30
    for k in ("time_ms", "int8_static_time_ms", "speedup_vs_int8_static", "options_not_faster",
              "same_kernels_as_int8_static"):
        assert k in s
    assert set(s["options_not_faster"]) == {l.name for l in m.weight_layers}
