"""atheris harness: pyquant.load on mutated model files (coverage-guided over pyquant's Python code).

Each input is a model file. It is loaded as it is, and again with its checksum made valid (so mutations of the
architecture JSON and the arrays reach the layer checks instead of stopping at the checksum). Contract
(fuzz_common.check_load): loads into a model that runs with the shape it reports, or ValueError / OSError
naming the file. Anything else raises, and atheris saves the input.

    # CI (bounded; new inputs go to a scratch folder, the checked-in seeds are only read):
    python fuzz/fuzz_load.py /tmp/new fuzz/corpus/load -runs=3000 -max_total_time=60 -timeout=20 -seed=1
    # longer local run:
    python fuzz/fuzz_load.py /tmp/new fuzz/corpus/load -max_total_time=3600 -timeout=20
"""
import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports(include=["pyquant"]):
    import pyquant  # noqa: F401
import fuzz_common as fc  # noqa: E402

FOLDER = tempfile.mkdtemp(prefix="pyquant-fuzz-load-")


def TestOneInput(data: bytes) -> None:
    fc.check_load(data, FOLDER)
    signed = fc.resign(data)
    if signed is not None and signed != data:
        fc.check_load(signed, FOLDER)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
