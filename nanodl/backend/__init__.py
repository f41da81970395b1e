"""Backends: which array library holds a tensor (``array_module``), and which kernel table
runs it (``kernels``: the compiled or NumPy table on the CPU, ``set_kernels`` /
``NANODL_KERNELS`` choose; the CuPy table on the GPU). See docs/internals.md, section 6.

>>> import numpy as np
>>> from nanodl import backend
>>> backend.is_device_array(np.zeros(2)), backend.to_host([1.0, 2.0])
(False, array([1., 2.]))
"""
import os
from threading import get_ident

import numpy as np

from . import kernels_numpy

from . import threads

with threads.loading_native_kernels():
    try:  # the compiled table exists only when the Cython extension was built
        from . import kernels_native
    except ImportError:  # pragma: no cover - depends on the build
        kernels_native = None
if kernels_native is not None:
    from . import _activations, _linear, _optim, _xent
    threads.configure_native((_activations, _linear, _optim, _xent))

KERNEL_NAMES = ("native", "numpy")
_cpu_table = (kernels_native or kernels_numpy).TABLE
_gpu_table = None
# thread id -> watch(table) -> the table that thread's kernel calls go through (``nanodl.profile``)
table_watchers = {}


def native_available():
    """True when the Cython extension was built and can be selected."""
    return kernels_native is not None


def set_kernels(name):
    """Select the CPU kernel table: ``'native'`` (compiled) or ``'numpy'`` (reference)."""
    global _cpu_table
    if name not in KERNEL_NAMES:
        raise ValueError(f"set_kernels: unknown kernels {name!r}; valid names: {', '.join(KERNEL_NAMES)}")
    if name == "native" and kernels_native is None:
        raise RuntimeError("set_kernels: the native extension is not built; "
                           "run `pip install -e .` (needs a C compiler) or use 'numpy'")
    _cpu_table = (kernels_native if name == "native" else kernels_numpy).TABLE


def get_kernels():
    """The name of the CPU kernel table in use."""
    return _cpu_table.name


def kernels(array):
    """The kernel table that runs ``array``'s device."""
    if table_watchers:  # some thread's kernel calls are watched: is it this one?
        return _watched(array)
    if type(array) is np.ndarray or not is_device_array(array):
        return _cpu_table
    return gpu_table()


def _watched(array):
    table = _cpu_table if type(array) is np.ndarray or not is_device_array(array) else gpu_table()
    watch = table_watchers.get(get_ident())
    return table if watch is None else watch(table)


def gpu_table():
    """The CuPy kernel table (``RuntimeError`` saying what is missing without CuPy or a GPU)."""
    global _gpu_table
    if _gpu_table is None:
        from . import kernels_cupy  # imports CuPy, through .cuda
        _gpu_table = kernels_cupy.TABLE
    return _gpu_table


def is_device_array(x):
    """True when ``x`` is a GPU (CuPy) array; False for NumPy arrays, scalars and lists."""
    return type(x) is not np.ndarray and hasattr(x, "__cuda_array_interface__")


def to_host(x, copy=False):
    """``x`` as a NumPy array (``copy=True``: always a fresh one, never the caller's)."""
    if is_device_array(x):
        return x.get()
    return np.array(x) if copy else np.asarray(x)


def array_module(x):
    """``numpy`` or ``cupy``, whichever holds ``x`` (an array or a Tensor)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np
    # A Tensor holds its array in ``.data`` (a CuPy array's own ``.data`` is a pointer: skip it).
    data = x if is_device_array(x) else getattr(x, "data", x)
    if is_device_array(data):
        from .cuda import require_cupy
        return require_cupy()
    return np


def device_of(array):
    """``'cpu'`` for NumPy arrays, ``'cuda'`` for CuPy arrays."""
    return "cuda" if is_device_array(array) else "cpu"


def cuda_available():
    """True when CuPy imports and sees at least one GPU."""
    from .cuda import cuda_status
    return cuda_status() is None


def to_device(array, device):
    """Move a backend array to ``device`` (``'cpu'`` or ``'cuda'``); a no-op when already there."""
    device = _check_device(device)
    if device == "cpu":
        return array.get() if is_device_array(array) else array
    from .cuda import require_cupy
    return require_cupy().asarray(array)


def _check_device(device):
    name = str(device)
    if name.startswith("cuda"):
        return "cuda"
    if name != "cpu":
        raise ValueError(f"unknown device {device!r}; valid devices: cpu, cuda")
    return name


if os.environ.get("NANODL_KERNELS"):
    set_kernels(os.environ["NANODL_KERNELS"])
