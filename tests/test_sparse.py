"""Pruning, CSRMatrix and sparse x dense matmul (CONTRACT sections 3 and 4), against the installed wheel.

float32 SpMM is checked BIT FOR BIT against a numpy float32 reference that adds the products of each row in
CSR storage order (separate multiply and add, which is what every pyquant path promises), and closely against
float64 scipy / numpy; int8 SpMM exactly against an int64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pyquant
from pyquant import CSRMatrix

SETTINGS = settings(max_examples=40, deadline=None)
ISAS = pyquant.available_isas()


# ------------------------------------------------------------------------------------------ helpers --

def random_csr(rng, nrows, ncols, density, dtype=np.float32, empty_rows=(), unsorted=False, dups=0):
    """indptr/indices/data of a random CSR matrix (optionally unsorted or with duplicate entries)."""
    indptr, indices = [0], []
    for r in range(nrows):
        cols = np.flatnonzero(rng.random(ncols) < density) if r not in empty_rows and ncols else np.array([], int)
        if dups and cols.size:
            cols = np.concatenate([cols, rng.choice(cols, size=dups)])
        if unsorted:
            cols = rng.permutation(cols)
        indices.extend(cols.tolist())
        indptr.append(len(indices))
    nnz = len(indices)
    if dtype == np.int8:
        data = rng.integers(-128, 128, nnz).astype(np.int8)
    else:
        data = rng.standard_normal(nnz).astype(np.float32)
    return np.array(indptr, np.int64), np.array(indices, np.int32), data


def ref_f32(m: CSRMatrix, x: np.ndarray) -> np.ndarray:
    """float32 reference: y[r] = ((0 + w0*x[i0]) + w1*x[i1]) + ... in storage order, one op at a time."""
    nrows = m.shape[0]
    y = np.zeros((nrows, x.shape[1]), np.float32)
    lengths = np.diff(m.indptr)
    for pos in range(int(lengths.max()) if nrows else 0):
        rows = np.flatnonzero(lengths > pos)
        k = m.indptr[rows] + pos
        prod = m.data[k][:, None] * x[m.indices[k]]
        y[rows] = y[rows] + prod
    return y


def ref_acc_s8(m: CSRMatrix, xq: np.ndarray, zp: int) -> np.ndarray:
    """int64 sum_k w[k] * (xq[idx[k]] - zp)."""
    w = np.zeros(m.shape, np.int64)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    np.add.at(w, (rows, m.indices), m.data.astype(np.int64))
    return w @ (xq.astype(np.int64) - zp)


def run(fn, isa=None, threads=None):
    with pyquant.use_isa(isa or pyquant.isa()), pyquant.use_threads(threads or pyquant.get_num_threads()):
        return fn()


# ------------------------------------------------------------------------------------ float32 SpMM --

NCOLS_X = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 131]


@pytest.mark.parametrize("n", NCOLS_X)
def test_f32_bit_exact_against_storage_order_reference(isa, rng, n):
    ip, ix, d = random_csr(rng, 29, 41, 0.3, empty_rows=(0, 5, 6, 28))
    m = CSRMatrix(ip, ix, d, (29, 41))
    x = rng.standard_normal((41, n)).astype(np.float32)
    y = m @ x
    assert y.dtype == np.float32 and y.shape == (29, n)
    np.testing.assert_array_equal(y, ref_f32(m, x))
    np.testing.assert_allclose(y, m.to_dense().astype(np.float64) @ x.astype(np.float64), rtol=1e-5, atol=1e-5)
    assert not y[[0, 5, 6, 28]].any()


def test_f32_against_scipy(rng):
    sp = pytest.importorskip("scipy.sparse")
    w = sp.random(200, 300, density=0.1, format="csr", dtype=np.float32, random_state=3)
    x = rng.standard_normal((300, 77)).astype(np.float32)
    m = CSRMatrix.from_scipy(w)
    expect = w.astype(np.float64) @ x.astype(np.float64)
    for name in ISAS:
        got = run(lambda: m @ x, isa=name)
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=2e-5)


def test_f32_bit_identical_across_isas_and_threads(rng):
    ip, ix, d = random_csr(rng, 301, 257, 0.08, unsorted=True, dups=1)
    m = CSRMatrix(ip, ix, d, (301, 257))
    x = rng.standard_normal((257, 150)).astype(np.float32)
    base = run(lambda: m @ x, isa="scalar", threads=1)
    np.testing.assert_array_equal(base, ref_f32(m, x))
    for name in ISAS:
        for t in (1, 2, 3):
            np.testing.assert_array_equal(run(lambda: m @ x, isa=name, threads=t), base)


def test_reference_detects_a_one_ulp_error(rng):
    """The comparisons above can fail: a single ulp in one element is caught."""
    ip, ix, d = random_csr(rng, 8, 8, 0.5)
    m = CSRMatrix(ip, ix, d, (8, 8))
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = m @ x
    y[3, 2] = np.nextafter(y[3, 2], np.float32(np.inf))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, ref_f32(m, x))


@SETTINGS
@given(nrows=st.integers(0, 40), ncols=st.integers(0, 40), n=st.integers(0, 70),
       density=st.floats(0, 1), unsorted=st.booleans(), dups=st.integers(0, 2), seed=st.integers(0, 2**32 - 1))
def test_f32_hypothesis(nrows, ncols, n, density, unsorted, dups, seed):
    rng = np.random.default_rng(seed)
    ip, ix, d = random_csr(rng, nrows, ncols, density, unsorted=unsorted, dups=dups)
    m = CSRMatrix(ip, ix, d, (nrows, ncols))
    x = rng.standard_normal((ncols, n)).astype(np.float32)
    expect = ref_f32(m, x)
    for name in ("scalar", ISAS[-1]):
        np.testing.assert_array_equal(run(lambda: m @ x, isa=name), expect)


def test_unsorted_and_duplicates_are_summed_in_storage_order(rng):
    # row 0: columns 3, 1, 3 (duplicate, unsorted); row 1 empty; row 2: 0, 0
    ip = np.array([0, 3, 3, 5], np.int64)
    ix = np.array([3, 1, 3, 0, 0], np.int32)
    d = np.array([1.0, 2.0, 1e-8, 0.5, 0.25], np.float32)
    m = CSRMatrix(ip, ix, d, (3, 4))
    assert not m.has_canonical_format
    x = rng.standard_normal((4, 19)).astype(np.float32)
    y = m @ x
    np.testing.assert_array_equal(y, ref_f32(m, x))
    dense = np.array([[0, 2, 0, 1 + 1e-8], [0, 0, 0, 0], [0.75, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(m.to_dense(), dense)
    c = m.canonical()
    assert c.has_canonical_format and c.nnz == 3
    np.testing.assert_array_equal(c.indices, [1, 3, 0])
    np.testing.assert_allclose(c @ x, y, rtol=1e-6, atol=1e-6)


def test_empty_shapes(isa, rng):
    x = rng.standard_normal((5, 9)).astype(np.float32)
    m = CSRMatrix(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (3, 5))
    assert m.nnz == 0 and m.density == 0.0
    np.testing.assert_array_equal(m @ x, np.zeros((3, 9), np.float32))
    assert (m @ x[:, :0]).shape == (3, 0)
    z = CSRMatrix(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (0, 5))
    assert (z @ x).shape == (0, 9)
    k0 = CSRMatrix(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (3, 0))
    np.testing.assert_array_equal(k0 @ np.zeros((0, 6), np.float32), np.zeros((3, 6), np.float32))
    q = m.quantize()
    np.testing.assert_array_equal(pyquant.spmm(q, x), np.zeros((3, 9), np.float32))
    np.testing.assert_array_equal(pyquant.spmm(k0.quantize(), np.zeros((0, 6), np.float32), bias=np.ones(3)),
                                  np.ones((3, 6), np.float32))


def test_one_column_and_vector(isa, rng):
    m = CSRMatrix.from_dense(rng.standard_normal((33, 1)).astype(np.float32))
    x = rng.standard_normal((1, 45)).astype(np.float32)
    np.testing.assert_array_equal(m @ x, ref_f32(m, x))
    w = pyquant.prune_magnitude(rng.standard_normal((20, 30)).astype(np.float32), 0.7)
    mv = CSRMatrix.from_dense(w)
    v = rng.standard_normal(30).astype(np.float32)
    yv = mv @ v
    assert yv.shape == (20,)
    np.testing.assert_array_equal(yv, ref_f32(mv, v.reshape(-1, 1)).ravel())


def test_inputs_not_modified_and_out(rng):
    ip, ix, d = random_csr(rng, 12, 10, 0.4)
    m = CSRMatrix(ip, ix, d, (12, 10))
    x = rng.standard_normal((10, 20)).astype(np.float32)
    x0, ip0, ix0, d0 = x.copy(), ip.copy(), ix.copy(), d.copy()
    out = np.full((12, 20), np.nan, np.float32)
    r = pyquant.spmm(m, x, out=out)
    assert r is out
    np.testing.assert_array_equal(out, ref_f32(m, x))
    for a, b in ((x, x0), (ip, ip0), (ix, ix0), (d, d0)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        pyquant.spmm(m, x, out=np.empty((12, 20), np.float64))
    with pytest.raises(ValueError):
        pyquant.spmm(m, x, out=np.empty((12, 21), np.float32))
    with pytest.raises(ValueError):
        pyquant.spmm(m, x, out=np.empty((20, 12), np.float32).T)
    ro = np.empty((12, 20), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        pyquant.spmm(m, x, out=ro)
    xx = np.zeros((12, 20), np.float32)
    sq = CSRMatrix.from_dense(np.eye(12, dtype=np.float32)[:, :12])
    with pytest.raises(ValueError):
        pyquant.spmm(sq, xx, out=xx)
    with pytest.raises(TypeError):
        pyquant.spmm(m, x, out=[[0.0]])
    # int8 W: the bias is an input too (the kernels read bias[r] while other rows are being written)
    q = m.quantize()
    buf = np.zeros((12, 20), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        pyquant.spmm(q, x, bias=buf.ravel()[:12], out=buf)
    assert np.all(buf == 0)


def test_matmul_operator_forms(rng):
    """W @ X only: X @ W and W @ W are a clear TypeError, not a numpy object-array error."""
    m = CSRMatrix.from_dense(pyquant.prune_magnitude(rng.standard_normal((6, 5)).astype(np.float32), 0.5))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(m @ x, ref_f32(m, x))
    with pytest.raises(TypeError, match="W @ X"):
        x.T[:, :6] @ m
    with pytest.raises(TypeError):
        m @ m


def test_x_checks(rng):
    m = CSRMatrix.from_dense(rng.standard_normal((4, 6)).astype(np.float32))
    with pytest.raises(ValueError):
        m @ np.zeros((5, 3), np.float32)
    with pytest.raises(TypeError):
        m @ np.zeros((6, 3), np.int32)
    with pytest.raises(ValueError):
        m @ np.zeros((6, 3, 2), np.float32)
    with pytest.raises(TypeError):
        pyquant.spmm(np.zeros((4, 6), np.float32), np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError):  # epilogue arguments need int8 W
        pyquant.spmm(m, np.zeros((6, 3), np.float32), activation="relu")
    # float64 and strided x are converted
    x = rng.standard_normal((6, 8))
    np.testing.assert_array_equal(m @ x[:, ::2], m @ np.ascontiguousarray(x[:, ::2], np.float32))


# ----------------------------------------------------------------------------------- CSR validation --

def _valid():
    return (np.array([0, 2, 3], np.int64), np.array([0, 2, 1], np.int32), np.array([1, 2, 3], np.float32), (2, 3))


MALFORMED = {
    "indptr too short": lambda p, i, d, s: (p[:-1], i, d, s),
    "indptr too long": lambda p, i, d, s: (np.append(p, 3), i, d, s),
    "indptr not starting at 0": lambda p, i, d, s: (p + 1, i, d, s),
    "indptr decreasing": lambda p, i, d, s: (np.array([0, 3, 2, 3]), i, d, (3, 3)),
    "indptr not ending at nnz": lambda p, i, d, s: (np.array([0, 2, 2], np.int64), i, d, s),
    "indptr beyond nnz": lambda p, i, d, s: (np.array([0, 2, 4], np.int64), i, d, s),
    "index too large": lambda p, i, d, s: (p, np.array([0, 3, 1], np.int32), d, s),
    "index huge": lambda p, i, d, s: (p, np.array([0, 2**31 - 1, 1], np.int32), d, s),
    "index negative": lambda p, i, d, s: (p, np.array([0, -1, 1], np.int32), d, s),
    "index negative int64": lambda p, i, d, s: (p, np.array([0, -2**40, 1], np.int64), d, s),
    "indices shorter than data": lambda p, i, d, s: (p, i[:2], d, s),
    "data shorter": lambda p, i, d, s: (p, i, d[:2], s),
    "2-D indptr": lambda p, i, d, s: (p.reshape(1, -1), i, d, s),
    "negative shape": lambda p, i, d, s: (p, i, d, (2, -3)),
    "non-finite data": lambda p, i, d, s: (p, i, np.array([1, np.nan, 3], np.float32), s),
}
WRONG_TYPES = {
    "float indptr": lambda p, i, d, s: (p.astype(np.float64), i, d, s),
    "uint64 indptr": lambda p, i, d, s: (p.astype(np.uint64), i, d, s),
    "int16 indices": lambda p, i, d, s: (p, i.astype(np.int16), d, s),
    "float64 data": lambda p, i, d, s: (p, i, d.astype(np.float64), s),
    "int32 data": lambda p, i, d, s: (p, i, d.astype(np.int32), s),
    "shape of floats": lambda p, i, d, s: (p, i, d, (2.0, 3.0)),
    "shape of 3": lambda p, i, d, s: (p, i, d, (2, 3, 1)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_csr_is_value_error(case):
    with pytest.raises(ValueError):
        CSRMatrix(*MALFORMED[case](*_valid()))


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_dtypes_are_type_error(case):
    with pytest.raises(TypeError):
        CSRMatrix(*WRONG_TYPES[case](*_valid()))


def test_valid_variants_accepted():
    p, i, d, s = _valid()
    for ip, ix in ((p.astype(np.int32), i), (p, i.astype(np.int64)), (list(p), list(i))):
        m = CSRMatrix(ip, ix, d, s)
        np.testing.assert_array_equal(m.to_dense(), [[1, 0, 2], [0, 3, 0]])
    q = CSRMatrix(p, i, d.astype(np.int8), s)  # int8 without row_scales: the values as they are (scale 1)
    assert q.row_scales.dtype == np.float32 and np.all(q.row_scales == 1)
    np.testing.assert_array_equal(q.to_dense(), [[1, 0, 2], [0, 3, 0]])
    with pytest.raises(ValueError):
        CSRMatrix(p, i, d.astype(np.int8), s, row_scales=np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        CSRMatrix(p, i, d.astype(np.int8), s, row_scales=np.ones(3))
    with pytest.raises(ValueError):
        CSRMatrix(p, i, d, s, row_scales=np.ones(2))


def test_arrays_are_immutable_copies(rng):
    p, i, d, s = _valid()
    m = CSRMatrix(p, i, d, s)
    i[1] = 99  # the caller's array changes: the matrix does not
    assert m.indices[1] == 2
    for a in (m.indices, m.indptr, m.data):
        with pytest.raises(ValueError):
            a[0] = 1
        with pytest.raises(ValueError):  # cannot be made writeable again
            a.flags.writeable = True
    q = m.quantize()
    with pytest.raises(ValueError):
        q.row_scales.flags.writeable = True


@pytest.mark.parametrize("validated", [False, True])
def test_native_core_checks_structure_it_did_not_validate(validated):
    """The private _core entry points re-check any CSR arrays that are not pyquant's immutable copies."""
    from pyquant import _core
    x = np.ones((3, 4), np.float32)
    bad_cases = [(np.array([0, 2, 3]), np.array([0, 3, 1], np.int32)),
                 (np.array([0, 2, 3]), np.array([0, -1, 1], np.int32)),
                 (np.array([0, 3, 2]), np.array([0, 1, 1], np.int32)),
                 (np.array([0, 2, 4]), np.array([0, 1, 1], np.int32))]
    for ip, ix in bad_cases:
        for name in ISAS:
            with pyquant.use_isa(name):
                with pytest.raises(ValueError):
                    _core.spmm_f32(ip.astype(np.int64), ix, np.ones(3, np.float32), 2, 3, x, np.empty((2, 4), np.float32),
                                   validated)
                with pytest.raises(ValueError):
                    _core.spmm_s8(ip.astype(np.int64), ix, np.ones(3, np.int8), np.ones(2, np.float32), 1.0, 2, 3, x, 0,
                                  True, None, 0, 0.0, np.empty((2, 4), np.float32), 1.0, 0, -128, 127, validated, None, -1,
                                  None, False, False)


