#!/usr/bin/env python3
"""Quantize / dequantize / dynamic-quantize throughput: pyquant vs the numpy expression, torch and a copy.

    python bench/bench_quantize.py [--quick] [--json bench/results/quantize.json]

All figures come from one run: warm-up, then the median of several repeats (time.perf_counter), at 1 and 2
threads. "GB/s" counts the bytes a kernel reads plus writes (quantize: 4 + 1 per element). Ratios compare
with the peer measured in the same run: `vs numpy` and `vs torch` are speed-ups (higher is better),
`/ copy` is pyquant's time over the time of a plain float32 copy of the same array (lower is better).
The numpy peer is the contract's reference expression `np.clip(np.rint(x / scale) + zp, qmin, qmax)`.
Run numpy without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE set if your machine sets them (they slow numpy).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from statistics import median

import numpy as np

import pyquant

try:
    import torch
except ImportError:  # torch is optional
    torch = None


def timeit(fn, repeats: int, min_time: float = 0.05) -> float:
    """Median seconds per call after a warm-up; small cases loop inside each sample."""
    time.sleep(0.1)  # lets another library's spinning worker threads (torch's OpenMP pool) go idle first
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return median(samples)


def set_threads(n: int) -> None:
    pyquant.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def run(sizes, threads_list, repeats):
    rows = []
    rng = np.random.default_rng(0)
    scale, zp = np.float32(0.05), 3
    for n in sizes:
        x = rng.standard_normal(n, dtype=np.float32) * 4
        q = np.empty(n, np.int8)
        f = np.empty(n, np.float32)
        copy_dst = np.empty_like(x)
        qx = pyquant.quantize(x, scale, zp)
        tx = torch.from_numpy(x) if torch is not None else None
        tq = torch.quantize_per_tensor(tx, float(scale), zp, torch.qint8) if torch is not None else None
        for threads in threads_list:
            set_threads(threads)
            t = {
                "copy": timeit(lambda: np.copyto(copy_dst, x), repeats),
                "numpy": timeit(lambda: np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8), repeats),
                "pyquant": timeit(lambda: pyquant.quantize(x, scale, zp, out=q), repeats),
                "pyquant_dynamic": timeit(lambda: pyquant.quantize_dynamic(x, "uint8"), repeats),
                "pyquant_dequant": timeit(lambda: pyquant.dequantize(qx, scale, zp, out=f), repeats),
                "numpy_dequant": timeit(lambda: (qx.astype(np.float32) - np.float32(zp)) * scale, repeats),
            }
            if torch is not None:
                t["torch"] = timeit(lambda: torch.quantize_per_tensor(tx, float(scale), zp, torch.qint8), repeats)
                t["torch_dequant"] = timeit(lambda: tq.dequantize(), repeats)
            row = {"n": n, "threads": threads, "seconds": t,
                   "quantize_GBps": 5 * n / t["pyquant"] / 1e9,
                   "vs_numpy": t["numpy"] / t["pyquant"],
                   "vs_torch": (t["torch"] / t["pyquant"]) if "torch" in t else None,
                   "over_copy": t["pyquant"] / t["copy"],
                   "dequant_vs_numpy": t["numpy_dequant"] / t["pyquant_dequant"],
                   "dequant_vs_torch": (t["torch_dequant"] / t["pyquant_dequant"]) if "torch" in t else None,
                   "dynamic_over_copy": t["pyquant_dynamic"] / t["copy"]}
            rows.append(row)
            print_row(row)
    return rows


HEADER = ("| elements | thr | pyquant GB/s | vs numpy | vs torch | / copy | dynamic / copy | dequant vs numpy "
          "| dequant vs torch |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def print_row(r):
    print(f"| {r['n']:.0e} | {r['threads']} | {r['quantize_GBps']:.1f} | {fmt(r['vs_numpy'])}x | "
          f"{fmt(r['vs_torch'])}x | {r['over_copy']:.2f} | {r['dynamic_over_copy']:.2f} | "
          f"{fmt(r['dequant_vs_numpy'])}x | {fmt(r['dequant_vs_torch'])}x |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip 4e7")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "quantize.json"))
    args = ap.parse_args()
    sizes = [100_000, 1_000_000, 10_000_000] + ([] if args.quick else [40_000_000])
    repeats = 5 if args.quick else 11
    print(f"pyquant {pyquant.__version__} isa={pyquant.isa()} torch={getattr(torch, '__version__', 'none')} "
          f"numpy={np.__version__} cpu={pyquant.config()['cpu']}")
    print(HEADER)
    rows = run(sizes, args.threads, repeats)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"config": pyquant.config(), "python": sys.version, "platform": platform.platform(),
                   "rows": rows}, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
