"""The wheel must run on any x86-64: code outside the per-ISA kernels may not use AVX or AVX-512.

Reads the disassembly of the installed extension: every function whose name is not inside an ISA namespace
(pyquant::avx2, ::avx512, ::avx512vnni, ::avxvnni) must be free of VEX/EVEX instructions and of ymm / zmm /
mask registers. This catches the classic failure where an inline function or template compiled with AVX
flags in an ISA file becomes the copy the linker keeps for baseline code (SIGILL on older CPUs).
"""
import platform
import re
import shutil
import subprocess

import pytest

import pyquant
from pyquant import _core

ISA_NAMESPACES = ("::avx2::", "::avx512::", "::avx512vnni::", "::avxvnni::")
# Helpers that live in unnamed namespaces of the ISA-only headers (internal linkage, so never shared).
ISA_HELPER = re.compile(r"_(avx2|avx512)\b|_(avx2|avx512)\(")
FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
AVX_OPERAND = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")


def _is_isa_code(name: str) -> bool:
    return any(ns in name for ns in ISA_NAMESPACES) or bool(ISA_HELPER.search(name))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
def test_baseline_code_has_no_avx():
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _core.__file__],
                         capture_output=True, text=True, check=True).stdout
    offenders = {}
    current, isa_fn, seen_isa_fn = None, False, 0
    for line in dis.splitlines():
        m = FUNC.match(line)
        if m:
            current = m.group(1)
            isa_fn = _is_isa_code(current)
            seen_isa_fn += isa_fn
            continue
        if current is None or isa_fn or ":\t" not in line:
            continue
        insn = line.split(":\t", 1)[1].strip()
        mnemonic = insn.split(" ", 1)[0]
        if (mnemonic.startswith("v") and mnemonic not in ("verr", "verw")) or mnemonic.startswith("k") \
                or AVX_OPERAND.search(insn):
            offenders.setdefault(current, insn)
    assert seen_isa_fn > 0, "no ISA-namespace functions found: the check would pass vacuously"
    assert not offenders, "AVX instructions in baseline code:\n" + "\n".join(
        f"{fn}: {insn}" for fn, insn in list(offenders.items())[:20])


def test_compiled_paths_reported():
    assert "scalar" in _core.compiled_isas()
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"avx2", "avx512"} <= set(_core.compiled_isas())
    assert set(pyquant.available_isas()) <= set(_core.compiled_isas())
