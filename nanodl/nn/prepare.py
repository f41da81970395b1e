"""The arguments of ``fit``, ``evaluate``, ``train_on_batch`` and ``predict`` checked (each
error names the method), the validation set split off, the arrays on the model's device."""
import math
import warnings

import numpy as np

from .. import callbacks as callbacks_module
from ..backend import array_module, to_device
from ..tensor import as_array
from . import weighting
from .checks import check_input

__all__ = ["prepare", "prepare_fit", "predict_inputs", "fit_callbacks"]


def _check_batch_size(batch_size, who):
    """``batch_size`` as a positive int (None means Keras' default, 32)."""
    batch_size = 32 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{who}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_epochs(epochs, what="epochs"):
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: {what} must be a non-negative integer, got {epochs!r}")


def _samples(x, y, who):
    """``x`` and ``y`` as arrays holding the same, non-zero number of samples."""
    x, y = as_array(x, what=f"{who}: x"), as_array(y, what=f"{who}: y")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"{who}: x and y must hold the same number of samples, got x of shape "
                         f"{tuple(x.shape)} and y of shape {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{who}: x and y are empty")
    return x, y


def _split_validation(x, y, weight, validation_data, validation_split):
    """``((x, y, weight), validation or None)``: ``validation_data``, or the last split."""
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be a tuple (x_val, y_val) or "
                             "(x_val, y_val, sample_weight_val)")
        x_val, y_val = _samples(*validation_data[:2], "fit: validation_data")
        w_val = validation_data[2] if len(validation_data) == 3 else None
        w_val = weighting.check_sample_weight(w_val, len(x_val), "fit: validation_data's sample_weight")
        return (x, y, weight), (x_val, y_val, w_val)
    if not validation_split:
        return (x, y, weight), None
    if not 0 < validation_split < 1:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    if split_at == 0 or split_at == len(x):
        raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves "
                         "an empty training or validation set")
    head, tail = slice(None, split_at), slice(split_at, None)
    w_head, w_tail = (None, None) if weight is None else (weight[head], weight[tail])
    return (x[head], y[head], w_head), (x[tail], y[tail], w_tail)


def _warn_non_finite(x, y):
    """One RuntimeWarning before training when ``x`` or ``y`` holds NaN or inf."""
    xp = array_module(x)
    bad = [name for name, values in (("x", x), ("y", y))
           if values.dtype.kind in "fc" and not bool(xp.isfinite(values).all())]
    if bad:
        warnings.warn(f"fit: {' and '.join(bad)} hold{'s' if len(bad) == 1 else ''} NaN or inf "
                      "values; training on them turns the weights into NaN (clean the data, or "
                      "stop early with callbacks.TerminateOnNaN())", RuntimeWarning, stacklevel=4)


def _prepare_validation(plan, validation, validation_split):
    """The validation ``(x, y, weight)`` as prepared arrays, like the training set."""
    x_val, y_val, w_val = validation
    x_val, y_val = plan.inputs(x_val), plan.targets(y_val)
    classes = plan.class_labels(y_val) if validation_split else None
    if classes is not None and len(classes) == 1:
        warnings.warn(f"fit: the validation set (the last {validation_split:g} of the data, taken "
                      f"before shuffling) holds a single class ({classes[0]}); shuffle x and y "
                      "first or pass validation_data", stacklevel=4)
    w_val = None if w_val is None else plan.weights(w_val, "fit: validation sample_weight")
    return x_val, y_val, w_val


def fit_callbacks(model, callbacks, verbose, epochs, steps):
    """The user's callbacks, a progress bar first (unless they hold one), ``History`` last."""
    callbacks = list(callbacks or [])
    has_bar = any(isinstance(c, callbacks_module.ProgressBar) for c in callbacks)
    shown = [callbacks_module.ProgressBar(verbose)] if verbose and not has_bar else []
    return callbacks_module.CallbackList(
        shown + callbacks + [model.history], model=model,
        params={"epochs": epochs, "steps": steps, "verbose": verbose})


def prepare(model, x, y, sample_weight, who):
    """``(plan, x, y, weight)`` for ``evaluate``/``train_on_batch``: prepared arrays."""
    x, y = _samples(x, y, who)
    check_input(model, x, who)
    weight = weighting.check_sample_weight(sample_weight, len(x), f"{who}: sample_weight")
    plan = model._plan(x, y)
    weight = None if weight is None else plan.weights(weight, who)
    return plan, plan.inputs(x), plan.targets(y), weight


def prepare_fit(model, x, y, sample_weight, class_weight, validation_data, validation_split):
    """``(plan, (x, y, weight), validation)`` for ``fit``, validation None or prepared."""
    x, y = _samples(x, y, "fit")
    check_input(model, x, "fit")
    weight = weighting.check_sample_weight(sample_weight, len(x), "fit: sample_weight")
    (x, y, weight), validation = _split_validation(x, y, weight, validation_data, validation_split)
    plan = model._plan(x, y)
    x, y = plan.inputs(x), plan.targets(y)
    weight = weighting.training_weights(plan, y, weight, class_weight)
    if validation is not None:
        validation = _prepare_validation(plan, validation, validation_split)
    _warn_non_finite(x, y)
    return plan, (x, y, weight), validation


def predict_inputs(model, x):
    """``x`` for ``predict``: at least one sample, the model's input dtype, its device."""
    x = as_array(x, what="predict: x")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"predict: x must hold at least one sample, got shape {tuple(x.shape)}")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    check_input(model, x, "predict")
    x = x.astype(model._input_dtype(x.dtype), copy=False)
    return to_device(x, model._device())
