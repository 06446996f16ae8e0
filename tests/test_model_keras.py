"""pyquant.from_keras against Keras 3's own inference forward (torch backend), against the installed wheel.

The Conv2DTranspose crop for every padding / kernel / stride / output_padding combination is checked against
Keras's real output (not against a formula)."""
import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # must precede the first keras import

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import pyquant
from pyquant.model import BatchNorm, ConvTranspose2d, Dense

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
L = keras.layers

REL = 1e-5


def latents(n, shape, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)


def keras_forward(model, z):
    return np.asarray(keras.ops.convert_to_numpy(model(z, training=False)), dtype=np.float32)


def rel_err(out, ref):
    return float(np.max(np.abs(out.astype(np.float64) - ref))) / max(float(np.max(np.abs(ref))), 1e-30)


def psnr(out, ref, peak_to_peak=2.0):
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


def randomize(model, seed=0, bias_scale=1.0):
    """Random kernels and biases (Keras initialises biases to 0, which would hide bias bugs) and realistic
    BatchNormalization statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        t = type(layer).__name__
        if t in ("Dense", "Conv2DTranspose"):
            k = layer.kernel
            fan_in = int(np.prod(k.shape)) // int(k.shape[-1 if t == "Dense" else -2])
            layer.kernel.assign((rng.standard_normal(k.shape) / np.sqrt(max(fan_in, 1))).astype(np.float32))
            if layer.use_bias:
                layer.bias.assign((rng.standard_normal(layer.bias.shape) * 0.1 * bias_scale).astype(np.float32))
        elif t == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
            layer.moving_variance.assign((rng.random(n) * 0.5 + 0.5).astype(np.float32))
            if layer.scale:
                layer.gamma.assign((rng.random(n) * 0.5 + 0.75).astype(np.float32))
            if layer.center:
                layer.beta.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
    return model


def check(model, batch=(1, 7), rel=REL, seed=0):
    g = pyquant.from_keras(model)
    assert g.layout == "NHWC"
    for b in batch:
        z = latents(b, model.input_shape[1:], seed=seed + b)
        ref = keras_forward(model, z)
        out = g(z)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        assert out.dtype == np.float32
        assert rel_err(out, ref) <= rel, rel_err(out, ref)
    return g


def dcgan28_keras():
    """The TensorFlow DCGAN tutorial generator (LeakyReLU with Keras's default slope)."""
    return keras.Sequential([
        keras.Input((100,)),
        L.Dense(7 * 7 * 256, use_bias=False), L.BatchNormalization(), L.LeakyReLU(),
        L.Reshape((7, 7, 256)),
        L.Conv2DTranspose(128, (5, 5), strides=(1, 1), padding="same", use_bias=False),
        L.BatchNormalization(), L.LeakyReLU(),
        L.Conv2DTranspose(64, (5, 5), strides=(2, 2), padding="same", use_bias=False),
        L.BatchNormalization(), L.LeakyReLU(),
        L.Conv2DTranspose(1, (5, 5), strides=(2, 2), padding="same", use_bias=False, activation="tanh"),
    ], name="dcgan28")


@pytest.fixture(scope="module")
def k28():
    keras.utils.set_random_seed(0)
    return randomize(dcgan28_keras(), seed=1)


def test_dcgan28_keras(k28):
    g = check(k28)
    assert g.latent_shape == (100,) and g.output_shape == (28, 28, 1)
    assert not any(isinstance(l, BatchNorm) for l in g.layers)  # all folded
    # Keras 3's LeakyReLU default slope is 0.3 (not PyTorch's 0.01, not keras.activations' 0.2)
    assert [l.alpha for l in g.weight_layers[:3]] == [pytest.approx(0.3)] * 3
    assert g.weight_layers[-1].activation == "tanh"


def test_dcgan28_keras_compressed(k28):
    g = pyquant.from_keras(k28)
    z = latents(7, (100,), seed=3)
    ref = keras_forward(k28, z)
    q = pyquant.quantize_model(g, calibration=g.latents(16, seed=1))
    assert psnr(q(z), ref) > 35  # measured ~45 dB
    sp = pyquant.quantize_model(pyquant.prune_model(g, 0.5, scope="layer"))
    assert psnr(sp(z), ref) > 15  # half the weights gone: a visible but bounded change
    base_sp, base_q = sp(z), q(z)
    for isa in pyquant.available_isas():
        with pyquant.use_isa(isa):
            np.testing.assert_array_equal(sp(z), base_sp)
            np.testing.assert_array_equal(q(z), base_q)
    assert q(z).shape == (7, 28, 28, 1)  # NHWC, as Keras'



def test_dcgan64_keras_functional():
    keras.utils.set_random_seed(1)
    inp = keras.Input((1, 1, 100))
    x = L.Conv2DTranspose(64, 4, strides=1, padding="valid", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    for c in (32, 16, 8):
        x = L.Conv2DTranspose(c, 4, strides=2, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
    x = L.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh")(x)
    m = randomize(keras.Model(inp, x), seed=2)
    g = check(m)
    assert g.output_shape == (64, 64, 3) and g.latent_shape == (1, 1, 100)


# -------------------------------------------------------------------------- Conv2DTranspose crops --

def convt_model(k, s, padding, output_padding, hw=(3, 4), cin=2, cout=3, activation=None, use_bias=True):
    keras.utils.set_random_seed(5)
    m = keras.Sequential([keras.Input(tuple(hw) + (cin,)),
                          L.Conv2DTranspose(cout, k, strides=s, padding=padding, output_padding=output_padding,
                                            activation=activation, use_bias=use_bias)])
    return randomize(m, seed=len(str((k, s, padding, output_padding))), bias_scale=30.0)


GRID = [(k, s, op) for k in (1, 2, 3, 4, 5) for s in (1, 2, 3) for op in [None] + list(range(s))]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("k,s,op", GRID, ids=[f"k{k}s{s}op{op}" for k, s, op in GRID])
def test_conv2d_transpose_crops_match_keras(k, s, op, padding):
    check(convt_model(k, s, padding, op), batch=(2,))


@settings(max_examples=20, deadline=None)
@given(kh=st.integers(1, 6), kw=st.integers(1, 6), sh=st.integers(1, 4), sw=st.integers(1, 4),
       padding=st.sampled_from(["same", "valid"]), use_op=st.booleans(), oh=st.integers(0, 3), ow=st.integers(0, 3),
       h=st.integers(1, 4), w=st.integers(1, 4), use_bias=st.booleans())
def test_conv2d_transpose_hypothesis(kh, kw, sh, sw, padding, use_op, oh, ow, h, w, use_bias):
    op = None
    if use_op:
        assume(oh < sh and ow < sw)
        op = (oh, ow)
    m = convt_model((kh, kw), (sh, sw), padding, op, hw=(h, w), use_bias=use_bias)
    assume(min(m.output_shape[1:3]) >= 1)
    check(m, batch=(2,))


@pytest.mark.parametrize("act,alpha", [("relu", None), ("tanh", None), ("sigmoid", None),
                                       ("leaky_relu", 0.2), ("linear", None)])
def test_activation_argument(act, alpha):
    m = convt_model(3, 2, "same", None, activation=act)
    g = check(m, batch=(3,))
    want = {"linear": "identity"}.get(act, act)
    assert g.weight_layers[0].activation == want
    if alpha is not None:
        assert g.weight_layers[0].alpha == pytest.approx(alpha)
    keras.utils.set_random_seed(2)
    d = randomize(keras.Sequential([keras.Input((6,)), L.Dense(5, activation=act)]), seed=3)
    check(d)


# ---------------------------------------------------------------------------------- other layers --

def test_dense_chain_with_standalone_layers():
    keras.utils.set_random_seed(3)
    m = randomize(keras.Sequential([
        keras.Input((12,)), L.Dense(16), L.LeakyReLU(negative_slope=0.1), L.Dropout(0.4),
        L.BatchNormalization(),  # after an activation: not foldable, runs as a layer
        L.Dense(2 * 2 * 3, activation="relu"), L.Activation("sigmoid"),  # second activation: its own layer
        L.Reshape((2, 2, 3)), L.Conv2DTranspose(2, 3, strides=2, padding="valid"),
        L.BatchNormalization(center=False, scale=False),
        L.ReLU()]), seed=4)
    g = check(m)
    assert sum(isinstance(l, BatchNorm) for l in g.layers) == 1


def test_flatten_is_channels_last():
    # Conv2DTranspose -> Flatten -> Dense: Keras flattens NHWC in (h, w, c) order
    keras.utils.set_random_seed(4)
    m = randomize(keras.Sequential([
        keras.Input((2, 3, 4)), L.Conv2DTranspose(3, 2, strides=2, activation="relu"), L.Flatten(),
        L.Dense(2 * 2 * 5), L.Reshape((2, 2, 5)), L.Conv2DTranspose(2, 3, padding="same", activation="tanh")]),
        seed=5)
    check(m)


def test_batchnorm_on_flattened_conv_output():
    # a BatchNormalization over the flattened image features is per position, not per conv channel: it must
    # not be folded into the conv's per-channel weights
    keras.utils.set_random_seed(6)
    m = randomize(keras.Sequential([
        keras.Input((2, 2, 3)), L.Conv2DTranspose(4, 2, strides=2), L.Flatten(), L.BatchNormalization(),
        L.Dense(5)]), seed=7)
    check(m)


def test_reshape_with_inferred_dimension():
    keras.utils.set_random_seed(7)
    m = randomize(keras.Sequential([keras.Input((8,)), L.Dense(4 * 4 * 2), L.Reshape((4, 4, -1)),
                                    L.Conv2DTranspose(1, 3, strides=2, padding="same"), L.Reshape((-1,))]), seed=8)
    check(m)


def test_functional_chain_and_non_chain():
    inp = keras.Input((5,))
    x = L.Dense(6, name="d1")(inp)
    y = L.Dense(6, name="d2")(inp)
    out = L.Add(name="add")([x, y])
    with pytest.raises(ValueError):
        pyquant.from_keras(keras.Model(inp, out))
    # a layer fed by the input, not by the layer before it in model.layers
    inp = keras.Input((5,))
    a = L.Dense(5, name="a")(inp)
    b = L.Dense(5, name="b")(inp)
    with pytest.raises(ValueError):
        pyquant.from_keras(keras.Model(inp, [a, b]))


@pytest.mark.parametrize("bad,match", [
    (lambda: L.Conv2D(3, 3, padding="same"), "Conv2D"),
    (lambda: L.UpSampling2D(), "UpSampling2D"),
    (lambda: L.Conv2DTranspose(3, 3, dilation_rate=2), "dilation"),
    (lambda: L.Activation("elu"), "elu"),
    (lambda: L.Conv2DTranspose(3, 3, activation="swish"), "swish|silu"),
    (lambda: L.ReLU(max_value=6.0), "max_value"),
    (lambda: L.BatchNormalization(axis=1), "axis"),
])
def test_unsupported_keras_layers_are_named(bad, match):
    layer = bad()
    m = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2DTranspose(3, 2, name="first"), layer])
    with pytest.raises(ValueError, match=match) as e:
        pyquant.from_keras(m)
    assert repr(layer.name) in str(e.value)
