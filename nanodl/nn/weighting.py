"""Sample and class weights for ``Model.fit`` and ``evaluate``, checked as Keras does.

``fit`` multiplies each sample's loss by its weight (the product, when both a
``sample_weight`` and a ``class_weight`` are given); this module turns what the user
passed into one float per sample, or says clearly what is wrong with it.

>>> import numpy as np
>>> class_weight_per_sample(np.array([0, 0, 0, 1]), "balanced")
array([0.66666667, 0.66666667, 0.66666667, 2.        ])
>>> class_weight_per_sample(np.array([0, 1, 2]), {2: 5.0})  # a class not named weighs 1
array([1., 1., 5.])
"""
import math

import numpy as np

from ..backend import is_device_array, to_device
from ..tensor import Tensor

__all__ = ["check_sample_weight", "class_weight_per_sample"]


def check_sample_weight(weight, n, who):
    """``weight`` as a host float64 array of ``n`` finite, non-negative weights (None
    stays None); ``who`` names the argument in the error, e.g. ``'fit: sample_weight'``."""
    if weight is None:
        return None
    if isinstance(weight, Tensor):
        weight = weight.data
    if is_device_array(weight):
        weight = to_device(weight, "cpu")
    weight = np.asarray(weight)
    if weight.dtype.kind not in "biuf":
        raise ValueError(f"{who} must hold numbers, got dtype {weight.dtype}")
    if weight.ndim == 2 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if weight.shape != (n,):
        raise ValueError(f"{who} must hold one weight per sample, {n}, got shape {weight.shape}")
    weight = weight.astype(np.float64)
    if not np.isfinite(weight).all():
        raise ValueError(f"{who} holds NaN or inf values")
    if (weight < 0).any():
        raise ValueError(f"{who} holds negative values (the smallest is {weight.min():g})")
    return weight


def class_weight_per_sample(classes, class_weight, valid=None):
    """Each sample's weight from its class (``classes``: ints >= 0) and ``class_weight``:
    a dict ``{class: weight}`` (a class it does not name weighs 1, as Keras 3) or
    ``'balanced'``, n_samples / (n_classes * count of the class), as scikit-learn.
    A dict key must be one of ``valid`` (the classes the model's output fixes), or
    when that is None one of the classes present."""
    present, counts = np.unique(classes, return_counts=True)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"fit: class_weight must be a dict or 'balanced', got {class_weight!r}")
        table = {int(c): len(classes) / (len(present) * k) for c, k in zip(present, counts)}
    elif isinstance(class_weight, dict):
        valid = {int(c) for c in present} if valid is None else set(valid)
        table = {}
        for key, value in class_weight.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or \
                    int(key) not in valid:
                raise ValueError(f"fit: class_weight names class {key!r}, which is not a class of "
                                 f"y (classes: {_describe(valid)})")
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"fit: class_weight[{key!r}] must be a finite, non-negative "
                                 f"number, got {value!r}")
            table[int(key)] = float(value)
    else:
        raise ValueError(f"fit: class_weight must be a dict or 'balanced', got "
                         f"{type(class_weight).__name__}")
    lookup = np.ones(int(classes.max()) + 1)
    for key, value in table.items():
        if key < len(lookup):
            lookup[key] = value
    return lookup[classes]


def _describe(classes):
    classes = sorted(classes)
    if len(classes) > 3 and classes == list(range(classes[0], classes[-1] + 1)):
        return f"{classes[0]}..{classes[-1]}"
    return ", ".join(map(str, classes))
