"""pyquant against ONNX (CONTRACT section 1: the ONNX QuantizeLinear rule, bit for bit).

- ``pyquant.quantize`` equals ONNX Runtime's QuantizeLinear and ``onnx.reference.ReferenceEvaluator`` on arrays
  full of exact and near .5 ties (per tensor; per axis 0, 1 and the last), int8 and uint8, odd and even zero
  points, on every ISA path.
- The activation quantization fused into ``linear_int8`` and into the int8 ``spmm`` gives the values
  ``quantize`` gives (read back through the exact int32 accumulators), and so does their requantized output.
- The QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear backend test cases of the onnx package (the
  int8 / uint8 ones) pass through pyquant's functions.

Skipped when onnx / onnxruntime are not installed (the ``test`` extra installs them).
"""
import glob
import importlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyquant
from conftest import ISAS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
ONNX_TYPE = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


# ----------------------------------------------------------------------------------- ONNX models --

_MODELS = {}


def _quantize_model(dtype: str, ndim: int, axis):
    """A QuantizeLinear model (opset 13): inputs x, y_scale, y_zero_point; per axis when axis is not None."""
    key = (dtype, ndim, axis)
    if key not in _MODELS:
        pshape = [] if axis is None else [None]
        attrs = {} if axis is None else {"axis": axis}
        node = helper.make_node("QuantizeLinear", ["x", "y_scale", "y_zero_point"], ["y"], **attrs)
        graph = helper.make_graph(
            [node], "q",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * ndim),
             helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, pshape),
             helper.make_tensor_value_info("y_zero_point", ONNX_TYPE[dtype], pshape)],
            [helper.make_tensor_value_info("y", ONNX_TYPE[dtype], [None] * ndim)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        _MODELS[key] = (sess, ReferenceEvaluator(model))
    return _MODELS[key]


def onnx_quantize(x, scale, zp, dtype, axis=None):
    """(ONNX Runtime's result, the reference evaluator's result) of QuantizeLinear."""
    sess, ref = _quantize_model(dtype, x.ndim, axis)
    feeds = {"x": np.ascontiguousarray(x, np.float32), "y_scale": np.asarray(scale, np.float32),
             "y_zero_point": np.asarray(zp, dtype)}
    with np.errstate(over="ignore", invalid="ignore"):  # the reference evaluator on saturating values
        return sess.run(None, feeds)[0], ref.run(None, feeds)[0]


# ------------------------------------------------------------------------------------ test data --

def tie_heavy(rng, shape, scale, axis=None):
    """float32 values of the given shape that sit on, or one ulp beside, .5 ties of x / scale (exact ties and
    near ties where x / scale and x * (1 / scale) round differently), plus integers, random values, huge values
    (saturation) and signed zeros. ``scale`` is per tensor, or per channel along ``axis``."""
    n = int(np.prod(shape))
    s = np.asarray(scale, np.float32)
    if axis is not None:
        bshape = [1] * len(shape)
        bshape[axis] = -1
        s = np.broadcast_to(s.reshape(bshape), shape).ravel()
    k = rng.integers(-300, 300, n).astype(np.float32)
    tie = ((k + np.float32(0.5)) * s).astype(np.float32)
    pick = rng.integers(0, 10, n)
    x = tie.copy()
    x = np.where(pick == 1, np.nextafter(tie, np.float32(np.inf)), x)
    x = np.where(pick == 2, np.nextafter(tie, np.float32(-np.inf)), x)
    x = np.where(pick == 3, (k * s).astype(np.float32), x)
    x = np.where(pick == 4, (rng.standard_normal(n).astype(np.float32) * 100 * s).astype(np.float32), x)
    x = np.where(pick == 5, np.float32(3e38) * np.sign(rng.standard_normal(n)).astype(np.float32), x)
    x = np.where(pick == 6, np.float32(-0.0), x)
    # 7-9: stay on the tie grid (the values that separate the division from the multiply by the reciprocal)
    return x.astype(np.float32).reshape(shape)


def separates_rules(x, scale, axis=None):
    """Whether x / scale and x * (1 / scale) round differently somewhere (the data is worth testing)."""
    s = np.asarray(scale, np.float32)
    if axis is not None:
        bshape = [1] * x.ndim
        bshape[axis] = -1
        s = s.reshape(bshape)
    with np.errstate(over="ignore"):
        return bool(np.any(np.rint(x / s) != np.rint(x * (np.float32(1) / s))))


def random_scale(rng, size=None):
    return np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size)).astype(np.float32)


