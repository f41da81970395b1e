"""The kernel contract: every kernel's name, signature and argument checks, declared once.

Each table (``kernels_numpy``, ``kernels_native``, ``kernels_cupy``) defines plain,
unchecked compute functions as declared here and registers them with
``TABLE = KernelTable("numpy", globals(), CPU)``, which wraps each in the declared checks,
so every table raises the same errors, word for word (docs/internals.md, section 6):

>>> import numpy as np
>>> from nanodl.backend import kernels_numpy
>>> kernels_numpy.TABLE.sigmoid_forward(np.array([1, 2]))
Traceback (most recent call last):
    ...
TypeError: sigmoid_forward: arrays must all be float32 or all float64; got x int64

``table.compute.<name>`` is the unchecked function, for a caller that validated a call
once and repeats it with arrays of the same dtypes, shapes and layouts (the captured
step); given anything else it is undefined (the native one may read out of bounds).

The contract:

* Float arrays are float32 or float64, one dtype per call (``TypeError``); class labels
  are integers of any width, not bool, in [0, C) (``ValueError`` naming label and index).
* Arrays of the wrong device raise ``TypeError``; the CPU tables take anything
  ``np.asarray`` takes, the GPU table CuPy arrays only.
* Inputs may have any layout; arrays updated in place (optimizer ``param`` and state)
  must be writeable and C-contiguous (``ValueError``: a copy would drop the update).
* Shapes must agree, logits have C >= 1 (``ValueError``); activation names are
  ``LINEAR_ACTIVATIONS``; scalars are real numbers (``TypeError``) within
  ``SCALAR_DOMAINS`` (``ValueError``).
* Empty and 0-d arrays are valid wherever the shapes allow. Results are fresh arrays;
  NaN and inf propagate as in NumPy; all tables agree to float32 rounding.
* ``linear_forward`` takes 2-D ``x`` and returns ``(out, saved)``: the output for
  activations that save it (``Activation.saves``), else the pre-activation. Optimizer
  steps follow PyTorch's formulas, update ``param`` and state in place and return None;
  state an option does not use may be None.
"""
import inspect
import numbers
import types

import numpy as np

from .activations import ELEMENTWISE, LINEAR_ACTIVATIONS

FLOAT_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})
_NUMBER_TYPES = (float, int)


# ---------------------------------------------------------------- devices
class Device:
    """What a table's checks need to know: the ``array_type`` it computes on;
    ``coerce(kernel, name, a)``, an argument as one (or ``TypeError``);
    ``scan_labels(target, classes)``: ``(labels as the compute functions take them, index
    of the first outside [0, classes) or -1)``."""

    def __init__(self, name, array_type, coerce, scan_labels):
        self.name, self.array_type = name, array_type
        self.coerce, self.scan_labels = coerce, scan_labels


def _coerce_host(kernel, name, a):
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"{kernel}: {name} is a GPU array but this kernel table runs on the CPU; "
                        "move it with .to('cpu') or use the GPU table")
    return np.asarray(a)


def scan_host_labels(target, classes):
    if target.size == 0 or (target.min() >= 0 and target.max() < classes):
        return target, -1
    return target, int(np.flatnonzero((target < 0) | (target >= classes))[0])


CPU = Device("cpu", np.ndarray, _coerce_host, scan_host_labels)


# ---------------------------------------------------------------- the checks
def dtype_error(kernel, /, **arrays):
    got = ", ".join(f"{name} {getattr(a, 'dtype', type(a).__name__)}" for name, a in arrays.items())
    return TypeError(f"{kernel}: arrays must all be float32 or all float64; got {got}")


def shape_error(kernel, what, /, **arrays):
    got = " and ".join(f"{name} {a.shape}" for name, a in arrays.items())
    return ValueError(f"{kernel}: {got} {what}")


# The scalar arguments' domains (low, high, high included), by name or (kernel, name); NaN
# lies outside all. PyTorch's ranges (outside them Adam's 1 - beta1**step can be 0).
SCALAR_DOMAINS = {
    "lr": (0.0, np.inf, True), "eps": (0.0, np.inf, True), "weight_decay": (0.0, np.inf, True),
    "momentum": (0.0, np.inf, True), ("rmsprop_step", "alpha"): (0.0, np.inf, True),
    "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False), "step": (1.0, np.inf, True),
}
_ANY_REAL = (-np.inf, np.inf, True)


def _real(kernel, name, value):
    """A scalar argument as a Python number in its ``SCALAR_DOMAINS`` interval."""
    if type(value) not in _NUMBER_TYPES:
        if not isinstance(value, numbers.Real):  # NumPy scalars, bool, Fraction pass
            raise TypeError(f"{kernel}: {name} must be a real number, got {type(value).__name__} "
                            f"{value!r}")
        value = float(value)
    low, high, closed = SCALAR_DOMAINS.get((kernel, name)) or SCALAR_DOMAINS.get(name, _ANY_REAL)
    if not (low <= value <= high if closed else low <= value < high):
        interval = f"[{low:g}, {high:g}{']' if closed else ')'}"
        raise ValueError(f"{kernel}: {name} must lie in {interval}, got {value!r}")
    return value


