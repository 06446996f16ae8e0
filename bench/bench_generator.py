"""Benchmark: whole image generators on pyquant against PyTorch and ONNX Runtime, side by side in one run.
A plain script (not collected by pytest).

    python bench/bench_generator.py [--quick] [--models dcgan64,dcgan28] [--threads 2,1] [--batches 1,16,64]
                                    [--isa native,avx2] [--json /work/bench-out/bench_generator.json]

Run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (those variables slow current OpenBLAS). The machine is
shared and noisy: every peer is measured in the same run, interleaved; read the ratios.

Models (the same weights for every library):
- dcgan64: the PyTorch DCGAN example's generator (z 100x1x1 -> 3x64x64, five ConvTranspose2d, BN, ReLU, Tanh).
- dcgan28: a DCGAN-style 28x28 generator (Linear 100 -> 7*7*256, BN1d, LeakyReLU, three ConvTranspose2d with
  output_padding=1 in the stride-2 ones, Tanh).
- digits32 (optional, only if /work/builtin/digits32_generator.pt exists): pyquant's trained built-in
  generator (pyquant/data/train_builtin.py: build_generator), the only model with trained weights.
Random weights: DCGAN init (weights N(0, 0.02), BN gamma U(0.75, 1.25), beta N(0, 0.1)); the BN running
statistics are those of real activations (512 random latents run in train mode, cumulative average), and the
last layer is rescaled so its pre-tanh output has standard deviation 1 (images spread over [-1, 1] as a trained
generator's do; tiny outputs would inflate the PSNR).

Variants (rows):
- pyquant float32, int8 dynamic (activations quantized per call), int8 static (calibrated on 256 latents
  separate from the evaluation latents; uint8 hand-off between int8 layers), mixed (int8 static with the first
  and last weight layers float32), sparse float32 / sparse int8 at 50/75/90% (every weight layer pruned to that
  sparsity by magnitude, prune_model(scope="layer"); sparse int8 = quantize_model(prune_model(m, s))).
  Weights are int8 per output channel.
- torch float32 eager (inference_mode), torch static int8 (torch.ao eager mode: QuantStub / DeQuantStub,
  ConvTranspose2d+BN and Linear+BN fused, HistogramObserver activations, per-tensor weights -- torch refuses
  per-channel weights on ConvTranspose2d -- calibrated on the same 256 latents) on engines onednn and x86
  (and fbgemm, see below), onnxruntime float32 (torch.onnx.export, CPU provider, ORT_ENABLE_ALL). torch.ao.quantization is deprecated;
  its warnings are silenced here.

Timing: for each (model, threads, batch) every variant is warmed up for >= WARMUP s, then measured in ROUNDS
interleaved rounds (A B C ... A B C ...), one sample per variant per round, a sample being enough calls for
>= SAMPLE s (or one call if slower); a pause before each sample (PAUSE_SWITCH s when the library changes, so
torch's / ORT's spinning worker threads release the cores, else PAUSE_SAME s; see Timing). images/s = batch / median
seconds per call over the rounds. A variant whose calls are slow gets fewer rounds (at most
Timing.max_variant s of timed calls per variant and (threads, batch)). The table's last row is the CPU share
this process got while measuring (other processes on the shared cores show up there).

torch's quantized ConvTranspose2d on oneDNN (engine onednn, and x86, which hands that layer to oneDNN when its
output_padding is 0) computes wrong images when in_channels != out_channels (torch 2.13): the PSNR column shows
it (< 20 dB: "wrong images!"). fbgemm runs the same per-tensor model correctly, so it is measured too; the ratio
rows and targets give both the fastest torch int8 and the fastest one with right images. Inputs are prepared outside the timed calls (numpy for pyquant and ORT,
a torch tensor for torch); outputs are each library's own (pyquant returns NCHW float32 like torch).

Quality: PSNR of each variant's images against torch float32 on the same weights and 256 evaluation latents,
over the image range [-1, 1]: 10 log10(2^2 / MSE).

Also measured: the Dense layer of dcgan28 alone (layers[0].forward, batch 64: float32, int8, sparse) and the
wall time of each layer at batch 64 (float32, int8 static, mixed: do the int8 layers keep their speed next to
float ones?).

ISA: `--isa native,avx2` (default) re-runs the script in a subprocess with PYQUANT_ISA=avx2 and
ATEN_CPU_CAPABILITY=avx2 (plus ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, OPENBLAS_CORETYPE=Haswell,
FBGEMM_ENABLE_INSTRUCTIONS=AVX2: an AVX2 CPU's code paths for oneDNN, MKL, numpy's OpenBLAS and FBGEMM, torch's
fbgemm / x86 int8 kernels, which otherwise pick their AVX-512 VNNI kernels from cpuinfo whatever ATEN says) and
merges its results. ORT is not run in the avx2 pass (MLAS has no ISA switch).

Prints markdown tables (per model: images/s at each threads x batch, PSNR, ratios), the targets of the issue
with met / missed, and writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import pyquant

import torch  # noqa: E402  (ATEN_CPU_CAPABILITY is read at import: the avx2 pass is a subprocess)
import torch.nn as nn  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

DEFAULT_JSON = "/work/bench-out/bench_generator.json"
TRAINED_DIGITS = "/work/builtin/digits32_generator.pt"
N_CALIB = 256        # calibration latents (pyquant static int8 and torch static int8)
N_EVAL = 256         # evaluation latents for PSNR (another seed)
SPARSITIES = (0.5, 0.75, 0.9)
ENGINES = ("onednn", "x86", "fbgemm")  # torch static int8 engines (fbgemm: what x86 uses for some layers)
WRONG_DB = 20.0      # a quantized model below this PSNR computes wrong images (not quantization noise)
AVX2_ENV = {"PYQUANT_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
            "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}


@dataclass
class Timing:
    """Timing parameters (seconds)."""
    warmup: float = 0.3
    sample: float = 0.2
    rounds: int = 5
    pause_switch: float = 0.3
    pause_same: float = 0.05
    max_variant: float = 4.0  # seconds of timed calls per variant and (threads, batch): slow calls get fewer rounds


# ------------------------------------------------------------------------------------------------ models --

def dcgan64(nz: int = 100, ngf: int = 64, nc: int = 3) -> nn.Sequential:
    """The PyTorch DCGAN example's generator: z (nz, 1, 1) -> (nc, 64, 64)."""
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def dcgan28(nz: int = 100) -> nn.Sequential:
    """A DCGAN-style 28x28 generator (the TensorFlow DCGAN tutorial's, in PyTorch): z (nz,) -> (1, 28, 28)."""
    return nn.Sequential(
        nn.Linear(nz, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256), nn.LeakyReLU(0.2),
        nn.Unflatten(1, (256, 7, 7)),
        nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False), nn.Tanh())


