"""ISA selection, thread pool and configuration report."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyquant


def _run(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd="/")


def test_isa_names():
    avail = pyquant.available_isas()
    assert avail[0] == "scalar"
    assert pyquant.isa() in avail
    forced = os.environ.get("PYQUANT_ISA")
    assert pyquant.isa() == (forced if forced else avail[-1])  # the best path by default


def test_env_forces_scalar():
    r = _run("import pyquant; print(pyquant.isa())", PYQUANT_ISA="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


@pytest.mark.parametrize("name", pyquant.available_isas())
def test_env_forces_each_available(name):
    r = _run("import pyquant; print(pyquant.isa())", PYQUANT_ISA=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


def test_env_unknown_or_unavailable_is_clear_error():
    r = _run("import pyquant", PYQUANT_ISA="sse9000")
    assert r.returncode != 0
    assert "PYQUANT_ISA" in r.stderr and "unknown" in r.stderr
    # a child process may run on another CPU model than this one (e.g. this suite under qemu-user)
    child = _run("import pyquant; print(' '.join(pyquant.available_isas()))").stdout.split()
    missing = [n for n in ("avx2", "avx512", "avx512vnni", "neon") if n not in child]
    if missing:
        r = _run("import pyquant", PYQUANT_ISA=missing[0])
        assert r.returncode != 0 and "PYQUANT_ISA" in r.stderr


def test_set_isa_roundtrip_and_errors():
    before = pyquant.available_isas()[-1]
    pyquant.set_isa(before)
    prev = pyquant.set_isa("scalar")
    assert prev == before and pyquant.isa() == "scalar"
    pyquant.set_isa("best")
    assert pyquant.isa() == before
    with pytest.raises(ValueError, match="unknown ISA"):
        pyquant.set_isa("nope")
    with pytest.raises(TypeError):
        pyquant.set_isa(3)
    assert pyquant.isa() == before
    with pyquant.use_isa("scalar") as name:
        assert name == "scalar" == pyquant.isa()
    assert pyquant.isa() == before
    pyquant.set_isa(os.environ.get("PYQUANT_ISA") or "best")


def test_threads():
    n = pyquant.get_num_threads()
    assert n >= 1
    with pyquant.use_threads(1):
        assert pyquant.get_num_threads() == 1
    assert pyquant.get_num_threads() == n
    for bad in (0, -2):
        with pytest.raises(ValueError):
            pyquant.set_num_threads(bad)
    with pytest.raises(TypeError):
        pyquant.set_num_threads(2.5)
    r = _run("import pyquant; print(pyquant.get_num_threads())", PYQUANT_NUM_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr


def test_cpu_features_and_config():
    f = pyquant.cpu_features()
    assert isinstance(f, dict) and all(isinstance(v, bool) for v in f.values())
    if "avx2" in pyquant.available_isas():
        assert f["avx2"] and f["fma"] and f["os_avx"]
    cfg = pyquant.config()
    assert cfg["isa"] == pyquant.isa() and cfg["pyquant"] == pyquant.__version__
    r = _run("import sys, runpy; sys.argv = ['pyquant', 'info']; runpy.run_module('pyquant', run_name='__main__')")
    assert r.returncode == 0, r.stderr
    assert "available_isas:" in r.stdout and "num_threads:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pyquant", "info", "--json"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and '"isa"' in r.stdout


def test_pool_survives_fork_and_threads():
    code = (
        "import os, numpy as np, pyquant\n"
        "x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)\n"
        "a = pyquant.quantize(x, 0.01)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    b = pyquant.quantize(x, 0.01)\n"
        "    os._exit(0 if (a == b).all() else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYQUANT_NUM_THREADS="2"), cwd="/")
    assert r.stdout.strip() == "0", r.stderr


def test_concurrent_python_threads_identical():
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(1).standard_normal((64, 4099)).astype(np.float32) * 30
    expect = pyquant.quantize_reference(x, 0.25, 3, "int8")
    with pyquant.use_threads(2), ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: pyquant.quantize(x, 0.25, 3, "int8"), range(16)))
    for r in results:
        np.testing.assert_array_equal(r, expect)
