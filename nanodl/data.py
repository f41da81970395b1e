"""Data utilities: ``train_test_split``, ``DataLoader`` and ``one_hot`` (NumPy out).

Without a seed, draws come from nanodl's global generator (``nd.manual_seed``).
"""
import math
import numbers

import numpy as np

from .backend import to_device
from .tensor import Tensor, as_array

__all__ = ["train_test_split", "DataLoader", "batch_slices", "one_hot"]


def _as_array(values, name):
    """``values`` as a host array; other libraries' tensors via ``numpy()`` or ``.data``."""
    if not isinstance(values, (np.ndarray, Tensor)):
        if callable(getattr(values, "numpy", None)):
            values = values.numpy()
        elif isinstance(getattr(values, "data", None), np.ndarray):
            values = values.data
    return to_device(as_array(values, what=name, numeric=False), "cpu")


def _global_generator():
    from . import random  # looked up at each call: tests swap the module
    return random.generator()


def _generator_from(seed):
    if seed is None:
        return _global_generator()
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _count_test_samples(n_samples, test_size):
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        if not 0 < test_size < n_samples:
            raise ValueError(f"train_test_split: test_size={test_size} must be a count in [1, "
                             f"{n_samples}) (the number of samples is {n_samples}) or a float in (0, 1)")
        return int(test_size)
    if isinstance(test_size, numbers.Real) and not isinstance(test_size, bool):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"train_test_split: test_size={test_size} must be a float "
                             f"in (0, 1) or a count in [1, {n_samples})")
        n_test = math.ceil(test_size * n_samples)
        if n_test >= n_samples:
            raise ValueError(f"train_test_split: test_size={test_size} of {n_samples} "
                             f"samples leaves the training set empty")
        return n_test
    raise ValueError(f"train_test_split: test_size must be an int or a float, got {test_size!r}")


def _approximate_mode(class_counts, n_draws, rng):
    """Draws per class keeping proportions: floors, then largest remainders (as scikit-learn)."""
    exact_share = class_counts / class_counts.sum() * n_draws
    taken = np.floor(exact_share)
    still_needed = int(n_draws - taken.sum())
    remainder = exact_share - taken
    for value in np.unique(remainder)[::-1]:
        if still_needed == 0:
            break
        tied_classes = np.flatnonzero(remainder == value)
        add_now = min(len(tied_classes), still_needed)
        taken[rng.choice(tied_classes, size=add_now, replace=False)] += 1
        still_needed -= add_now
    return taken.astype(np.int64)


def _stratified_indices(labels, n_train, n_test, rng):
    if labels.ndim > 1:  # e.g. one-hot rows: each distinct row is one class
        labels = labels.reshape(len(labels), -1)
    classes, class_of_sample, class_counts = np.unique(
        labels, axis=0 if labels.ndim > 1 else None, return_inverse=True, return_counts=True)
    class_of_sample = class_of_sample.reshape(-1)
    if class_counts.min() < 2:
        lonely = classes[class_counts < 2].tolist()
        raise ValueError(f"train_test_split: stratify needs at least 2 samples of each "
                         f"class; these classes have only 1: {lonely}")
    for part, size in (("train", n_train), ("test", n_test)):
        if size < len(classes):
            raise ValueError(f"train_test_split: the {part} part has {size} samples, fewer "
                             f"than the {len(classes)} classes in stratify")

    n_train_per_class = _approximate_mode(class_counts, n_train, rng)
    n_test_per_class = _approximate_mode(class_counts - n_train_per_class, n_test, rng)
    members_by_class = np.split(np.argsort(class_of_sample, kind="stable"), np.cumsum(class_counts)[:-1])
    train_parts, test_parts = [], []
    for members, n_class_train, n_class_test in zip(members_by_class, n_train_per_class, n_test_per_class):
        members = rng.permutation(members)
        train_parts.append(members[:n_class_train])
        test_parts.append(members[n_class_train:n_class_train + n_class_test])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def train_test_split(*arrays, test_size=0.25, shuffle=True, random_state=None, stratify=None):
    """Split arrays into random train and test parts as scikit-learn: ``[a_train, a_test, ...]``.

    ``test_size``: a fraction (the test part gets ``ceil(test_size * n)``) or a count.
    ``stratify`` (labels) keeps each class's proportion; ``random_state``: int, Generator or None.

    >>> import numpy as np
    >>> x, y = np.arange(20).reshape(10, 2), np.arange(10) % 2
    >>> x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3,
    ...                                                     random_state=0)
    >>> x_train.shape, x_test.shape, y_test.shape
    ((7, 2), (3, 2), (3,))
    >>> train_test_split([1, 2, 3, 4], shuffle=False)
    [array([1, 2, 3]), array([4])]
    """
    if not arrays:
        raise ValueError("train_test_split: at least one array is required")
    arrays = [_as_array(values, f"train_test_split: array {i}") for i, values in enumerate(arrays)]
    for position, values in enumerate(arrays):
        if values.ndim == 0:
            raise ValueError(f"train_test_split: array {position} is a scalar, not a sequence of samples")
    lengths = [len(values) for values in arrays]
    if len(set(lengths)) > 1:
        raise ValueError(f"train_test_split: all arrays must have the same number of "
                         f"samples, got lengths {lengths}")
    n_samples = lengths[0]
    n_test = _count_test_samples(n_samples, test_size)
    n_train = n_samples - n_test

    if not shuffle:
        if stratify is not None:
            raise ValueError("train_test_split: stratify needs shuffle=True")
        train_indices, test_indices = np.arange(n_train), np.arange(n_train, n_samples)
    else:
        rng = _generator_from(random_state)
        if stratify is not None:
            labels = _as_array(stratify, "train_test_split: stratify")
            if labels.ndim == 0 or len(labels) != n_samples:
                found = labels.shape[0] if labels.ndim else "a scalar"
                raise ValueError(f"train_test_split: stratify must have one label per "
                                 f"sample ({n_samples}), got {found}")
            train_indices, test_indices = _stratified_indices(labels, n_train, n_test, rng)
        else:
            order = rng.permutation(n_samples)
            test_indices, train_indices = order[:n_test], order[n_test:]

    return [values[indices] for values in arrays for indices in (train_indices, test_indices)]


