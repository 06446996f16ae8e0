"""Shared fixtures. Tests run against the INSTALLED pyquant (no tests/__init__.py; run from outside the
source tree so a pyquant/ folder on sys.path cannot shadow the wheel)."""
import os

import numpy as np
import pytest

import pyquant

ALL_ISAS = pyquant.available_isas()
# With PYQUANT_ISA set (CI runs the suite once more with PYQUANT_ISA=scalar), per-path tests use that path only.
ISAS = [pyquant.isa()] if os.environ.get("PYQUANT_ISA") else ALL_ISAS


def pytest_report_header(config):
    return [f"pyquant {pyquant.__version__} from {os.path.dirname(pyquant.__file__)}",
            f"pyquant ISA paths: {' '.join(ISAS)} (active {pyquant.isa()}), threads {pyquant.get_num_threads()}"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once on every ISA path this machine has (scalar first)."""
    with pyquant.use_isa(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def run_on_every_isa(fn):
    """{isa: fn()} for every available path, restoring the active one afterwards."""
    results = {}
    for name in ALL_ISAS:
        with pyquant.use_isa(name):
            results[name] = fn()
    return results
