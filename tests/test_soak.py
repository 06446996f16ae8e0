"""Soak (issue 14): the int8 and sparse int8 generators called many times from 4 Python threads with mixed batch
sizes, while another thread keeps changing the kernel thread count. Checks: every result bit-identical to the
serial call on the same latents, no deadlock (every thread finishes within a deadline), resident memory flat
(no leak), and a KeyboardInterrupt (SIGALRM handler) during a long batch leaves the model usable.

The normal suite runs a short version (a few seconds). The long version:

    PYQUANT_SOAK=1 python -m pytest -q -s test_soak.py                 # 4 threads x 5000 calls per model
    PYQUANT_SOAK=1 PYQUANT_SOAK_CALLS=20000 python -m pytest -q -s test_soak.py

With -s it prints its figures (calls, threads, wall time, RSS before / after).
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import pyquant

LONG = bool(os.environ.get("PYQUANT_SOAK"))
CALLS = int(os.environ.get("PYQUANT_SOAK_CALLS", "5000" if LONG else "200"))  # per thread and model
THREADS = 4
BATCHES = (1, 2, 3, 1, 5, 2, 9, 1)
DEADLINE = 600.0 if not LONG else 6 * 3600.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def models():
    g = pyquant.builtin_generator()
    calib = g.latents(64, seed=1)
    return {"int8": pyquant.quantize_model(g, calibration=calib),
            "int8_dynamic": pyquant.quantize_model(g),
            "sparse_int8": pyquant.quantize_model(pyquant.prune_model(g, 0.75))}


@pytest.fixture(scope="module")
def cases(models):
    """model name -> [(latents, serial result)] for every batch size."""
    out = {}
    for name, m in models.items():
        out[name] = [(z, m(z)) for z in (m.latents(b, seed=100 + i) for i, b in enumerate(sorted(set(BATCHES))))]
    return out


def test_threads_match_serial_and_memory_is_flat(models, cases):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm")
    names = sorted(models)
    threads_before = pyquant.get_num_threads()
    errors, done = [], []
    stop = threading.Event()

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in range(CALLS * len(names)):
                name = names[i % len(names)]
                z, want = cases[name][int(rng.integers(len(cases[name])))]
                got = models[name](z)
                if not np.array_equal(got, want):
                    errors.append(f"thread {seed}, call {i}, {name}, batch {len(z)}: differs from the serial result")
                    return
            done.append(seed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {seed}: {type(e).__name__}: {e}")

    def changer():
        n = 0
        while not stop.is_set():
            pyquant.set_num_threads(1 + n % 3)
            n += 1
            time.sleep(0.002)

    def run_round(n_calls_note):
        ts = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(THREADS)]
        ch = threading.Thread(target=changer, daemon=True)
        stop.clear()
        ch.start()
        for t in ts:
            t.start()
        t_end = time.monotonic() + DEADLINE
        for t in ts:
            t.join(max(0.0, t_end - time.monotonic()))
        stop.set()
        ch.join(10)
        alive = [t for t in ts if t.is_alive()]
        assert not alive, f"{len(alive)} threads still running after {DEADLINE} s: deadlock ({n_calls_note})"

    try:
        # warm-up round (buffers, packed weights, plans, the pool), then the measured round
        run_round("warm-up")
        assert not errors, errors[:3]
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        done.clear()
        run_round("soak")
        wall = time.perf_counter() - t0
        rss1 = _rss_mb()
    finally:
        stop.set()
        pyquant.set_num_threads(threads_before)
    assert not errors, errors[:3]
    assert len(done) == THREADS
    calls = THREADS * CALLS * len(names)
    print(f"\nsoak: {calls} calls ({THREADS} threads x {CALLS} per model x {len(names)} models: {', '.join(names)}), "
          f"batches {sorted(set(BATCHES))}, thread count changed every 2 ms; {wall:.1f} s; "
          f"RSS {rss0:.1f} MB before, {rss1:.1f} MB after ({rss1 - rss0:+.1f} MB)")
    # flat: a leak of even 1 KB per call would show as several MB here
    assert rss1 - rss0 < (16 if not LONG else 32), f"RSS grew from {rss0:.1f} MB to {rss1:.1f} MB"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("name", ["int8", "sparse_int8"])
def test_keyboard_interrupt_during_a_long_batch(models, cases, name):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    m = models[name]
    big = m.latents(3000, seed=5)

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    interrupted = False
    try:
        for delay in (0.02, 0.05, 0.2):
            signal.setitimer(signal.ITIMER_REAL, delay)
            try:
                m(big)
            except KeyboardInterrupt:
                interrupted = True
                break
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    if not interrupted:
        pytest.skip("the batch finished before the timer fired")
    # the model (and the pool) still work and give the same results
    for z, want in cases[name]:
        assert np.array_equal(m(z), want)
    ts = [threading.Thread(target=lambda: [m(z) for z, _ in cases[name]]) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
        assert not t.is_alive()