def _weight_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]


@torch.no_grad()
def realistic_random(model: nn.Sequential, latent_shape: Tuple[int, ...], seed: int = 0) -> nn.Sequential:
    """DCGAN init, BN running statistics of real activations, last layer scaled to a pre-tanh std of 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    for _ in range(8):
        model(torch.randn((64,) + latent_shape, generator=g))
    model.eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.momentum = 0.1
    last = _weight_modules(model)[-1]
    pre = nn.Sequential(*list(model.children())[:-1])  # without the final Tanh
    std = float(pre(torch.randn((256,) + latent_shape, generator=g)).std())
    last.weight.mul_(1.0 / std)
    return model


@dataclass
class ModelSpec:
    name: str
    torch_model: nn.Sequential
    latent_shape: Tuple[int, ...]
    trained: bool
    note: str = ""


def load_models(names: Sequence[str]) -> List[ModelSpec]:
    out = []
    for name in names:
        if name == "dcgan64":
            out.append(ModelSpec(name, realistic_random(dcgan64(), (100, 1, 1)), (100, 1, 1), False,
                                 "DCGAN-64 (PyTorch example), random weights, realistic BN statistics"))
        elif name == "dcgan28":
            out.append(ModelSpec(name, realistic_random(dcgan28(), (100,)), (100,), False,
                                 "DCGAN 28x28, random weights, realistic BN statistics"))
        elif name == "digits32":
            if not os.path.exists(TRAINED_DIGITS):
                print(f"(digits32 skipped: {TRAINED_DIGITS} does not exist)")
                continue
            from pyquant.data.train_builtin import LATENT_DIM, build_generator
            m = build_generator()
            m.load_state_dict(torch.load(TRAINED_DIGITS, map_location="cpu", weights_only=True))
            out.append(ModelSpec(name, m.eval(), (LATENT_DIM,), True, "pyquant built-in digits 32x32, trained"))
        else:
            raise SystemExit(f"unknown model {name!r} (dcgan64, dcgan28, digits32)")
    return out


# ---------------------------------------------------------------------------------------------- variants --

@dataclass
class Variant:
    """A row: ``make(threads, batch)`` returns the timed zero-argument call for that batch; ``images(z)`` the
    float32 NCHW images for a numpy latent batch (for PSNR)."""
    name: str
    family: str                      # "pyquant", "torch", "ort"
    make: Callable[[np.ndarray, int], Callable[[], object]]
    images: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[], None] = lambda: None
    note: str = ""


def pyquant_variants(spec: ModelSpec, calib: np.ndarray) -> Tuple[Dict[str, "pyquant.Generator"], List[Variant]]:
    base = pyquant.from_torch(spec.torch_model, latent_shape=spec.latent_shape, name=spec.name)
    names = [l.name for l in base.weight_layers]
    gens: Dict[str, pyquant.Generator] = {
        "pyquant float32": base,
        "pyquant int8 dynamic": pyquant.quantize_model(base),
        "pyquant int8 static": pyquant.quantize_model(base, calibration=calib),
        "pyquant mixed (first+last f32)": pyquant.quantize_model(base, calibration=calib,
                                                                 skip=(names[0], names[-1])),
    }
    for s in SPARSITIES:
        pruned = pyquant.prune_model(base, s, scope="layer")
        gens[f"pyquant sparse f32 {s:.0%}"] = pruned
        gens[f"pyquant sparse int8 {s:.0%}"] = pyquant.quantize_model(pruned)
    variants = []
    for vname, g in gens.items():
        def make(z, threads, g=g):
            return lambda: g(z)
        variants.append(Variant(vname, "pyquant", make, lambda z, g=g: g(z)))
    return gens, variants


def _torch_call(model: nn.Module, z: np.ndarray) -> Callable[[], object]:
    zt = torch.from_numpy(z.copy())

    def run():
        with torch.inference_mode():
            return model(zt)
    return run


def _torch_images(model: nn.Module, z: np.ndarray, engine: Optional[str] = None) -> np.ndarray:
    if engine:
        torch.backends.quantized.engine = engine
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(z[i:i + 64].copy())).numpy() for i in range(0, len(z), 64)])


class _QuantWrapped(nn.Module):
    """QuantStub -> the generator's body (without its final Tanh) -> DeQuantStub -> Tanh."""

    def __init__(self, body: nn.Sequential, final: nn.Module):
        super().__init__()
        import torch.ao.quantization as tq
        self.quant, self.body, self.dequant, self.final = tq.QuantStub(), body, tq.DeQuantStub(), final

    def forward(self, z):
        return self.final(self.dequant(self.body(self.quant(z))))


