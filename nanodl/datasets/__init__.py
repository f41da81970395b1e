"""Small datasets for examples and tests, with no download: ``load_digits()`` (embedded),
the 2-D toys ``make_moons``, ``make_spirals`` and ``make_xor``, and ``load_mnist(path)``
(the standard IDX files in a folder). Each returns float32 ``x`` and int64 ``y``.
"""
from .digits import load_digits
from .mnist import load_mnist
from .synthetic import make_moons, make_spirals, make_xor

__all__ = ["load_digits", "load_mnist", "make_moons", "make_spirals", "make_xor"]
