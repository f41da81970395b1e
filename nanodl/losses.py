"""Losses: ``loss(pred, target, reduction='mean')``, prediction first (as PyTorch).

Each loss is a function and a CamelCase class taking its options. ``reduction``: ``'mean'``
(over every element), ``'sum'`` or ``'none'``. Shapes must match (``pred.shape[:-1]`` for
sparse targets): nothing is broadcast silently.

>>> import nanodl as nd
>>> from nanodl import losses
>>> pred, target = nd.tensor([[2.0, 0.0]]), nd.tensor([[1.0, 1.0]])
>>> losses.mse(pred, target).item(), losses.mse(pred, target, reduction='sum').item()
(1.0, 2.0)
>>> losses.Huber(delta=1.0)(pred, target).item()
0.5
"""
import numbers

import numpy as np

from . import ops
from .backend import is_device_array, to_device
from .tensor import Tensor, as_array

__all__ = ["mse", "mae", "huber", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "Loss", "MeanSquaredError", "MeanAbsoluteError", "Huber",
           "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get",
           "LOSSES", "EPSILON"]

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before a log
REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def _check_delta(name, delta):
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise TypeError(f"{name}: delta must be a number, got {delta!r} ({type(delta).__name__})")
    if not delta > 0:
        raise ValueError(f"{name}: delta must be > 0, got {delta!r}")


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _as_pred(pred):
    return pred if isinstance(pred, Tensor) else Tensor(pred)


def _target_array(name, target, pred, dtype=None):
    """``target`` as a backend array on ``pred``'s device (never differentiated)."""
    return to_device(as_array(target, dtype, what=f"{name}: target"), pred.device)


def _float_target(name, pred, target, reduction):
    _check_reduction(name, reduction)
    pred = _as_pred(pred)
    array = _target_array(name, target, pred, pred.dtype)
    if tuple(array.shape) != pred.shape:
        raise ValueError(f"{name}: pred shape {pred.shape} and target shape "
                         f"{tuple(array.shape)} do not match")
    return pred, Tensor(array)  # of pred's dtype: as_array cast it


def mse(pred, target, reduction="mean"):
    """Mean squared error ``(pred - target) ** 2``."""
    pred, target = _float_target("mse", pred, target, reduction)
    diff = pred - target
    return _reduce(diff * diff, reduction)


def mae(pred, target, reduction="mean"):
    """Mean absolute error ``|pred - target|``; at the kink the gradient is 0, as in PyTorch."""
    pred, target = _float_target("mae", pred, target, reduction)
    return _reduce((pred - target).abs(), reduction)


def huber(pred, target, delta=1.0, reduction="mean"):
    """``0.5 d**2`` where ``|d| <= delta``, else ``delta * (|d| - 0.5 delta)``; ``d = pred - target``.

    Written as ``q * (d - q / 2)``, ``q = clip(d, -delta, delta)``: the gradient is exactly ``q``.
    """
    _check_delta("huber", delta)
    pred, target = _float_target("huber", pred, target, reduction)
    diff = pred - target
    inner = diff.clip(-delta, delta)
    return _reduce(inner * (diff - inner * 0.5), reduction)


def binary_crossentropy(pred, target, from_logits=False, reduction="mean"):
    """``-(t log p + (1 - t) log(1 - p))``, elementwise.

    Probabilities are clipped to ``[EPSILON, 1 - EPSILON]``; ``from_logits`` computes the
    stable, smooth ``softplus(x) - x t`` (gradient ``sigmoid(x) - t``).

    >>> import nanodl as nd
    >>> z = nd.tensor([0.0, 0.0], requires_grad=True)
    >>> binary_crossentropy(z, [1.0, 0.0], from_logits=True, reduction='sum').backward()
    >>> z.grad.tolist()
    [-0.5, 0.5]
    """
    pred, target = _float_target("binary_crossentropy", pred, target, reduction)
    if from_logits:
        loss = ops.softplus(pred) - pred * target
    else:
        p = pred.clip(EPSILON, 1 - EPSILON)
        loss = -(target * p.log() + (1 - target) * (1 - p).log())
    return _reduce(loss, reduction)


def softmax_xent(logits, target_array, reduction="none"):
    """Fused softmax-cross-entropy over the last axis against checked labels or distributions."""
    if logits.ndim == 2:
        return ops.softmax_cross_entropy(logits, target_array, reduction)
    classes = logits.shape[-1]
    flat_target = target_array.reshape((-1, classes) if target_array.ndim == logits.ndim else -1)
    flat = ops.softmax_cross_entropy(logits.reshape(-1, classes), flat_target, reduction)
    return flat.reshape(logits.shape[:-1]) if reduction == "none" else flat


def categorical_crossentropy(pred, target, from_logits=False, reduction="mean"):
    """``-sum(target * log p)`` over the last axis, for one-hot or probability targets.

    ``from_logits``: softmax and log are one fused, stable node; else ``p`` is clipped.
    """
    pred, target = _float_target("categorical_crossentropy", pred, target, reduction)
    if pred.ndim == 0:
        raise ValueError("categorical_crossentropy: pred must have a class axis, got a scalar")
    if from_logits:
        return softmax_xent(pred, target.data, reduction)
    loss = -(target * pred.clip(EPSILON, 1 - EPSILON).log()).sum(axis=-1)
    return _reduce(loss, reduction)