def _activation_error(kernel, activation):
    return ValueError(f"{kernel}: unknown activation {activation!r}; valid names: "
                      f"{', '.join(LINEAR_ACTIVATIONS)}")


def _in_place(kernel, device, name, array, param):
    """An array updated in place: ``param``'s dtype and shape, writeable, C order."""
    if not isinstance(array, device.array_type):
        raise TypeError(f"{kernel}: {name} is updated in place, so it must be a "
                        f"{device.array_type.__module__}.{device.array_type.__name__}, "
                        f"got {type(array).__name__}")
    if param is not None:
        if array.dtype != param.dtype:
            raise dtype_error(kernel, param=param, **{name: array})
        if array.shape != param.shape:
            raise shape_error(kernel, "differ in shape", param=param, **{name: array})
    flags = array.flags
    writeable = getattr(flags, "writeable", True)  # CuPy arrays are always writeable
    if not writeable or not flags.c_contiguous:
        raise ValueError(f"{kernel}: {name} is updated in place, so it must be writeable "
                         f"and C-contiguous (got writeable={writeable}, "
                         f"C-contiguous={flags.c_contiguous})")
    return array


def _xent_target(kernel, device, target, scores, name):
    """Sparse integer labels (N,), each in [0, C), or a dense target like ``scores``."""
    if type(target) is not device.array_type:
        target = device.coerce(kernel, "target", target)
    if target.ndim == 1:
        rows, classes = scores.shape
        if target.dtype.kind not in "iu":
            raise TypeError(f"{kernel}: sparse target must hold integer class labels, got {target.dtype}")
        if target.shape[0] != rows:
            raise ValueError(f"{kernel}: target {target.shape} does not match {rows} rows of logits")
        labels, bad = device.scan_labels(target, classes)
        if bad >= 0:
            raise ValueError(f"{kernel}: target label {int(target[bad])} at index {bad} is out of "
                             f"range [0, {classes})")
        return labels
    if target.dtype != scores.dtype:
        raise dtype_error(kernel, **{name: scores, "target": target})
    if target.shape != scores.shape:
        raise shape_error(kernel, "differ in shape", **{name: scores, "target": target})
    return target


# ---------------------------------------------------------------- declarations
# Each declaration is a factory: (compute, device) -> the checked kernel, with the declared signature.
DECLARATIONS = {}


def declare(factory):
    DECLARATIONS[factory.__name__] = factory
    return factory


def _declare_activation(activation):
    """``<name>_forward(x[, alpha])`` and ``<name>_backward(y or x, grad[, alpha])``."""
    forward_name, backward_name = activation.forward_kernel, activation.backward_kernel
    saved_name = "y" if activation.saves == "output" else "x"

    def forward_factory(compute, device):
        array_type, coerce = device.array_type, device.coerce
        if activation.has_alpha:
            def forward(x, alpha, /):
                if type(x) is not array_type:
                    x = coerce(forward_name, "x", x)
                if x.dtype not in FLOAT_DTYPES:
                    raise dtype_error(forward_name, x=x)
                return compute(x, _real(forward_name, "alpha", alpha))
        else:
            def forward(x, /):
                if type(x) is not array_type:
                    x = coerce(forward_name, "x", x)
                if x.dtype not in FLOAT_DTYPES:
                    raise dtype_error(forward_name, x=x)
                return compute(x)
        return forward

    def backward_factory(compute, device):
        array_type, coerce = device.array_type, device.coerce

        def check(saved, grad):
            if type(saved) is not array_type:
                saved = coerce(backward_name, saved_name, saved)
            if type(grad) is not array_type:
                grad = coerce(backward_name, "grad", grad)
            if saved.dtype not in FLOAT_DTYPES or grad.dtype != saved.dtype:
                raise dtype_error(backward_name, **{saved_name: saved, "grad": grad})
            if grad.shape != saved.shape:
                raise shape_error(backward_name, "differ in shape", **{saved_name: saved, "grad": grad})
            return saved, grad

        if activation.has_alpha:
            def backward(saved, grad, alpha, /):
                saved, grad = check(saved, grad)
                return compute(saved, grad, _real(backward_name, "alpha", alpha))
        else:
            def backward(saved, grad, /):
                saved, grad = check(saved, grad)
                return compute(saved, grad)
        signature = inspect.signature(backward)  # declared: ``y`` or ``x``, not ``saved``
        params = list(signature.parameters.values())
        params[0] = params[0].replace(name=saved_name)
        backward.__signature__ = signature.replace(parameters=params)
        return backward

    DECLARATIONS[forward_name], DECLARATIONS[backward_name] = forward_factory, backward_factory


