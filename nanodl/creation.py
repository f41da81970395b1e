"""Functions that make new tensors: zeros, ones, full, arange, eye, randn, rand, ..."""
import numpy as np

from .random import generator
from .tensor import Tensor, get_default_dtype


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def _make(array, requires_grad, device):
    return Tensor(array, requires_grad=requires_grad, device=device)


def zeros(shape, dtype=None, requires_grad=False, device=None):
    return _make(np.zeros(shape, dtype or get_default_dtype()), requires_grad, device)


def ones(shape, dtype=None, requires_grad=False, device=None):
    return _make(np.ones(shape, dtype or get_default_dtype()), requires_grad, device)


def full(shape, value, dtype=None, requires_grad=False, device=None):
    if dtype is None:
        dtype = get_default_dtype() if isinstance(value, float) else np.asarray(value).dtype
    return _make(np.full(shape, value, dtype), requires_grad, device)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype or t.dtype, requires_grad, getattr(t, "device", None))


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype or t.dtype, requires_grad, getattr(t, "device", None))


def arange(start, stop=None, step=1, dtype=None, device=None):
    """As ``numpy.arange``; float bounds give the default float dtype."""
    values = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is None and values.dtype.kind == "f":
        dtype = get_default_dtype()
    return Tensor(values if dtype is None else values.astype(dtype), device=device)


def eye(n, m=None, dtype=None, device=None):
    return Tensor(np.eye(n, m, dtype=dtype or get_default_dtype()), device=device)


def randn(*shape, dtype=None, requires_grad=False, device=None):
    """Standard normal draws from the global generator (see ``manual_seed``)."""
    dtype = np.dtype(dtype or get_default_dtype())
    return _make(generator().standard_normal(_shape(shape)).astype(dtype), requires_grad, device)


def rand(*shape, dtype=None, requires_grad=False, device=None):
    """Uniform [0, 1) draws from the global generator (see ``manual_seed``)."""
    dtype = np.dtype(dtype or get_default_dtype())
    return _make(generator().random(_shape(shape)).astype(dtype), requires_grad, device)


def from_numpy(array):
    """A tensor sharing memory with ``array`` (its dtype kept)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array)
