"""pyquant.model: the Generator, the PyTorch importer, BatchNorm folding, quantize_model / prune_model, and the
cross-ISA / cross-thread promise for whole generators (against the installed wheel).

Reference outputs come from PyTorch itself (module.eval()). Image quality of compressed models is PSNR in dB
over the tanh image range [-1, 1] (peak-to-peak 2)."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import pyquant
from pyquant.model import Activation, BatchNorm, ConvTranspose2d, Dense, Generator, QTensor, Reshape

torch = pytest.importorskip("torch")
nn = torch.nn

ALL_ISAS = pyquant.available_isas()
REL = 1e-5  # the float32 tolerance, relative to the output's magnitude


# ------------------------------------------------------------------------------------------ models --

def dcgan28(z=100):
    """The DCGAN 28x28 generator of the issue (TensorFlow tutorial architecture, PyTorch spelling)."""
    return nn.Sequential(
        nn.Linear(z, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256), nn.LeakyReLU(0.2),
        nn.Unflatten(1, (256, 7, 7)),
        nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False), nn.Tanh())


class DCGAN64(nn.Module):
    """The classic PyTorch DCGAN example generator: parameters in one Sequential child ``self.main``."""

    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, x):
        return self.main(x)


def randomize_bn(m, seed=0):
    """Realistic (non-identity) running statistics and affine parameters in every BatchNorm; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            if mod.affine:
                mod.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return m.eval()


def torch_forward(m, z):
    with torch.no_grad():
        return m.eval()(torch.from_numpy(np.ascontiguousarray(z))).numpy()


def rel_err(out, ref):
    return float(np.max(np.abs(out.astype(np.float64) - ref))) / max(float(np.max(np.abs(ref))), 1e-30)


def psnr(out, ref, peak_to_peak=2.0):
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


def latents(n, shape, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)


def masked_float_model(model):
    """The float32 model computing with exactly the weights a (pruned / quantized) model uses."""
    layers = []
    for l in model.layers:
        if isinstance(l, Dense):
            l = Dense(l.name, weight=l.dense_weight(), bias=l.bias, activation=l.activation, alpha=l.alpha)
        elif isinstance(l, ConvTranspose2d):
            l = ConvTranspose2d(l.name, weight=l.dense_weight(), bias=l.bias, stride=l.stride, padding=l.padding,
                                activation=l.activation, alpha=l.alpha)
        layers.append(l)
    return model.with_layers(layers)


@pytest.fixture(scope="module")
def t28():
    torch.manual_seed(0)
    return randomize_bn(dcgan28(), seed=1)


@pytest.fixture(scope="module")
def g28(t28):
    return pyquant.from_torch(t28)


@pytest.fixture(scope="module")
def t64():
    torch.manual_seed(1)
    return randomize_bn(DCGAN64(), seed=2)


@pytest.fixture(scope="module")
def g64(t64):
    return pyquant.from_torch(t64)


@pytest.fixture(scope="module")
def z28():
    return latents(7, (100,), seed=11)


@pytest.fixture(scope="module")
def z64():
    return latents(7, (100, 1, 1), seed=12)


@pytest.fixture(scope="module")
def compressed28(g28):
    """DCGAN28 in every compressed precision (built once)."""
    cal = g28.latents(16, seed=99)
    pruned = pyquant.prune_model(g28, 0.6)
    return {"int8_dynamic": pyquant.quantize_model(g28),
            "int8_static": pyquant.quantize_model(g28, calibration=cal),
            "sparse_float32": pruned,
            "sparse_int8": pyquant.quantize_model(pruned)}


# ------------------------------------------------------------------------------- float32 vs torch --

@pytest.mark.parametrize("batch", [1, 7])
def test_dcgan28_matches_torch(t28, g28, batch):
    z = latents(batch, (100,), seed=batch)
    ref = torch_forward(t28, z)
    out = g28(z)
    assert out.dtype == np.float32 and out.shape == (batch, 1, 28, 28) == ref.shape
    assert g28.layout == "NCHW" and g28.latent_shape == (100,) and g28.output_shape == (1, 28, 28)
    assert rel_err(out, ref) <= REL


@pytest.mark.parametrize("batch", [1, 7])
def test_dcgan64_matches_torch(t64, g64, batch):
    z = latents(batch, (100, 1, 1), seed=batch + 100)
    ref = torch_forward(t64, z)
    out = g64(z)
    assert out.dtype == np.float32 and out.shape == (batch, 3, 64, 64) == ref.shape
    assert g64.latent_shape == (100, 1, 1)
    assert rel_err(out, ref) <= REL
    # (batch, latent_dim) latents are accepted for an image-shaped latent
    np.testing.assert_array_equal(g64(z.reshape(batch, 100)), out)


def test_dcgan_batchnorm_folded_and_activation_fused(g28, g64):
    # every BatchNorm followed a weight layer: folded; every activation fused; Dropout/Unflatten are views
    for g in (g28, g64):
        assert not any(isinstance(l, (BatchNorm, Activation)) for l in g.layers), g.summary()
    assert [l.activation for l in g64.weight_layers] == ["relu"] * 4 + ["tanh"]
    assert [l.activation for l in g28.weight_layers] == ["leaky_relu"] * 3 + ["tanh"]
    assert all(l.alpha == pytest.approx(0.2) for l in g28.weight_layers[:3])
    assert all(l.precision == "float32" for l in g28.weight_layers)