def test_size_report():
    w = np.zeros((10, 20), np.float32)
    w[2, 3] = 1.0
    w[7, 0] = -2.0
    m = CSRMatrix.from_dense(w)
    assert m.nnz == 2 and m.density == pytest.approx(0.01)
    assert m.nbytes == 2 * 4 + 2 * 4 + 11 * 8
    assert m.dense_nbytes == 800
    info = m.info()
    assert info["nnz"] == 2 and info["sparsity"] == pytest.approx(0.99) and info["nbytes"] == m.nbytes
    q = m.quantize()
    assert q.nbytes == 2 * 1 + 2 * 4 + 11 * 8 + 10 * 4
    assert "nnz=2" in repr(m)


def test_scipy_round_trip(rng):
    sp = pytest.importorskip("scipy.sparse")
    w = sp.random(30, 40, density=0.2, format="csr", dtype=np.float32, random_state=7)
    m = CSRMatrix.from_scipy(w)
    np.testing.assert_array_equal(m.to_dense(), w.toarray())
    back = m.to_scipy()
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.toarray(), w.toarray())
    np.testing.assert_array_equal(CSRMatrix.from_scipy(w.tocoo()).to_dense(), w.toarray())
    q = CSRMatrix.from_scipy(w, dtype="int8")
    assert q.dtype == np.int8
    np.testing.assert_allclose(q.to_scipy().toarray(), w.toarray(), atol=np.abs(w.toarray()).max() / 127)