def class_targets(name, pred_shape, target, check_range=True):
    """Integer class labels checked against ``pred_shape`` (N..., C): shape and range."""
    if not is_device_array(target):
        target = np.asarray(target)
    expected = tuple(pred_shape[:-1])
    if len(pred_shape) < 2 or tuple(target.shape) != expected:
        raise ValueError(f"{name}: pred shape {tuple(pred_shape)} needs integer class targets of "
                         f"shape {expected}, got target shape {tuple(target.shape)}")
    if target.dtype.kind != "i" and target.dtype.kind != "u":
        integral = target.astype(np.int64)
        if target.dtype.kind not in "fb" or not bool((integral == target).all()):
            raise ValueError(f"{name}: targets must be integer class labels, got dtype {target.dtype}")
        target = integral
    if check_range and target.size and (int(target.min()) < 0 or int(target.max()) >= pred_shape[-1]):
        raise ValueError(f"{name}: class labels must be in [0, {pred_shape[-1]}), got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target.astype(np.int64, copy=False)


def sparse_categorical_crossentropy(pred, target, from_logits=False, reduction="mean"):
    """Cross-entropy against integer classes: ``pred`` (N, C), ``target`` (N,)."""
    name = "sparse_categorical_crossentropy"
    _check_reduction(name, reduction)
    pred = _as_pred(pred)
    # The fused CPU kernels reject out-of-range labels themselves; the GPU one would give NaN.
    check_range = not from_logits or pred.device != "cpu"
    labels = class_targets(name, pred.shape, _target_array(name, target, pred), check_range)
    target = to_device(labels, pred.device)
    if from_logits:
        return softmax_xent(pred, target, reduction)
    classes = pred.shape[-1]
    flat = pred.reshape(-1, classes) if pred.ndim != 2 else pred
    labels = target.reshape(-1)
    rows = to_device(np.arange(len(labels)), pred.device)
    loss = -flat[rows, labels].clip(EPSILON, 1 - EPSILON).log()
    if pred.ndim != 2:
        loss = loss.reshape(pred.shape[:-1])
    return _reduce(loss, reduction)


class Loss:
    """Base of the loss classes: options in the constructor, ``__call__(pred, target)``."""

    name = None
    function = None
    options = ()

    def __init__(self, reduction="mean"):
        _check_reduction(type(self).__name__, reduction)
        self.reduction = reduction

    def __call__(self, pred, target):
        kwargs = {option: getattr(self, option) for option in self.options}
        return type(self).function(pred, target, reduction=self.reduction, **kwargs)

    def get_config(self):
        config = {option: getattr(self, option) for option in self.options}
        config["reduction"] = self.reduction
        return config

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MeanSquaredError(Loss):
    name, function = "mse", staticmethod(mse)


class MeanAbsoluteError(Loss):
    name, function = "mae", staticmethod(mae)


class Huber(Loss):
    name, function, options = "huber", staticmethod(huber), ("delta",)

    def __init__(self, delta=1.0, reduction="mean"):
        super().__init__(reduction)
        _check_delta("Huber", delta)
        self.delta = float(delta)


class _CrossEntropy(Loss):
    options = ("from_logits",)

    def __init__(self, from_logits=False, reduction="mean"):
        super().__init__(reduction)
        self.from_logits = bool(from_logits)


class BinaryCrossentropy(_CrossEntropy):
    name, function = "binary_crossentropy", staticmethod(binary_crossentropy)


class CategoricalCrossentropy(_CrossEntropy):
    name, function = "categorical_crossentropy", staticmethod(categorical_crossentropy)


class SparseCategoricalCrossentropy(_CrossEntropy):
    name, function = "sparse_categorical_crossentropy", staticmethod(sparse_categorical_crossentropy)


LOSS_CLASSES = {cls.name: cls for cls in (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy,
                                          CategoricalCrossentropy, SparseCategoricalCrossentropy)}
LOSSES = {name: cls.function for name, cls in LOSS_CLASSES.items()}
_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}


def get(identifier):
    """A loss from its name (see ``LOSSES``) or a callable ``loss(pred, target)`` as is."""
    if isinstance(identifier, str):
        name = _ALIASES.get(identifier, identifier)
        if name not in LOSSES:
            raise ValueError(f"unknown loss {identifier!r}; valid names: {', '.join(LOSSES)}")
        return LOSSES[name]
    if callable(identifier):
        return identifier
    raise TypeError(f"loss must be a name or a callable loss(pred, target), got "
                    f"{type(identifier).__name__}")


def describe(loss):
    """``(name, config)`` for a built-in loss (name, function or instance), else ``(None, None)``.

    >>> describe('mse'), describe(BinaryCrossentropy(from_logits=True))[1]['from_logits']
    (('mse', {}), True)
    """
    if isinstance(loss, str):
        get(loss)
        return _ALIASES.get(loss, loss), {}
    for name, function in LOSSES.items():
        if loss is function:
            return name, {}
    if isinstance(loss, Loss) and LOSS_CLASSES.get(loss.name) is type(loss):
        return loss.name, loss.get_config()
    return None, None