def test_batchnorm_folding_equals_unfolded_model():
    torch.manual_seed(3)
    m = randomize_bn(nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(),
                                   nn.Linear(12, 4 * 3 * 3), nn.BatchNorm1d(36), nn.Unflatten(1, (4, 3, 3)),
                                   nn.ConvTranspose2d(4, 5, 3, 2, 1, output_padding=1), nn.BatchNorm2d(5),
                                   nn.Tanh()), seed=5)
    g = pyquant.from_torch(m)
    assert not any(isinstance(l, BatchNorm) for l in g.layers)
    # the same network unfolded: weight layers with the raw torch weights, BatchNorm as its own layer
    def bn(mod):
        s = (mod.weight / torch.sqrt(mod.running_var + mod.eps)).detach().numpy()
        return s, (mod.bias.detach().numpy() - mod.running_mean.numpy() * s)
    l0, b1, l3, b4, ct, b7 = m[0], m[1], m[3], m[4], m[6], m[7]
    s1, t1 = bn(b1)
    s4, t4 = bn(b4)
    s7, t7 = bn(b7)
    perm = np.arange(36).reshape(4, 3, 3).transpose(1, 2, 0).ravel()  # chw features -> hwc
    unfolded = Generator([
        Dense("l0", weight=l0.weight.detach().numpy().T, bias=l0.bias.detach().numpy()),
        BatchNorm("b1", scale=s1, shift=t1), Activation("r", activation="relu"),
        Dense("l3", weight=l3.weight.detach().numpy().T[:, perm], bias=l3.bias.detach().numpy()[perm]),
        BatchNorm("b4", scale=s4[perm], shift=t4[perm]), Reshape("u", shape=(3, 3, 4)),
        ConvTranspose2d("ct", weight=ct.weight.detach().numpy().transpose(2, 3, 0, 1), bias=ct.bias.detach().numpy(),
                        stride=(2, 2), padding=(1, 0, 1, 0)),
        BatchNorm("b7", scale=s7, shift=t7), Activation("t", activation="tanh")], (8,), "NCHW")
    z = latents(7, (8,), seed=4)
    ref = torch_forward(m, z)
    assert rel_err(unfolded(z), ref) <= REL
    assert rel_err(g(z), unfolded(z)) <= REL


def test_batchnorm_that_cannot_be_folded_runs_as_a_layer():
    # BN after an activation (not foldable into the weights before it), and BN without affine parameters
    torch.manual_seed(4)
    m = randomize_bn(nn.Sequential(nn.Linear(6, 10), nn.LeakyReLU(0.1), nn.BatchNorm1d(10),
                                   nn.Linear(10, 8), nn.BatchNorm1d(8, affine=False), nn.Sigmoid()), seed=6)
    g = pyquant.from_torch(m)
    assert sum(isinstance(l, BatchNorm) for l in g.layers) == 1
    z = latents(7, (6,))
    assert rel_err(g(z), torch_forward(m, z)) <= REL


# ----------------------------------------------------------------------- ConvTranspose2d geometry --

def convt_model(cin, cout, k, s, p, op, bias, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op, bias=bias)).eval()


def check_convt(m, cin, hw, batch=2, seed=0):
    z = latents(batch, (cin,) + tuple(hw), seed=seed)
    ref = torch_forward(m, z)
    g = pyquant.from_torch(m, latent_shape=(cin,) + tuple(hw))
    out = g(z)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert g.output_shape == ref.shape[1:]
    assert rel_err(out, ref) <= REL
    return g, z, ref


