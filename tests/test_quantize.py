"""Round-affine quantization (CONTRACT section 1): every ISA path equals the numpy reference bit for bit."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pyquant
from conftest import run_on_every_isa

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
# Tail sizes around every vector width the kernels use (8 / 16 floats, 32 / 64-element main loops).
TAIL_SIZES = sorted({0, 1} | {k for w in (8, 16, 32, 64) for k in (w - 1, w, w + 1, 2 * w + 3)})


def reference(x, scale, zp, dtype, axis=None, narrow=False):
    """The contract's expression (ONNX QuantizeLinear, all float32), written out here independently of the
    package."""
    qmin, qmax = RANGES[dtype]
    if narrow:
        qmin = -127
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zp).astype(np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), zp.reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(np.rint(x / s) + zp, qmin, qmax).astype(dtype)


def dequant_reference(q, scale, zp, axis=None):
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zp, dtype=np.int32)
    if axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q.astype(np.int32) - zp).astype(np.float32) * scale


def adversarial(n, rng, scale=0.5):
    """Exact .5 ties (in units of scale), huge values, signed zeros and random values."""
    base = rng.integers(-300, 300, size=n).astype(np.float32) + 0.5
    x = base * np.float32(scale)
    pick = rng.integers(0, 6, size=n)
    x = np.where(pick == 0, rng.standard_normal(n).astype(np.float32) * 100, x)
    x = np.where(pick == 1, np.float32(3e38) * np.sign(rng.standard_normal(n)).astype(np.float32), x)
    x = np.where(pick == 2, np.float32(-0.0), x)
    return x.astype(np.float32)


@pytest.mark.parametrize("n", TAIL_SIZES)
@pytest.mark.parametrize("dtype,zp", [("int8", 0), ("int8", 3), ("int8", -7), ("uint8", 128), ("uint8", 131),
                                      ("uint8", 0), ("uint8", 255)])
def test_per_tensor_tails_and_ties(isa, n, dtype, zp, rng):
    x = adversarial(n, rng)
    got = pyquant.quantize(x, 0.5, zp, dtype)
    np.testing.assert_array_equal(got, reference(x, 0.5, zp, dtype))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(pyquant.dequantize(got, 0.5, zp), dequant_reference(got, 0.5, zp))


def test_ties_round_half_even_after_scaling(isa):
    # x / scale lands exactly on .5: rint goes to even, then the zero point is added.
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 127.5], dtype=np.float32)
    np.testing.assert_array_equal(pyquant.quantize(x, 1.0, 0, "int8"), [0, 2, 2, 0, -2, -2, 126, -128, 127])
    np.testing.assert_array_equal(pyquant.quantize(x, 1.0, 1, "int8"), [1, 3, 3, 1, -1, -1, 127, -127, 127])
    np.testing.assert_array_equal(pyquant.quantize(x, 1.0, 5, "uint8"), [5, 7, 7, 5, 3, 3, 131, 0, 133])


def test_divide_not_multiply_by_inverse(isa):
    # Values where x / scale and x * (1/scale) round to different integers: the contract divides (ONNX).
    rng = np.random.default_rng(7)
    for scale in (np.float32(0.1), np.float32(1.1564405), np.float32(0.0037)):
        inv = np.float32(1) / scale
        k = rng.integers(-120, 120, 200000).astype(np.float32)
        x = ((k + np.float32(0.5)) * scale).astype(np.float32)
        x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
        differ = np.rint(x * inv) != np.rint(x / scale)
        assert differ.any()  # the test data does separate the two rules
        for dtype, zp in (("int8", 0), ("int8", 3), ("uint8", 128), ("uint8", 131)):
            got = pyquant.quantize(x, scale, zp, dtype)
            np.testing.assert_array_equal(got, reference(x, scale, zp, dtype))
            lo, hi = RANGES[dtype]
            by_division = np.clip(np.rint(x / scale) + zp, lo, hi).astype(dtype)
            np.testing.assert_array_equal(got, by_division)
            assert (got != np.clip(np.rint(x * inv) + zp, lo, hi).astype(dtype)).any()


def test_issue_example_onnx_rounding(isa):
    # The README's example: 17.924828 / 1.1564405 is exactly 15.5 in float32 -> 16 (half to even) + 34 = 50;
    # 17.924828 * (1 / 1.1564405) is 15.499999 and would give 49. ONNX Runtime's QuantizeLinear gives 50.
    x, s = np.float32(17.924828), np.float32(1.1564405)
    assert x / s == np.float32(15.5) and x * (np.float32(1) / s) < np.float32(15.5)
    for n in (1, 7, 16, 33, 100):  # through the vector loops and the tails
        xs = np.full(n, x, np.float32)
        np.testing.assert_array_equal(pyquant.quantize(xs, s, 34, "uint8"), np.full(n, 50, np.uint8))
        np.testing.assert_array_equal(pyquant.quantize(xs, s, 34, "int8"), np.full(n, 50, np.int8))
        np.testing.assert_array_equal(pyquant.quantize(xs.reshape(n, 1), np.full(n, s), np.full(n, 34), "uint8",
                                                       axis=0).ravel(), np.full(n, 50, np.uint8))
        np.testing.assert_array_equal(pyquant.quantize(xs.reshape(1, n), np.full(n, s), np.full(n, 34), "uint8",
                                                       axis=1).ravel(), np.full(n, 50, np.uint8))
    assert pyquant.quantize_reference(x, s, 34, "uint8")[()] == 50


def test_saturation_never_wraps(isa):
    x = np.array([3.4e38, -3.4e38, 1e20, -1e20, 2.2e9, -2.2e9, 128.0, -129.0, 1e-45], dtype=np.float32)
    np.testing.assert_array_equal(pyquant.quantize(x, 1.0, 0, "int8"), [127, -128, 127, -128, 127, -128, 127, -128, 0])
    np.testing.assert_array_equal(pyquant.quantize(x, 1e-3, 200, "uint8"), [255, 0, 255, 0, 255, 0, 255, 0, 200])
    np.testing.assert_array_equal(pyquant.quantize(x, 1.0, 0, "int8", narrow_range=True)[:2], [127, -127])


@pytest.mark.parametrize("shape,axis", [((7, 33), 0), ((7, 33), 1), ((3, 5, 17), 1), ((4, 3, 2, 9), -1),
                                        ((2, 70), 1), ((130, 2), 0), ((5, 1, 3), 1)])
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_per_channel(isa, shape, axis, dtype, rng):
    c = shape[axis]
    x = adversarial(int(np.prod(shape)), rng).reshape(shape) * np.float32(0.3)
    scale = rng.uniform(0.01, 2.0, c).astype(np.float32)
    lo, hi = RANGES[dtype]
    zp = rng.integers(lo, hi + 1, c)
    got = pyquant.quantize(x, scale, zp, dtype, axis=axis)
    ax = axis % len(shape)
    np.testing.assert_array_equal(got, reference(x, scale, zp, dtype, ax))
    np.testing.assert_array_equal(pyquant.dequantize(got, scale, zp, axis=axis), dequant_reference(got, scale, zp, ax))


def test_narrow_range(isa, rng):
    x = rng.standard_normal(1000).astype(np.float32) * 100
    got = pyquant.quantize(x, 0.1, 0, np.int8, narrow_range=True)
    assert got.min() == -127
    np.testing.assert_array_equal(got, reference(x, 0.1, 0, "int8", narrow=True))
    with pytest.raises(ValueError, match="narrow_range"):
        pyquant.quantize(x, 0.1, 0, "uint8", narrow_range=True)


def test_strided_offset_and_converted_inputs(isa, rng):
    big = rng.standard_normal((50, 80)).astype(np.float32) * 20
    views = [big[::2, 1::3], big.T, big[3:, 5:], big.ravel()[1:]]
    for v in views:
        np.testing.assert_array_equal(pyquant.quantize(v, 0.17, 5, "int8"), reference(v, 0.17, 5, "int8"))
    x64 = rng.standard_normal(101) * 10
    np.testing.assert_array_equal(pyquant.quantize(x64, 0.1, 0), reference(x64.astype(np.float32), 0.1, 0, "int8"))
    x16 = x64.astype(np.float16)
    np.testing.assert_array_equal(pyquant.quantize(x16, 0.1, 0), reference(x16.astype(np.float32), 0.1, 0, "int8"))
    # float64 beyond the float32 range saturates instead of turning into inf
    np.testing.assert_array_equal(pyquant.quantize(np.array([1e300, -1e300]), 1.0), [127, -128])


def test_inputs_not_modified_and_out(isa, rng):
    x = rng.standard_normal((9, 31)).astype(np.float32)
    keep = x.copy()
    out = np.empty((9, 31), np.uint8)
    res = pyquant.quantize(x, 0.02, 128, "uint8", out=out)
    assert res is out
    np.testing.assert_array_equal(out, reference(x, 0.02, 128, "uint8"))
    np.testing.assert_array_equal(x, keep)
    fout = np.empty((9, 31), np.float32)
    assert pyquant.dequantize(out, 0.02, 128, out=fout) is fout


@pytest.mark.parametrize("n", [1, 3, 1 << 16, (1 << 17) + 5, 300001])
def test_thread_count_independent(n, rng):
    x = rng.standard_normal(n).astype(np.float32) * 50
    outs = []
    for t in (1, 2, 3, 8):
        with pyquant.use_threads(t):
            outs.append((pyquant.quantize(x, 0.3, 1, "int8"), pyquant.quantize_dynamic(x), pyquant.dequantize(outs[0][0] if outs else pyquant.quantize(x, 0.3, 1, "int8"), 0.3, 1)))
    for o in outs[1:]:
        np.testing.assert_array_equal(o[0], outs[0][0])
        np.testing.assert_array_equal(o[1].values, outs[0][1].values)
        assert o[1].scale == outs[0][1].scale and o[1].zero_point == outs[0][1].zero_point
        np.testing.assert_array_equal(o[2], outs[0][2])


def test_every_isa_identical_large(rng):
    x = adversarial(1 << 18, rng, scale=0.05).reshape(512, 512)
    s = rng.uniform(0.01, 1, 512).astype(np.float32)
    z = rng.integers(0, 256, 512)
    per_isa = run_on_every_isa(lambda: (pyquant.quantize(x, s, z, "uint8", axis=1),
                                        pyquant.quantize(x, s, z, "uint8", axis=0),
                                        pyquant.quantize_dynamic(x, "int8", symmetric=True).values))
    first = per_isa["scalar"]
    for name, res in per_isa.items():
        for a, b in zip(res, first):
            np.testing.assert_array_equal(a, b, err_msg=name)


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=70), elements=finite_f32),
       scale=st.floats(0.0009765625, 1024.0, width=32), zp=st.integers(-128, 255), isa_name=st.sampled_from(pyquant.available_isas()))
def test_hypothesis_matches_reference(x, scale, zp, isa_name):
    dtype = "uint8" if zp >= 0 else "int8"
    zp = zp if dtype == "uint8" or zp >= -128 else -128
    zp = min(zp, 127) if dtype == "int8" else zp
    with pyquant.use_isa(isa_name):
        got = pyquant.quantize(x, scale, zp, dtype)
        np.testing.assert_array_equal(got, reference(x, scale, zp, dtype))
        np.testing.assert_array_equal(pyquant.dequantize(got, scale, zp), dequant_reference(got, scale, zp))


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                    elements=st.floats(-10000.0, 10000.0, width=32)),
       data=st.data())
def test_hypothesis_per_channel(x, data):
    axis = data.draw(st.integers(0, x.ndim - 1))
    c = x.shape[axis]
    scale = np.array(data.draw(st.lists(st.floats(0.0009765625, 1024.0, width=32), min_size=c, max_size=c)), np.float32)
    zp = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=c, max_size=c)))
    for name in pyquant.available_isas():
        with pyquant.use_isa(name):
            np.testing.assert_array_equal(pyquant.quantize(x, scale, zp, "int8", axis=axis),
                                          reference(x, scale, zp, "int8", axis))


# ----------------------------------------------------------------------------------------- bad input --

def test_nan_inf_reported_with_count_and_index(isa):
    x = np.zeros((4, 50), np.float32)
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    x[3, 49] = -np.inf
    keep = x.copy()
    with pytest.raises(ValueError, match=r"3 non-finite.*\(1, 7\)"):
        pyquant.quantize(x, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.quantize_dynamic(x)
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.choose_qparams(x)
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.quantize(x, np.ones(50), 0, axis=1)
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.quantize(np.array([np.nan] * 100, np.float64), 1.0)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("scale", [0.0, -1.0, np.inf, np.nan, 1e-45, 1e-300, 1e300])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        pyquant.quantize(np.ones(4, np.float32), scale)
    with pytest.raises(ValueError, match="scale"):
        pyquant.dequantize(np.ones(4, np.int8), scale)


def test_bad_zero_point_and_dtype():
    x = np.ones(4, np.float32)
    for zp, dt in [(128, "int8"), (-129, "int8"), (256, "uint8"), (-1, "uint8"), (1.5, "int8"), (np.nan, "int8")]:
        with pytest.raises(ValueError, match="zero_point"):
            pyquant.quantize(x, 1.0, zp, dt)
    with pytest.raises(ValueError, match="zero_point"):
        pyquant.quantize(x, 1.0, -128, "int8", narrow_range=True)
    for dt in ["int16", np.float32, "float", "bogus", None]:
        with pytest.raises(TypeError, match="dtype"):
            pyquant.quantize(x, 1.0, 0, dt)
    for bad_x in [np.ones(4, np.int32), np.ones(4, bool), np.ones(4, np.complex64), ["a"]]:
        with pytest.raises(TypeError, match="x"):
            pyquant.quantize(bad_x, 1.0)
    with pytest.raises(TypeError, match="q"):
        pyquant.dequantize(np.ones(4, np.int16), 1.0)
    with pytest.raises(TypeError, match="zero_point"):
        pyquant.quantize(x, 1.0, "3")


def test_parameter_shapes_must_match_axis():
    x = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="axis"):
        pyquant.quantize(x, np.ones(5), 0)  # per-channel scale without axis
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        pyquant.quantize(x, np.ones(5), 0, axis=0)
    with pytest.raises(ValueError, match=r"zero_point must have shape \(5,\)"):
        pyquant.quantize(x, np.ones(5), np.zeros(3, int), axis=1)
    with pytest.raises(ValueError, match="out of range"):
        pyquant.quantize(x, 1.0, 0, axis=2)
    with pytest.raises(TypeError, match="axis"):
        pyquant.quantize(x, 1.0, 0, axis=1.0)
    # a scalar broadcasts over the channels
    np.testing.assert_array_equal(pyquant.quantize(x, 0.5, 1, axis=1), reference(x, 0.5, 1, "int8"))


def test_bad_out():
    x = np.ones((3, 5), np.float32)
    with pytest.raises(TypeError, match="out"):
        pyquant.quantize(x, 1.0, out=np.empty((3, 5), np.uint8))
    with pytest.raises(ValueError, match="out"):
        pyquant.quantize(x, 1.0, out=np.empty((5, 3), np.int8))
    ro = np.empty((3, 5), np.int8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        pyquant.quantize(x, 1.0, out=ro)
    with pytest.raises(ValueError, match="contiguous"):
        pyquant.quantize(x, 1.0, out=np.empty((3, 10), np.int8)[:, ::2])
    with pytest.raises(TypeError, match="out"):
        pyquant.quantize(x, 1.0, out=[0] * 15)
    buf = np.zeros(15, np.float32)
    q = np.zeros(15, np.int8)
    with pytest.raises(ValueError, match="overlap"):
        pyquant.dequantize(q, 1.0, out=buf) if False else pyquant.quantize(buf, 1.0, out=buf.view(np.int8)[:15])


def test_empty_and_scalar_inputs(isa):
    assert pyquant.quantize(np.zeros((0, 3), np.float32), 1.0).shape == (0, 3)
    assert pyquant.dequantize(np.zeros((2, 0), np.int8), 1.0).shape == (2, 0)
    assert pyquant.quantize(np.float32(2.5), 1.0)[()] == 2
    assert pyquant.quantize(np.zeros((0, 4), np.float32), np.ones(4), 0, axis=1).shape == (0, 4)


# ------------------------------------------------------------------------------- choosing parameters --

def test_minmax_params_formulas():
    x = np.array([-1.0, 0.5, 3.0], np.float32)
    p = pyquant.choose_qparams(x, "uint8")
    assert p.scale == np.float32(4.0 / 255)
    assert p.zero_point == int(np.clip(0 - np.rint(-1.0 / np.float64(np.float32(4.0 / 255))), 0, 255))
    q = pyquant.quantize(np.float32(0.0), p.scale, p.zero_point, "uint8")
    assert pyquant.dequantize(q, p.scale, p.zero_point)[()] == 0.0  # 0.0 is exact
    s = pyquant.choose_qparams(x, "int8", symmetric=True)
    assert s.scale == np.float32(3.0 / 127) and s.zero_point == 0
    su = pyquant.choose_qparams(x, "uint8", symmetric=True)
    assert su.zero_point == 128
    # positive-only data still includes 0 in the range
    pos = pyquant.choose_qparams(np.array([2.0, 4.0], np.float32), "uint8")
    assert pos.zero_point == 0 and pos.scale == np.float32(4.0 / 255)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_and_constant_tensors(method, symmetric):
    for x in (np.zeros(10, np.float32), np.full(10, -0.0, np.float32)):
        for dt in ("int8", "uint8"):
            p = pyquant.choose_qparams(x, dt, symmetric=symmetric, method=method)
            assert np.isfinite(p.scale) and p.scale > 0
            q = pyquant.quantize(x, p.scale, p.zero_point, dt)
            assert (q == p.zero_point).all()
    c = np.full(7, 2.5, np.float32)
    p = pyquant.choose_qparams(c, "uint8", symmetric=symmetric, method=method)
    assert np.isfinite(p.scale) and p.scale > 0
    back = pyquant.dequantize(pyquant.quantize(c, p.scale, p.zero_point, "uint8"), p.scale, p.zero_point)
    assert np.allclose(back, 2.5, atol=float(p.scale))
    tiny = np.array([1e-40, -1e-40], np.float32)
    p = pyquant.choose_qparams(tiny, "int8", symmetric=symmetric, method=method)
    assert p.scale >= np.finfo(np.float32).tiny  # a normal float32, which quantize accepts
    pyquant.quantize(tiny, p.scale, p.zero_point, "int8")


def test_percentile_and_mse_clip_outliers(rng):
    x = rng.standard_normal(100000).astype(np.float32)
    x[0] = 1000.0
    mm = pyquant.choose_qparams(x, "int8", symmetric=True)
    pc = pyquant.choose_qparams(x, "int8", symmetric=True, method="percentile", percentile=99.9)
    assert pc.scale < mm.scale / 50

    def err(x, p):
        return np.mean((pyquant.dequantize(pyquant.quantize(x, p.scale, p.zero_point), p.scale, p.zero_point) - x) ** 2)
    heavy = rng.laplace(size=100000).astype(np.float32)  # a long tail: clipping it lowers the total error
    mm = pyquant.choose_qparams(heavy, "int8", symmetric=True)
    ms = pyquant.choose_qparams(heavy, "int8", symmetric=True, method="mse")
    assert ms.scale < mm.scale * 0.9 and err(heavy, ms) < err(heavy, mm) * 0.9
    assert err(x, pyquant.choose_qparams(x, "int8", symmetric=True, method="mse")) <= err(x, pyquant.choose_qparams(x, "int8", symmetric=True))
    assert pyquant.choose_qparams(x, method="mse") == pyquant.choose_qparams(x, method="mse")  # deterministic
    with pytest.raises(ValueError, match="method"):
        pyquant.choose_qparams(x, method="entropy")
    with pytest.raises(ValueError, match="percentile"):
        pyquant.choose_qparams(x, method="percentile", percentile=20)
    with pytest.raises(ValueError, match="empty"):
        pyquant.choose_qparams(np.zeros(0, np.float32))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_per_channel_params(method, rng):
    w = rng.standard_normal((6, 40)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    p = pyquant.choose_qparams(w, "int8", symmetric=True, method=method, axis=0)
    assert p.scale.shape == (6,) and p.zero_point.shape == (6,)
    assert np.all(p.scale > 0) and np.all(p.zero_point == 0)
    if method == "minmax":
        np.testing.assert_array_equal(p.scale, (np.abs(w).max(axis=1).astype(np.float64) / 127).astype(np.float32))
    q = pyquant.quantize(w, p.scale, p.zero_point, "int8", axis=0)
    assert np.abs(pyquant.dequantize(q, p.scale, p.zero_point, axis=0) - w).max() <= p.scale.max()


def test_quantize_dynamic(isa, rng):
    x = rng.standard_normal((33, 65)).astype(np.float32) * 4 + 1
    q, scale, zp = pyquant.quantize_dynamic(x)
    p = pyquant.choose_qparams(x, "uint8")
    assert scale == p.scale and zp == p.zero_point
    np.testing.assert_array_equal(q, reference(x, scale, zp, "uint8"))
    r = pyquant.quantize_dynamic(x, "int8", symmetric=True, axis=1)
    assert r.scale.shape == (65,)
    np.testing.assert_array_equal(r.values, reference(x, r.scale, r.zero_point, "int8", 1))
    assert np.abs(pyquant.dequantize(q, scale, zp) - x).max() <= scale / 2 * 1.0001


def test_unpickled_and_byte_swapped_arrays(isa, rng):
    import pickle

    x = rng.standard_normal(77).astype(np.float32) * 9
    expect = reference(x, 0.1, 2, "int8")
    np.testing.assert_array_equal(pyquant.quantize(pickle.loads(pickle.dumps(x)), 0.1, 2), expect)
    np.testing.assert_array_equal(pyquant.quantize(x.astype(">f4"), 0.1, 2), expect)
    q = pickle.loads(pickle.dumps(expect))
    np.testing.assert_array_equal(pyquant.dequantize(q, 0.1, 2), dequant_reference(expect, 0.1, 2))
    out = pickle.loads(pickle.dumps(np.empty(77, np.int8)))
    np.testing.assert_array_equal(pyquant.quantize(x, 0.1, 2, out=out), expect)
