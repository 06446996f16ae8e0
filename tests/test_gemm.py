"""Exact int8 GEMM (CONTRACT section 2): every ISA path against an int64 numpy reference, fused epilogues
against float64 / float32 references and bit for bit across paths and thread counts, fixed-point
requantization bit-exact against numpy int64, bad inputs, threads, pickling."""
import pickle
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyquant
from pyquant import _core

ISAS = pyquant.available_isas()


def ref_matmul(a, b, za=0, zb=0):
    return ((a.astype(np.int64) - za) @ (b.astype(np.int64) - np.asarray(zb, dtype=np.int64))).astype(np.int64)


def check_exact(a, b, za=0, zb=0, **pack_kw):
    p = pyquant.pack_weights(b, **pack_kw)
    got = pyquant.matmul_int8(a, p, za, zb)
    assert got.dtype == np.int32 and got.shape == (a.shape[0], b.shape[1])
    np.testing.assert_array_equal(got.astype(np.int64), ref_matmul(a, b, za, zb))
    return p, got


def every_isa(fn):
    out = {}
    for name in ISAS:
        with pyquant.use_isa(name):
            out[name] = fn()
    return out


# Forcing the fast AVX2 loop with its split-out correction (any fraction of pairs allowed).
FORCE_FAST = dict(fast_path=True, max_split_fraction=1.0)


# ------------------------------------------------------------------------------------- exactness --

@pytest.mark.parametrize("pack_kw", [{}, FORCE_FAST, dict(fast_path=False)])
def test_onnxruntime_16105_vector(isa, pack_kw):
    a = np.array([[210, 198, 234]], dtype=np.uint8)
    w = np.array([[-81], [-80], [127]], dtype=np.int8)
    p, got = check_exact(a, w, **pack_kw)
    assert got[0, 0] == 210 * -81 + 198 * -80 + 234 * 127 == -3132
    if isa == "avx2" and pack_kw is FORCE_FAST:
        assert p.kernel == "avx2-vpmaddubsw-u8s8" and p.fast_path_proven and p.n_corrections == 1


def saturating_u8s8(a, b):
    """numpy model of the unproven AVX2 fast loop (vpmaddubsw: adjacent u8 x s8 pairs summed with int16
    saturation, then widened and accumulated in int32): what an exactness test must be able to catch."""
    K = a.shape[1]
    if K % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 1), (0, 0)))
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    pairs = a64[:, 0::2, None] * b64[None, 0::2, :] + a64[:, 1::2, None] * b64[None, 1::2, :]
    return np.clip(pairs, -32768, 32767).sum(axis=1)


def test_the_vectors_catch_a_saturating_kernel():
    # The test vectors used above tell the exact result from the saturating one, so a kernel that saturated
    # (or skipped the split-out correction) would fail them.
    a = np.array([[210, 198, 234]], dtype=np.uint8)
    w = np.array([[-81], [-80], [127]], dtype=np.int8)
    assert saturating_u8s8(a, w)[0, 0] != ref_matmul(a, w)[0, 0]
    a255 = np.full((2, 67), 255, dtype=np.uint8)
    w128 = np.full((67, 3), -128, dtype=np.int8)
    assert (saturating_u8s8(a255, w128) != ref_matmul(a255, w128)).all()
    # and at the |b0| + |b1| = 128 boundary the saturating loop is exact, one past it is not
    w_at = np.array([[64], [64]], dtype=np.int8)
    w_past = np.array([[64], [65]], dtype=np.int8)
    a2 = np.full((1, 2), 255, dtype=np.uint8)
    assert saturating_u8s8(a2, w_at)[0, 0] == ref_matmul(a2, w_at)[0, 0]
    assert saturating_u8s8(a2, w_past)[0, 0] != ref_matmul(a2, w_past)[0, 0]


@pytest.mark.parametrize("wval", [-128, -127, 127])
@pytest.mark.parametrize("pack_kw", [{}, FORCE_FAST])
def test_rows_of_255(isa, wval, pack_kw):
    a = np.full((5, 67), 255, dtype=np.uint8)
    w = np.full((67, 35), wval, dtype=np.int8)
    check_exact(a, w, **pack_kw)
    check_exact(a, w, 0, -128 if wval != -128 else 127, **pack_kw)


