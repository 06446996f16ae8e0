"""The wheel must run on any x86-64: code outside the per-ISA kernels may not use AVX or AVX-512.

Reads the disassembly and symbol table of the installed extension: every function with external or weak
linkage whose name is not inside an ISA namespace (pyquant::avx2, ::avx512, ::avx512vnni, ::avxvnni) must be
free of VEX/EVEX instructions and of ymm / zmm / mask registers. This catches the classic failure where an
inline function or template compiled with AVX flags in an ISA file becomes the copy the linker keeps for
baseline code (SIGILL on older CPUs). Functions with internal linkage (static, unnamed namespaces) are
exempt: only code of their own translation unit can call them.
"""
import platform
import re
import shutil
import subprocess

import pytest

import pyquant
from pyquant import _core

ISA_NAMESPACES = ("::avx2::", "::avx512::", "::avx512vnni::", "::avxvnni::")
FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")
AVX_OPERAND = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")


def _is_isa_code(name: str) -> bool:
    return any(ns in name for ns in ISA_NAMESPACES)


def _local_function_addresses(path: str) -> set:
    """Addresses of functions with internal linkage ('t' in nm)."""
    out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    return {int(parts[0], 16) for parts in (line.split() for line in out.splitlines())
            if len(parts) >= 3 and parts[1] == "t"}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None, reason="needs binutils")
def test_baseline_code_has_no_avx():
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _core.__file__],
                         capture_output=True, text=True, check=True).stdout
    local = _local_function_addresses(_core.__file__)
    offenders = {}
    current, exempt, seen_isa_fn = None, False, 0
    for line in dis.splitlines():
        m = FUNC.match(line)
        if m:
            current = m.group(2)
            isa_fn = _is_isa_code(current)
            seen_isa_fn += isa_fn
            exempt = isa_fn or int(m.group(1), 16) in local
            continue
        if current is None or exempt or ":\t" not in line:
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
