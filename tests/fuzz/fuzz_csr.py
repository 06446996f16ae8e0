"""atheris harness: CSRMatrix(...) and CSRMatrix.from_scipy on fuzzed index arrays, values and shapes (the byte
layout is fuzz_common.decode_csr). Contract (fuzz_common.check_csr): TypeError / ValueError with a message, or a
matrix whose stored entries, dense form and products agree.

    python fuzz/fuzz_csr.py /tmp/new fuzz/corpus/csr -runs=20000 -max_total_time=60 -seed=1
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports(include=["pyquant"]):
    import pyquant  # noqa: F401
import fuzz_common as fc  # noqa: E402


def TestOneInput(data: bytes) -> None:
    fc.check_csr(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