for _activation_record in ELEMENTWISE:
    _declare_activation(_activation_record)


@declare
def linear_forward(compute, device):
    array_type, coerce, name = device.array_type, device.coerce, "linear_forward"

    def linear_forward(x, kernel, bias, activation="linear", alpha=0.0):
        if type(x) is not array_type:
            x = coerce(name, "x", x)
        if type(kernel) is not array_type:
            kernel = coerce(name, "kernel", kernel)
        if bias is not None and type(bias) is not array_type:
            bias = coerce(name, "bias", bias)
        if x.dtype not in FLOAT_DTYPES or kernel.dtype != x.dtype or (
                bias is not None and bias.dtype != x.dtype):
            raise dtype_error(name, x=x, kernel=kernel, **({} if bias is None else {"bias": bias}))
        if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
            raise shape_error(name, "are not aligned", x=x, kernel=kernel)
        if bias is not None and bias.shape != (kernel.shape[1],):
            raise shape_error(name, "do not match (bias must be (units,))", kernel=kernel, bias=bias)
        if activation not in LINEAR_ACTIVATIONS:
            raise _activation_error(name, activation)
        return compute(x, kernel, bias, activation, _real(name, "alpha", alpha))
    return linear_forward


@declare
def linear_backward(compute, device):
    array_type, coerce, name = device.array_type, device.coerce, "linear_backward"

    def linear_backward(x, kernel, saved, grad, activation="linear", alpha=0.0,
                        need_x=True, need_kernel=True, need_bias=True):
        if type(x) is not array_type:
            x = coerce(name, "x", x)
        if type(kernel) is not array_type:
            kernel = coerce(name, "kernel", kernel)
        if type(grad) is not array_type:
            grad = coerce(name, "grad", grad)
        if grad.dtype not in FLOAT_DTYPES or x.dtype != grad.dtype or kernel.dtype != grad.dtype:
            raise dtype_error(name, x=x, kernel=kernel, grad=grad)
        if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
            raise shape_error(name, "are not aligned", x=x, kernel=kernel)
        if grad.shape != (x.shape[0], kernel.shape[1]):
            raise shape_error(name, "do not match x @ kernel", x=x, kernel=kernel, grad=grad)
        if activation not in LINEAR_ACTIVATIONS:
            raise _activation_error(name, activation)
        if activation != "linear":  # the identity's backward does not read ``saved``
            if type(saved) is not array_type:
                saved = coerce(name, "saved", saved)
            if saved.dtype != grad.dtype:
                raise dtype_error(name, saved=saved, grad=grad)
            if saved.shape != grad.shape:
                raise shape_error(name, "differ in shape", saved=saved, grad=grad)
        return compute(x, kernel, saved, grad, activation, _real(name, "alpha", alpha),
                       bool(need_x), bool(need_kernel), bool(need_bias))
    return linear_backward


@declare
def softmax_xent_forward(compute, device):
    array_type, coerce, name = device.array_type, device.coerce, "softmax_xent_forward"

    def softmax_xent_forward(logits, target):
        if type(logits) is not array_type:
            logits = coerce(name, "logits", logits)
        if logits.dtype not in FLOAT_DTYPES:
            raise dtype_error(name, logits=logits)
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"{name}: logits must be 2-D (N, C) with C >= 1, got shape {logits.shape}")
        return compute(logits, _xent_target(name, device, target, logits, "logits"))
    return softmax_xent_forward


@declare
def softmax_xent_backward(compute, device):
    array_type, coerce, name = device.array_type, device.coerce, "softmax_xent_backward"

    def softmax_xent_backward(probs, target, grad):
        if type(probs) is not array_type:
            probs = coerce(name, "probs", probs)
        if type(grad) is not array_type:
            grad = coerce(name, "grad", grad)
        if probs.dtype not in FLOAT_DTYPES or grad.dtype != probs.dtype:
            raise dtype_error(name, probs=probs, grad=grad)
        if probs.ndim != 2 or probs.shape[1] == 0 or grad.shape != probs.shape[:1]:
            raise shape_error(name, "do not match (probs (N, C) with C >= 1, grad (N,))",
                              probs=probs, grad=grad)
        return compute(probs, _xent_target(name, device, target, probs, "probs"), grad)
    return softmax_xent_backward


