"""atheris harness: PackedWeights from pickles whose state is odd (fields missing, wrong dtypes, shapes, NaN
scales, ...; fuzz_common.packed_state). Contract (fuzz_common.check_packed): TypeError / ValueError on load or
first use, or exact integer results. Known to fail today (pyquant/gemm.py's __setstate__ validates nothing, see
issue 14's note), so it is not in CI; run it locally:

    python fuzz/fuzz_packed.py /tmp/new fuzz/corpus/packed -runs=2000
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports(include=["pyquant"]):
    import pyquant  # noqa: F401
import fuzz_common as fc  # noqa: E402


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    fc.check_packed(fc.packed_state(lambda n: fdp.ConsumeIntInRange(0, n - 1) if n > 1 else 0,
                                    fdp.ConsumeBytes(4)))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
