"""``History.diagnose()``: read the learning curves the way the course teaches.

Verdicts: 'diverging' (inf/NaN, ended above the start, or blew up past twice a uniform
guess's loss), 'overfitting' (validation loss ends ``RISE`` above its lowest while training
loss falls), 'underfitting' (losses above ``UNDERFIT_SHARE`` of a uniform guess's), 'ok'.
See docs/diagnosing.md.

>>> from nanodl.callbacks import History
>>> h = History()
>>> h.history = {"loss": [1.0, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08],
...              "val_loss": [1.0, 0.7, 0.55, 0.5, 0.6, 0.7, 0.8, 0.9]}
>>> h.epoch = list(range(8))
>>> verdict = h.diagnose()
>>> verdict.verdict, verdict.epoch
('overfitting', 3)
>>> print(verdict)  # doctest: +NORMALIZE_WHITESPACE
Validation loss was lowest at epoch 3 (0.5) and rose to 0.9 by epoch 7 while training loss kept
falling (0.3 -> 0.08): the model is learning its training set by heart. Regularise it: L2 weight
decay (kernel_regularizer), Dropout, early stopping (callbacks.EarlyStopping(patience=...,
restore_best_weights=True) would keep epoch 3), or more training data.
"""
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import losses

UNDERFIT_SHARE = 0.4  # a final training loss above this share of a uniform guess's is "high"
RISE = 0.1            # validation loss this much (relative) above its lowest has "turned up",
SMOOTHING = 5         # ... in its running mean over 1/5 of the epochs (>= 3): a spike is no trend
VERDICTS = ("underfitting", "overfitting", "diverging", "ok")


@dataclass
class Verdict:
    """What ``History.diagnose()`` returns; ``str()`` of it is the reason and the remedy."""
    verdict: str
    epoch: Optional[int]
    reason: str
    remedy: str

    def __str__(self):
        return f"{self.reason} {self.remedy}"


def uniform_loss(loss, classes):
    """The loss of a uniform guess (``log(C)``, ``log 2`` for binary), or None."""
    name, config = losses.describe(loss)
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy") and classes:
        return math.log(max(classes, 2))
    if name == "binary_crossentropy":
        return math.log(2)
    return None


def _classes(model):
    """The model's output width, from one prediction on zeros (None when it cannot say)."""
    shape = model.__dict__.get("_input_shape") if model is not None else None
    if shape is None:
        return None
    try:
        return int(model.predict(np.zeros((1,) + tuple(shape), np.float32)).shape[-1])
    except Exception:  # a model that cannot take zeros: no uniform guess to compare with
        return None


def diagnose(history):
    """The ``Verdict`` on ``history``'s curves (see the module docstring)."""
    loss = [float(v) for v in history.history.get("loss", [])]
    val = [float(v) for v in history.history.get("val_loss", [])]
    epochs = list(history.epoch) or list(range(len(loss)))
    if not loss:
        raise ValueError("History.diagnose: no training loss recorded; call fit first")
    model = getattr(history, "model", None)
    guess = uniform_loss(model.loss, _classes(model)) if getattr(model, "loss", None) else None
    bad = next((i for i, v in enumerate(loss) if not math.isfinite(v)), None)
    blew_up = guess is not None and max(loss) > 2 * guess and loss[-1] >= guess
    if bad is not None or loss[-1] > loss[0] or blew_up:
        what = (f"became {loss[bad]} at epoch {epochs[bad]}" if bad is not None else
                f"rose from {loss[0]:.4g} to {loss[-1]:.4g}" if loss[-1] > loss[0] else
                f"jumped to {max(loss):.4g} and ended at {loss[-1]:.4g}, no better than a uniform "
                f"guess's {guess:.4g}")
        return Verdict("diverging", None, f"The training loss {what}: the steps overshoot the "
                       "minimum they aim at.", "Use a smaller learning rate (try 10 times "
                       "smaller), or clip the gradients.")
    if len(val) == len(loss) and len(val) >= 3 and all(math.isfinite(v) for v in val):
        best = int(np.argmin(val))
        window = max(3, len(val) // SMOOTHING)
        smooth = np.convolve(val, np.ones(window) / window, mode="valid")
        if best < len(val) - 1 and smooth[-1] > smooth.min() + RISE * abs(smooth.min()) and \
                loss[-1] < loss[best]:
            return Verdict(
                "overfitting", epochs[best],
                f"Validation loss was lowest at epoch {epochs[best]} ({val[best]:.4g}) and rose to "
                f"{val[-1]:.4g} by epoch {epochs[-1]} while training loss kept falling "
                f"({loss[best]:.4g} -> {loss[-1]:.4g}): the model is learning its training set "
                "by heart.",
                "Regularise it: L2 weight decay (kernel_regularizer), Dropout, early stopping "
                "(callbacks.EarlyStopping(patience=..., restore_best_weights=True) would keep "
                f"epoch {epochs[best]}), or more training data.")
    reference, against = (guess, "a uniform guess's") if guess else (loss[0], "the first epoch's")
    if loss[-1] > UNDERFIT_SHARE * reference and (not val or val[-1] > UNDERFIT_SHARE * reference):
        seen = f" (validation: {val[-1]:.4g})" if val else ""
        return Verdict(
            "underfitting", None,
            f"Training loss ended at {loss[-1]:.4g}{seen}, {loss[-1] / reference:.0%} of "
            f"{against} {reference:.4g}: the model has not fit even the data it trains on.",
            "Give it more capacity (more units or layers, a non-linear activation) or more "
            "epochs (a larger learning rate if the loss falls slowly).")
    fell = f"Training loss fell from {loss[0]:.4g} to {loss[-1]:.4g}"
    fell += f" and validation loss to {val[-1]:.4g}" if val else ""
    return Verdict("ok", None, fell + ", with no sign of under- or overfitting or divergence.",
                   "Nothing to cure; more epochs may still help while both losses fall.")