def check_all_equal(x, scale, zp, dtype, axis=None):
    ax = None if axis is None else axis % x.ndim
    got = pyquant.quantize(x, scale, zp, dtype, axis=axis)
    want_ort, want_ref = onnx_quantize(x, scale, zp, dtype, ax)
    np.testing.assert_array_equal(got, want_ort, err_msg=f"vs onnxruntime (isa {pyquant.isa()})")
    np.testing.assert_array_equal(got, pyquant.quantize_reference(x, scale, zp, dtype, ax))
    # onnx.reference casts rint(x / scale) to int32 before it saturates, so it wraps where |x / scale| >= 2**31
    # (ONNX Runtime and the specification saturate): compare it below that only.
    s = np.asarray(scale, np.float32)
    if ax is not None:
        shape = [1] * x.ndim
        shape[ax] = -1
        s = s.reshape(shape)
    with np.errstate(over="ignore"):
        inside = np.broadcast_to(np.abs(x / s) < 2.0**31, x.shape)
    np.testing.assert_array_equal(got[inside], want_ref[inside], err_msg="vs onnx.reference")
    return got


# ---------------------------------------------------------------------------- quantize vs ONNX --

def test_issue_example_matches_onnxruntime(isa):
    x = np.full(37, 17.924828, np.float32)
    got = check_all_equal(x, np.float32(1.1564405), 34, "uint8")
    assert (got == 50).all()


@pytest.mark.parametrize("dtype,zp", [("int8", 0), ("int8", 3), ("int8", -8), ("int8", 127),
                                      ("uint8", 128), ("uint8", 131), ("uint8", 0), ("uint8", 255)])
@pytest.mark.parametrize("n", [1, 15, 64, 1000, 70001])
def test_per_tensor_matches_onnx(isa, dtype, zp, n):
    rng = np.random.default_rng(n * 1000 + zp + 500)
    for scale in (np.float32(1.1564405), np.float32(0.1), random_scale(rng)):
        x = tie_heavy(rng, (n,), scale)
        if n >= 1000 and scale in (np.float32(1.1564405), np.float32(0.1)):
            assert separates_rules(x, scale)
        check_all_equal(x, scale, zp, dtype)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape,axis", [((37, 50), 0), ((37, 50), 1), ((37, 50), -1), ((4, 9, 33), 0),
                                        ((4, 9, 33), 1), ((4, 9, 33), -1), ((2, 3, 5, 70), 1), ((2, 3, 5, 70), -1),
                                        ((130, 2), 0)])
def test_per_axis_matches_onnx(isa, dtype, shape, axis):
    rng = np.random.default_rng(sum(shape) * 7 + axis + (dtype == "int8"))
    c = shape[axis]
    scale = random_scale(rng, c)
    lo, hi = RANGES[dtype]
    zp = rng.integers(lo, hi + 1, c)
    zp[: c // 2] |= 1  # odd zero points (where adding after rounding matters) and even ones
    x = tie_heavy(rng, shape, scale, axis % len(shape))
    assert separates_rules(x, scale, axis % len(shape))
    check_all_equal(x, scale, zp.astype(dtype), dtype, axis)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8"]),
       odd=st.booleans(), ndim=st.integers(1, 3), axis_kind=st.sampled_from([None, 0, 1, -1]),
       isa_name=st.sampled_from(ISAS))
def test_hypothesis_matches_onnxruntime(seed, dtype, odd, ndim, axis_kind, isa_name):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, ndim))
    axis = None if axis_kind is None or (axis_kind == 1 and ndim < 2) else axis_kind
    lo, hi = RANGES[dtype]
    if axis is None:
        scale = random_scale(rng)
        zp = int(rng.integers(lo, hi + 1)) | int(odd)
        zp = min(zp, hi)
    else:
        c = shape[axis]
        scale = random_scale(rng, c)
        zp = np.minimum(rng.integers(lo, hi + 1, c) | int(odd), hi).astype(dtype)
    x = tie_heavy(rng, shape, scale, None if axis is None else axis % ndim)
    with pyquant.use_isa(isa_name):
        check_all_equal(x, scale, zp, dtype, axis)