@pytest.mark.parametrize("pack_kw", [{}, FORCE_FAST, dict(fast_path=True, max_split_fraction=0.0)])
def test_pair_boundary(isa, pack_kw):
    at = [(64, 64), (-128, 0), (0, -128), (100, -28), (-127, 1), (1, 127), (-64, -64)]
    past = [(64, 65), (127, 2), (-128, 1), (-1, -128), (-127, -127), (-81, -80)]
    cols = at + past
    w = np.zeros((8, len(cols)), dtype=np.int8)
    for j, (b0, b1) in enumerate(cols):
        w[2, j], w[3, j] = b0, b1      # an aligned pair (k = 2, 3)
        w[4, j], w[5, j] = b1, b0
    a = np.full((3, 8), 255, dtype=np.uint8)
    a[1] = np.arange(8) * 31
    p, _ = check_exact(a, w, **pack_kw)
    p, _ = check_exact(a, w, 255, **pack_kw)
    if isa == "avx2" and pack_kw is FORCE_FAST:
        assert p.n_corrections == 2 * len(past)
    w_ok = w[:, :len(at)].copy()
    p = pyquant.pack_weights(w_ok, fast_path=True, max_split_fraction=0.0)
    if isa == "avx2":
        assert p.fast_path_proven and p.n_corrections == 0  # all pairs at the boundary: proven, nothing split
    check_exact(a, w_ok, fast_path=True, max_split_fraction=0.0)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 1, 5), (1, 300, 1), (1, 33, 67), (13, 5, 17), (9, 130, 33),
                                   (70, 259, 97), (0, 16, 8), (0, 3, 1)])
