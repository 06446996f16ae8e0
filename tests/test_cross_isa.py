"""Kernels of another architecture, tested under emulation: the arm64 NEON quantize path against the
scalar oracle (tests/native/check_quantize_isa.cpp), cross-compiled and run with qemu-user.

Needs the C++ sources (PYQUANT_SOURCE_DIR, which .ci/run sets), aarch64-linux-gnu-g++ and qemu-aarch64
(Debian: g++-aarch64-linux-gnu qemu-user); skipped otherwise.
"""
import os
import re
import shutil
import subprocess

import pytest

SRC = os.environ.get("PYQUANT_SOURCE_DIR", "")
CXX = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not (SRC and os.path.isdir(os.path.join(SRC, "csrc")) and CXX and QEMU),
                    reason="needs PYQUANT_SOURCE_DIR, aarch64-linux-gnu-g++ and qemu-aarch64")
def test_neon_quantize_matches_scalar_under_qemu(tmp_path):
    csrc = os.path.join(SRC, "csrc")
    exe = tmp_path / "check_neon"
    build = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-static", "-DISA_NS=neon", f"-I{csrc}",
             os.path.join(HERE, "native", "check_quantize_isa.cpp"),
             os.path.join(csrc, "kernels", "quantize_scalar.cpp"), os.path.join(csrc, "kernels", "quantize_neon.cpp"),
             "-o", str(exe)]
    subprocess.run(build, check=True, capture_output=True, text=True)
    r = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    m = re.search(r"(\d+) passed, (\d+) failed", r.stdout)
    assert m, r.stdout + r.stderr
    assert int(m.group(1)) > 300 and m.group(2) == "0", r.stdout
    assert r.returncode == 0
    # the arm64 baseline files (cpu detection via getauxval, dispatch, thread pool) compile too
    for f in ("cpu_features.cpp", "dispatch.cpp", "parallel.cpp"):
        subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-Werror", "-DPYQUANT_BUILD_NEON=1", f"-I{csrc}", "-c",
                        os.path.join(csrc, f), "-o", str(tmp_path / (f + ".o"))], check=True)
