"""The one random generator behind every draw nanodl makes (init, dropout, shuffling, randn).

``nd.manual_seed(seed)`` reseeds it; ``using(generator)`` gives the calling thread its own
for a block, so two fits in two threads do not steal each other's numbers.

>>> import numpy as np
>>> from nanodl import random
>>> with random.using(np.random.default_rng(0)):
...     first = random.generator().random()
>>> first == np.random.default_rng(0).random()
True
"""
import contextlib
from threading import get_ident

import numpy as np

_generator = np.random.default_rng()
_thread_generators = {}  # thread id -> its generator, while it is inside using()


def manual_seed(seed):
    """Seed every random draw nanodl makes (a non-negative integer, or a sequence of them)."""
    global _generator
    try:
        _generator = np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ValueError(f"manual_seed: seed must be a non-negative integer (or a sequence of "
                         f"them), got {seed!r}") from None


def generator():
    """The ``numpy.random.Generator`` this thread draws from (global, or its ``using`` block's)."""
    return _thread_generators.get(get_ident(), _generator) if _thread_generators else _generator


@contextlib.contextmanager
def using(generator):
    """Make this thread (only) draw from ``generator`` inside the block; blocks nest."""
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"using: expected a numpy.random.Generator, got {type(generator).__name__}")
    ident = get_ident()
    saved = _thread_generators.get(ident)
    _thread_generators[ident] = generator
    try:
        yield generator
    finally:
        if saved is None:
            del _thread_generators[ident]
        else:
            _thread_generators[ident] = saved


def uniform(shape, dtype, xp=np):
    """Uniform [0, 1) draws of ``dtype``, made on the host and moved to ``xp``'s device."""
    draws = generator().random(shape, dtype=np.float64 if np.dtype(dtype) != np.float32 else np.float32)
    return draws if xp is np else xp.asarray(draws)
