"""The native kernel table: ``kernels_numpy``'s compiled twins (loops in ``csrc/*.pyx``); here
inputs are made C-contiguous and outputs allocated. ImportError when the extensions are not built.
"""
import threading

import numpy as np

from .activations import CODES, OUTPUT_GRAD_ACTIVATIONS, define_table_functions
from .table import CPU, Device, KernelTable

try:
    from . import _activations, _linear, _optim, _xent
except ImportError as exc:  # not built: nanodl.backend falls back to kernels_numpy
    raise ImportError(f"nanodl native kernels are not built ({exc}); "
                      "build them with `pip install -e .`") from exc

_LINEAR = CODES["linear"]
_OUTPUT_GRAD_CODES = frozenset(CODES[name] for name in OUTPUT_GRAD_ACTIVATIONS)
_INTP = np.dtype(np.intp)


def _intp_labels(target):
    """Integer labels as the contiguous intp array the Cython kernels index with."""
    return np.asarray(target if target.dtype == _INTP else target.astype(_INTP), order="C")


def scan_labels(target, classes):
    """``(intp labels, index of the first one outside [0, classes) or -1)``, one C pass."""
    if target.dtype.kind == "u" and target.size and target.max() > np.iinfo(np.intp).max:
        return target, int(np.flatnonzero(target >= classes)[0])  # would wrap as intp
    labels = _intp_labels(target)
    return labels, _xent.labels_out_of_range(labels, classes)


DEVICE = Device("cpu", np.ndarray, CPU.coerce, scan_labels)


# ---------------------------------------------------------------- activations
_ACT_FORWARD, _ACT_BACKWARD = _activations.forward, _activations.backward


def _forward(code, x, alpha):
    x = np.asarray(x, order="C")
    out = np.empty_like(x)
    _ACT_FORWARD(code, x, out, alpha)
    return out


def _backward(code, saved, grad, alpha):
    grad = np.asarray(grad, order="C")
    out = np.empty_like(grad)
    _ACT_BACKWARD(code, np.asarray(saved, order="C"), grad, out, alpha)
    return out


define_table_functions(globals(), "code", _forward, _backward)


# ---------------------------------------------------------------- dense layer
def linear_forward(x, kernel, bias, activation, alpha):
    """``np.matmul`` (why not sgemm: csrc/linear.pyx), then bias and activation in one pass."""
    code = CODES[activation]
    z = np.asarray(np.matmul(x, kernel), order="C")
    if bias is not None:
        bias = np.asarray(bias, order="C")
    if code in _OUTPUT_GRAD_CODES:
        if bias is not None or code != _LINEAR:
            _linear.bias_act(code, z, bias, z, alpha)
        return z, z
    out = np.empty_like(z)
    _linear.bias_act(code, z, bias, out, alpha)
    return out, z


_scratch = threading.local()


def _scratch_buffer(shape, dtype):
    """A per-thread work array reused across calls with the same shape and dtype."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get((shape, dtype))
    if buf is None:
        if len(buffers) >= 8:
            buffers.clear()
        buf = buffers[shape, dtype] = np.empty(shape, dtype)
    return buf


def linear_backward(x, kernel, saved, grad, activation, alpha, need_x, need_kernel, need_bias):
    """``dz = grad * act'(saved)`` into a reused scratch buffer; ``(dx, dkernel, dbias)`` are fresh."""
    code = CODES[activation]
    if code == _LINEAR:
        dz = grad
    else:
        dz = _scratch_buffer(grad.shape, grad.dtype)
        _ACT_BACKWARD(code, np.asarray(saved, order="C"), np.asarray(grad, order="C"), dz, alpha)
    dx = np.matmul(dz, kernel.T) if need_x else None
    dkernel = np.matmul(x.T, dz) if need_kernel else None
    dbias = dz.sum(axis=0) if need_bias else None
    return dx, dkernel, dbias


# The buffered twins (``table.buffered``): the same calls in the same order, into the caller's arrays.
def linear_forward_into(x, kernel, bias, activation, alpha, z, out):
    """``linear_forward`` into ``z`` (``x @ kernel``) and ``out`` (``z`` where the backward reads it)."""
    code = CODES[activation]
    np.matmul(x, kernel, out=z)
    if out is not z or code != _LINEAR or bias is not None:
        _linear.bias_act(code, z, bias, out, alpha)


def linear_backward_into(x, kernel, saved, grad, activation, alpha, dz, dx, dkernel, dbias):
    """``linear_backward`` into the given buffers (None where not needed; ``dz`` None when linear)."""
    code = CODES[activation]
    if code == _LINEAR:
        dz = grad
    else:
        _ACT_BACKWARD(code, saved, np.asarray(grad, order="C"), dz, alpha)
    if dx is not None:
        np.matmul(dz, kernel.T, out=dx)
    if dkernel is not None:
        np.matmul(x.T, dz, out=dkernel)
    if dbias is not None:
        dz.sum(axis=0, out=dbias)


# ---------------------------------------------------------------- softmax cross-entropy
def _sparse_or_dense(target):
    """(sparse intp labels, dense C-order target): one of them None."""
    if target.ndim == 1:
        return _intp_labels(target), None
    return None, np.asarray(target, order="C")


def softmax_xent_forward(logits, target):
    rows = logits.shape[0]
    sparse, dense = _sparse_or_dense(target)
    loss = np.empty(rows, logits.dtype)
    probs = np.empty(logits.shape, logits.dtype)  # C order, whatever the logits' layout
    _xent.forward(np.asarray(logits, order="C"), sparse, dense, loss, probs)
    return loss, probs


def softmax_xent_backward(probs, target, grad):
    sparse, dense = _sparse_or_dense(target)
    out = np.empty(probs.shape, probs.dtype)
    _xent.backward(np.asarray(probs, order="C"), sparse, dense, np.asarray(grad, order="C"), out)
    return out


# ---------------------------------------------------------------- optimizer updates
# A state array an option does not use is passed as ``param`` and never touched.
def sgd_step(param, grad, momentum_buf, lr, momentum, nesterov, weight_decay):
    _optim.sgd_step(param, np.asarray(grad, order="C"), momentum_buf if momentum else param,
                    lr, momentum, nesterov, weight_decay)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
              weight_decay, decoupled, amsgrad):
    _optim.adam_step(param, np.asarray(grad, order="C"), exp_avg, exp_avg_sq,
                     max_exp_avg_sq if amsgrad else param,
                     lr / (1 - beta1 ** step), (1 - beta2 ** step) ** 0.5, beta1, beta2,
                     eps, weight_decay, 1 - lr * weight_decay, decoupled, amsgrad)


def adagrad_step(param, grad, state_sum, lr, eps, weight_decay):
    _optim.adagrad_step(param, np.asarray(grad, order="C"), state_sum, lr, eps, weight_decay)


def rmsprop_step(param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
                 momentum, centered):
    _optim.rmsprop_step(param, np.asarray(grad, order="C"), square_avg, momentum_buf if momentum else param,
                        grad_avg if centered else param, lr, alpha, eps, weight_decay, momentum,
                        centered)


TABLE = KernelTable("native", globals(), DEVICE)