# ------------------------------------------------- the fused activation quantization (GEMM, sparse) --

def _tie_activations(rng, shape, sa):
    x = tie_heavy(rng, shape, sa)
    return np.where(np.abs(x) > 1e30, np.float32(0), x).astype(np.float32)  # keep them finite for the GEMM


@pytest.mark.parametrize("input_dtype,za", [("uint8", 128), ("uint8", 131), ("uint8", 0), ("int8", 0), ("int8", -3)])
def test_linear_int8_activations_match_quantize(isa, input_dtype, za):
    rng = np.random.default_rng(za + 300)
    K = 67
    sa = np.float32(1.1564405)
    x = _tie_activations(rng, (45, K), sa)
    x[0, :5] = np.float32(17.924828)
    assert separates_rules(x, sa)
    q = pyquant.quantize(x, sa, za, input_dtype)
    np.testing.assert_array_equal(q, onnx_quantize(x, sa, za, input_dtype)[0])
    # W = [identity | random int8]: the first K accumulators ARE q - za, the others exact dot products
    w = np.concatenate([np.eye(K, dtype=np.int8), rng.integers(-127, 128, (K, 21)).astype(np.int8)], axis=1)
    pw = pyquant.pack_weights(w, scale=np.ones(w.shape[1], np.float32))
    y = pyquant.linear_int8(x, pw, input_scale=float(sa), input_zero_point=za, input_dtype=input_dtype)
    acc = (q.astype(np.int64) - za) @ w.astype(np.int64)
    assert np.abs(acc).max() < 2**24  # float32(acc) exact, float32(acc) * sa injective in acc
    np.testing.assert_array_equal(y, acc.astype(np.float32) * sa + np.float32(0))
    np.testing.assert_array_equal(pyquant.matmul_int8(q, w, za), acc.astype(np.int32))
    # the same through QuantizedLinear with static input parameters
    layer = pyquant.QuantizedLinear(np.eye(K, dtype=np.float32), input_scale=float(sa), input_zero_point=za)
    if input_dtype == "uint8":  # (QuantizedLinear takes uint8 activations) identity weights quantize to 127
        yl = layer(x)
        np.testing.assert_array_equal(yl, ((q.astype(np.int64) - za) * 127).astype(np.float32)
                                      * (sa * layer.packed.scale)[None, :] + np.float32(0))


@pytest.mark.parametrize("out_dtype,ozp", [("int8", 0), ("int8", 5), ("uint8", 128), ("uint8", 7)])
def test_linear_int8_requantized_output_matches_onnx(isa, out_dtype, ozp):
    rng = np.random.default_rng(ozp + 11)
    K, sa = 40, np.float32(0.0625)
    x = _tie_activations(rng, (33, K), sa)
    pw = pyquant.pack_weights(np.eye(K, dtype=np.int8), scale=np.ones(K, np.float32))
    yf = pyquant.linear_int8(x, pw, input_scale=float(sa), input_zero_point=128)
    for so in (np.float32(2 * sa), np.float32(1.1564405) * sa, random_scale(rng) * sa):  # ties of y / so
        yq = pyquant.linear_int8(x, pw, input_scale=float(sa), input_zero_point=128, output_dtype=out_dtype,
                                 output_scale=float(so), output_zero_point=ozp)
        np.testing.assert_array_equal(yq, pyquant.quantize(yf, so, ozp, out_dtype))
        np.testing.assert_array_equal(yq, onnx_quantize(yf, so, ozp, out_dtype)[0])