# (kernel, stride, padding, output_padding, input hw): stride > kernel, output_padding > padding, non-square,
# 1x1 input (DCGAN first layer), large padding cropping into the kernel
GRID = [
    (4, 1, 0, 0, (1, 1)),
    (4, 2, 1, 0, (3, 3)),
    (5, 2, 2, 1, (4, 4)),
    (3, 3, 0, 0, (2, 3)),
    (1, 2, 0, 1, (3, 2)),          # kernel < stride: half the outputs are bias only
    (2, 3, 0, 2, (2, 2)),          # kernel < stride, output_padding > padding
    (3, 4, 1, 3, (2, 3)),
    ((3, 2), (2, 3), (1, 0), (1, 2), (3, 2)),   # non-square everything
    ((1, 5), (3, 1), (0, 2), (2, 0), (2, 4)),
    (5, 1, 3, 0, (5, 5)),          # padding > kernel // 2: crops into the kernel
    (3, 2, 2, 1, (4, 2)),
    (7, 5, 3, 4, (1, 2)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,s,p,op,hw", GRID)
def test_convtranspose_grid_matches_torch(k, s, p, op, hw, bias):
    m = convt_model(3, 4, k, s, p, op, bias, seed=len(str((k, s, p, op, hw))))
    if bias:
        with torch.no_grad():
            m[0].bias.mul_(5)  # large biases make the bias-only phases visible
    check_convt(m, 3, hw, batch=2)


@pytest.mark.parametrize("k,s,p,op,hw", GRID)
def test_convtranspose_grid_wide_matches_torch_on_every_path(k, s, p, op, hw):
    # 16+ output channels: float32 runs the implicit-GEMM phases (panel tails at 37 columns, 5-channel segments)
    m = convt_model(5, 37, k, s, p, op, True, seed=len(str((k, s, p, op, hw))))
    with torch.no_grad():
        m[0].bias.mul_(5)
    z = latents(3, (5,) + tuple(hw), seed=3)
    ref = torch_forward(m, z)
    g = pyquant.from_torch(m, latent_shape=(5,) + tuple(hw))
    for isa in ALL_ISAS:
        with pyquant.use_isa(isa):
            out = g(z)
        assert out.shape == ref.shape
        assert rel_err(out, ref) <= REL, isa


@pytest.mark.parametrize("k,s,p,op,hw", [GRID[2], GRID[7], GRID[9], GRID[10]])
def test_convtranspose_float32_padding_skip_same_bits(k, s, p, op, hw):
    """float32 phases with rows pixel-major skip the kernel taps that are padding for a whole tile: the same
    bits as image-major rows (which skip little), on every path and 1-2 threads, for batches around the tile
    heights."""
    from pyquant import _core
    m = convt_model(5, 37, k, s, p, op, True, seed=11)
    g = pyquant.from_torch(m, latent_shape=(5,) + tuple(hw))
    layer = g.layers[0]
    for batch in (1, 5, 9, 16):
        x = np.ascontiguousarray(latents(batch, (5,) + tuple(hw), seed=batch).transpose(0, 2, 3, 1))
        B, H, W, C = x.shape
        ho, wo = layer.output_hw(H, W)
        if layer._plan(H, W)[0] != "phases":
            continue
        for isa in ALL_ISAS:
            with pyquant.use_isa(isa):
                plan, panels = layer._plan(H, W)[1], layer._f32_panels(H, W)
                outs = []
                for t, bm in ((1, False), (1, True), (2, True)):
                    y = np.full((B, ho, wo, 37), np.nan, np.float32)
                    with pyquant.use_threads(t):
                        for i, (ph, rows, a_rows, out_rows) in enumerate(plan):
                            if rows is not None:
                                _core.convf32_run(panels[i], len(rows), 37, x, a_rows, B, H * W * C, y, out_rows,
                                                  ho * wo * 37, layer.bias, 0, 0.0, batch_minor=bm)
                    outs.append(y.view(np.uint32))
                np.testing.assert_array_equal(outs[1], outs[0])
                np.testing.assert_array_equal(outs[2], outs[0])


@settings(max_examples=25, deadline=None)
@given(kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       ph=st.integers(0, 3), pw=st.integers(0, 3), oh=st.integers(0, 3), ow=st.integers(0, 3),
       h=st.integers(1, 4), w=st.integers(1, 4), cin=st.integers(1, 3), cout=st.sampled_from([1, 2, 3, 16, 33]),
       bias=st.booleans(), act=st.sampled_from(["none", "relu", "tanh", "sigmoid"]))
def test_convtranspose_hypothesis_matches_torch(kh, kw, sh, sw, ph, pw, oh, ow, h, w, cin, cout, bias, act):
    assume(oh < sh and ow < sw)  # PyTorch's rule
    assume((h - 1) * sh - 2 * ph + kh + oh >= 1 and (w - 1) * sw - 2 * pw + kw + ow >= 1)
    torch.manual_seed(kh * 1000 + kw * 100 + sh * 10 + sw)
    mods = [nn.ConvTranspose2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), output_padding=(oh, ow), bias=bias)]
    mods += {"none": [], "relu": [nn.ReLU()], "tanh": [nn.Tanh()], "sigmoid": [nn.Sigmoid()]}[act]
    check_convt(nn.Sequential(*mods).eval(), cin, (h, w), batch=2)


@pytest.mark.parametrize("k,s,p,op,hw", [GRID[4], GRID[6], GRID[7], GRID[10]])
def test_convtranspose_odd_geometry_compressed(k, s, p, op, hw):
    # int8 and sparse paths on phases without taps / asymmetric crops: close to the float model, bit-identical
    # across ISA paths
    m = convt_model(6, 8, k, s, p, op, True, seed=7)
    g, z, ref = check_convt(m, 6, hw, batch=3)
    scale = float(np.max(np.abs(ref)))
    variants = {"int8": pyquant.quantize_model(g),
                "int8_static": pyquant.quantize_model(g, calibration=z),
                "sparse_float32": pyquant.prune_model(g, 0.5),
                "sparse_int8": pyquant.quantize_model(pyquant.prune_model(g, 0.5))}
    for name, v in variants.items():
        out = v(z)
        want = masked_float_model(v)(z)
        assert out.shape == ref.shape
        assert np.max(np.abs(out - want)) <= 0.03 * scale, name
        per_isa = []
        for isa in ALL_ISAS:
            with pyquant.use_isa(isa):
                per_isa.append(v(z))
        for o in per_isa[1:]:
            np.testing.assert_array_equal(o, per_isa[0])


def convt_int_reference(xq, za, wq, stride, padding, out_hw):
    """Exact int64 sums of a transposed convolution: xq (B, H, W, Cin) uint8 minus its zero point za, wq
    (kh, kw, Cin, Cout) int8; padding = (top, bottom, left, right) cropped from the full output."""
    B, H, W, _ = xq.shape
    kh, kw, _, cout = wq.shape
    (sy, sx), (pt, _, pl, _), (ho, wo) = stride, padding, out_hw
    full = np.zeros((B, (H - 1) * sy + kh, (W - 1) * sx + kw, cout), np.int64)
    x = xq.astype(np.int64) - za
    for ky in range(kh):
        for kx in range(kw):
            full[:, ky:ky + (H - 1) * sy + 1:sy, kx:kx + (W - 1) * sx + 1:sx] += x @ wq[ky, kx].astype(np.int64)
    out = np.zeros((B, ho, wo, cout), np.int64)  # a negative bottom / right crop extends with zeros
    h, w = min(ho, full.shape[1] - pt), min(wo, full.shape[2] - pl)
    out[:, :h, :w] = full[:, pt:pt + h, pl:pl + w]
    return out