# -------------------------------------------------------------------------------------- int8 SpMM --

def test_from_dense_int8_is_symmetric_per_row(rng):
    w = rng.standard_normal((6, 9)).astype(np.float32)
    w[w < 0.3] = 0
    w[4] = 0
    q = CSRMatrix.from_dense(w, dtype="int8")
    assert q.dtype == np.int8 and q.row_scales.dtype == np.float32
    amax = np.abs(w).max(axis=1)
    expect_scale = np.where(amax > 0, amax.astype(np.float64) / 127, 1.0).astype(np.float32)
    np.testing.assert_array_equal(q.row_scales, expect_scale)
    dense_q = pyquant.quantize_reference(w, expect_scale, 0, "int8", axis=0, narrow_range=True)
    rows = np.repeat(np.arange(6), np.diff(q.indptr))
    np.testing.assert_array_equal(q.data, dense_q[rows, q.indices])
    assert np.abs(q.data).max() == 127
    np.testing.assert_allclose(q.to_dense(), w, atol=float(amax.max()) / 254 + 1e-7)


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 130])
def test_s8_exact(isa, rng, act_dtype, n):
    ip, ix, d = random_csr(rng, 23, 37, 0.35, dtype=np.int8, empty_rows=(3,), unsorted=True, dups=1)
    scales = (rng.random(23) + 0.01).astype(np.float32)
    m = CSRMatrix(ip, ix, d, (23, 37), row_scales=scales)  # full [-128, 127] weights
    x = (rng.standard_normal((37, n)) * 3 + 1).astype(np.float32)
    xq, sa, za = pyquant.quantize_dynamic(x, act_dtype)
    acc = ref_acc_s8(m, xq, int(za))
    assert np.abs(acc).max() < 2**24  # so float32(acc) below is exact and the comparison is exact
    scale = (np.float32(sa) * scales).astype(np.float32)
    bias = rng.standard_normal(23).astype(np.float32)
    y = pyquant.spmm(m, x, act_dtype=act_dtype)
    np.testing.assert_array_equal(y, acc.astype(np.float32) * scale[:, None] + np.float32(0))
    yb = pyquant.spmm(m, x, bias=bias, activation="leaky_relu", alpha=0.125, act_dtype=act_dtype)
    lin = acc.astype(np.float32) * scale[:, None] + bias[:, None]
    np.testing.assert_array_equal(yb, np.where(lin < 0, lin * np.float32(0.125), lin))
    for odt, (qmin, qmax), ozp in (("int8", (-128, 127), -3), ("uint8", (0, 255), 128)):
        yq = pyquant.spmm(m, x, bias=bias, activation="relu", act_dtype=act_dtype, out_dtype=odt, out_scale=0.37,
                          out_zero_point=ozp)
        relu = np.maximum(lin, np.float32(0))
        assert yq.dtype == np.dtype(odt)
        np.testing.assert_array_equal(yq, np.clip(np.rint(relu / np.float32(0.37)) + ozp, qmin, qmax).astype(odt))


