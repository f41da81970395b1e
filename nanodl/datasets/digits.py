"""The UCI optical-recognition handwritten digits, embedded in ``digits.npz``.

Source: the UCI ML hand-written digits (E. Alpaydin and C. Kaynak, 1998), as shipped
with scikit-learn (BSD-3-Clause); ``tools/make_digits.py`` made ``digits.npz`` from it.
"""
from importlib import resources

import numpy as np

DIGITS_FILE = "digits.npz"


def load_digits():
    """The 1,797 8x8 digit images as ``(x, y)``: ``x`` (1797, 64) in [0, 1], ``y`` the digit.

    >>> x, y = load_digits()
    >>> x.shape, x.dtype, y.shape, y.dtype
    ((1797, 64), dtype('float32'), (1797,), dtype('int64'))
    >>> float(x.min()), float(x.max()), y[:5].tolist()
    (0.0, 1.0, [0, 1, 2, 3, 4])
    """
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as stored:
        with np.load(stored, allow_pickle=False) as arrays:
            pixels, labels = arrays["pixels"], arrays["labels"]
    return pixels.astype(np.float32) / np.float32(16.0), labels.astype(np.int64)