def torch_static_int8(model: nn.Sequential, engine: str, calib: np.ndarray) -> Tuple[nn.Module, List[str]]:
    """torch.ao eager static int8 with per-tensor weights on ``engine``; returns (model, warning messages)."""
    import torch.ao.quantization as tq
    children = list(copy.deepcopy(model).children())
    final = children.pop() if isinstance(children[-1], (nn.Tanh, nn.Sigmoid)) else nn.Identity()
    body = nn.Sequential(*children)
    fuse = [[f"body.{i}", f"body.{i + 1}"] for i in range(len(children) - 1)
            if isinstance(children[i], (nn.Linear, nn.ConvTranspose2d))
            and isinstance(children[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.backends.quantized.engine = engine
        w = _QuantWrapped(body, final).eval()
        w = tq.fuse_modules(w, fuse)
        w.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=engine in ("x86", "fbgemm")),
                               weight=tq.default_weight_observer)  # per-tensor symmetric int8 weights
        prepared = tq.prepare(w, inplace=False)
        with torch.inference_mode():
            for i in range(0, len(calib), 64):
                prepared(torch.from_numpy(calib[i:i + 64].copy()))
        q = tq.convert(prepared, inplace=False)
        with torch.inference_mode():
            q(torch.from_numpy(calib[:2].copy()))  # fails here when the engine cannot run a layer
    msgs = sorted({str(c.message).splitlines()[0][:160] for c in caught})
    return q, msgs


def peer_variants(spec: ModelSpec, calib: np.ndarray, with_ort: bool,
                  failures: Dict[str, str]) -> List[Variant]:
    tm = spec.torch_model
    out = [Variant("torch float32", "torch", lambda z, t: _torch_call(tm, z), lambda z: _torch_images(tm, z))]
    for engine in ENGINES:
        vname = f"torch int8 {engine} (per-tensor w)"
        try:
            qm, msgs = torch_static_int8(tm, engine, calib)
        except Exception as e:  # noqa: BLE001 - reported in the table
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            failures[vname] = f"{type(e).__name__}: {first[:200]}"
            continue
        if any("deprecat" in m.lower() for m in msgs):
            failures.setdefault("_torch_ao_deprecated", msgs[0])

        def prep(engine=engine):
            torch.backends.quantized.engine = engine
        out.append(Variant(vname, "torch", lambda z, t, qm=qm: _torch_call(qm, z),
                           lambda z, qm=qm, engine=engine: _torch_images(qm, z, engine), prepare=prep))
    if with_ort and ort is not None:
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(tm, (torch.zeros((2,) + spec.latent_shape),), buf, input_names=["z"],
                                  output_names=["y"], dynamic_axes={"z": {0: "b"}, "y": {0: "b"}}, opset_version=17,
                                  dynamo=False)
            onnx_bytes = buf.getvalue()
            sessions: Dict[int, object] = {}

            def session(threads: int):
                if threads not in sessions:
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = threads
                    so.inter_op_num_threads = 1
                    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    sessions[threads] = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
                return sessions[threads]

            def make(z, t):
                s = session(t)
                return lambda: s.run(["y"], {"z": z})

            def images(z):
                s = session(max(1, torch.get_num_threads()))
                return np.concatenate([s.run(["y"], {"z": z[i:i + 64]})[0] for i in range(0, len(z), 64)])
            out.append(Variant("onnxruntime float32", "ort", make, images))
        except Exception as e:  # noqa: BLE001
            failures["onnxruntime float32"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    return out


# ---------------------------------------------------------------------------------------------- timing --

def set_threads(n: int) -> None:
    pyquant.set_num_threads(n)
    torch.set_num_threads(n)
    if threadpool_limits is not None:
        threadpool_limits(limits=n, user_api="blas")  # numpy's OpenBLAS (pyquant float32 layers)


def time_interleaved(calls: Dict[str, Tuple[str, Callable[[], None], Callable[[], object]]],
                     tp: Timing, threads: int = 1) -> Tuple[Dict[str, List[float]], float]:
    """Seconds per call of each (family, prepare, call): warm-up, then tp.rounds interleaved samples. Also the
    share of `threads` CPUs this process got while measuring (< 1: other processes took the cores)."""
    inner: Dict[str, int] = {}
    rounds: Dict[str, int] = {}
    pre: Dict[str, float] = {}
    last_family = None
    for name, (family, prepare, fn) in calls.items():
        time.sleep(tp.pause_switch if family != last_family else tp.pause_same)
        last_family = family
        prepare()
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        if first > tp.max_variant:  # pathologically slow: that call is the one sample
            inner[name], rounds[name], pre[name] = 1, 0, first
            continue
        n = 1
        while n < 2 or time.perf_counter() - t0 < tp.warmup:
            fn()
            n += 1
            if time.perf_counter() - t0 > tp.max_variant / 2:
                break  # a very slow call: one warm-up call is enough
        est = (time.perf_counter() - t0) / n
        inner[name] = max(1, math.ceil(tp.sample / est))
        rounds[name] = max(1, min(tp.rounds, int(tp.max_variant / (est * inner[name]))))
    samples: Dict[str, List[float]] = {k: ([pre[k]] if k in pre else []) for k in calls}
    busy_wall, cpu0 = 0.0, os.times()
    for r in range(tp.rounds):
        for name, (family, prepare, fn) in calls.items():
            if r >= rounds[name]:
                continue
            time.sleep(tp.pause_switch if family != last_family else tp.pause_same)
            last_family = family
            prepare()
            k = inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            dt = time.perf_counter() - t0
            busy_wall += dt
            samples[name].append(dt / k)
    cpu1 = os.times()
    share = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / max(busy_wall * threads, 1e-9)
    return samples, share


def isa_identical(gen: "pyquant.Generator", z: np.ndarray) -> Dict[str, bool]:
    """Whether every ISA path pyquant can run here gives the same images, bit for bit, as the current one."""
    ref = gen(z)
    out = {}
    for isa in pyquant.available_isas():
        with pyquant.use_isa(isa):
            out[isa] = bool(np.array_equal(gen(z), ref))
    return out


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def time_layers(gen: "pyquant.Generator", z: np.ndarray, repeats: int) -> Dict[str, float]:
    """Median wall seconds of each layer inside ``gen(z)`` (each layer's forward wrapped with a timer for the
    duration, so the model runs its own path: hand-offs, buffers), and the rest of the call ("model overhead":
    input checks, layout conversion, final dequantization)."""
    times: Dict[str, List[float]] = {}
    current: Dict[str, float] = {}

    def timed(layer, fwd):
        key = f"{layer.name} {layer.kind} {layer.precision}"

        def run(*a, **kw):
            t0 = time.perf_counter()
            r = fwd(*a, **kw)
            current[key] = current.get(key, 0.0) + time.perf_counter() - t0
            return r
        return run

    for layer in gen.layers:
        layer.forward = timed(layer, layer.forward)  # instance attribute shadows the method
    try:
        for _ in range(repeats):
            current.clear()
            t0 = time.perf_counter()
            gen(z)
            total = time.perf_counter() - t0
            current["model overhead"] = total - sum(current.values())
            for k, v in current.items():
                times.setdefault(k, []).append(v)
    finally:
        for layer in gen.layers:
            del layer.forward
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ a run --

def run_model(spec: ModelSpec, threads: List[int], batches: List[int], tp: Timing, with_ort: bool,
              quick: bool) -> dict:
    print(f"\n## {spec.name}: {spec.note}", file=sys.stderr, flush=True)
    rng_c, rng_e = np.random.default_rng(1), np.random.default_rng(2)
    calib = rng_c.standard_normal((N_CALIB,) + spec.latent_shape, dtype=np.float32)
    n_eval = 64 if quick else N_EVAL
    zeval = rng_e.standard_normal((n_eval,) + spec.latent_shape, dtype=np.float32)
    failures: Dict[str, str] = {}
    t0 = time.perf_counter()
    gens, pvars = pyquant_variants(spec, calib)
    tvars = peer_variants(spec, calib, with_ort, failures)
    build_s = time.perf_counter() - t0
    variants = pvars + tvars
    set_threads(max(threads))
    ref = _torch_images(spec.torch_model, zeval)
    res: dict = {"note": spec.note, "trained": spec.trained, "failures": failures, "build_s": build_s,
                 "variants": {}}
    for v in variants:
        img = v.images(zeval)
        res["variants"][v.name] = {"family": v.family, "psnr_db": psnr(img, ref), "speed": {}}
        if v.family == "pyquant" and "f32" not in v.name and "float32" not in v.name:
            res.setdefault("isa_identical", {})[v.name] = isa_identical(gens[v.name], zeval[:16])
    for t in threads:
        set_threads(t)
        for b in batches:
            z = zeval[:b] if b <= len(zeval) else np.resize(zeval, (b,) + zeval.shape[1:])
            z = np.ascontiguousarray(z)
            calls = {v.name: (v.family, v.prepare, v.make(z, t)) for v in variants}
            samples, share = time_interleaved(calls, tp, t)
            res.setdefault("cpu_share", {})[f"t{t}_b{b}"] = share
            res.setdefault("loadavg", {})[f"t{t}_b{b}"] = os.getloadavg()[0]
            for name, s in samples.items():
                med = statistics.median(s)
                res["variants"][name]["speed"][f"t{t}_b{b}"] = {
                    "img_s": b / med, "s_med": med, "s_min": min(s), "s_max": max(s), "n": len(s)}
            print(f"  {spec.name} threads={t} batch={b}: " + ", ".join(
                f"{k.replace('pyquant ', 'pq ')}={res['variants'][k]['speed'][f't{t}_b{b}']['img_s']:.0f}"
                for k in samples), file=sys.stderr, flush=True)
    # per-layer wall time at batch 64 (the largest batch measured), all thread counts
    bl = max(batches)
    zl = np.ascontiguousarray(np.resize(zeval, (bl,) + zeval.shape[1:]))
    res["layer_times"] = {}
    for t in threads:
        set_threads(t)
        for vname in ("pyquant float32", "pyquant int8 static", "pyquant mixed (first+last f32)"):
            time.sleep(tp.pause_switch)
            time_layers(gens[vname], zl, 2)
            res["layer_times"].setdefault(f"t{t}", {})[vname] = time_layers(gens[vname], zl, 3 if quick else 9)
    if gens["pyquant float32"].layers[0].kind == "dense":
        res["dense_layer"] = dense_layer_bench(gens, zl, threads, tp)
    return res


def dense_layer_bench(gens: Dict[str, "pyquant.Generator"], z: np.ndarray, threads: List[int], tp: Timing) -> dict:
    """The first (Dense) layer alone, float input -> float output, per variant."""
    z2 = np.ascontiguousarray(z.reshape(z.shape[0], -1))
    rows = ["pyquant float32", "pyquant int8 dynamic", "pyquant int8 static"] + [
        f"pyquant sparse {p} {s:.0%}" for s in SPARSITIES for p in ("f32", "int8")]
    out: dict = {"batch": int(z2.shape[0]), "shape": None, "rows": {}}
    for r in rows:
        layer = gens[r].layers[0]
        out["shape"] = [layer.in_features, layer.out_features]
        out["rows"][r] = {"precision": layer.precision, "sparsity": float(layer.sparsity), "speed": {}}
    for t in threads:
        set_threads(t)
        calls = {r: ("pyquant", lambda: None, (lambda l=gens[r].layers[0]: l.forward(z2))) for r in rows}
        samples, share = time_interleaved(calls, tp, t)
        out.setdefault("cpu_share", {})[f"t{t}"] = share
        for r, s in samples.items():
            med = statistics.median(s)
            out["rows"][r]["speed"][f"t{t}"] = {"s_med": med, "s_min": min(s), "s_max": max(s)}
    return out


def run_pass(args, tp: Timing) -> dict:
    """One ISA pass in this process."""
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    with_ort = os.environ.get("PYQUANT_ISA", "") == ""
    meta = {"pyquant_isa": pyquant.isa(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: os.environ.get(k) for k in AVX2_ENV}, "threads": threads, "batches": batches,
            "loadavg_start": os.getloadavg()}
    t0 = time.time()
    models = {}
    for spec in load_models(args.models.split(",")):
        models[spec.name] = run_model(spec, threads, batches, tp, with_ort, args.quick)
    meta["wall_s"] = time.time() - t0
    meta["loadavg_end"] = os.getloadavg()
    return {"meta": meta, "models": models}


# ------------------------------------------------------------------------------------------- rendering --

def _speed(rec: dict, key: str) -> Optional[float]:
    s = rec.get("speed", {}).get(key)
    return None if s is None else s["img_s"]


def _fmt(v: Optional[float], spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def fastest_torch_int8(variants: dict, key: str, correct_only: bool = False) -> Tuple[Optional[float], str]:
    """The fastest torch int8 row at `key` (optionally only rows whose images are right: PSNR >= WRONG_DB)."""
    best, who = None, ""
    for name, rec in variants.items():
        if name.startswith("torch int8") and (not correct_only or rec["psnr_db"] >= WRONG_DB):
            v = _speed(rec, key)
            if v is not None and (best is None or v > best):
                best, who = v, name.split()[2]
    return best, who


def render_model(name: str, res: dict, isa_label: str, threads: List[int], batches: List[int]) -> str:
    keys = [f"t{t}_b{b}" for t in threads for b in batches]
    head = ["variant"] + [f"{t}T b{b}" for t in threads for b in batches] + ["PSNR dB"]
    lines = [f"\n### {name} ({isa_label}): images/s (T = threads, b = batch); PSNR vs torch float32",
             f"{res['note']}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    wrong = False
    for vname, rec in res["variants"].items():
        p = rec["psnr_db"]
        ptxt = "inf" if p == float("inf") else format(p, ".1f")
        if vname.startswith("torch int8") and p < WRONG_DB:
            ptxt += " (wrong images!)"
            wrong = True
        lines.append(f"| {vname} | " + " | ".join(_fmt(_speed(rec, k)) for k in keys) + f" | {ptxt} |")
    for vname, why in res["failures"].items():
        if not vname.startswith("_"):
            lines.append(f"| {vname} | " + " | ".join("n/a" for _ in keys) + f" | n/a: {why} |")
    v = res["variants"]
    st = v.get("pyquant int8 static", {})
    r1, r1c, r2 = [], [], []
    for k in keys:
        s = _speed(st, k)
        for correct, row in ((False, r1), (True, r1c)):
            ft, who = fastest_torch_int8(v, k, correct)
            row.append(f"{s / ft:.2f}x ({who})" if s and ft else "n/a")
        tf = _speed(v.get("torch float32", {}), k)
        r2.append(f"{s / tf:.2f}x" if s and tf else "n/a")
    lines.append("| **int8 static / fastest torch int8** | " + " | ".join(r1) + " | |")
    if wrong:
        lines.append("| **int8 static / fastest correct torch int8** | " + " | ".join(r1c) + " | |")
    lines.append("| **int8 static / torch float32** | " + " | ".join(r2) + " | |")
    if res.get("cpu_share"):
        lines.append("| *CPU share / load avg* | " + " | ".join(
            f"{res['cpu_share'].get(k, 0):.0%} / {res['loadavg'].get(k, 0):.1f}" for k in keys) + " | |")
    out = "\n".join(lines) + "\n"
    out += ("\nCPU share = CPU time this process got / (measured wall time x threads), spinning included; well below "
            "100% means other processes took the cores during those measurements.\n")
    if wrong:
        out += (f"\nwrong images!: PSNR < {WRONG_DB:.0f} dB is not quantization noise; torch's quantized "
                "ConvTranspose2d on oneDNN (engine onednn, and x86, which hands it to oneDNN when output_padding "
                "is 0) computes wrong outputs when in_channels != out_channels (checked layer by layer against "
                "fbgemm / qnnpack, which are right). Its speed is still the speed of the same amount of work.\n")
    if "_torch_ao_deprecated" in res["failures"]:
        out += "\n(torch.ao.quantization warns that it is deprecated; its warnings are silenced here.)\n"
    if res.get("dense_layer"):
        d = res["dense_layer"]
        ts = sorted({k for r in d["rows"].values() for k in r["speed"]}, key=lambda x: int(x[1:]))
        out += (f"\n#### {name} ({isa_label}): Dense layer {d['shape'][0]} -> {d['shape'][1]} alone "
                f"(layers[0].forward, batch {d['batch']}, float in/out): ms per call, speed-up vs dense int8 static\n\n"
                "| layer variant | sparsity | " + " | ".join(f"{t[1:]}T ms | {t[1:]}T vs int8" for t in ts)
                + " |\n|" + "---|" * (2 + 2 * len(ts)) + "\n")
        for r, rec in d["rows"].items():
            cells = []
            for t in ts:
                ms = rec["speed"][t]["s_med"] * 1e3
                base = d["rows"]["pyquant int8 static"]["speed"][t]["s_med"] * 1e3
                cells += [f"{ms:.3f}", f"{base / ms:.2f}x"]
            out += f"| {r.replace('pyquant ', '')} ({rec['precision']}) | {rec['sparsity']:.0%} | " + " | ".join(cells) + " |\n"
    if res.get("layer_times"):
        for t, per in res["layer_times"].items():
            names = list(per)
            allkeys: List[str] = []
            for vn in names:
                for k in per[vn]:
                    idx = k.split()[0]
                    if idx not in allkeys:
                        allkeys.append(idx)
            out += (f"\n#### {name} ({isa_label}): wall time per layer at batch {max(batches)}, {t[1:]} thread(s), "
                    "ms (layer name, kind, precision)\n\n| layer | " + " | ".join(names) + " |\n|"
                    + "---|" * (1 + len(names)) + "\n")
            for idx in allkeys:
                cells = []
                for vn in names:
                    hit = [(k, s) for k, s in per[vn].items() if k.split()[0] == idx]
                    cells.append((f"{hit[0][1] * 1e3:.2f} ({' '.join(hit[0][0].split()[1:])})" if idx != "model"
                                  else f"{hit[0][1] * 1e3:.2f}") if hit else "-")
                out += f"| {idx} | " + " | ".join(cells) + " |\n"
            out += "| **total** | " + " | ".join(f"{sum(per[vn].values()) * 1e3:.2f}" for vn in names) + " |\n"
    return out


def evaluate_targets(passes: Dict[str, dict], threads: List[int], batches: List[int]) -> List[dict]:
    """The issue's targets, each with met / missed and its numbers."""
    out: List[dict] = []

    def add(target: str, met: Optional[bool], detail: str) -> None:
        out.append({"target": target, "met": met, "detail": detail})

    for isa_label, run in passes.items():
        for mname, res in run["models"].items():
            v = res["variants"]
            st = v.get("pyquant int8 static")
            if st is None:
                continue
            pre = f"[{isa_label}] {mname}:"
            for bsel, goal, label in (([16, 64], 1.2, "int8 static >= 1.2x fastest torch int8 at batch 16, 64"),
                                      ([1], 1.0, "int8 static >= 1.0x fastest torch int8 at batch 1")):
                parts, ok = [], True
                for t in threads:
                    for b in bsel:
                        if b not in batches:
                            continue
                        k = f"t{t}_b{b}"
                        ft, who = fastest_torch_int8(v, k)
                        s = _speed(st, k)
                        if s is None or ft is None:
                            parts.append(f"{t}T b{b} n/a")
                            continue
                        ok &= s / ft >= goal
                        part = f"{t}T b{b} {s:.0f} vs {who} {ft:.0f} = {s / ft:.2f}x"
                        fc, whoc = fastest_torch_int8(v, k, correct_only=True)
                        if fc != ft:
                            part += (f" (fastest with right images: {whoc} {fc:.0f} = {s / fc:.2f}x)" if fc
                                     else " (no torch int8 engine gives right images)")
                        parts.append(part)
                add(f"{pre} {label}", ok if parts else None, "; ".join(parts))
            for bsel, goal, vname, label in (
                    ([16, 64], 4.0, "pyquant int8 static", "int8 static >= 4x torch float32 at batch 16, 64"),
                    (batches, 1.0, "pyquant float32", "pyquant float32 >= 1.0x torch float32 eager")):
                parts, ok = [], True
                for t in threads:
                    for b in bsel:
                        if b not in batches:
                            continue
                        k = f"t{t}_b{b}"
                        s, tf = _speed(v[vname], k), _speed(v.get("torch float32", {}), k)
                        if s is None or tf is None:
                            continue
                        ok &= s / tf >= goal
                        parts.append(f"{t}T b{b} {s:.0f} vs {tf:.0f} = {s / tf:.2f}x")
                add(f"{pre} {label}", ok if parts else None, "; ".join(parts))
            if isa_label == "native":
                tq = {n: r["psnr_db"] for n, r in v.items() if n.startswith("torch int8")}
                best_t = max(tq.values()) if tq else None
                add(f"{pre} int8 static PSNR (per-channel) > torch int8 PSNR (per-tensor)",
                    None if best_t is None else st["psnr_db"] > best_t,
                    f"pyquant int8 static {st['psnr_db']:.1f} dB, dynamic {v['pyquant int8 dynamic']['psnr_db']:.1f}"
                    f" dB; " + ", ".join(f"{n} {p:.1f} dB" for n, p in tq.items()))
                add(f"{pre} int8 PSNR vs float32 >= 35 dB " + ("(trained weights)" if res["trained"]
                                                               else "(random weights: indicative only)"),
                    (st["psnr_db"] >= 35) if res["trained"] else None,
                    f"static {st['psnr_db']:.1f} dB, dynamic {v['pyquant int8 dynamic']['psnr_db']:.1f} dB")
            d = res.get("dense_layer")
            if d:
                parts, ok = [], True
                for t in sorted(d["rows"]["pyquant int8 static"]["speed"], key=lambda x: int(x[1:])):
                    a = d["rows"]["pyquant int8 static"]["speed"][t]["s_med"]
                    s90 = d["rows"]["pyquant sparse int8 90%"]["speed"][t]["s_med"]
                    ok &= s90 < a
                    parts.append(f"{t[1:]}T {a * 1e3:.3f} ms -> {s90 * 1e3:.3f} ms = {a / s90:.2f}x")
                add(f"{pre} sparse int8 90% faster than dense int8 on the Dense layer", ok, "; ".join(parts))
                parts, ok = [], True
                for t in threads:
                    for b in batches:
                        k = f"t{t}_b{b}"
                        a, s90 = _speed(st, k), _speed(v["pyquant sparse int8 90%"], k)
                        ok &= s90 >= a
                        parts.append(f"{t}T b{b} {s90:.0f} vs {a:.0f} = {s90 / a:.2f}x")
                add(f"{pre} sparse int8 90% end to end >= dense int8 static", ok, "; ".join(parts))
            lt = res.get("layer_times", {})
            parts, ok = [], True
            for t, per in lt.items():
                a, m = per.get("pyquant int8 static"), per.get("pyquant mixed (first+last f32)")
                if not a or not m:
                    continue
                # the weight layers that are int8 in both models
                mids = [k for k in m if k.endswith(" int8") and any(j.split()[0] == k.split()[0] for j in a)]
                ta = sum(s for k, s in a.items() if k.split()[0] in {j.split()[0] for j in mids})
                tm = sum(m[k] for k in mids)
                ok &= tm <= 1.10 * ta
                parts.append(f"{t[1:]}T int8 layers {' '.join(k.split()[0] for k in mids)}: {ta * 1e3:.2f} ms in "
                             f"all-int8, {tm * 1e3:.2f} ms in mixed ({tm / ta:.2f}x)")
            if parts:
                add(f"{pre} mixed precision does not slow the int8 layers (<= 1.10x)", ok, "; ".join(parts))
    return out


def render_targets(targets: List[dict]) -> str:
    lines = ["\n## Targets\n"]
    for t in targets:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        lines.append(f"- **{mark}** {t['target']}: {t['detail']}")
    return "\n".join(lines) + "\n"


def render_all(result: dict) -> str:
    threads, batches = result["threads"], result["batches"]
    out = [f"# bench_generator {result['time']} ({result['machine']}; pyquant {result['versions']['pyquant']}, "
           f"torch {result['versions']['torch']}, onnxruntime {result['versions']['onnxruntime']}, "
           f"numpy {result['versions']['numpy']})"]
    for label, run in result["passes"].items():
        m = run["meta"]
        out.append(f"\n## ISA pass {label}: pyquant path {m['pyquant_isa']}, torch capability "
                   f"{m['torch_cpu_capability']}, env {json.dumps({k: v for k, v in m['env'].items() if v})}, "
                   f"wall {m['wall_s']:.0f} s, load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
        for name, res in run["models"].items():
            out.append(render_model(name, res, label, threads, batches))
    native = result["passes"].get("native", {}).get("models", {})
    checks = [(m, vn, ok) for m, r in native.items() for vn, ok in r.get("isa_identical", {}).items()]
    if checks:
        bad = [f"{m} {vn} ({', '.join(i for i, same in ok.items() if not same)})" for m, vn, ok in checks
               if not all(ok.values())]
        out.append(f"\npyquant int8 / sparse int8 images bit-identical on every ISA path "
                   f"({', '.join(next(iter(checks))[2])}), same process and weights: "
                   + ("yes, all " + str(len(checks)) + " models x variants" if not bad else "NO: " + "; ".join(bad))
                   + ". (The passes' weights differ slightly: torch computes the random init's BN statistics "
                   "with its own ISA paths.)\n")
    out.append(render_targets(result["targets"]))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ main --

def child_pass(isa: str, args) -> Optional[dict]:
    """Run one pass in a subprocess with the ISA environment; its JSON result."""
    if isa != "avx2":
        raise SystemExit(f"--isa: only 'native' and 'avx2' are supported, got {isa!r}")
    if "avx2" not in pyquant.available_isas():
        print("(avx2 pass skipped: not available)")
        return None
    path = os.path.splitext(args.json)[0] + f".{isa}-pass.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--json", path, "--models", args.models,
           "--threads", args.threads, "--batches", args.batches] + (["--quick"] if args.quick else [])
    env = dict(os.environ, **AVX2_ENV)
    env.pop("OPENBLAS_L2_SIZE", None)
    print(f"\n(avx2 pass: {' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())} in a subprocess)", file=sys.stderr,
          flush=True)
    p = subprocess.run(cmd, env=env)
    if p.returncode != 0:
        print(f"(avx2 pass failed: exit code {p.returncode})")
        return None
    with open(path) as f:
        return json.load(f)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=DEFAULT_JSON)
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, shorter samples, 2 threads, batches 1,64, no avx2 pass")
    ap.add_argument("--models", default="dcgan64,dcgan28,digits32",
                    help="comma-separated: dcgan64, dcgan28, digits32 (skipped if its weights are absent)")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 2,1; quick: 2)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16,64; quick: 1,64)")
    ap.add_argument("--isa", default=None,
                    help="passes: native (this CPU's best) and/or avx2 (default native,avx2; quick: native)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.threads = args.threads or ("2" if args.quick else "2,1")
    args.batches = args.batches or ("1,64" if args.quick else "1,16,64")
    args.isa = args.isa or ("native" if args.quick else "native,avx2")
    tp = Timing(warmup=0.3, sample=0.1, rounds=3, max_variant=1.5) if args.quick else Timing()
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    warnings.filterwarnings("ignore", module=r"torch\.ao")
    if args.child:
        res = run_pass(args, tp)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        return
    t_start = time.time()
    result = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": pyquant.config()["cpu"],
              "python": platform.python_version(),
              "versions": {"pyquant": pyquant.__version__, "torch": torch.__version__, "numpy": np.__version__,
                           "onnxruntime": getattr(ort, "__version__", None)},
              "argv": sys.argv, "quick": args.quick, "timing": tp.__dict__,
              "threads": [int(t) for t in args.threads.split(",")],
              "batches": [int(b) for b in args.batches.split(",")], "passes": {}}
    for isa in args.isa.split(","):
        if isa == "native":
            result["passes"]["native"] = run_pass(args, tp)
        else:
            child = child_pass(isa, args)
            if child is not None:
                result["passes"][isa] = child
    result["targets"] = evaluate_targets(result["passes"], result["threads"], result["batches"])
    result["wall_s"] = time.time() - t_start
    text = render_all(result) + f"\nscript wall time: {result['wall_s']:.0f} s\n"
    print(text)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
        f.write(text)
    print(f"wrote {args.json} and {os.path.splitext(args.json)[0] + '.md'}")


if __name__ == "__main__":
    main()
