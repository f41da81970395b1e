"""Functions that make new tensors: zeros, ones, full, arange, eye, randn, rand, ...

A shape is an integer or a tuple/list of non-negative integers (``randn(2, 3)`` also works).

>>> import nanodl as nd
>>> nd.zeros((2, 3)).shape, nd.randn(2, 3).shape, nd.eye(2).tolist()
((2, 3), (2, 3), [[1.0, 0.0], [0.0, 1.0]])
>>> nd.zeros((2, -1))
Traceback (most recent call last):
    ...
ValueError: zeros: shape must hold non-negative integers, got (2, -1)
"""
import numbers
import operator

import numpy as np

from .random import generator
from .tensor import Tensor, get_default_dtype


def _shape(shape, function):
    """``shape`` (an int, or a tuple/list of ints) as a tuple of non-negative ints."""
    extents = shape if isinstance(shape, (tuple, list)) else (shape,)
    try:
        if any(isinstance(extent, bool) for extent in extents):
            raise TypeError
        result = tuple(operator.index(extent) for extent in extents)
    except TypeError:
        raise TypeError(f"{function}: shape must hold non-negative integers, got {shape!r}") from None
    if any(extent < 0 for extent in result):
        raise ValueError(f"{function}: shape must hold non-negative integers, got {shape!r}")
    return result


def _unpacked_shape(shape, function):
    """``randn(2, 3)`` and ``randn((2, 3))`` both mean shape ``(2, 3)``."""
    return _shape(shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape, function)


def _dtype(dtype, function):
    try:
        return np.dtype(dtype or get_default_dtype())
    except TypeError:
        raise TypeError(f"{function}: unknown dtype {dtype!r}") from None


def _make(array, requires_grad, device):
    return Tensor(array, requires_grad=requires_grad, device=device)


def zeros(shape, dtype=None, requires_grad=False, device=None):
    return _make(np.zeros(_shape(shape, "zeros"), _dtype(dtype, "zeros")), requires_grad, device)


def ones(shape, dtype=None, requires_grad=False, device=None):
    return _make(np.ones(_shape(shape, "ones"), _dtype(dtype, "ones")), requires_grad, device)


def full(shape, value, dtype=None, requires_grad=False, device=None):
    if not isinstance(value, (numbers.Number, np.generic)) or np.asarray(value).dtype.kind not in "biufc":
        raise TypeError(f"full: value must be a number, got {value!r} ({type(value).__name__})")
    if dtype is None:
        dtype = get_default_dtype() if isinstance(value, float) else np.asarray(value).dtype
    return _make(np.full(_shape(shape, "full"), value, _dtype(dtype, "full")), requires_grad, device)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype or t.dtype, requires_grad, getattr(t, "device", None))


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype or t.dtype, requires_grad, getattr(t, "device", None))


def arange(start, stop=None, step=1, dtype=None, device=None):
    """As ``numpy.arange``; float bounds give the default float dtype."""
    for name, bound in (("start", start), ("stop", stop), ("step", step)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                  or not np.isfinite(bound)):
            raise TypeError(f"arange: {name} must be a finite real number, got {bound!r}")
    if step == 0:
        raise ValueError("arange: step must not be zero")
    values = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is None and values.dtype.kind == "f":
        dtype = get_default_dtype()
    return Tensor(values if dtype is None else values.astype(dtype), device=device)


def eye(n, m=None, dtype=None, device=None):
    n, m = _shape((n, n if m is None else m), "eye")
    return Tensor(np.eye(n, m, dtype=_dtype(dtype, "eye")), device=device)


def randn(*shape, dtype=None, requires_grad=False, device=None):
    """Standard normal draws from the global generator (see ``manual_seed``)."""
    shape, dtype = _unpacked_shape(shape, "randn"), _dtype(dtype, "randn")
    return _make(generator().standard_normal(shape).astype(dtype), requires_grad, device)


def rand(*shape, dtype=None, requires_grad=False, device=None):
    """Uniform [0, 1) draws from the global generator (see ``manual_seed``)."""
    shape, dtype = _unpacked_shape(shape, "rand"), _dtype(dtype, "rand")
    return _make(generator().random(shape).astype(dtype), requires_grad, device)


def from_numpy(array):
    """A tensor sharing memory with ``array`` (its dtype kept)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array)