def _step_operands(kernel, device, param, grad):
    """The common checks of an optimizer step: ``param`` in place, ``grad`` like it."""
    if not isinstance(param, device.array_type):
        _in_place(kernel, device, "param", param, None)
    if type(grad) is not device.array_type:
        grad = device.coerce(kernel, "grad", grad)
    if param.dtype not in FLOAT_DTYPES or grad.dtype != param.dtype:
        raise dtype_error(kernel, param=param, grad=grad)
    if grad.shape != param.shape:
        raise shape_error(kernel, "differ in shape", param=param, grad=grad)
    flags = param.flags
    if not flags.c_contiguous or not getattr(flags, "writeable", True):
        _in_place(kernel, device, "param", param, None)
    return grad


@declare
def sgd_step(compute, device):
    name = "sgd_step"

    def sgd_step(param, grad, *, momentum_buf=None, lr, momentum=0.0, nesterov=False,
                 weight_decay=0.0):
        grad = _step_operands(name, device, param, grad)
        momentum = _real(name, "momentum", momentum)
        if momentum:
            _in_place(name, device, "momentum_buf", momentum_buf, param)
        compute(param, grad, momentum_buf, _real(name, "lr", lr), momentum, bool(nesterov),
                _real(name, "weight_decay", weight_decay))
    return sgd_step


@declare
def adam_step(compute, device):
    name = "adam_step"

    def adam_step(param, grad, *, exp_avg, exp_avg_sq, max_exp_avg_sq=None, step, lr, beta1,
                  beta2, eps, weight_decay=0.0, decoupled=False, amsgrad=False):
        grad = _step_operands(name, device, param, grad)
        _in_place(name, device, "exp_avg", exp_avg, param)
        _in_place(name, device, "exp_avg_sq", exp_avg_sq, param)
        if amsgrad:
            _in_place(name, device, "max_exp_avg_sq", max_exp_avg_sq, param)
        compute(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, _real(name, "step", step),
                _real(name, "lr", lr), _real(name, "beta1", beta1), _real(name, "beta2", beta2),
                _real(name, "eps", eps), _real(name, "weight_decay", weight_decay),
                bool(decoupled), bool(amsgrad))
    return adam_step


@declare
def adagrad_step(compute, device):
    name = "adagrad_step"

    def adagrad_step(param, grad, *, state_sum, lr, eps, weight_decay=0.0):
        grad = _step_operands(name, device, param, grad)
        _in_place(name, device, "state_sum", state_sum, param)
        compute(param, grad, state_sum, _real(name, "lr", lr), _real(name, "eps", eps),
                _real(name, "weight_decay", weight_decay))
    return adagrad_step


@declare
def rmsprop_step(compute, device):
    name = "rmsprop_step"

    def rmsprop_step(param, grad, *, square_avg, momentum_buf=None, grad_avg=None, lr, alpha, eps,
                     weight_decay=0.0, momentum=0.0, centered=False):
        grad = _step_operands(name, device, param, grad)
        _in_place(name, device, "square_avg", square_avg, param)
        momentum = _real(name, "momentum", momentum)
        if momentum:
            _in_place(name, device, "momentum_buf", momentum_buf, param)
        if centered:
            _in_place(name, device, "grad_avg", grad_avg, param)
        compute(param, grad, square_avg, momentum_buf, grad_avg, _real(name, "lr", lr),
                _real(name, "alpha", alpha), _real(name, "eps", eps),
                _real(name, "weight_decay", weight_decay), momentum, bool(centered))
    return rmsprop_step


NAMES = tuple(DECLARATIONS)


def parameters(name):
    """The declared parameter names of kernel ``name``, in order."""
    return tuple(inspect.signature(DECLARATIONS[name](None, CPU)).parameters)


# Optional, unchecked compute functions into the caller's buffers (``table.buffered``, or None).
BUFFERED = ("linear_forward_into", "linear_backward_into")


# ---------------------------------------------------------------- tables
class KernelTable:
    """One implementation of every declared kernel: ``table.<name>`` checks, then computes;
    ``namespace`` holds a compute function per kernel, taking exactly the declared parameters."""

    def __init__(self, name, namespace, device):
        self.name, self.device = name, device
        computes = {}
        for kernel, factory in DECLARATIONS.items():
            compute = namespace.get(kernel)
            if compute is None:
                raise TypeError(f"kernel table {name!r} does not implement {kernel}")
            declared = parameters(kernel)
            got = tuple(inspect.signature(compute).parameters)
            if got != declared:
                raise TypeError(f"kernel table {name!r}: {kernel} takes {got}, declared {declared}")
            computes[kernel] = compute
            setattr(self, kernel, factory(compute, device))
        self.compute = types.SimpleNamespace(**computes)
        buffered = {kernel: namespace.get(kernel) for kernel in BUFFERED}
        self.buffered = types.SimpleNamespace(**buffered) if all(buffered.values()) else None

    NAMES = NAMES

    def __repr__(self):
        return f"<nanodl kernel table {self.name!r} ({self.device.name})>"