def _identity_csr(n):
    return pyquant.CSRMatrix(np.arange(n + 1, dtype=np.int32), np.arange(n, dtype=np.int32),
                             np.ones(n, np.int8), (n, n), row_scales=np.ones(n, np.float32))


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("ncols", [1, 17, 64, 130])
def test_spmm_activations_match_quantize(isa, act_dtype, ncols):
    rng = np.random.default_rng(ncols + (act_dtype == "int8"))
    n_in = 53
    # fix the dynamic range with two sentinels, then place the other values on .5 ties of its scale
    lo_v, hi_v = np.float32(-3.1), np.float32(5.3)
    p = pyquant.choose_qparams(np.array([lo_v, hi_v], np.float32), act_dtype)
    x = _tie_activations(rng, (n_in, ncols), p.scale)
    x = np.clip(x, lo_v, hi_v).astype(np.float32)
    x[0, 0], x[-1, -1] = lo_v, hi_v
    xq, sa, za = pyquant.quantize_dynamic(x, act_dtype)
    assert sa == p.scale and za == p.zero_point
    np.testing.assert_array_equal(xq, pyquant.quantize(x, sa, za, act_dtype))
    np.testing.assert_array_equal(xq, onnx_quantize(x, sa, za, act_dtype)[0])
    # identity W: each accumulator is xq - za exactly; float32(acc) * sa is injective in acc
    y = pyquant.spmm(_identity_csr(n_in), x, act_dtype=act_dtype)
    np.testing.assert_array_equal(y, (xq.astype(np.int32) - int(za)).astype(np.float32) * np.float32(sa))
    # a random int8 W (full range): exact int32 accumulators of the same quantized values
    w = rng.integers(-128, 128, (29, n_in)).astype(np.int8)
    w[rng.random(w.shape) < 0.6] = 0
    rows, cols = np.nonzero(w)
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(w, axis=1))]).astype(np.int32)
    row_scales = rng.uniform(0.01, 1, 29).astype(np.float32)
    m = pyquant.CSRMatrix(indptr, cols.astype(np.int32), w[rows, cols], w.shape, row_scales=row_scales)
    accs = w.astype(np.int64) @ (xq.astype(np.int64) - int(za))
    assert np.abs(accs).max() < 2**24
    ys = pyquant.spmm(m, x, act_dtype=act_dtype)
    np.testing.assert_array_equal(ys, accs.astype(np.float32) * (np.float32(sa) * row_scales)[:, None]
                                  + np.float32(0))
    # requantized output: y / out_scale with the same rule
    for so in (np.float32(2 * sa), np.float32(1.1564405) * np.float32(sa)):
        yq = pyquant.spmm(_identity_csr(n_in), x, act_dtype=act_dtype, out_dtype="uint8", out_scale=float(so),
                          out_zero_point=131)
        np.testing.assert_array_equal(yq, pyquant.quantize(y, so, 131, "uint8"))
        np.testing.assert_array_equal(yq, onnx_quantize(y, so, 131, "uint8")[0])


# -------------------------------------------------------------- the onnx package's backend test cases --

_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}


def _backend_cases():
    """[(name, model, inputs, outputs)] of the onnx package's backend test cases for the three operators: the
    stored test data (onnx/backend/test/data/node/test_*quantizelinear*/) when the package ships it, otherwise
    the same cases from the package's generators (onnx/backend/test/case/node/*quantizelinear.py)."""
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    cases = []
    for d in sorted(glob.glob(os.path.join(root, "test_*quantizelinear*"))):
        model = onnx.load(os.path.join(d, "model.onnx"))
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
            def read(prefix):
                files = sorted(glob.glob(os.path.join(ds, f"{prefix}_*.pb")),
                               key=lambda f: int(f.rsplit("_", 1)[1].split(".")[0]))
                return [numpy_helper.to_array(TensorProto.FromString(open(f, "rb").read())) for f in files]
            cases.append((os.path.basename(d), model, read("input"), read("output")))
    if cases:
        return cases
    import onnx.backend.test.case.node as node_cases
    for mod in ("quantizelinear", "dequantizelinear", "dynamicquantizelinear"):
        importlib.import_module(f"onnx.backend.test.case.node.{mod}")
    for c in getattr(node_cases, "_NodeTestCases", []):
        for inputs, outputs in c.data_sets or []:
            cases.append((c.name, c.model, list(inputs), list(outputs)))
    return cases