@SETTINGS
@given(nrows=st.integers(0, 45), ncols=st.integers(1, 60), n=st.integers(1, 200), mean_len=st.integers(0, 30),
       u8=st.booleans(), unsorted=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_s8_hypothesis_every_path(nrows, ncols, n, mean_len, u8, unsorted, seed):
    """Random shapes, row lengths around mean_len (<= 16 on average: the sliced ELL chunks; above: CSR rows),
    X of 1-200 columns (one to four strips, partial ones), full-range weights: every ISA path and 1-2 threads
    give exactly the int64 reference."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_len, nrows), 0, 3 * ncols)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = rng.integers(0, ncols, int(indptr[-1])).astype(np.int32)
    if not unsorted:
        for r in range(nrows):
            idx[indptr[r]:indptr[r + 1]].sort()
    m = CSRMatrix(indptr, idx, rng.integers(-128, 128, idx.size).astype(np.int8), (nrows, ncols),
                  row_scales=(rng.random(nrows) + 0.01).astype(np.float32))
    x = (rng.standard_normal((ncols, n)) * 2 + rng.standard_normal()).astype(np.float32)
    act_dtype = "uint8" if u8 else "int8"
    xq, sa, za = pyquant.quantize_dynamic(x, act_dtype)
    acc = ref_acc_s8(m, xq, int(za))
    expect = acc.astype(np.float32) * (np.float32(sa) * m.row_scales)[:, None] + np.float32(0)
    assert not acc.size or np.abs(acc).max() < 2**24  # float32(acc) exact
    for name in ISAS:
        for t in (1, 2):
            np.testing.assert_array_equal(run(lambda: pyquant.spmm(m, x, act_dtype=act_dtype), isa=name, threads=t),
                                          expect)


def test_s8_bit_identical_across_isas_threads_and_activations(rng):
    ip, ix, d = random_csr(rng, 157, 211, 0.1, dtype=np.int8)
    m = CSRMatrix(ip, ix, d, (157, 211), row_scales=(rng.random(157) * 0.01 + 1e-3).astype(np.float32))
    x = rng.standard_normal((211, 97)).astype(np.float32)
    bias = rng.standard_normal(157).astype(np.float32)
    for act in ("identity", "relu", "leaky_relu", "tanh", "sigmoid"):
        kw = dict(bias=bias, activation=act)
        base = run(lambda: pyquant.spmm(m, x, **kw), isa="scalar", threads=1)
        baseq = run(lambda: pyquant.spmm(m, x, out_dtype="uint8", out_scale=0.01, out_zero_point=7, **kw),
                    isa="scalar", threads=1)
        for name in ISAS:
            for t in (1, 2):
                np.testing.assert_array_equal(run(lambda: pyquant.spmm(m, x, **kw), isa=name, threads=t), base)
                np.testing.assert_array_equal(
                    run(lambda: pyquant.spmm(m, x, out_dtype="uint8", out_scale=0.01, out_zero_point=7, **kw),
                        isa=name, threads=t), baseq)
        if act in ("tanh", "sigmoid"):
            xq, sa, za = pyquant.quantize_dynamic(x, "uint8")
            lin = ref_acc_s8(m, xq, int(za)) * (np.float64(sa) * m.row_scales[:, None]) + bias[:, None]
            expect = np.tanh(lin) if act == "tanh" else 1 / (1 + np.exp(-lin))
            np.testing.assert_allclose(base, expect, atol=2e-6)


def test_s8_close_to_float(rng):
    w = pyquant.prune_magnitude(rng.standard_normal((64, 128)).astype(np.float32), 0.8)
    x = rng.standard_normal((128, 40)).astype(np.float32)
    m = CSRMatrix.from_dense(w)
    y = m @ x
    yq = m.quantize() @ x
    assert np.abs(yq - y).max() < 0.05 * np.abs(y).max()


def test_s8_overflow_is_value_error():
    k = 70000
    m = CSRMatrix(np.array([0, k], np.int64), np.arange(k, dtype=np.int32), np.full(k, -128, np.int8), (1, k),
                  row_scales=np.ones(1, np.float32))
    x = np.linspace(0, 1, k, dtype=np.float32).reshape(k, 1)
    with pytest.raises(ValueError, match="overflow"):
        pyquant.spmm(m, x)
    small = CSRMatrix(np.array([0, 60000], np.int64), np.arange(60000, dtype=np.int32),
                      np.full(60000, -128, np.int8), (1, 60000), row_scales=np.ones(1, np.float32))
    xq, sa, za = pyquant.quantize_dynamic(x[:60000], "uint8")
    assert pyquant.spmm(small, x[:60000])[0, 0] == np.float32(ref_acc_s8(small, xq, int(za))[0, 0]) * np.float32(sa)


def test_s8_argument_checks(rng):
    q = CSRMatrix.from_dense(rng.standard_normal((4, 6)).astype(np.float32), dtype="int8")
    x = rng.standard_normal((6, 3)).astype(np.float32)
    with pytest.raises(ValueError):
        pyquant.spmm(q, x, out_dtype="int8")  # needs out_scale
    with pytest.raises(ValueError):
        pyquant.spmm(q, x, out_dtype="int8", out_scale=0.1, out_zero_point=200)
    with pytest.raises(ValueError):
        pyquant.spmm(q, x, out_dtype="uint8", out_scale=-1.0)
    with pytest.raises(TypeError):
        pyquant.spmm(q, x, out_dtype="int16")
    with pytest.raises(ValueError):
        pyquant.spmm(q, x, activation="gelu")
    with pytest.raises(ValueError):
        pyquant.spmm(q, x, bias=np.ones(5))
    with pytest.raises(TypeError):
        pyquant.spmm(q, x, act_dtype="float16")
    with pytest.raises(ValueError):
        pyquant.spmm(q, np.full((6, 3), np.nan, np.float32))
    out = np.empty((4, 3), np.uint8)
    assert pyquant.spmm(q, x, out_dtype="uint8", out_scale=0.1, out_zero_point=100, out=out) is out
    with pytest.raises(TypeError):
        pyquant.spmm(q, x, out_dtype="int8", out_scale=0.1, out=out)


# ---------------------------------------------------------------------------------------- pruning --

@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.999, 1.0])
def test_prune_exact_count(rng, sparsity):
    w = rng.standard_normal((37, 53)).astype(np.float32)
    p, mask = pyquant.prune_magnitude(w, sparsity, return_mask=True)
    t = round((1 - sparsity) * w.size)
    assert mask.sum() == t and np.count_nonzero(p) == t
    assert p.dtype == w.dtype and p.shape == w.shape
    np.testing.assert_array_equal(p[mask], w[mask])
    if 0 < t < w.size:
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
    if sparsity == 0.0:
        np.testing.assert_array_equal(p, w)
    if sparsity == 1.0:
        assert not p.any()


def test_prune_ties_by_index():
    w = np.array([[1.0, -2.0, 2.0, 1.0], [2.0, -1.0, 0.5, -2.0]], np.float32)
    # |w| = 2 at flat 1, 2, 4, 7; keep 3 -> flat 1, 2, 4 (the smaller indices)
    _, mask = pyquant.prune_magnitude(w, 1 - 3 / 8, return_mask=True)
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 2, 4])
    ones = np.ones(10, np.float32)
    _, mask = pyquant.prune_magnitude(ones, 0.7, return_mask=True)
    np.testing.assert_array_equal(np.flatnonzero(mask), [0, 1, 2])
    # zeros count as the smallest magnitudes; the count stays exact
    z = np.array([0, 0, 3, 0], np.float32)
    _, mask = pyquant.prune_magnitude(z, 0.5, return_mask=True)
    np.testing.assert_array_equal(np.flatnonzero(mask), [0, 2])
    # per row, ties per row
    _, mask = pyquant.prune_magnitude(w, 0.5, per_row=True, return_mask=True)
    np.testing.assert_array_equal(mask, [[False, True, True, False], [True, False, False, True]])


def test_prune_per_row(rng):
    w = rng.standard_normal((16, 30)) * np.arange(1, 17)[:, None]
    p = pyquant.prune_magnitude(w, 0.8, per_row=True)
    assert (np.count_nonzero(p, axis=1) == 6).all()
    p_tensor = pyquant.prune_magnitude(w, 0.8)
    assert np.count_nonzero(p_tensor) == 96
    assert np.count_nonzero(p_tensor[0]) < 6 < np.count_nonzero(p_tensor[15])
    conv = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)  # per output channel of a conv weight
    pc = pyquant.prune_magnitude(conv, 0.5, per_row=True)
    assert (np.count_nonzero(pc.reshape(8, -1), axis=1) == 14).all()  # round(13.5) == 14 (half to even)


def test_prune_global_vs_per_tensor(rng):
    a = rng.standard_normal((20, 20)).astype(np.float32) * 10
    b = rng.standard_normal((30, 10)).astype(np.float32)
    pa, pb = pyquant.prune_global([a, b], 0.9)
    assert np.count_nonzero(pa) + np.count_nonzero(pb) == round(0.1 * 700)
    assert np.count_nonzero(pa) > np.count_nonzero(pyquant.prune_magnitude(a, 0.9))
    kept = np.concatenate([np.abs(pa[pa != 0]), np.abs(pb[pb != 0])])
    dropped = np.concatenate([np.abs(a[pa == 0]), np.abs(b[pb == 0])])
    assert kept.min() >= dropped.max()
    # ties across tensors: list order first
    (x, y), (mx, my) = pyquant.prune_global([np.ones(3), np.ones(3)], 0.5, return_masks=True)
    assert mx.all() and not my.any()
    assert pyquant.prune_global([], 0.5) == []
    pa1, = pyquant.prune_global([a], 0.9)
    np.testing.assert_array_equal(pa1, pyquant.prune_magnitude(a, 0.9))
    # prune_magnitude on several tensors (list, tuple or dict of arrays) is the same global pruning
    for several in ([a, b], (a, b)):
        qa, qb = pyquant.prune_magnitude(several, 0.9)
        np.testing.assert_array_equal(qa, pa)
        np.testing.assert_array_equal(qb, pb)
    named, masks = pyquant.prune_magnitude({"dense": a, "conv": b}, 0.9, return_mask=True)
    assert list(named) == ["dense", "conv"] and list(masks) == ["dense", "conv"]
    np.testing.assert_array_equal(named["dense"], pa)
    np.testing.assert_array_equal(masks["conv"], pb != 0)
    with pytest.raises(ValueError):
        pyquant.prune_magnitude([a, b], 0.9, per_row=True)
    # a nested list of numbers is still ONE tensor
    np.testing.assert_array_equal(pyquant.prune_magnitude([[1.0, -3.0], [2.0, 0.5]], 0.5), [[0, -3.0], [2.0, 0]])


def test_prune_n_m(rng):
    w = rng.standard_normal((8, 16)).astype(np.float32)
    p, mask = pyquant.prune_n_m(w, 2, 4, return_mask=True)
    groups = mask.reshape(8, 4, 4)
    assert (groups.sum(axis=2) == 2).all()
    g = np.abs(w).reshape(8, 4, 4)
    assert (np.where(groups, g, np.inf).min(axis=2) >= np.where(groups, -np.inf, g).max(axis=2)).all()
    t = np.array([[1, 1, 1, 1, 3, -3, 3, 0]], np.float32)
    np.testing.assert_array_equal(pyquant.prune_n_m(t, 2, 4), [[1, 1, 0, 0, 3, -3, 0, 0]])
    with pytest.raises(ValueError):
        pyquant.prune_n_m(w[:, :15], 2, 4)
    with pytest.raises(ValueError):
        pyquant.prune_n_m(w, 5, 4)


def test_prune_argument_checks(rng):
    w = rng.standard_normal((4, 4)).astype(np.float32)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            pyquant.prune_magnitude(w, bad)
    with pytest.raises(TypeError):
        pyquant.prune_magnitude(w, "0.5")
    with pytest.raises(TypeError):
        pyquant.prune_magnitude(w.astype(bool), 0.5)
    w[1, 1] = np.inf
    with pytest.raises(ValueError):
        pyquant.prune_magnitude(w, 0.5)
    with pytest.raises(TypeError):
        pyquant.prune_global(np.zeros((2, 2)), 0.5)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    x0 = x.copy()
    pyquant.prune_magnitude(x, 0.5)
    np.testing.assert_array_equal(x, x0)


def test_pruned_csr_pipeline(isa, rng):
    w = rng.standard_normal((96, 80)).astype(np.float32)
    p = pyquant.prune_magnitude(w, 0.9)
    m = CSRMatrix.from_dense(p)
    assert m.nnz == round(0.1 * w.size) and m.has_canonical_format
    x = rng.standard_normal((80, 33)).astype(np.float32)
    np.testing.assert_array_equal(m @ x, ref_f32(m, x))
    np.testing.assert_allclose(m @ x, p.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


def test_native_core_without_cached_row_stats_matches(rng):
    """The core's own row-sum / overflow pass (used for arrays pyquant did not freeze) gives the same bits."""
    from pyquant import _core
    ip, ix, d = random_csr(rng, 37, 29, 0.3, dtype=np.int8)
    scales = (rng.random(37) + 0.1).astype(np.float32)
    m = CSRMatrix(ip, ix, d, (37, 29), row_scales=scales)
    x = rng.standard_normal((29, 70)).astype(np.float32)
    for act_dtype in ("uint8", "int8"):
        expect = pyquant.spmm(m, x, act_dtype=act_dtype)
        xq, sa, za = pyquant.quantize_dynamic(x, act_dtype)
        for name in ISAS:
            with pyquant.use_isa(name):
                got = np.empty((37, 70), np.float32)
                _core.spmm_s8(ip, ix, d, scales, float(sa), 37, 29, x, int(za), act_dtype == "uint8", None, 0, 0.0, got,
                              1.0, 0, -128, 127, False, None, -1, None, False, False)
                np.testing.assert_array_equal(got, expect)


def _at_offset(a, offset_bytes):
    """A C-contiguous copy of `a` whose data starts `offset_bytes` past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset_bytes
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("n", [32, 64])
def test_f32_x_aligned_or_not(isa, rng, n):
    """X one strip wide is used in place when 64-byte aligned, packed otherwise: same bits either way."""
    ip, ix, d = random_csr(rng, 21, 50, 0.3)
    m = CSRMatrix(ip, ix, d, (21, 50))
    x = rng.standard_normal((50, n)).astype(np.float32)
    expect = ref_f32(m, x)
    for off in (0, 4, 16, 32):
        xa = _at_offset(x, off)
        assert xa.ctypes.data % 64 == off
        np.testing.assert_array_equal(m @ xa, expect)


def test_concurrent_calls_from_python_threads(rng):
    """The GIL is released in the kernels; concurrent calls give the same bits as serial ones."""
    from concurrent.futures import ThreadPoolExecutor
    ip, ix, d = random_csr(rng, 300, 200, 0.1)
    m = CSRMatrix(ip, ix, d, (300, 200))
    q = m.quantize()
    xs = [rng.standard_normal((200, 70)).astype(np.float32) for _ in range(6)]
    expect = [(m @ x, pyquant.spmm(q, x, activation="relu")) for x in xs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda x: (m @ x, pyquant.spmm(q, x, activation="relu")), xs * 3))
    for k, (a, b) in enumerate(got):
        np.testing.assert_array_equal(a, expect[k % 6][0])
        np.testing.assert_array_equal(b, expect[k % 6][1])


@pytest.mark.parametrize("n", [65, 127, 128, 129, 200, 256])
def test_f32_wide_strips(isa, rng, n):
    """W with 256..1024 columns and X wider than 64 columns takes the 128-column strips on AVX-512."""
    ip, ix, d = random_csr(rng, 37, 300, 0.05, empty_rows=(2,))
    m = CSRMatrix(ip, ix, d, (37, 300))
    x = rng.standard_normal((300, n)).astype(np.float32)
    np.testing.assert_array_equal(m @ x, ref_f32(m, x))


def _contract_params(lo, hi, qmin, qmax, symmetric=False, unsigned=False):
    """CONTRACT section 1 for one range, in plain Python: float64 arithmetic, one float32 rounding of the scale,
    the zero point rounded half to even (Python's round) and clamped."""
    tiny = float(np.finfo(np.float32).tiny)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        amax = max(-lo, hi)
        return np.float32(1.0 if amax == 0 else max(amax / 127.0, tiny)), (128 if unsigned else 0)
    span = hi - lo
    scale = np.float32(1.0 if span == 0 else max(span / (qmax - qmin), tiny))
    return scale, min(max(qmin - round(lo / float(scale)), qmin), qmax)


def test_native_params_follow_the_contract(rng):
    """The native parameter formulas (shared by quantize_dynamic, choose_qparams, the GEMM and spmm) equal the
    plain-Python contract over many ranges: ties of the zero point, tiny and huge spans, one-sided ranges."""
    from pyquant import _core
    ranges = [(-1.0, 1.0), (0.0, 0.0), (-0.0, 0.0), (0.0, 1e-30), (-1e-45, 0.0), (-3e38, 3e38), (5.0, 7.0),
              (-7.0, -5.0), (-0.5, 254.5), (-1.5, 253.5), (-2.5, 252.5), (-127.5, 127.5)]
    ranges += [tuple(sorted(rng.standard_normal(2) * 10 ** rng.uniform(-30, 30))) for _ in range(3000)]
    for lo, hi in ranges:
        for qmin, qmax in ((0, 255), (-128, 127), (0, 127), (-127, 127)):
            for symmetric in (False, True):
                for unsigned in (False, True):
                    s, z = _core.qparams(lo, hi, qmin, qmax, symmetric, unsigned)
                    s_ref, z_ref = _contract_params(lo, hi, qmin, qmax, symmetric, unsigned)
                    assert np.float32(s) == s_ref and z == z_ref, (lo, hi, qmin, qmax, symmetric, unsigned)


def test_dynamic_params_match_quantize_dynamic(rng):
    """spmm's per-call activation parameters (one native call: min, max, formulas) are exactly the contract's
    for the array's range, and quantize_dynamic's."""
    from pyquant.quantization import _dynamic_params
    cases = [rng.standard_normal((7, 5)).astype(np.float32) * 10 ** rng.uniform(-6, 6) + rng.uniform(-3, 3)
             for _ in range(200)]
    cases += [np.zeros((3, 3), np.float32), np.full((2, 2), 5.0, np.float32), np.full((2, 2), -5.0, np.float32),
              np.array([[-1.0, 1.0]], np.float32), np.array([[0.0, 1e-30]], np.float32)]
    for x in cases:
        lo, hi = float(x.min()), float(x.max())
        for dt, qmin, qmax in (("uint8", 0, 255), ("int8", -128, 127)):
            _, s_q, z_q = pyquant.quantize_dynamic(x, dt)
            s, z = _dynamic_params(x, qmin, qmax, "test")
            s_ref, z_ref = _contract_params(lo, hi, qmin, qmax)
            assert s == s_ref == s_q and s.dtype == np.float32 and z == z_ref == int(z_q), (x, dt)
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\(1, 2\)"):
        _dynamic_params(bad, 0, 255, "test")


# ------------------------------------------------------------------- int8 short rows (sliced ELL) --

def _row_length_matrix(rng, lengths, ncols):
    """int8 CSR whose row r has exactly lengths[r] entries (unsorted columns, full-range weights)."""
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = np.concatenate([rng.choice(ncols, size=L, replace=L > ncols) for L in lengths] or [np.zeros(0, int)])
    data = rng.integers(-128, 128, int(indptr[-1])).astype(np.int8)
    scales = (rng.random(len(lengths)) + 0.01).astype(np.float32)
    return CSRMatrix(indptr, idx.astype(np.int32), data, (len(lengths), ncols), row_scales=scales)


def _s8_core(m, x, sell, act_dtype="uint8", **kw):
    """pyquant.spmm's native call for int8 W with explicit sliced ELL arrays (None: CSR rows only)."""
    from pyquant import _core
    from pyquant.quantization import _dynamic_params
    u8 = act_dtype == "uint8"
    sa, za = _dynamic_params(x, 0 if u8 else -128, 255 if u8 else 127, "test")
    sums, max_abs, _ = m._int8_row_stats()
    out = np.empty((m.shape[0], x.shape[1]), np.float32)
    _core.spmm_s8(m.indptr, m.indices, m.data, m.row_scales, float(sa), m.shape[0], m.shape[1], x, za, u8,
                  kw.get("bias"), kw.get("act", 0), 0.01, out, 1.0, 0, -128, 127, True, sums, max_abs, sell, False, False)
    return out


def test_sliced_ell_layout(rng):
    """The short-row layout holds every stored entry once (in its row's storage order, the column as the byte
    offset column * SELL_STRIDE), each chunk's rows padded with zero weights at column 0 to the same number of
    quads, rows sorted by length within windows."""
    from pyquant import sparse
    for nrows in (0, 1, 3, 4, 5, 130):
        lengths = rng.integers(0, 23, nrows)
        m = _row_length_matrix(rng, lengths, 40)
        rows, ptr, idx, data = m._int8_row_stats()[2]
        c = sparse._SELL_ROWS
        nch = -(-nrows // c)
        assert rows.shape == (nch * c,) and ptr.shape == (nch + 1,) and ptr[0] == 0 and ptr[-1] == idx.size
        assert not any(a.flags.writeable for a in (rows, ptr, idx, data))
        assert np.array_equal(np.sort(rows[:nrows]), np.arange(nrows)) and np.all(rows[nrows:] == -1)
        for w in range(0, nrows, sparse._SELL_WINDOW):  # sorted by length inside each window
            lw = lengths[rows[w:min(nrows, w + sparse._SELL_WINDOW)]]
            assert np.all(np.diff(lw) >= 0)
        for ch in range(nch):
            e0, e1 = ptr[ch], ptr[ch + 1]
            assert (e1 - e0) % (4 * c) == 0
            nq = (e1 - e0) // (4 * c)
            chunk_rows = [r for r in rows[ch * c:(ch + 1) * c] if r >= 0]
            assert nq == max(-(-lengths[r] // 4) for r in chunk_rows)
            for i in range(c):
                r = rows[ch * c + i]
                slots = (e0 + (np.arange(nq)[:, None] * c + i) * 4 + np.arange(4)).ravel()
                if r < 0:
                    assert np.all(data[slots] == 0) and np.all(idx[slots] == 0)
                    continue
                k0, k1 = m.indptr[r], m.indptr[r + 1]
                np.testing.assert_array_equal(idx[slots[:k1 - k0]], m.indices[k0:k1] * sparse._SELL_STRIDE)
                np.testing.assert_array_equal(data[slots[:k1 - k0]], m.data[k0:k1])
                assert np.all(data[slots[k1 - k0:]] == 0) and np.all(idx[slots[k1 - k0:]] == 0)


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("n", [1, 17, 64, 100, 256])
def test_s8_short_rows_exact(isa, rng, act_dtype, n):
    """Short rows through the sliced ELL chunks: every length 0..21 shuffled, a row count that is not a multiple
    of the chunk height, exact against the int64 reference and identical to the CSR kernels, on every path and
    thread count."""
    lengths = rng.permutation(np.repeat(np.arange(22), 5))[:107]
    m = _row_length_matrix(rng, lengths, 40)
    sell = m._int8_row_stats()[2]
    assert sell is not None
    x = (rng.standard_normal((40, n)) * 2 - 0.5).astype(np.float32)
    xq, sa, za = pyquant.quantize_dynamic(x, act_dtype)
    acc = ref_acc_s8(m, xq, int(za))
    assert np.abs(acc).max() < 2**24
    expect = acc.astype(np.float32) * (np.float32(sa) * m.row_scales)[:, None] + np.float32(0)
    for t in (1, 2):
        with pyquant.use_threads(t):
            np.testing.assert_array_equal(pyquant.spmm(m, x, act_dtype=act_dtype), expect)
            np.testing.assert_array_equal(_s8_core(m, x, sell, act_dtype), expect)
            np.testing.assert_array_equal(_s8_core(m, x, None, act_dtype), expect)


def test_s8_long_rows_use_csr(isa, rng):
    """More than 16 entries per row on average: no sliced ELL copy is built, results as the scalar path."""
    lengths = rng.integers(60, 140, 30)
    m = _row_length_matrix(rng, lengths, 300)
    assert m._int8_row_stats()[2] is None
    x = rng.standard_normal((300, 70)).astype(np.float32)
    base = run(lambda: pyquant.spmm(m, x, activation="relu"), isa="scalar", threads=1)
    np.testing.assert_array_equal(pyquant.spmm(m, x, activation="relu"), base)


def test_s8_malformed_sliced_ell_is_refused(isa, rng):
    """Sliced ELL arrays reach the core only from pyquant (frozen); through the private core, a frozen chunk
    structure that does not fit the matrix is a ValueError, never a crash, and writeable arrays are ignored."""
    m = _row_length_matrix(rng, rng.integers(0, 9, 50), 20)
    x = rng.standard_normal((20, 33)).astype(np.float32)
    rows, ptr, idx, data = m._int8_row_stats()[2]
    good = pyquant.spmm(m, x)
    bad_rows = rows.copy()
    bad_rows[3] = 10**12
    bad_ptr = ptr.copy()
    bad_ptr[1] += 3
    from pyquant.sparse import _frozen
    for sell in ((_frozen(bad_rows), ptr, idx, data), (rows, _frozen(bad_ptr), idx, data),
                 (rows, ptr[:-1], idx, data), (rows, ptr, idx[:-1], data), (rows, ptr)):
        with pytest.raises((ValueError, TypeError)):
            _s8_core(m, x, sell)
    np.testing.assert_array_equal(_s8_core(m, x, (bad_rows, ptr, idx, data)), good)


@pytest.mark.parametrize("lengths", [(0, 23), (17, 60)], ids=["short", "long"])
@pytest.mark.parametrize("ncols,n", [(40, 129), (40, 300), (1500, 200), (1500, 257), (300, 192)])
def test_s8_several_strips_per_task(isa, rng, ncols, n, lengths):
    """AVX-512 VNNI covers up to 4 strips of 64 columns per task (fewer when W has many columns), with sliced
    ELL chunks (short rows) or CSR rows: full and partial groups, every activation and requantized output, bit
    for bit the scalar path on 1 and 2 threads."""
    m = _row_length_matrix(rng, rng.integers(*lengths, 37), ncols)
    x = (rng.standard_normal((ncols, n)) + 0.3).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    xq, sa, za = pyquant.quantize_dynamic(x, "uint8")
    expect = ref_acc_s8(m, xq, int(za)).astype(np.float32) * (np.float32(sa) * m.row_scales)[:, None] + np.float32(0)
    np.testing.assert_array_equal(pyquant.spmm(m, x), expect)
    for kw in (dict(bias=bias, activation="sigmoid"),
               dict(bias=bias, activation="relu", out_dtype="int8", out_scale=0.05, out_zero_point=-3)):
        base = run(lambda: pyquant.spmm(m, x, **kw), isa="scalar", threads=1)
        for t in (1, 2):
            np.testing.assert_array_equal(run(lambda: pyquant.spmm(m, x, **kw), isa=isa, threads=t), base)


def test_f32_large_packed_x(isa, rng):
    """X packed into at least 2 MB of strips (huge-page buffer): same bits as the storage-order reference."""
    ip, ix, d = random_csr(rng, 19, 2100, 0.05, empty_rows=(4,))
    m = CSRMatrix(ip, ix, d, (19, 2100))
    x = rng.standard_normal((2100, 260)).astype(np.float32)
    np.testing.assert_array_equal(m @ x, ref_f32(m, x))


@SETTINGS
@given(nrows=st.integers(0, 300), ncols=st.integers(1, 120), n=st.integers(1, 300), mean_len=st.integers(0, 40),
       u8=st.booleans(), out_kind=st.sampled_from(["float32", "uint8", "int8"]), seed=st.integers(0, 2**32 - 1))
def test_s8_transposed_forms_every_path(nrows, ncols, n, mean_len, u8, out_kind, seed):
    """transposed=True (X^T in, Y^T out: tiles of Y stored transposed by each task, sliced ELL blocks of whole
    windows) and transposed="x" (X^T in) give exactly spmm's values for X, on every path and 1-2 threads: row
    counts around the window and chunk sizes, short (sliced ELL) and long (CSR) rows, one to five strips."""
    rng = np.random.default_rng(seed)
    m = _row_length_matrix(rng, np.clip(rng.poisson(mean_len, nrows), 0, 3 * ncols), ncols)
    x = (rng.standard_normal((ncols, n)) * 2 + rng.standard_normal()).astype(np.float32)
    kw = dict(act_dtype="uint8" if u8 else "int8", bias=rng.standard_normal(nrows).astype(np.float32),
              activation="leaky_relu", alpha=0.25)
    if out_kind != "float32":
        kw.update(out_dtype=out_kind, out_scale=0.07, out_zero_point=5)
    want = run(lambda: pyquant.spmm(m, x, **kw), isa="scalar", threads=1)
    xt = np.ascontiguousarray(x.T)
    for name in ISAS:
        for t in (1, 2):
            got = run(lambda: pyquant.spmm(m, xt, transposed=True, **kw), isa=name, threads=t)
            assert got.shape == (n, nrows) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want.T)
            np.testing.assert_array_equal(run(lambda: pyquant.spmm(m, xt, transposed="x", **kw), isa=name, threads=t),
                                          want)


def test_transposed_forms_float32_and_checks(rng):
    ip, ix, d = random_csr(rng, 30, 20, 0.3)
    m = CSRMatrix(ip, ix, d, (30, 20))
    x = rng.standard_normal((20, 9)).astype(np.float32)
    xt = np.ascontiguousarray(x.T)
    np.testing.assert_array_equal(pyquant.spmm(m, xt, transposed=True), pyquant.spmm(m, x).T)
    np.testing.assert_array_equal(pyquant.spmm(m, xt, transposed="x"), pyquant.spmm(m, x))
    out = np.empty((9, 30), np.float32)
    assert pyquant.spmm(m.quantize(), xt, transposed=True, out=out) is out
    with pytest.raises(ValueError, match="transposed"):
        pyquant.spmm(m, xt, transposed="y")
    with pytest.raises(ValueError, match="columns"):
        pyquant.spmm(m, x, transposed=True)  # (20, 9): 9 columns, W has 20
    with pytest.raises(ValueError, match="2-D"):
        pyquant.spmm(m, x[:, 0], transposed=True)
    with pytest.raises(ValueError):
        pyquant.spmm(m.quantize(), xt, transposed=True, out=np.empty((30, 9), np.float32))


@pytest.mark.parametrize("nrows", [1, 5, 67, 300])
def test_s8_one_column_every_epilogue(isa, rng, nrows):
    """X of one column (a batch of one) through short rows: the kernels that run the rows of several chunks as
    lanes (ragged quad counts, padding rows, blocks of whole windows) give the scalar path's bits for every
    activation and output kind, plain and transposed, on 1 and 2 threads."""
    m = _row_length_matrix(rng, rng.permutation(np.arange(nrows) % 23), 150)
    assert m._int8_row_stats()[2] is not None
    x = (rng.standard_normal((150, 1)) * 1.5 + 0.2).astype(np.float32)
    bias = rng.standard_normal(nrows).astype(np.float32)
    for act in ("identity", "relu", "leaky_relu", "tanh", "sigmoid"):
        for out in ({}, dict(out_dtype="uint8", out_scale=0.03, out_zero_point=7),
                    dict(out_dtype="int8", out_scale=0.02, out_zero_point=-4)):
            kw = dict(bias=bias, activation=act, alpha=0.3, **out)
            want = run(lambda: pyquant.spmm(m, x, **kw), isa="scalar", threads=1)
            for t in (1, 2):
                np.testing.assert_array_equal(run(lambda: pyquant.spmm(m, x, **kw), isa=isa, threads=t), want)
                np.testing.assert_array_equal(
                    run(lambda: pyquant.spmm(m, np.ascontiguousarray(x.T), transposed=True, **kw), isa=isa, threads=t),
                    want.T)
