"""Sample and class weights for ``Model.fit`` and ``evaluate``, checked as Keras does
(docs/training.md).

>>> import numpy as np
>>> class_weight_per_sample(np.array([0, 0, 0, 1]), "balanced")
array([0.66666667, 0.66666667, 0.66666667, 2.        ])
>>> class_weight_per_sample(np.array([0, 1, 2]), {2: 5.0})  # a class not named weighs 1
array([1., 1., 5.])
"""
import math

import numpy as np

from ..backend import to_host
from ..tensor import Tensor

__all__ = ["check_sample_weight", "class_weight_per_sample", "training_weights"]


def check_sample_weight(weight, n, who):
    """``weight`` as a host float64 array of ``n`` finite, non-negative weights, or None."""
    if weight is None:
        return None
    weight = to_host(weight.data if isinstance(weight, Tensor) else weight)
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


def training_weights(plan, y, sample_weight, class_weight):
    """``fit``'s per-sample weights (sample x class) on the model's device, or None."""
    weight = sample_weight
    if class_weight is not None:
        per_class = class_weight_per_sample(sample_classes(plan.loss_name, y), class_weight,
                                            output_classes(plan.loss_name, plan.out_shape))
        weight = per_class if weight is None else weight * per_class
    return None if weight is None else plan.weights(weight, "fit")


def sample_classes(loss_name, y):
    """Each sample's class from prepared targets ``y``; a regression target raises ``ValueError``."""
    host = to_host(y)
    if host.ndim == 2 and host.shape[1] > 1:
        one_hot = ((host == 0) | (host == 1)).all() and (host.sum(axis=1) == 1).all()
        if loss_name != "categorical_crossentropy" and not one_hot:
            raise ValueError(f"fit: class_weight needs class targets; y of shape {host.shape} "
                             "is not one-hot (a regression target?)")
        return host.argmax(axis=1)
    if host.ndim == 2 and host.shape[1] == 1:
        host = host[:, 0]
    if host.ndim != 1:
        raise ValueError(f"fit: class_weight needs one class per sample, got targets of "
                         f"shape {host.shape}")
    if host.dtype.kind == "f" and not (host == np.round(host)).all():
        raise ValueError("fit: class_weight needs class targets, but y holds non-integer "
                         "values (a regression target); use sample_weight instead")
    if (host < 0).any():
        raise ValueError(f"fit: class_weight needs class labels >= 0, y holds {host.min():g}")
    return host.astype(np.int64)


def output_classes(loss_name, out_shape):
    """The classes the loss fixes, or None when only the targets tell."""
    if loss_name in ("categorical_crossentropy", "sparse_categorical_crossentropy") and out_shape:
        return set(range(out_shape[-1]))
    if loss_name == "binary_crossentropy":
        return {0, 1}
    return None


def class_weight_per_sample(classes, class_weight, valid=None):
    """Each sample's weight from its class: ``class_weight`` is ``{class: weight}`` (keys among
    ``valid``, default the classes present) or ``'balanced'`` (as scikit-learn)."""
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