def _classify(model):
    """(op_type, attributes) of a single-node int8/uint8 model, or (None, reason) for a case pyquant does not
    cover (float8 / int4 / int16 types, blocked quantization, output_dtype, expanded function bodies)."""
    nodes = model.graph.node
    if len(nodes) != 1 or nodes[0].op_type not in _OPS:
        return None, "expanded into several nodes"
    node = nodes[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        return None, "blocked quantization"
    if attrs.get("output_dtype", 0):
        return None, "output_dtype attribute"
    types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    types.discard(TensorProto.FLOAT)
    if not types or not types <= _INT8_TYPES:
        return None, "types " + ", ".join(TensorProto.DataType.Name(t) for t in sorted(types))
    return node.op_type, attrs


_CASES = _backend_cases()


def test_backend_cases_found():
    names = {c[0] for c in _CASES}
    covered = {c[0] for c in _CASES if _classify(c[1])[0] is not None}
    assert {"test_quantizelinear", "test_quantizelinear_axis", "test_dequantizelinear",
            "test_dequantizelinear_axis", "test_dynamicquantizelinear"} <= covered, sorted(names)


@pytest.mark.parametrize("case", _CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(_CASES)])
def test_onnx_backend_case(isa, case):
    name, model, inputs, outputs = case
    op, attrs = _classify(model)
    if op is None:
        pytest.skip(f"{name}: {attrs} (pyquant quantizes to int8 / uint8 only)")
    if op == "QuantizeLinear":
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 else np.zeros_like(scale, dtype=np.uint8)
        dtype = zp.dtype.name
        axis = None if np.ndim(scale) == 0 else attrs.get("axis", 1) % x.ndim
        got = pyquant.quantize(x, scale if axis is not None else scale[()], zp if axis is not None else zp[()],
                               dtype, axis=axis)
        np.testing.assert_array_equal(got, outputs[0])
        assert got.dtype == outputs[0].dtype
    elif op == "DequantizeLinear":
        q, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 else np.zeros_like(scale, dtype=q.dtype)
        axis = None if np.ndim(scale) == 0 else attrs.get("axis", 1) % q.ndim
        got = pyquant.dequantize(q, scale if axis is not None else scale[()], zp if axis is not None else zp[()],
                                 axis=axis)
        np.testing.assert_array_equal(got, outputs[0])
    else:  # DynamicQuantizeLinear: ONNX's own scale and zero point through pyquant.quantize
        x = inputs[0]
        y, y_scale, y_zp = outputs
        np.testing.assert_array_equal(pyquant.quantize(x, y_scale[()], y_zp[()], "uint8"), y)
        # pyquant's own calibration (its documented formulas) on these inputs gives the same values here
        values, scale, zp = pyquant.quantize_dynamic(x, "uint8")
        assert scale == y_scale[()] and zp == y_zp[()], (scale, zp, y_scale, y_zp)
        np.testing.assert_array_equal(values, y)


def _dynamic_quantize_linear_session():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])
    graph = helper.make_graph(
        [node], "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None]),
         helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_dynamic_quantize_linear_parameters_through_quantize(isa):
    """ONNX Runtime's DynamicQuantizeLinear values equal pyquant.quantize with ONNX's (scale, zero point).
    pyquant's own calibration (scale in float64 rounded once to float32, zero point from float64 lo / scale)
    is not ONNX's float32 arithmetic: ONNX's scale is often one ulp away, and where -min / scale is a .5 tie
    mathematically the zero points can differ by one (here: min = -k, max = 5k)."""
    sess = _dynamic_quantize_linear_session()
    rng = np.random.default_rng(99)
    zp_differs = 0
    for i in range(300):
        n = int(rng.integers(2, 300))
        if i % 3 == 0:
            x = (rng.standard_normal(n) * np.exp(rng.uniform(-4, 4))).astype(np.float32)
        elif i % 3 == 1:
            x = rng.uniform(-1, 4, n).astype(np.float32)
        else:  # range [-k, 5k]: -min / scale = 42.5 exactly in real arithmetic
            f = np.float32(rng.uniform(0.001, 1))
            x = (rng.integers(-50, 251, n).astype(np.float32) * f).astype(np.float32)
            x[0], x[-1] = np.float32(-50) * f, np.float32(250) * f
        y, s, z = sess.run(None, {"x": x})
        np.testing.assert_array_equal(pyquant.quantize(x, s[()], z[()], "uint8"), y)
        _, ps, pz = pyquant.quantize_dynamic(x, "uint8")
        assert abs(int(pz) - int(z)) <= 1
        assert abs(float(ps) - float(s)) <= 2 * float(np.spacing(np.float32(s)))
        zp_differs += int(pz) != int(z)
    assert zp_differs < 100  # only on (near) ties