@pytest.mark.parametrize("cout", [19, 3])
@pytest.mark.parametrize("batch", [9, 16, 32, 37, 70])
@pytest.mark.parametrize("k,s,p,op,hw", [GRID[1], GRID[2], GRID[6], GRID[7], GRID[9], GRID[10], (5, 1, 2, 0, (3, 4)),
                                         (5, 2, 2, 1, (7, 9))])
def test_sparse_int8_convtranspose_direct_form_exact(k, s, p, op, hw, batch, cout, monkeypatch):
    """A sparse int8 transposed convolution in the direct form (no tap-product array; forced here for every
    geometry), or with fewer than 16 output channels on the fused int8 GEMM + col2im: the input quantized per
    call (uint8, section 1), exact int32 sums over every tap of an output pixel, then one fused epilogue. Equal
    to the int64 reference bit for bit on every path and thread count (strips of 64 images, partial ones, bands
    of output columns below 64 images (partial bands too), phases without taps, crops into the kernel, output
    padding)."""
    import pyquant.model.layers as layers
    monkeypatch.setattr(layers, "_DIRECT_MIN_BATCH", 0)
    m = nn.Sequential(nn.ConvTranspose2d(6, cout, k, s, p, output_padding=op), nn.LeakyReLU(0.125)).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        m[0].bias.mul_(5)
    g = pyquant.quantize_model(pyquant.prune_model(pyquant.from_torch(m, latent_shape=(6,) + tuple(hw)), 0.6))
    layer = g.weight_layers[0]
    assert layer.precision == "sparse_int8" and layer._direct_fits(batch, *hw) == (cout >= 16)
    x = latents(batch, tuple(hw) + (6,), seed=batch)  # NHWC, the layer's own layout
    xq, sa, za = pyquant.quantize_dynamic(x, "uint8")
    csr = layer.csr
    kh, kw_ = layer.kernel_size
    wq = np.zeros(csr.shape, np.int64)
    np.add.at(wq, (np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)), csr.indices), csr.data)
    wq = wq.T.reshape(kh, kw_, 6, cout)
    ho, wo = layer.output_hw(*hw)
    acc = convt_int_reference(xq, int(za), wq, layer.stride, layer.padding, (ho, wo))
    lin = acc.astype(np.float32) * (np.float32(sa) * csr.row_scales) + layer.bias
    want = np.where(lin < 0, lin * np.float32(0.125), lin)
    for isa in ALL_ISAS:
        for t in (1, 2):
            with pyquant.use_isa(isa), pyquant.use_threads(t):
                np.testing.assert_array_equal(layer.forward(x), want, err_msg=f"{isa} {t} threads")
    # the whole model (NCHW in and out; one chunk up to 64 images), and close to its tap-product form at
    # small batches
    z = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if batch <= 64:
        np.testing.assert_array_equal(g(z), want.transpose(0, 3, 1, 2))
    small = np.concatenate([g(z[i:i + 5]) for i in range(0, batch, 5)])
    assert psnr(small, g(z), peak_to_peak=float(np.ptp(want))) > 35


def test_sparse_int8_direct_form_choice(g28, g64):
    """The direct form is chosen by the shapes: from 16 images, from 8 when an output pixel gathers 12+ taps
    (DCGAN 28x28's 5x5 stride-1 layer, DCGAN-64's 4x4 layer on the 1 x 1 latent); the tap-product form below; a
    last layer of 1 or 3 channels never (None: the fused int8 GEMM + col2im)."""
    for g, hws, firsts in ((g28, [(7, 7), (7, 7), (14, 14)], [8, 16, None]),
                           (g64, [(1, 1), (4, 4), (8, 8), (16, 16), (32, 32)], [8, 16, 16, 16, None])):
        convs = [l for l in pyquant.quantize_model(pyquant.prune_model(g, 0.5)).weight_layers
                 if isinstance(l, ConvTranspose2d)]
        assert len(convs) == len(hws)
        for layer, (h, w), first in zip(convs, hws, firsts):
            if first is None:
                assert not layer._direct_fits(256, h, w) and layer._plan(h, w)[0] == "col2im", layer.name
            else:
                assert layer._direct_fits(first, h, w) and not layer._direct_fits(first - 1, h, w), layer.name


# ------------------------------------------------------------------------- other layers / models --

def test_linear_only_model_and_activations():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Dropout(0.5), nn.Linear(9, 7, bias=False), nn.LeakyReLU(),
                      nn.Linear(7, 3), nn.Sigmoid(), nn.Identity()).eval()
    g = pyquant.from_torch(m)
    assert g.latent_shape == (5,) and g.output_shape == (3,)
    assert g.weight_layers[1].alpha == pytest.approx(0.01)  # torch's default slope
    for b in (1, 7):
        z = latents(b, (5,), seed=b)
        assert rel_err(g(z), torch_forward(m, z)) <= REL


