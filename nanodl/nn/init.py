"""Weight initializers: ``f(shape, dtype=None) -> ndarray``, Keras formulas.

Draws come from nanodl's generator in float64, then are cast: one seed gives the same
weights in float32 and float64. The ``*_normal`` ones are truncated at two standard
deviations and rescaled to the target one.

>>> import nanodl as nd
>>> from nanodl.nn import init
>>> nd.manual_seed(0)
>>> w = init.glorot_uniform((64, 32))
>>> w.shape, w.dtype, bool(abs(w).max() <= (6 / 96) ** 0.5)
((64, 32), dtype('float32'), True)
"""
import math

import numpy as np

from ..random import generator
from ..tensor import get_default_dtype

__all__ = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal",
           "lecun_uniform", "zeros", "ones", "normal", "uniform", "get", "INITIALIZERS"]

_TRUNCATED_STD = 0.87962566103423978  # the std of a unit normal truncated to [-2, 2]


def compute_fans(shape):
    """``(fan_in, fan_out)``; leading axes beyond two are the receptive field (Keras)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _cast(draws, dtype):
    return draws.astype(get_default_dtype() if dtype is None else dtype, copy=False)


def _uniform(shape, dtype, limit):
    return _cast(generator().uniform(-limit, limit, size=tuple(shape)), dtype)


def _truncated_normal(shape, dtype, std):
    """Normal draws truncated at +-2 standard deviations, rescaled to have ``std``."""
    draws = generator().standard_normal(size=tuple(shape))
    outside = np.abs(draws) > 2
    while outside.any():  # redraw the ~4.6% that fell outside, as TF/Keras do
        draws[outside] = generator().standard_normal(size=int(outside.sum()))
        outside = np.abs(draws) > 2
    return _cast(draws * (std / _TRUNCATED_STD), dtype)


def glorot_uniform(shape, dtype=None):
    """U(-limit, limit) with ``limit = sqrt(6 / (fan_in + fan_out))`` (Keras' default)."""
    fan_in, fan_out = compute_fans(shape)
    return _uniform(shape, dtype, math.sqrt(6 / max(1, fan_in + fan_out)))


def glorot_normal(shape, dtype=None):
    """Truncated normal with ``std = sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = compute_fans(shape)
    return _truncated_normal(shape, dtype, math.sqrt(2 / max(1, fan_in + fan_out)))


def he_uniform(shape, dtype=None):
    """U(-limit, limit) with ``limit = sqrt(6 / fan_in)``."""
    fan_in, _ = compute_fans(shape)
    return _uniform(shape, dtype, math.sqrt(6 / max(1, fan_in)))


def he_normal(shape, dtype=None):
    """Truncated normal with ``std = sqrt(2 / fan_in)``."""
    fan_in, _ = compute_fans(shape)
    return _truncated_normal(shape, dtype, math.sqrt(2 / max(1, fan_in)))


def lecun_normal(shape, dtype=None):
    """Truncated normal with ``std = sqrt(1 / fan_in)``."""
    fan_in, _ = compute_fans(shape)
    return _truncated_normal(shape, dtype, math.sqrt(1 / max(1, fan_in)))


def lecun_uniform(shape, dtype=None):
    """U(-limit, limit) with ``limit = sqrt(3 / fan_in)``."""
    fan_in, _ = compute_fans(shape)
    return _uniform(shape, dtype, math.sqrt(3 / max(1, fan_in)))


def zeros(shape, dtype=None):
    return np.zeros(tuple(shape), dtype=get_default_dtype() if dtype is None else dtype)


def ones(shape, dtype=None):
    return np.ones(tuple(shape), dtype=get_default_dtype() if dtype is None else dtype)


def normal(shape, dtype=None, std=0.05):
    """Plain normal draws with mean 0 and standard deviation ``std`` (Keras' RandomNormal)."""
    return _cast(generator().normal(0.0, std, size=tuple(shape)), dtype)


def uniform(shape, dtype=None, limit=0.05):
    """U(-limit, limit) (Keras' RandomUniform)."""
    return _uniform(shape, dtype, limit)


INITIALIZERS = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal,
                                         lecun_normal, lecun_uniform, zeros, ones, normal, uniform)}


def get(identifier):
    """An initializer from its name, or a callable ``f(shape, dtype=None)`` as is."""
    if isinstance(identifier, str):
        try:
            return INITIALIZERS[identifier]
        except KeyError:
            raise ValueError(f"unknown initializer {identifier!r}; valid names: "
                             f"{', '.join(INITIALIZERS)}") from None
    if callable(identifier):
        return identifier
    raise TypeError(f"initializer must be a name or a callable f(shape, dtype=None), "
                    f"got {type(identifier).__name__}")


def name_of(initializer):
    """The registered name of an initializer, or None for a custom callable."""
    if isinstance(initializer, str):
        return initializer
    return next((name for name, function in INITIALIZERS.items() if function is initializer), None)
