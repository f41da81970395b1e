"""Anomaly detection: find the op where an inf or NaN is *born*, not where it is noticed.

Inside ``nd.detect_anomaly()`` an op (or a ``backward``) that makes a non-finite value
from finite ones raises ``AnomalyError`` (a ``FloatingPointError``) naming the op, the
shapes, the first bad element and the line of your code that called it.

>>> import nanodl as nd
>>> x = nd.tensor([1.0, -1.0], requires_grad=True)
>>> with nd.detect_anomaly():
...     y = (x * 2).log()          # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
nanodl.anomaly.AnomalyError: detect_anomaly: Log produced nan ...

The mode is per thread; outside it the cost is an empty-list test. See docs/internals.md.
"""
import os
import sys
import threading

import numpy as np

from . import autograd
from .backend import array_module, to_host

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_local = threading.local()  # .depth: nesting depth of this thread's detect_anomaly blocks


class AnomalyError(FloatingPointError):
    """An op made inf/NaN from finite values (forward or backward)."""


class detect_anomaly:
    """Context manager (and decorator): raise at the op that first makes an inf or NaN.

    ``check_backward=False`` checks only the forward pass."""

    def __init__(self, check_backward=True):
        self.check_backward = check_backward

    def __enter__(self):
        # NumPy's RuntimeWarning would only repeat, less precisely, what AnomalyError says
        self._numpy_errors = np.errstate(divide="ignore", invalid="ignore", over="ignore")
        self._numpy_errors.__enter__()
        _local.depth = getattr(_local, "depth", 0) + 1
        autograd.forward_hooks.append(_check_forward)
        if self.check_backward:
            autograd.backward_hooks.append(_check_backward)
        return self

    def __exit__(self, *exc):
        _local.depth -= 1
        autograd.forward_hooks.remove(_check_forward)
        if self.check_backward:
            autograd.backward_hooks.remove(_check_backward)
        self._numpy_errors.__exit__(*exc)
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with detect_anomaly(self.check_backward):
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_anomaly_enabled():
    """True inside ``detect_anomaly()`` (in this thread)."""
    return getattr(_local, "depth", 0) > 0


def _check_forward(node, args, kwargs, out):
    node.__dict__["_created_at"] = _user_site()
    if not _is_float(out) or _all_finite(out):
        return
    inputs = [arg.data if hasattr(arg, "grad_fn") else arg for arg in args
              if hasattr(arg, "grad_fn") or hasattr(arg, "shape")]
    if not all(_all_finite(array) for array in inputs if _is_float(array)):
        return  # not the origin: a non-finite value came in
    shapes = ", ".join(str(tuple(array.shape)) for array in inputs)
    raise AnomalyError(f"detect_anomaly: {node.name} produced {_describe(out)} from finite inputs (shapes: "
                       f"{shapes}){_first_bad(out, inputs)}; called at {node.__dict__['_created_at']}")


def _check_backward(node, grad_output, grads):
    if not _is_float(grad_output) or not _all_finite(grad_output):
        return  # the incoming gradient was already bad: not the origin
    for index, grad in enumerate(grads):
        if grad is not None and _is_float(grad) and not _all_finite(grad):
            shape = tuple(node.inputs[index].shape) if index < len(node.inputs) else "?"
            where = node.__dict__.get("_created_at", "an op created outside detect_anomaly()")
            raise AnomalyError(f"detect_anomaly: {node.name}.backward turned a finite gradient into "
                               f"{_describe(grad)} for input {index} (shape {shape}); {node.name} was "
                               f"created at {where}")


def _is_float(array):
    dtype = getattr(array, "dtype", None)
    return dtype is not None and dtype.kind in ("f", "c")


def _all_finite(array):
    return bool(array_module(array).isfinite(array).all())


def _describe(array):
    host = to_host(array)
    kinds = [word for word, present in (("nan", np.isnan(host).any()), ("inf", np.isinf(host).any()))
             if present]
    count = int((~np.isfinite(host)).sum())
    return f"{'/'.join(kinds)} ({count} of {host.size} elements)"


def _first_bad(out, inputs):
    host = to_host(out)
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
    text = f"; first at index {index}"
    same_shape = [to_host(a) for a in inputs if getattr(a, "shape", None) == host.shape]
    if same_shape:
        values = ", ".join(f"{float(a[index]):.6g}" for a in same_shape)
        text += f" where the input is {values}"
    return text


def _user_site():
    """'file.py:12 (in fn)' for the innermost frame outside the nanodl package."""
    frame = sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return "<nanodl internals>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} (in {frame.f_code.co_name})"