def test_flatten_channels_first_then_linear():
    # ConvT -> Flatten (NCHW order!) -> Linear -> Unflatten -> ConvT: the flatten order must be PyTorch's
    torch.manual_seed(6)
    m = nn.Sequential(nn.ConvTranspose2d(4, 3, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2 * 2 * 5),
                      nn.Unflatten(1, (5, 2, 2)), nn.ConvTranspose2d(5, 2, 2, 2), nn.Tanh()).eval()
    g = pyquant.from_torch(m, latent_shape=(4, 2, 2))
    z = latents(7, (4, 2, 2))
    assert rel_err(g(z), torch_forward(m, z)) <= REL


def test_nested_sequential_and_unflatten_after_activation():
    torch.manual_seed(7)
    m = nn.Sequential(nn.Sequential(nn.Linear(10, 2 * 4 * 3), nn.LeakyReLU(0.3)), nn.Unflatten(1, (2, 4, 3)),
                      nn.Sequential(nn.ConvTranspose2d(2, 3, (2, 3), (1, 2), (0, 1)), nn.Tanh())).eval()
    g = pyquant.from_torch(m)
    z = latents(7, (10,))
    assert rel_err(g(z), torch_forward(m, z)) <= REL


def test_unflatten_spellings():
    # Unflatten(-1, ...) is the same axis as Unflatten(1, ...) on a (batch, features) input; -1 sizes are inferred
    torch.manual_seed(8)
    for unflatten in (nn.Unflatten(-1, (3, 2, 2)), nn.Unflatten(1, (-1, 2, 2)), nn.Unflatten(1, (3, 2, -1))):
        m = nn.Sequential(nn.Linear(5, 12), unflatten, nn.ConvTranspose2d(3, 2, 3, 2, 1)).eval()
        g = pyquant.from_torch(m)
        z = latents(3, (5,))
        assert rel_err(g(z), torch_forward(m, z)) <= REL
    with pytest.raises(ValueError, match="'1'"):
        pyquant.from_torch(nn.Sequential(nn.Linear(5, 12), nn.Unflatten(1, (3, 4))))
    with pytest.raises(ValueError, match="'1'"):
        pyquant.from_torch(nn.Sequential(nn.Linear(5, 12), nn.Unflatten(1, (5, 2, 2))))


def test_non_sequential_module_rejected():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(3, 4))
            self.b = nn.Sequential(nn.Linear(4, 5))
    with pytest.raises(ValueError, match="Sequential"):
        pyquant.from_torch(Two())


def _bad_padding_mode():
    m = nn.ConvTranspose2d(4, 3, 3)
    m.padding_mode = "reflect"  # torch refuses it at construction; a loaded module may still carry it
    return m


@pytest.mark.parametrize("bad,match", [
    (lambda: nn.Conv2d(4, 3, 3), "Conv2d"),
    (lambda: nn.ConvTranspose2d(4, 4, 3, groups=2), "groups"),
    (lambda: nn.ConvTranspose2d(4, 3, 3, dilation=2), "dilation"),
    (_bad_padding_mode, "padding_mode"),
    (lambda: nn.BatchNorm2d(4, track_running_stats=False), "running"),
    (lambda: nn.Upsample(scale_factor=2), "Upsample"),
    (lambda: nn.ELU(), "ELU"),
])
def test_unsupported_torch_layers_are_named(bad, match):
    m = nn.Sequential(nn.ConvTranspose2d(8, 4, 4), nn.ReLU(), bad(), nn.Tanh())
    with pytest.raises(ValueError, match=match) as e:
        pyquant.from_torch(m)
    assert "'2'" in str(e.value)  # the layer's name in the Sequential


def test_shape_mismatch_between_layers_is_clear():
    m = nn.Sequential(nn.Linear(10, 20), nn.Linear(21, 3))
    with pytest.raises(ValueError, match="'1'"):
        pyquant.from_torch(m)
    with pytest.raises(ValueError):
        pyquant.from_torch(nn.Sequential(nn.ReLU()))


def test_bad_configs():
    w = np.ones((4, 3), np.float32)
    d = lambda name="d", **k: Dense(name, weight=w, **{"bias": None, **k})
    with pytest.raises(ValueError, match="layout"):
        Generator([d()], (4,), "NCWH")
    with pytest.raises(ValueError, match="batch_size"):
        Generator([d()], (4,), "NCHW", batch_size=0)
    with pytest.raises(ValueError, match="unique"):
        Generator([d("a"), Activation("a", activation="relu")], (4,), "NCHW")
    with pytest.raises(ValueError):
        Generator([], (4,), "NCHW")
    with pytest.raises(TypeError):
        Generator([nn.Linear(4, 3)], (4,), "NCHW")
    with pytest.raises(ValueError, match="'d'"):
        Generator([d()], (5,), "NCHW")  # the Dense expects 4 inputs
    with pytest.raises(ValueError, match="latent_shape"):
        Generator([d()], (0,), "NCHW")
    with pytest.raises(ValueError):
        d(activation="gelu")
    with pytest.raises(ValueError, match="alpha"):
        d(activation="leaky_relu", alpha=float("nan"))
    with pytest.raises(ValueError, match="precision"):
        d(precision="int4")
    with pytest.raises(ValueError, match="bias"):
        d(bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="finite"):
        Dense("n", weight=np.full((2, 2), np.nan, np.float32), bias=None)
    wc = np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="stride"):
        ConvTranspose2d("c", weight=wc, bias=None, stride=(0, 1))
    with pytest.raises(ValueError, match="padding"):
        ConvTranspose2d("c", weight=wc, bias=None, padding=(-1, 0, 0, 0))
    with pytest.raises(ValueError, match="empty"):
        Generator([ConvTranspose2d("c", weight=wc, bias=None, padding=(2, 2, 0, 0))], (2, 1, 1), "NCHW")
    with pytest.raises(ValueError, match="Reshape"):
        Reshape("r", shape=(2, 3))
    g = pyquant.from_torch(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError):
        pyquant.quantize_model(g, calibration=np.zeros((3, 5), np.float32))


