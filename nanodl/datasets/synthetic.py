"""Two-dimensional toy classification problems: moons, spirals and XOR.

Each returns shuffled ``(x, y)``, ``x`` (n_samples, 2). ``noise`` is the standard deviation
of Gaussian noise on each coordinate; ``seed`` an int, a Generator or None (the global one).
"""
import numbers

import numpy as np

from ..data import _generator_from


def _check_count(function_name, name, value, minimum=1):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{function_name}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_noise(function_name, noise):
    if not isinstance(noise, numbers.Real) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"{function_name}: noise must be a number >= 0, got {noise!r}")
    return float(noise)


def _finish(x, y, noise, rng):
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    if noise > 0:
        x = x + rng.normal(scale=noise, size=x.shape)
    return x.astype(np.float32), y.astype(np.int64)


def make_moons(n_samples=100, noise=0.0, seed=None):
    """Two interleaving half circles, as scikit-learn's ``make_moons``.

    >>> x, y = make_moons(6, seed=0)
    >>> x.shape, x.dtype, sorted(y.tolist())
    ((6, 2), dtype('float32'), [0, 0, 0, 1, 1, 1])
    """
    n_samples = _check_count("make_moons", "n_samples", n_samples)
    noise = _check_noise("make_moons", noise)
    rng = _generator_from(seed)
    n_outer = n_samples // 2
    outer, inner = np.linspace(0, np.pi, n_outer), np.linspace(0, np.pi, n_samples - n_outer)
    x = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], axis=1),
                        np.stack([1 - np.cos(inner), 0.5 - np.sin(inner)], axis=1)])
    y = np.concatenate([np.zeros(n_outer), np.ones(n_samples - n_outer)])
    return _finish(x, y, noise, rng)


def make_spirals(n_samples=100, n_classes=2, noise=0.0, seed=None):
    """``n_classes`` interleaved spiral arms (1.5 turns, radius 0 to 1), one per class.

    >>> x, y = make_spirals(9, n_classes=3, seed=0)
    >>> x.shape, x.dtype, sorted(y.tolist())
    ((9, 2), dtype('float32'), [0, 0, 0, 1, 1, 1, 2, 2, 2])
    """
    n_classes = _check_count("make_spirals", "n_classes", n_classes)
    n_samples = _check_count("make_spirals", "n_samples", n_samples, minimum=n_classes)
    noise = _check_noise("make_spirals", noise)
    rng = _generator_from(seed)
    points, labels = [], []
    for arm in range(n_classes):
        n_arm = n_samples // n_classes + (arm < n_samples % n_classes)
        radius = np.linspace(0.0, 1.0, n_arm)
        angle = 2 * np.pi * arm / n_classes + 3 * np.pi * radius
        points.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        labels.append(np.full(n_arm, arm))
    return _finish(np.concatenate(points), np.concatenate(labels), noise, rng)


def make_xor(n_samples=200, seed=None):
    """Points uniform in ``[-1, 1]^2``, labelled 1 where the two coordinates' signs differ.

    >>> x, y = make_xor(100, seed=0)
    >>> x.shape, x.dtype, y.dtype
    ((100, 2), dtype('float32'), dtype('int64'))
    >>> bool(np.all(y == (np.sign(x[:, 0]) != np.sign(x[:, 1]))))
    True
    """
    n_samples = _check_count("make_xor", "n_samples", n_samples)
    rng = _generator_from(seed)
    x = rng.uniform(-1.0, 1.0, size=(n_samples, 2)).astype(np.float32)
    y = (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(np.int64)
    return x, y
