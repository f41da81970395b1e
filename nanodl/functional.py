"""``nanodl.functional`` (``F``): activations, dropout and the fused dense layer.

>>> import nanodl as nd, nanodl.functional as F
>>> F.relu(nd.tensor([-1.0, 2.0])).tolist()
[0.0, 2.0]
"""
import numpy as np

from . import ops
from .backend import array_module
from .backend.activations import ELEMENTWISE
from .ops import DEFAULT_ALPHA, log_softmax, softmax  # noqa: F401  (DEFAULT_ALPHA: nn.Dense's)
from .random import uniform
from .tensor import Tensor

# F.relu is ops.relu, and so for every elementwise activation's record (backend.activations)
globals().update({activation.name: getattr(ops, activation.name) for activation in ELEMENTWISE})
ACTIVATIONS = tuple(activation.name for activation in ELEMENTWISE) + ("softmax", "linear")

__all__ = [activation.name for activation in ELEMENTWISE] + [
    "softmax", "log_softmax", "dropout", "linear", "get_activation", "ACTIVATIONS"]


def check_activation(name):
    """Validate an activation name (None means 'linear'); returns the canonical name."""
    if name is None:
        return "linear"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)} (or None)")
    return name


def resolve_activation(activation):
    """A layer's ``activation=``: a name (checked) or a callable; a built-in function
    (``F.tanh``, ``Tensor.sigmoid``) becomes its name, so the layer still saves."""
    if activation is None or isinstance(activation, str):
        return check_activation(activation)
    if not callable(activation):
        raise TypeError(f"activation must be a name or a callable, got {type(activation).__name__}")
    try:
        return _BUILT_IN_FUNCTIONS.get(activation, activation)
    except TypeError:  # unhashable: not a built-in
        return activation


def get_activation(name):
    """The function ``Tensor -> Tensor`` for an activation name."""
    name = check_activation(name)
    if name == "linear":
        return lambda x: x
    return getattr(ops, name)


def dropout(x, rate, training=True):
    """Inverted dropout: zero a ``rate`` fraction and scale the rest by 1/(1-rate)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout: rate must be a number in [0, 1), got {type(rate).__name__} {rate!r:.40}")
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not training or rate == 0:
        return x
    xp = array_module(x.data)
    keep = uniform(x.shape, x.dtype, xp) >= rate
    mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - rate))
    return x * Tensor(mask)


def linear(x, kernel, bias=None, activation=None, alpha=None):
    """One fused node computing ``act(x @ kernel + bias)``; ``kernel`` is (in, out).

    ``alpha``: ``'leaky_relu'``'s slope (default 0.01) or ``'elu'``'s scale (1.0)."""
    return ops.linear(x, kernel, bias, activation=check_activation(activation), alpha=alpha)


# built-in activations by identity (F.tanh is nd.tanh); ops.linear is the dense node, not one
_BUILT_IN_FUNCTIONS = {getattr(owner, name): name for owner in (ops, Tensor)
                       for name in ACTIVATIONS if name != "linear" and hasattr(owner, name)}
