"""Benchmark: pyquant's exact int8 GEMM against numpy float32 matmul (OpenBLAS), PyTorch dynamic quantized
Linear (x86 engine) and ONNX Runtime MatMulInteger. A plain script (not collected by pytest).

    python bench/bench_gemm.py [--quick] [--json bench/results/gemm.json] [--isa best,avx2] [--threads 1,2]

Run numpy with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (those variables slow current OpenBLAS). The
machine is shared and noisy: every row compares the libraries in the same run; read the ratios.

Columns (GOP/s = 2*M*N*K / median time):
- pyq i32: matmul_int8, uint8 activations (zero point 128) x full-range int8 weights [-128, 127], int32 out.
- pyq f32: linear_int8, float32 in -> dynamic uint8 quantization -> GEMM -> fused float32 epilogue (bias).
- pyq fast: matmul_int8 on "trained-like" weights (Gaussian, per-channel scaled to [-127, 127]); on AVX2 the
  packing proves the u8 x s8 loop exact for them (only the AVX2 path has a separate fast loop).
- numpy: float32 matmul. torch: torch.ao dynamic quantized Linear (float in/out, x86 engine).
- ort: MatMulInteger u8 x s8; 'wrong' is the fraction of its outputs that differ from the exact result on
  the full-range weights.
- peak: fraction of the int8 peak of the running inner loop, measured by _core.gemm_peak (the loop's
  instruction sequence timed in registers, per thread, times the thread count).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# PyTorch's OpenMP threads (and OpenBLAS's) spin after each call by default; on 2 shared cores a spinning pool
# starves the next library measured. Passive waiting keeps the comparison fair (set before importing torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import pyquant  # noqa: E402
from pyquant import _core

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None
try:
    import torch
except ImportError:  # pragma: no cover
    torch = None
try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:  # pragma: no cover
    ort = None

SQUARE = [256, 512, 1024, 2048]
GENERATOR = [(64, 100, 12544), (64, 1024, 1024), (3136, 256, 1600)]


MIN_TIME = 0.3  # seconds of timed calls per library and shape, spread over ROUNDS blocks
ROUNDS = 6
PAUSE = 0.1  # seconds between libraries: lets a library's spinning worker threads go idle first


def time_all(fns: dict, repeats: int) -> dict:
    """(median, best) seconds per call of each function, measured in ROUNDS interleaved blocks (A B C A B C
    ...) so that slow phases of a shared machine hit every library alike."""
    for fn in fns.values():
        fn()
        fn()
    samples = {k: [] for k in fns}
    per_block = max(1, repeats // ROUNDS)
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            t_start = time.perf_counter()
            n = 0
            while n < per_block or (time.perf_counter() - t_start < MIN_TIME / ROUNDS and n < 100):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
                n += 1
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


def torch_layer(wf: np.ndarray, bias: np.ndarray):
    lin = torch.nn.Linear(wf.shape[0], wf.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(wf.T.copy()))
        lin.bias.copy_(torch.from_numpy(bias))
    model = torch.nn.Sequential(lin)
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def ort_session(w: np.ndarray, threads: int):
    K, N = w.shape
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])
    graph = helper.make_graph(
        [node], "mmi", [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", N])],
        initializer=[helper.make_tensor("B", TensorProto.INT8, [K, N], w.tobytes(), raw=True),
                     helper.make_tensor("a_zp", TensorProto.UINT8, [], [128])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into the next library
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def trained_like(rng, K, N):
    # Laplace-distributed (heavier tails than Gaussian, as trained layers have), symmetric per channel.
    w = rng.laplace(0, 1, (K, N)).astype(np.float32)
    s = np.abs(w).max(axis=0) / 127
    return np.clip(np.rint(w / s), -127, 127).astype(np.int8)


def bench_shape(M, K, N, threads, repeats, rng, fast_weights_cache):
    a = rng.integers(0, 256, (M, K), dtype=np.uint8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    x = rng.normal(0, 1, (M, K)).astype(np.float32)
    wscale = np.full(N, 0.01, dtype=np.float32)
    bias = rng.normal(0, 0.1, N).astype(np.float32)
    packed = pyquant.pack_weights(w, scale=wscale, bias=bias)
    wt = fast_weights_cache.setdefault((K, N), trained_like(rng, K, N))
    packed_fast = pyquant.pack_weights(wt)
    ops = 2.0 * M * N * K
    row = {"M": M, "K": K, "N": N, "threads": threads, "isa": pyquant.isa(), "kernel": packed.kernel,
           "fast_kernel": packed_fast.kernel, "fast_n_corrections": packed_fast.n_corrections}
    out_i = np.empty((M, N), np.int32)
    out_i2 = np.empty((M, N), np.int32)
    out_f = np.empty((M, N), np.float32)
    exact = pyquant.matmul_int8(a, packed, 128)
    af, wf = x, (w.astype(np.float32) * 0.01)
    out_np = np.empty((M, N), np.float32)
    fns = {"pyq_i32": lambda: pyquant.matmul_int8(a, packed, 128, out=out_i),
           "pyq_f32": lambda: pyquant.linear_int8(x, packed, out=out_f),
           "pyq_fast": lambda: pyquant.matmul_int8(a, packed_fast, 128, out=out_i2),
           "numpy": lambda: np.matmul(af, wf, out=out_np)}
    if torch is not None:
        torch.set_num_threads(threads)
        torch.backends.quantized.engine = "x86"
        layer = torch_layer(wt.astype(np.float32) * 0.01, bias)
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                layer(xt)
        fns["torch"] = run_torch
    if ort is not None:
        sess = ort_session(w, threads)
        y = sess.run(None, {"A": a})[0]
        row["ort_wrong"] = float(np.mean(y != exact))
        fns["ort"] = lambda: sess.run(None, {"A": a})
    for name, (sec, best) in time_all(fns, repeats).items():
        row[name] = ops / sec / 1e9
        row[name + "_best"] = ops / best / 1e9
    return row


def peaks():
    """Per-thread MAC/s of each runnable inner loop, measured in registers."""
    out = {}
    exact, fast = _core.gemm_paths()
    for p in (exact, fast):
        if p > 0:
            best = max(_core.gemm_peak(p, 5_000_000) for _ in range(5))
            out[_core.gemm_path_name(p)] = best
    return out


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def table(rows, peak):
    lines = ["| M x K x N | thr | pyq i32 | pyq f32 | pyq fast | numpy f32 | torch dyn | ort u8s8 (wrong) | "
             "i32/np | f32/np | fast/np | f32/torch | fast/torch | i32 peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pk = peak.get(r["kernel"])
        frac = r["pyq_i32"] / (2 * pk * r["threads"] / 1e9) if pk else None
        torch_v, ort_v = r.get("torch"), r.get("ort")
        lines.append(
            f"| {r['M']}x{r['K']}x{r['N']} | {r['threads']} | {r['pyq_i32']:.0f} | {r['pyq_f32']:.0f} | "
            f"{r['pyq_fast']:.0f} | {r['numpy']:.0f} | {fmt(torch_v)} | "
            f"{fmt(ort_v)} ({fmt(r.get('ort_wrong', None), '.0%')}) | {r['pyq_i32'] / r['numpy']:.2f} | "
            f"{r['pyq_f32'] / r['numpy']:.2f} | {r['pyq_fast'] / r['numpy']:.2f} | "
            f"{fmt(r['pyq_f32'] / torch_v if torch_v else None, '.2f')} | "
            f"{fmt(r['pyq_fast'] / torch_v if torch_v else None, '.2f')} | {fmt(frac, '.0%')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=os.path.join("bench", "results", "gemm.json"))
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--isa", default="best,avx2", help="comma-separated ISA paths ('best' = this CPU's best)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--shapes", default=None,
                    help="comma-separated shapes instead of the default list: N (square) or MxKxN")
    args = ap.parse_args(argv)
    global MIN_TIME
    MIN_TIME = 0.15 if args.quick else 0.6

    shapes = [(s, s, s) for s in ([256, 1024] if args.quick else SQUARE)] + (GENERATOR[:2] if args.quick else GENERATOR)
    if args.shapes:
        shapes = []
        for item in args.shapes.split(","):
            dims = [int(v) for v in item.lower().split("x")]
            shapes.append(tuple(dims * 3) if len(dims) == 1 else tuple(dims))
    repeats = args.repeats or (3 if args.quick else 7)
    threads_list = [int(t) for t in args.threads.split(",")]
    isas = [pyquant.available_isas()[-1] if n == "best" else n for n in args.isa.split(",")]
    rng = np.random.default_rng(0)
    result = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
              "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
              "onnxruntime": getattr(ort, "__version__", None), "pyquant": pyquant.__version__, "runs": []}
    cache = {}
    for isa in isas:
        if isa not in pyquant.available_isas():
            print(f"skipping ISA {isa}: not available here")
            continue
        with pyquant.use_isa(isa):
            load_before = os.getloadavg()
            peak = peaks()
            rows = []
            for t in threads_list:
                pyquant.set_num_threads(t)
                ctx = threadpool_limits(limits=t) if threadpool_limits else None
                try:
                    for (M, K, N) in shapes:
                        rows.append(bench_shape(M, K, N, t, repeats, rng, cache))
                        print(f"  {isa} t={t} {M}x{K}x{N} done", file=sys.stderr, flush=True)
                finally:
                    if ctx is not None:
                        ctx.restore_original_limits()
            pyquant.set_num_threads(max(threads_list))
            print(f"\n### ISA path {isa}: kernels {rows[0]['kernel']} (full range), {rows[0]['fast_kernel']} "
                  f"(trained-like weights); inner-loop peak per thread: "
                  + ", ".join(f"{k} {2 * v / 1e9:.0f} GOP/s" for k, v in peak.items()) + "\n")
            print(table(rows, peak))
            for key, label in (("pyq_i32", "median"), ("pyq_i32_best", "best call")):
                scal = {}
                for r in rows:
                    scal.setdefault((r["M"], r["K"], r["N"]), {})[r["threads"]] = r[key]
                if len(threads_list) > 1:
                    t0, t1 = threads_list[0], threads_list[-1]
                    print(f"\nthread scaling {t0}->{t1} (pyq i32, {label}): " + ", ".join(
                        f"{m}x{k}x{n} {v[t1] / v[t0]:.2f}x" for (m, k, n), v in scal.items() if t0 in v and t1 in v))
            load_after = os.getloadavg()
            print(f"\nload average before/after (other users of the 2 cores): {load_before[0]:.2f} / {load_after[0]:.2f}")
            result["runs"].append({"isa": isa, "peak_mac_per_s_per_thread": peak, "rows": rows,
                                   "loadavg_before": load_before, "loadavg_after": load_after})
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