def batch_slices(n_samples, batch_size, drop_last=False):
    """The batches of ``n_samples`` in order, as slices (``DataLoader`` and ``Model.fit`` use it).

    >>> [(batch.start, batch.stop) for batch in batch_slices(5, 2)]
    [(0, 2), (2, 4), (4, 5)]
    >>> len(list(batch_slices(5, 2, drop_last=True)))
    2
    """
    last = n_samples - n_samples % batch_size if drop_last else n_samples
    for start in range(0, last, batch_size):
        yield slice(start, min(start + batch_size, n_samples))


class DataLoader:
    """Iterate over ``(xb, yb)`` mini-batches (``yb`` None when ``y`` is), ``len`` per epoch.

    ``shuffle`` draws a new order each pass from a generator seeded by ``seed``.

    >>> import numpy as np
    >>> loader = DataLoader(np.arange(10).reshape(5, 2), np.arange(5), batch_size=2)
    >>> len(loader)
    3
    >>> [yb.tolist() for xb, yb in loader]
    [[0, 1], [2, 3], [4]]
    """

    def __init__(self, x, y=None, batch_size=32, shuffle=False, drop_last=False, seed=None):
        self.x = _as_array(x, "DataLoader: x")
        self.y = None if y is None else _as_array(y, "DataLoader: y")
        if self.x.ndim == 0:
            raise ValueError("DataLoader: x is a scalar, not a sequence of samples")
        if self.y is not None and (self.y.ndim == 0 or len(self.y) != len(self.x)):
            found = len(self.y) if self.y.ndim else "a scalar"
            raise ValueError(f"DataLoader: x and y must have the same number of samples, "
                             f"got {len(self.x)} and {found}")
        if (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool)
                or batch_size < 1):
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(_global_generator().integers(2**63)) if seed is None else seed
        self._rng = np.random.default_rng(self.seed)

    @property
    def n_samples(self):
        return len(self.x)

    def __len__(self):
        return self.n_samples // self.batch_size if self.drop_last else -(-self.n_samples // self.batch_size)

    def __iter__(self):
        order = self._rng.permutation(self.n_samples) if self.shuffle else None
        for batch in batch_slices(self.n_samples, self.batch_size, self.drop_last):
            if order is not None:
                batch = order[batch]
            yield self.x[batch], (None if self.y is None else self.y[batch])

    def __repr__(self):
        return (f"DataLoader(n_samples={self.n_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")


def one_hot(labels, num_classes):
    """Encode integer class labels as float32 one-hot rows (a class axis appended).

    >>> one_hot([0, 2, 1], 3)
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    if (not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool)
            or num_classes < 1):
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r}")
    labels = _as_array(labels, "one_hot: labels")
    if labels.dtype.kind not in "iub":
        if labels.dtype.kind != "f" or not np.all(labels == np.round(labels)):
            raise ValueError(f"one_hot: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        position = tuple(int(i) for i in np.argwhere(out_of_range)[0])
        bad_value = labels[position].item()
        where = position[0] if len(position) == 1 else position
        raise ValueError(f"one_hot: label {bad_value} at index {where} is outside [0, {num_classes})")
    encoded = np.zeros(labels.shape + (int(num_classes),), dtype=np.float32)
    np.put_along_axis(encoded, labels.astype(np.intp)[..., None], 1.0, axis=-1)
    return encoded