@pytest.mark.parametrize("za", [0, 128, 255, 77])
def test_random_full_range_uint8(isa, rng, shape, za):
    M, K, N = shape
    a = rng.integers(0, 256, (M, K), dtype=np.uint8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    check_exact(a, w, za)
    check_exact(a, w, za, **FORCE_FAST)


@pytest.mark.parametrize("za", [-128, 0, 127, -33])
def test_random_int8_activations(isa, rng, za):
    a = rng.integers(-128, 128, (21, 75), dtype=np.int8)
    w = rng.integers(-128, 128, (75, 40), dtype=np.int8)
    check_exact(a, w, za)
    check_exact(a, w, za, 3)
    zb = rng.integers(-128, 128, 40)
    check_exact(a, w, za, zb)


def test_per_column_b_zero_point(isa, rng):
    a = rng.integers(0, 256, (17, 50), dtype=np.uint8)
    w = rng.integers(-128, 128, (50, 29), dtype=np.int8)
    zb = rng.integers(-128, 128, 29).astype(np.int32)
    check_exact(a, w, 129, zb)
    check_exact(a, w, 129, zb, **FORCE_FAST)


def test_trained_like_weights_use_fast_path_on_avx2(rng):
    if "avx2" not in ISAS:
        pytest.skip("no AVX2")
    w = np.clip(np.rint(rng.normal(0, 18, (256, 64))), -127, 127).astype(np.int8)
    a = rng.integers(0, 256, (40, 256), dtype=np.uint8)
    with pyquant.use_isa("avx2"):
        p, _ = check_exact(a, w, 7)
        assert p.fast_path_proven
        assert p.n_corrections <= 0.02 * 128 * 64


def test_bit_identical_across_isas(rng):
    a = rng.integers(0, 256, (37, 203), dtype=np.uint8)
    w = rng.integers(-128, 128, (203, 71), dtype=np.int8)
    p = pyquant.pack_weights(w)
    res = every_isa(lambda: pyquant.matmul_int8(a, p, 11))
    for r in res.values():
        np.testing.assert_array_equal(r, res["scalar"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(0, 19), K=st.integers(1, 70), N=st.integers(1, 45), seed=st.integers(0, 2**32 - 1),
       s8=st.booleans(), zp=st.integers(0, 255), zb=st.integers(-128, 127), narrow=st.booleans())
def test_hypothesis_exact(M, K, N, seed, s8, zp, zb, narrow):
    r = np.random.default_rng(seed)
    if s8:
        a = r.integers(-128, 128, (M, K), dtype=np.int8)
        zp -= 128
    else:
        a = r.integers(0, 256, (M, K), dtype=np.uint8)
    lo = -127 if narrow else -128
    w = r.integers(lo, 128, (K, N), dtype=np.int8)
    p = pyquant.pack_weights(w, max_split_fraction=0.5)
    ref = ref_matmul(a, w, zp, zb)
    for name in ISAS:
        with pyquant.use_isa(name):
            np.testing.assert_array_equal(pyquant.matmul_int8(a, p, zp, zb).astype(np.int64), ref)


def test_threads_do_not_change_results(rng):
    a = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    w = rng.integers(-128, 128, (300, 520), dtype=np.int8)
    p = pyquant.pack_weights(w)
    with pyquant.use_threads(1):
        r1 = pyquant.matmul_int8(a, p, 5)
    with pyquant.use_threads(2):
        r2 = pyquant.matmul_int8(a, p, 5)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1.astype(np.int64), ref_matmul(a, w, 5))


def test_raw_array_b_and_strided_inputs(isa, rng):
    a_big = rng.integers(0, 256, (30, 90), dtype=np.uint8)
    w = rng.integers(-128, 128, (40, 12), dtype=np.int8)
    a = a_big[::2, 5:45]                       # row stride != K: used in place
    np.testing.assert_array_equal(pyquant.matmul_int8(a, w, 3).astype(np.int64), ref_matmul(a, w, 3))
    a2 = a_big[:, ::2][:, :40]                 # non-unit column stride: copied
    np.testing.assert_array_equal(pyquant.matmul_int8(a2, w).astype(np.int64), ref_matmul(a2, w))
    wt = np.asfortranarray(w)
    np.testing.assert_array_equal(pyquant.matmul_int8(a2, wt).astype(np.int64), ref_matmul(a2, w))


def test_kernel_output_row_stride(isa, rng):
    # The kernels write into rows with any stride (how Dense/ConvTranspose write into a larger buffer).
    a = rng.integers(0, 256, (9, 20), dtype=np.uint8)
    w = rng.integers(-128, 128, (20, 11), dtype=np.int8)
    p = pyquant.pack_weights(w)
    big = np.full((9, 30), -7, dtype=np.int32)
    view = big[:, 4:15]
    _core.gemm_run(p._packed(), a, 0, 2, 1.0, 255, None, None, 0, view, None, None, 0, 0.0, 1.0, 0, 0, 0, None,
                   None)
    np.testing.assert_array_equal(view.astype(np.int64), ref_matmul(a, w, 2))
    assert (big[:, :4] == -7).all() and (big[:, 15:] == -7).all()


def test_inputs_not_modified_and_out(rng):
    a = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    w = rng.integers(-128, 128, (10, 4), dtype=np.int8)
    a0, w0 = a.copy(), w.copy()
    out = np.empty((6, 4), dtype=np.int32)
    r = pyquant.matmul_int8(a, w, 1, out=out)
    assert r is out
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(w, w0)
    # per-channel arrays are inputs too: out may not alias them
    buf = np.ones((6, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="overlap"):
        pyquant.matmul_int8(a, w, 1, b_zero_point=buf[0], out=buf)
    q8 = np.zeros((6, 4), dtype=np.int8)
    mult = q8.view(np.int32).reshape(-1)[:4]  # 6 x 4 int8 bytes seen as 6 int32
    mult[:] = 1 << 30
    with pytest.raises(ValueError, match="overlap"):
        pyquant.matmul_int8_requantize(a, w, mult, 3, 1, out=q8)


# ---------------------------------------------------------------------------- overflow guard --

def test_overflow_guard():
    K = 65794  # 65794 * 255 * 128 > 2**31 - 1
    a = np.zeros((1, K), dtype=np.uint8)
    w = np.full((K, 1), -128, dtype=np.int8)
    with pytest.raises(ValueError, match="overflow"):
        pyquant.matmul_int8(a, w)
    # the bound uses the actual weights: the same K with weights in [-127, 127] still overflows, but small
    # weights do not
    w_small = np.full((K, 1), 3, dtype=np.int8)
    a[:] = 255
    np.testing.assert_array_equal(pyquant.matmul_int8(a, w_small), [[K * 255 * 3]])
    # and the zero point counts: za = 0 on int8 activations means |a - za| <= 128
    with pytest.raises(ValueError, match="overflow"):
        pyquant.matmul_int8(np.zeros((1, 140000), np.int8), np.full((140000, 1), 127, np.int8))


# ------------------------------------------------------------------------------ fused epilogue --

ACTS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid"]


def _np_act(y, act, alpha):
    if act == "identity":
        return y
    if act == "relu":
        return np.maximum(y, 0)
    if act == "leaky_relu":
        return np.where(y < 0, y * alpha, y)
    if act == "tanh":
        return np.tanh(y)
    return 1 / (1 + np.exp(-y))


def _linear_case(rng, M=23, K=150, N=45, per_channel=True):
    x = rng.normal(0, 1, (M, K)).astype(np.float32)
    wf = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    bias = rng.normal(0, 0.5, N).astype(np.float32)
    axis = 1 if per_channel else None
    qp = pyquant.choose_qparams(wf, "int8", symmetric=True, axis=axis, narrow_range=True)
    wq = pyquant.quantize(wf, qp.scale, qp.zero_point, "int8", axis=axis, narrow_range=True)
    p = pyquant.pack_weights(wq, scale=qp.scale, bias=bias)
    return x, wq, qp.scale, bias, p


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_linear_float_vs_float64_reference(isa, rng, act, per_channel):
    x, wq, sw, bias, p = _linear_case(rng, per_channel=per_channel)
    sa, za = np.float32(0.04), 131
    y = pyquant.linear_int8(x, p, activation=act, alpha=0.1, input_scale=sa, input_zero_point=za)
    # reference: the same quantized activations, exact accumulators, then the epilogue in float64
    q = pyquant.quantize(x, sa, za, "uint8")
    acc = ref_matmul(q, wq, za).astype(np.float64)
    scale = (np.float32(sa) * np.broadcast_to(sw, (wq.shape[1],)).astype(np.float32)).astype(np.float64)
    ref = _np_act(acc * scale + bias.astype(np.float64), act, np.float64(np.float32(0.1)))
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)
    # and close to the float layer itself
    wf_hat = wq.astype(np.float64) * np.broadcast_to(sw, (wq.shape[1],))
    full = _np_act(x.astype(np.float64) @ wf_hat + bias, act, 0.1)
    assert np.max(np.abs(y - full)) < 0.2


def test_linear_dynamic_matches_quantize_dynamic(isa, rng):
    x, wq, sw, bias, p = _linear_case(rng)
    y = pyquant.linear_int8(x, p)
    qa = pyquant.quantize_dynamic(x, "uint8")
    y2 = pyquant.linear_int8(x, p, input_scale=qa.scale, input_zero_point=int(qa.zero_point))
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("out_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])
def test_linear_requantized_output(isa, rng, out_dtype, act):
    x, wq, sw, bias, p = _linear_case(rng)
    sa, za, so = np.float32(0.03), 120, np.float32(0.05)
    ozp = 3 if out_dtype == "int8" else 128
    y = pyquant.linear_int8(x, p, activation=act, alpha=0.25, input_scale=sa, input_zero_point=za,
                            output_dtype=out_dtype, output_scale=so, output_zero_point=ozp)
    q = pyquant.quantize(x, sa, za, "uint8")
    acc = ref_matmul(q, wq, za).astype(np.float32)
    scale = (sa * sw.astype(np.float32)).astype(np.float32)
    yf = acc * scale + bias  # float32 multiply, then float32 add: the contract's sequence
    yf = _np_act(yf, act, np.float32(0.25)).astype(np.float32)
    ref = pyquant.quantize_reference(yf, so, ozp, out_dtype)
    np.testing.assert_array_equal(y, ref)


def test_epilogue_bit_identical_across_isas_and_threads(rng):
    x, wq, sw, bias, p = _linear_case(rng, M=70, K=201, N=83)
    x = x * 3
    cases = [dict(activation=a, alpha=0.2) for a in ACTS]
    cases += [dict(activation="tanh", output_dtype="int8", output_scale=0.01, output_zero_point=-5),
              dict(activation="sigmoid", output_dtype="uint8", output_scale=1 / 255, output_zero_point=0),
              dict(activation="relu", input_dtype="int8"), dict(activation="identity", reduce_range=True)]
    for kw in cases:
        base = None
        for name in ISAS:
            for threads in (1, 2):
                with pyquant.use_isa(name), pyquant.use_threads(threads):
                    y = pyquant.linear_int8(x, p, **kw)
                if base is None:
                    base = y
                else:
                    assert y.tobytes() == base.tobytes(), (kw, name, threads)


def test_linear_leading_dims_and_out(rng):
    x, wq, sw, bias, p = _linear_case(rng, M=12)
    x3 = x.reshape(3, 4, -1)
    out = np.empty((3, 4, p.N), dtype=np.float32)
    y = pyquant.linear_int8(x3, p, input_scale=0.02, input_zero_point=128, out=out)
    assert y is out
    np.testing.assert_array_equal(y.reshape(12, -1),
                                  pyquant.linear_int8(x, p, input_scale=0.02, input_zero_point=128))
    assert pyquant.linear_int8(np.zeros((0, p.K), np.float32), p).shape == (0, p.N)


def test_quantized_linear(isa, rng):
    w = rng.normal(0, 0.1, (64, 24)).astype(np.float32)
    b = rng.normal(0, 0.1, 24).astype(np.float32)
    x = rng.normal(0, 1, (10, 64)).astype(np.float32)
    layer = pyquant.QuantizedLinear(w, b, "leaky_relu", 0.2)
    y = layer(x)
    ref = x.astype(np.float64) @ w + b
    ref = np.where(ref < 0, 0.2 * ref, ref)
    assert np.max(np.abs(y - ref)) < 0.05 * np.max(np.abs(ref))
    assert layer.in_features == 64 and layer.out_features == 24


def test_reduce_range_uses_fast_path_on_avx2(rng):
    if "avx2" not in ISAS:
        pytest.skip("no AVX2")
    x, wq, sw, bias, p = _linear_case(rng)
    wq = wq.copy()
    wq[::2] = 127  # many violating pairs: the default packing runs the exact loop
    p = pyquant.pack_weights(wq, scale=sw, bias=bias)
    with pyquant.use_isa("avx2"):
        assert not p.fast_path_proven
        assert p._packed(reduced_range=True).kernel == "avx2-vpmaddubsw-u8s8"
        y = pyquant.linear_int8(x, p, input_scale=0.05, input_zero_point=64, reduce_range=True)
    q = pyquant.quantize(x, 0.05, 64, "uint8")
    q = np.minimum(q, 127)
    ref = (ref_matmul(q, wq, 64).astype(np.float32) * (np.float32(0.05) * sw).astype(np.float32) + bias)
    np.testing.assert_array_equal(y, ref.astype(np.float32))


# ----------------------------------------------------------------------- fixed-point requantization --

def ref_srdhm(a, b):
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    q = np.where(s >= 0, s >> 31, -((-s) >> 31))  # truncate toward zero
    sat = (a == -2**31) & (b == -2**31)
    return np.where(sat, 2**31 - 1, q)


def ref_rdbp(x, e):
    x, e = np.asarray(x, np.int64), np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def ref_fixed(acc, mult, shift, zp, qmin, qmax):
    return np.clip(ref_rdbp(ref_srdhm(acc, mult), shift) + zp, qmin, qmax)


def test_quantize_multiplier():
    for r in [0.5, 0.75, 1e-3, 0.999999999, 2.0**-20 * 1.3, 0.1]:
        m, s = pyquant.quantize_multiplier(r)
        assert 2**30 <= m < 2**31 and 0 <= s <= 31
        assert abs(m * 2.0**-31 * 2.0**-float(s) - r) <= r * 2.0**-30
    m, s = pyquant.quantize_multiplier(np.array([0.25, 0.3]))
    assert m.dtype == np.int32 and m.shape == (2,)
    assert pyquant.quantize_multiplier(1e-12) == (0, 0)
    for bad in [0.0, 1.0, 1.5, -0.1, np.nan]:
        with pytest.raises(ValueError):
            pyquant.quantize_multiplier(bad)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_requantize_fixed_point_bit_exact(rng, dtype):
    acc = rng.integers(-2**31, 2**31, (50, 7), dtype=np.int64).astype(np.int32)
    acc[0, :] = [-2**31, 2**31 - 1, 0, -1, 1, -2**30, 2**30]
    acc[1:4] = rng.integers(-5000, 5000, (3, 7))
    mult, shift = pyquant.quantize_multiplier(rng.uniform(1e-4, 0.99, 7))
    mult[0] = -2**31  # the saturating case of SRDHM
    zp = 5 if dtype == "int8" else 130
    qmin, qmax = (-128, 127) if dtype == "int8" else (0, 255)
    got = pyquant.requantize_fixed_point(acc, mult, shift, zp, dtype)
    np.testing.assert_array_equal(got.astype(np.int64), ref_fixed(acc, mult, shift, zp, qmin, qmax))
    # exact ties of the shift round away from zero: SRDHM(+-4, 2**30) = +-2, then +-2 / 4 -> +-1
    np.testing.assert_array_equal(pyquant.requantize_fixed_point(np.array([4, -4], np.int32), 2**30, 2), [1, -1])
    np.testing.assert_array_equal(
        pyquant.requantize_fixed_point(np.array([2, -2, 6, -6, 10, -10], np.int32), 2**30, 2).astype(np.int64),
        ref_fixed(np.array([2, -2, 6, -6, 10, -10]), 2**30, 2, 0, -128, 127))


@pytest.mark.parametrize("out_dtype", ["int8", "uint8"])
def test_matmul_int8_requantize(isa, rng, out_dtype):
    a = rng.integers(0, 256, (19, 77), dtype=np.uint8)
    w = rng.integers(-127, 128, (77, 26), dtype=np.int8)
    bias = rng.integers(-20000, 20000, 26).astype(np.int32)
    mult, shift = pyquant.quantize_multiplier(rng.uniform(1e-4, 3e-3, 26))
    zp = -3 if out_dtype == "int8" else 100
    got = pyquant.matmul_int8_requantize(a, w, mult, shift, 9, bias=bias, output_zero_point=zp,
                                         output_dtype=out_dtype)
    acc = ref_matmul(a, w, 9) + bias
    qmin, qmax = (-128, 127) if out_dtype == "int8" else (0, 255)
    np.testing.assert_array_equal(got.astype(np.int64), ref_fixed(acc, mult, shift, zp, qmin, qmax))


# ------------------------------------------------------------------------------------ bad input --

def test_bad_inputs(rng):
    a = rng.integers(0, 256, (4, 10), dtype=np.uint8)
    w = rng.integers(-128, 128, (10, 3), dtype=np.int8)
    p = pyquant.pack_weights(w, scale=0.1)
    with pytest.raises(TypeError, match="a must be"):
        pyquant.matmul_int8(a.astype(np.float32), p)
    with pytest.raises(TypeError, match="b must be"):
        pyquant.matmul_int8(a, w.astype(np.int16))
    with pytest.raises(TypeError, match="w must be"):
        pyquant.pack_weights(w.astype(np.uint8))
    with pytest.raises(ValueError, match="K = 9"):
        pyquant.matmul_int8(a[:, :9], p)                 # packed object used with a wrong K
    with pytest.raises(ValueError, match="2-D"):
        pyquant.matmul_int8(a[0], p)
    with pytest.raises(ValueError, match="2-D"):
        pyquant.pack_weights(w[0])
    with pytest.raises(ValueError):
        pyquant.pack_weights(np.zeros((0, 3), np.int8))
    with pytest.raises(ValueError, match="a_zero_point"):
        pyquant.matmul_int8(a, p, 256)
    with pytest.raises(ValueError, match="a_zero_point"):
        pyquant.matmul_int8(a.view(np.int8), p, 128)
    with pytest.raises(TypeError, match="a_zero_point"):
        pyquant.matmul_int8(a, p, 1.5)
    with pytest.raises(ValueError, match="b_zero_point"):
        pyquant.matmul_int8(a, p, 0, np.zeros(4, np.int32))
    with pytest.raises(TypeError, match="out"):
        pyquant.matmul_int8(a, p, out=np.empty((4, 3), np.int64))
    with pytest.raises(ValueError, match="out"):
        pyquant.matmul_int8(a, p, out=np.empty((4, 4), np.int32))
    with pytest.raises(ValueError, match="scale"):
        pyquant.pack_weights(w, scale=np.ones(4))        # wrong scale shape
    with pytest.raises(ValueError, match="scale"):
        pyquant.pack_weights(w, scale=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="bias"):
        pyquant.pack_weights(w, bias=np.ones((3, 1)))
    x = rng.normal(size=(4, 10)).astype(np.float32)
    x[2, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.linear_int8(x, p)                        # dynamic: found by the range pass
    with pytest.raises(ValueError, match="non-finite"):
        pyquant.linear_int8(x, p, input_scale=0.1, input_zero_point=128)  # static: found by the kernel
    x[2, 5] = 0
    with pytest.raises(ValueError, match="shape"):
        pyquant.linear_int8(x[:, :9], p)
    with pytest.raises(TypeError, match="x must be"):
        pyquant.linear_int8(x.astype(np.int32), p)
    with pytest.raises(ValueError, match="no scale"):
        pyquant.linear_int8(x, pyquant.pack_weights(w))
    with pytest.raises(ValueError, match="activation"):
        pyquant.linear_int8(x, p, activation="gelu")
    with pytest.raises(ValueError, match="output_scale"):
        pyquant.linear_int8(x, p, output_dtype="int8")
    with pytest.raises(ValueError, match="input_scale"):
        pyquant.linear_int8(x, p, input_scale=np.nan)
    with pytest.raises(ValueError, match="bias"):
        pyquant.linear_int8(x, p, bias=np.ones(5))
    with pytest.raises(TypeError):
        pyquant.linear_int8(x, w)
    with pytest.raises(ValueError, match="shift"):
        pyquant.matmul_int8_requantize(a, p, 2**30, 32)
    with pytest.raises(TypeError, match="acc"):
        pyquant.requantize_fixed_point(np.zeros(3, np.int64), 2**30, 1)


# ------------------------------------------------------------------ concurrency, pickling, ISA change --

def test_four_threads_share_one_packed_object(rng):
    a = rng.integers(0, 256, (64, 180), dtype=np.uint8)
    w = rng.integers(-128, 128, (180, 150), dtype=np.int8)
    p = pyquant.pack_weights(w)          # packed lazily: the first calls race to pack
    ref = ref_matmul(a, w, 17)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(pyquant.matmul_int8(a, p, 17))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_array_equal(r.astype(np.int64), ref)


def test_folded_bias(rng):
    a = rng.integers(0, 256, (6, 40), dtype=np.uint8)
    w = rng.integers(-128, 128, (40, 9), dtype=np.int8)
    p = pyquant.pack_weights(w)
    raw = pyquant.matmul_int8(a, p).astype(np.int64)
    np.testing.assert_array_equal(raw + p.folded_bias(77), ref_matmul(a, w, 77))
    np.testing.assert_array_equal(p.col_sums, w.astype(np.int64).sum(0))


def test_pickle_round_trip(rng):
    w = rng.integers(-128, 128, (33, 21), dtype=np.int8)
    p = pyquant.pack_weights(w, scale=rng.uniform(0.01, 0.1, 21), bias=rng.normal(size=21))
    a = rng.integers(0, 256, (5, 33), dtype=np.uint8)
    r = pyquant.matmul_int8(a, p, 3)
    q = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(q.weights, w)
    np.testing.assert_array_equal(q.scale, p.scale)
    np.testing.assert_array_equal(q.bias, p.bias)
    np.testing.assert_array_equal(pyquant.matmul_int8(a, q, 3), r)
    x = rng.normal(size=(5, 33)).astype(np.float32)
    np.testing.assert_array_equal(pyquant.linear_int8(x, q), pyquant.linear_int8(x, p))
    layer = pyquant.QuantizedLinear(rng.normal(size=(33, 7)).astype(np.float32), activation="tanh")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(layer))(x), layer(x))


def test_isa_change_repacks(rng):
    w = rng.integers(-128, 128, (45, 37), dtype=np.int8)
    a = rng.integers(0, 256, (8, 45), dtype=np.uint8)
    p = pyquant.pack_weights(w)
    ref = ref_matmul(a, w, 200)
    kernels = set()
    for name in ISAS + ISAS[::-1]:
        with pyquant.use_isa(name):
            kernels.add(p.kernel)
            assert p.info()["isa"] == name
            np.testing.assert_array_equal(pyquant.matmul_int8(a, p, 200).astype(np.int64), ref)
    assert len(kernels) == len(ISAS)
    assert isinstance(repr(p), str) and p.weights.flags.writeable is False


def test_peak_probe():
    exact, fast = _core.gemm_paths()
    if exact == 0:
        pytest.skip("scalar path has no probe")
    assert _core.gemm_peak(exact, 10000) > 1e9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(taps=st.integers(1, 6), seg=st.sampled_from([4, 8, 12, 6]), n=st.integers(1, 70), pixels=st.integers(1, 9),
       n_images=st.integers(1, 19), za=st.integers(0, 255), seed=st.integers(0, 2**32 - 1))
def test_row_tables_batch_minor_and_padding_skip(isa, taps, seg, n, pixels, n_images, za, seed):
    """A convolution's gathered rows in pixel-major order (batch_minor) with padding segments (-1, read as the
    zero point) and the per-segment weight sums that let the AVX-512 VNNI kernel skip a tile's all-padding
    segments: exactly the int64 reference of sum((a - za) * w), and the same as image-major order, on every path
    and 1-2 threads. Pixels padded in whole segments, tiles straddling pixels (image counts not a multiple of
    the tile height), segment lengths the implicit kernel takes (multiples of 4) and one it does not (6)."""
    rng = np.random.default_rng(seed)
    K = taps * seg
    w = rng.integers(-128, 128, (K, n)).astype(np.int8)
    img = rng.integers(0, 4, (pixels * taps,)) * seg
    stride = 4 * seg
    a = rng.integers(0, 256, n_images * stride).astype(np.uint8)
    table = np.where(rng.random((pixels, taps)) < 0.4, -1, img.reshape(pixels, taps)).astype(np.int64)
    table[rng.random(pixels) < 0.3] = -1  # some pixels all padding
    out_rows = (rng.permutation(pixels) * n).astype(np.int64)
    sums = w.astype(np.int32).reshape(taps, seg, n).sum(axis=1, dtype=np.int32)
    want = np.zeros((n_images, pixels, n), np.int64)
    for i in range(n_images):
        for p in range(pixels):
            row = np.concatenate([a[i * stride + o:i * stride + o + seg] if o >= 0 else np.full(seg, za, np.uint8)
                                  for o in table[p]])
            want[i, out_rows[p] // n] = (row.astype(np.int64) - za) @ w.astype(np.int64)
    pw = pyquant.pack_weights(w)
    for t in (1, 2):
        with pyquant.use_threads(t):
            for kw in (dict(batch_minor=True, a_pad_sums=sums), dict(batch_minor=False)):
                out = np.full(n_images * pixels * n, -7, np.int32)
                assert _core.gemm_run(pw._packed(), a, 0, za, 1.0, 255, None, None, 0, out, None, None, 0, 0.0, 1.0, 0,
                                      0, 0, None, None, a_rows=table, n_images=n_images, a_image_stride=stride,
                                      out_rows=out_rows, out_image_stride=pixels * n, **kw)
                np.testing.assert_array_equal(out.reshape(n_images, pixels, n), want)
    with pytest.raises(ValueError, match="batch_minor"):
        _core.gemm_run(pw._packed(), a, 0, za, 1.0, 255, None, None, 0, np.zeros((n_images * pixels, n), np.int32),
                       None, None, 0, 0.0, 1.0, 0, 0, 0, None, None, a_rows=table, n_images=n_images,
                       a_image_stride=stride, batch_minor=True)
