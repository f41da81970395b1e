"""Small datasets for examples and tests, with no download and no extra dependency.

- ``load_digits()``: the 1,797 8x8 handwritten digits embedded in the package.
- ``make_moons``, ``make_spirals``, ``make_xor``: 2-D toy classification problems.
- ``load_mnist(path)``: MNIST from the four standard IDX files in a folder.

Every loader returns ``x`` as float32 and ``y`` as int64 NumPy arrays.
"""
from .digits import load_digits
from .mnist import load_mnist
from .synthetic import make_moons, make_spirals, make_xor

__all__ = ["load_digits", "load_mnist", "make_moons", "make_spirals", "make_xor"]
