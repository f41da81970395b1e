"""Small datasets with no download (digits embedded, 2-D toys, MNIST from a folder).

Each returns float32 ``x`` and int64 ``y``."""
from .digits import load_digits
from .mnist import load_mnist
from .synthetic import make_moons, make_spirals, make_xor

__all__ = ["load_digits", "load_mnist", "make_moons", "make_spirals", "make_xor"]
