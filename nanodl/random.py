"""The one random generator behind every draw nanodl makes (init, dropout, shuffling, randn).

``nd.manual_seed(seed)`` reseeds it, so a seeded run is reproducible end to end.
"""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed every random draw nanodl makes (a non-negative integer, or a sequence of them)."""
    global _generator
    try:
        _generator = np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ValueError(f"manual_seed: seed must be a non-negative integer (or a sequence of "
                         f"them), got {seed!r}") from None


def generator():
    """The global ``numpy.random.Generator``."""
    return _generator


def uniform(shape, dtype, xp=np):
    """Uniform [0, 1) draws of ``dtype``, made on the host and moved to ``xp``'s device."""
    draws = _generator.random(shape, dtype=np.float64 if np.dtype(dtype) != np.float32 else np.float32)
    return draws if xp is np else xp.asarray(draws)
