import pytest

from helpers import KERNEL_TABLES, kernels


@pytest.fixture(params=KERNEL_TABLES)
def kernel_table(request):
    """Run a test once per CPU kernel table (native only when built)."""
    with kernels(request.param):
        yield request.param
