import os
import sys
import types

import numpy as np
import pytest
from hypothesis import settings

import nanodl

from helpers import KERNEL_TABLES, kernels

# CI runs the same hypothesis examples every time (a red CI must mean a real change);
# locally each run explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(params=KERNEL_TABLES)
def kernel_table(request):
    """Run a test once per CPU kernel table (native only when built)."""
    with kernels(request.param):
        yield request.param


@pytest.fixture
def seeded_global_rng(monkeypatch):
    """Replace nanodl.random with a stub whose generator() is a seedable Generator."""
    stub = types.ModuleType("nanodl.random")
    stub.rng = np.random.default_rng(0)
    stub.generator = lambda: stub.rng
    stub.manual_seed = lambda seed: setattr(stub, "rng", np.random.default_rng(seed))
    monkeypatch.setitem(sys.modules, "nanodl.random", stub)
    monkeypatch.setattr(nanodl, "random", stub, raising=False)
    return stub