# -------------------------------------------------------------------------------------- latents --

@pytest.mark.parametrize("shape", [(7, 99), (7, 100, 1), (100,) * 0 + (3, 10, 10), (7, 1, 100), (0,)])
def test_wrong_latent_shape(g28, shape):
    with pytest.raises(ValueError, match="shape"):
        g28(np.zeros(shape, np.float32))


def test_wrong_latent_shape_image_latent(g64):
    for shape in [(2, 100, 2, 1), (2, 1, 1, 100), (2, 99)]:
        with pytest.raises(ValueError, match="shape"):
            g64(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_latent(g28, compressed28, bad):
    z = latents(3, (100,))
    z[1, 17] = bad
    for model in [g28] + list(compressed28.values()):
        with pytest.raises(ValueError, match="non-finite|NaN"):
            model(z)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        pyquant.quantize_model(g28, calibration=z)


def test_latent_dtypes(g28, z28):
    with pytest.raises(TypeError):
        g28(z28.astype(np.int32))
    # float64 is converted; a single latent vector is a batch of one
    np.testing.assert_array_equal(g28(z28.astype(np.float64)), g28(z28))
    np.testing.assert_array_equal(g28(z28[3]), g28(z28[3:4]))


def test_empty_batch(g28, compressed28):
    for model in [g28] + list(compressed28.values()):
        out = model(np.zeros((0, 100), np.float32))
        assert out.shape == (0, 1, 28, 28) and out.dtype == np.float32


def test_concurrent_calls_and_no_aliasing(compressed28):
    from concurrent.futures import ThreadPoolExecutor
    zs = [latents(3, (100,), seed=50 + i) for i in range(6)]
    for kind, model in compressed28.items():
        seq = [model(z) for z in zs]
        kept = [a.copy() for a in seq]
        with ThreadPoolExecutor(3) as ex:
            par = list(ex.map(model, zs))
        for a, b, c in zip(seq, par, kept):
            np.testing.assert_array_equal(b, c, err_msg=kind)
            np.testing.assert_array_equal(a, c, err_msg=kind)  # later calls did not overwrite earlier results


def test_inputs_not_modified(g28, compressed28, z28):
    z = z28.copy()
    for model in [g28] + list(compressed28.values()):
        model(z)
        np.testing.assert_array_equal(z, z28)


# ---------------------------------------------------------------------------- generate / batching --

def test_generate_deterministic(g28):
    a = g28.generate(5, seed=3)
    np.testing.assert_array_equal(a, g28.generate(5, seed=3))
    assert not np.array_equal(a, g28.generate(5, seed=4))
    assert a.shape == (5, 1, 28, 28) and a.dtype == np.float32
    np.testing.assert_array_equal(g28.latents(5, seed=3),
                                  np.random.default_rng(3).standard_normal((5, 100), dtype=np.float32))
    # generate == model(latents), whatever the generate batch size (float32: to OpenBLAS rounding)
    np.testing.assert_array_equal(g28.generate(5, seed=3, batch_size=5), g28(g28.latents(5, seed=3)))
    np.testing.assert_allclose(g28.generate(5, seed=3, batch_size=2), a, rtol=0, atol=1e-6)
    assert g28.generate(0).shape == (0, 1, 28, 28)
    with pytest.raises(ValueError):
        g28.generate(2, batch_size=0)


@pytest.mark.parametrize("kind", ["float32", "int8_static", "sparse_float32"])
def test_batch_chunking(g28, compressed28, z28, kind):
    model = g28 if kind == "float32" else compressed28[kind]
    one_call = model(z28)  # 7 <= batch_size 64: one chunk
    small = model.with_layers(model.layers)
    small.batch_size = 3
    chunked = small(z28)
    by_generate = model.generate(7, seed=5, batch_size=2), model.generate(7, seed=5, batch_size=7)
    if kind == "float32":
        # float32 layers run on numpy / OpenBLAS, whose summation order depends on the matrix sizes: chunks agree
        # to rounding only
        np.testing.assert_allclose(chunked, one_call, rtol=0, atol=1e-6)
        np.testing.assert_allclose(*by_generate, rtol=0, atol=1e-6)
    else:
        # pyquant's own kernels: each output element is computed the same way whatever the batch
        np.testing.assert_array_equal(chunked, one_call)
        np.testing.assert_array_equal(*by_generate)
    # each chunk is written to its own place
    np.testing.assert_allclose(chunked[3:6], model(z28[3:6]), rtol=0, atol=1e-6)


def test_summary_and_layers(g28, g64, compressed28):
    text = g28.summary()
    for l in g28.layers:
        assert l.name in text
    assert "(1, 28, 28)" in text and "float32" in text and "NCHW" in text
    assert g64.summary().count("conv_transpose2d") == 5
    assert "sparse_int8" in compressed28["sparse_int8"].summary()
    sp = compressed28["sparse_float32"]
    rows = {line.split()[0]: line for line in sp.summary().splitlines()}
    for l in sp.weight_layers:
        assert "sparse_float32" in rows[l.name] and f"{l.sparsity:.1%}" in rows[l.name]
    assert "int8" in repr(compressed28["int8_dynamic"])


# ------------------------------------------------------------------------------------ quantization --

def test_quantize_dynamic_psnr(t28, g28, t64, g64, z28, z64):
    for t, g, z, floor in ((t28, g28, z28, 40.0), (t64, g64, z64, 55.0)):
        q = pyquant.quantize_model(g)
        assert [l.precision for l in q.weight_layers] == ["int8"] * len(q.weight_layers)
        assert all(l.input_qparams is None for l in q.weight_layers)
        assert q._handoff == [None] * len(q.layers)
        ref = torch_forward(t, z)
        p = psnr(q(z), ref)
        # measured: ~53 dB (DCGAN28), ~67 dB (DCGAN64)
        assert floor < p < 100, p
        # the original model is untouched
        assert all(l.precision == "float32" for l in g.weight_layers)


def test_quantize_static_psnr_and_uint8_handoff(t28, g28, t64, g64, z28, z64, monkeypatch):
    for t, g, z, floor in ((t28, g28, z28, 38.0), (t64, g64, z64, 55.0)):
        q = pyquant.quantize_model(g, calibration=g.latents(16, seed=99))
        assert all(l.input_qparams is not None for l in q.weight_layers)
        p = psnr(q(z), torch_forward(t, z))
        # measured: ~48 dB (DCGAN28), ~67 dB (DCGAN64)
        assert floor < p < 100, p
        # every int8 layer but the last hands uint8 to the next (through the free reshape in DCGAN28)
        w_idx = [i for i, l in enumerate(q.layers) if l in q.weight_layers]
        for a, b in zip(w_idx, w_idx[1:]):
            assert q._handoff[a] == q.layers[b].input_qparams
        assert q._handoff[w_idx[-1]] is None
    # check the handoff really happens: the second weight layer receives a QTensor of uint8
    q = pyquant.quantize_model(g28, calibration=g28.latents(16, seed=99))
    seen = []
    layer = q.weight_layers[1]
    orig = type(layer).forward
    monkeypatch.setattr(layer, "forward", lambda x, *a, **k: (seen.append(x), orig(layer, x, *a, **k))[1])
    q(z28)
    assert isinstance(seen[0], QTensor) and seen[0].values.dtype == np.uint8
    assert (seen[0].scale, seen[0].zero_point) == layer.input_qparams


def test_sparse_int8_dense_hands_uint8_to_static_int8(g28, z28):
    # a pruned int8 Dense before static int8 layers requantizes in the sparse kernel's epilogue: the same bits as
    # a float32 output quantized by the next layer (both the ONNX rule), and the next layer gets uint8
    st = pyquant.quantize_model(g28, calibration=g28.latents(16, seed=99))
    names = [l.name for l in st.weight_layers]
    sp = pyquant.prune_model(st, 0.9, skip=names[1:])
    assert [l.precision for l in sp.weight_layers] == ["sparse_int8", "int8", "int8", "int8"]
    assert sp._handoff[0] == sp.weight_layers[1].input_qparams
    with_handoff = sp(z28)
    sp._handoff[0] = None
    try:
        assert np.array_equal(with_handoff, sp(z28))
    finally:
        sp._handoff[0] = sp.weight_layers[1].input_qparams


def test_quantize_static_differs_from_dynamic(g28, compressed28, z28):
    # calibration must matter: static parameters (from another batch) give other bits than per-call ones
    assert not np.array_equal(compressed28["int8_static"](z28), compressed28["int8_dynamic"](z28))


def test_quantize_skip(g28, z28):
    names = [l.name for l in g28.weight_layers]
    idx = [i for i, l in enumerate(g28.layers) if l in g28.weight_layers]
    q = pyquant.quantize_model(g28, skip=(names[0], idx[-1]))
    assert [l.precision for l in q.weight_layers] == ["float32", "int8", "int8", "float32"]
    q1 = pyquant.quantize_model(g28, skip=names[1])
    assert [l.precision for l in q1.weight_layers] == ["int8", "float32", "int8", "int8"]
    # skipping every weight layer gives the float model back
    q2 = pyquant.quantize_model(g28, skip=names, calibration=z28)
    np.testing.assert_array_equal(q2(z28), g28(z28))
    for bad in ("nope", 99, ("0", "missing")):
        with pytest.raises(ValueError, match="skip"):
            pyquant.quantize_model(g28, skip=bad)
    with pytest.raises(ValueError):
        pyquant.quantize_model(g28, "int4")
    with pytest.raises(TypeError):
        pyquant.quantize_model("not a model")


def test_int8_weights_symmetric_per_channel(g64):
    q = pyquant.quantize_model(g64)
    for lf, lq in zip(g64.weight_layers, q.weight_layers):
        assert lq.qweight.dtype == np.int8 and lq.qweight.min() >= -127
        assert lq.weight_scale.shape == (lf.out_features,)
        w = lf.weight.reshape(-1, lf.out_features)
        np.testing.assert_allclose(lq.weight_scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
        # every channel uses its full range
        assert np.all(np.abs(lq.qweight.reshape(-1, lf.out_features)).max(axis=0) == 127)


# ---------------------------------------------------------------------------------------- pruning --

def _nnz(layer):
    return int(layer.csr.nnz) if hasattr(layer.csr, "nnz") else int(np.asarray(layer.csr.indptr)[-1])


@pytest.mark.parametrize("s", [0.0, 0.3, 0.75, 0.9, 1.0])
def test_prune_global_counts(g28, s):
    p = pyquant.prune_model(g28, s)
    total = sum(l.in_features * l.out_features for l in g28.weight_layers)
    assert sum(_nnz(l) for l in p.weight_layers) == round((1 - s) * total)
    assert all(l.precision == "sparse_float32" for l in p.weight_layers)
    # one threshold: every kept |w| >= every dropped |w|
    kept, dropped = [], []
    for lf, lp in zip(g28.weight_layers, p.weight_layers):
        w, m = np.abs(lf.weight), np.abs(lp.dense_weight()) > 0
        kept.append(w[m])
        dropped.append(w[~m])
    kept, dropped = np.concatenate(kept), np.concatenate(dropped)
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()


@pytest.mark.parametrize("s", [0.25, 0.8])
def test_prune_layer_counts(g64, s):
    p = pyquant.prune_model(g64, s, scope="layer")
    for lf, lp in zip(g64.weight_layers, p.weight_layers):
        n = lf.in_features * lf.out_features
        assert _nnz(lp) == round((1 - s) * n)
        assert lp.sparsity == pytest.approx(1 - round((1 - s) * n) / n)
        # the kept weights are the original values
        d = lp.dense_weight()
        np.testing.assert_array_equal(d[d != 0], lf.weight[d != 0])


def test_prune_skip_and_errors(g28):
    names = [l.name for l in g28.weight_layers]
    p = pyquant.prune_model(g28, 0.5, skip=[names[-1]])
    assert [l.precision for l in p.weight_layers] == ["sparse_float32"] * 3 + ["float32"]
    np.testing.assert_array_equal(p.weight_layers[-1].weight, g28.weight_layers[-1].weight)
    with pytest.raises(ValueError, match="scope"):
        pyquant.prune_model(g28, 0.5, scope="channel")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            pyquant.prune_model(g28, bad)
    with pytest.raises(ValueError, match="skip"):
        pyquant.prune_model(g28, 0.5, skip=["nope"])
    with pytest.raises(TypeError):
        pyquant.prune_model(g28, "half")


def test_sparse_outputs_match_masked_float_model(t28, g28, compressed28, z28):
    sp = compressed28["sparse_float32"]
    masked = masked_float_model(sp)
    want = masked(z28)
    # sparse float32 equals the float model with the masked weights up to summation order
    assert rel_err(sp(z28), want) <= 1e-5
    # sparse int8: within quantization error of that model
    p = psnr(compressed28["sparse_int8"](z28), want)
    assert 38 < p < 100, p  # measured ~52 dB
    assert all(l.precision == "sparse_int8" for l in compressed28["sparse_int8"].weight_layers)
    # and pruning 60% of DCGAN28's weights visibly changes the images (the comparison above is not vacuous)
    assert psnr(want, torch_forward(t28, z28)) < 40


def test_prune_then_quantize_and_quantize_then_prune(g64, z64):
    q = pyquant.quantize_model(g64)
    qp = pyquant.prune_model(q, 0.5, scope="layer")
    assert all(l.precision == "sparse_int8" for l in qp.weight_layers)
    for lq, lp in zip(q.weight_layers, qp.weight_layers):
        np.testing.assert_array_equal(lp.csr.row_scales, lq.weight_scale)  # same scales, same int8 values
    want = masked_float_model(qp)(z64)
    assert psnr(qp(z64), want) > 50


# ------------------------------------------------------------ bit-identical across ISA and threads --

def test_sparse_int8_per_pixel_taps_match_the_batched_form(compressed28, z28):
    # one or two images: the sparse layers' tap products per input pixel, summed by col2im in another order than
    # the transposed taps of larger batches: the same values up to float32 rounding
    model = compressed28["sparse_int8"]
    batched = model(z28)
    for i0, i1 in ((0, 1), (1, 3), (6, 7)):
        np.testing.assert_allclose(model(z28[i0:i1]), batched[i0:i1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_static", "sparse_float32", "sparse_int8"])
def test_bit_identical_across_isas_and_threads(compressed28, z28, kind):
    # the whole batch, and one and two images (the sparse layers' per-pixel tap form)
    model = compressed28[kind]
    for z in (z28, z28[:1], z28[1:3]):
        base = model(z)
        assert np.all(np.isfinite(base))
        for isa in ALL_ISAS:
            with pyquant.use_isa(isa):
                np.testing.assert_array_equal(model(z), base, err_msg=f"{isa}, batch {len(z)}")
        for n in (1, 2):
            with pyquant.use_threads(n):
                np.testing.assert_array_equal(model(z), base, err_msg=f"{n} threads, batch {len(z)}")


def test_bit_identical_dcgan64_int8_static(g64, z64):
    q = pyquant.quantize_model(g64, calibration=z64)
    base = q(z64[:3])
    for isa in ALL_ISAS:
        with pyquant.use_isa(isa), pyquant.use_threads(1 if isa == "scalar" else 2):
            np.testing.assert_array_equal(q(z64[:3]), base, err_msg=isa)
