"""Tests for nanodl.data: train_test_split, DataLoader, one_hot."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nanodl
from nanodl import data


class FakeTensor:
    """Stands in for a nanodl Tensor: an ndarray behind ``.data`` and ``.numpy()``."""

    def __init__(self, array):
        self.data = np.asarray(array)

    def numpy(self):
        return self.data


class DataOnly:
    """An object that only has an ndarray ``.data`` attribute."""

    def __init__(self, array):
        self.data = np.asarray(array)


# ---------------------------------------------------------------- train_test_split

def test_split_returns_train_test_pairs_in_order():
    x = np.arange(40).reshape(20, 2)
    y = np.arange(20)
    names = np.array([f"s{i}" for i in range(20)])
    parts = data.train_test_split(x, y, names, random_state=0)
    assert len(parts) == 6
    x_train, x_test, y_train, y_test, names_train, names_test = parts
    assert x_train.shape == (15, 2) and x_test.shape == (5, 2)
    # the same permutation is applied to every array
    np.testing.assert_array_equal(x_train[:, 0] // 2, y_train)
    np.testing.assert_array_equal(x_test[:, 0] // 2, y_test)
    np.testing.assert_array_equal(names_test, [f"s{i}" for i in y_test])


@settings(max_examples=60, deadline=None)
@given(n_samples=st.integers(2, 300), fraction=st.floats(0.01, 0.99))
def test_split_float_test_size_rounds_test_part_up(n_samples, fraction):
    n_test = math.ceil(fraction * n_samples)
    if n_test >= n_samples:
        with pytest.raises(ValueError, match="train_test_split"):
            data.train_test_split(np.arange(n_samples), test_size=fraction)
        return
    train, test = data.train_test_split(np.arange(n_samples), test_size=fraction,
                                        random_state=1)
    assert len(test) == n_test and len(train) == n_samples - n_test
    # disjoint and together cover every sample exactly once
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n_samples))


@settings(max_examples=40, deadline=None)
@given(n_samples=st.integers(2, 200), data_=st.data())
def test_split_int_test_size_is_a_count(n_samples, data_):
    n_test = data_.draw(st.integers(1, n_samples - 1))
    train, test = data.train_test_split(np.arange(n_samples), test_size=n_test, random_state=2)
    assert len(test) == n_test and len(train) == n_samples - n_test
    assert not set(train.tolist()) & set(test.tolist())


def test_split_known_sizes_match_scikit_learn():
    # sizes scikit-learn gives for the same calls
    assert [len(p) for p in data.train_test_split(np.arange(10))] == [7, 3]
    assert [len(p) for p in data.train_test_split(np.arange(10), test_size=0.25)] == [7, 3]
    assert [len(p) for p in data.train_test_split(np.arange(1797), test_size=0.2)] == [1437, 360]
    assert [len(p) for p in data.train_test_split(np.arange(5), test_size=0.5)] == [2, 3]


def test_split_without_shuffle_keeps_order():
    train, test = data.train_test_split(np.arange(10), test_size=3, shuffle=False)
    np.testing.assert_array_equal(train, np.arange(7))
    np.testing.assert_array_equal(test, [7, 8, 9])


def test_split_random_state_is_reproducible():
    x = np.arange(100)
    first = data.train_test_split(x, random_state=42)
    second = data.train_test_split(x, random_state=42)
    other = data.train_test_split(x, random_state=43)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    from_generator = [data.train_test_split(x, random_state=np.random.default_rng(9))[1]
                      for _ in range(2)]
    np.testing.assert_array_equal(*from_generator)


def test_split_shuffles_by_default():
    train, test = data.train_test_split(np.arange(100), random_state=0)
    assert not np.array_equal(test, np.arange(75, 100))
    assert not np.array_equal(train, np.sort(train))


def test_split_accepts_lists_and_tensor_likes():
    x_train, x_test, y_train, y_test, z_train, z_test = data.train_test_split(
        list(range(8)), FakeTensor(np.arange(8) * 10), DataOnly(np.arange(8) * 100),
        test_size=2, random_state=0)
    assert all(isinstance(part, np.ndarray) for part in (x_train, y_test, z_train))
    np.testing.assert_array_equal(y_train, x_train * 10)
    np.testing.assert_array_equal(z_test, x_test * 100)


def test_split_stratify_keeps_class_proportions():
    y = np.repeat([0, 1, 2], [60, 30, 10])  # 60% / 30% / 10%
    x = np.arange(100)
    x_train, x_test, y_train, y_test = data.train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0)
    assert np.bincount(y_test).tolist() == [12, 6, 2]
    assert np.bincount(y_train).tolist() == [48, 24, 8]
    np.testing.assert_array_equal(y[x_test], y_test)
    np.testing.assert_array_equal(np.sort(np.concatenate([x_train, x_test])), x)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(2, 40), min_size=2, max_size=5),
       fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**32 - 1))
def test_split_stratify_is_within_one_of_exact_share(counts, fraction, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    n_samples, n_classes = len(y), len(counts)
    n_test = math.ceil(fraction * n_samples)
    if n_test < n_classes or n_samples - n_test < n_classes:
        with pytest.raises(ValueError, match="classes|empty"):
            data.train_test_split(y, test_size=fraction, stratify=y, random_state=seed)
        return
    y_train, y_test = data.train_test_split(y, test_size=fraction, stratify=y,
                                            random_state=seed)
    assert len(y_test) == n_test and len(y_train) == n_samples - n_test
    test_counts = np.bincount(y_test, minlength=n_classes)
    exact = np.array(counts) * n_test / n_samples
    assert np.all(np.abs(test_counts - exact) < 1 + 1e-9)
    np.testing.assert_array_equal(np.bincount(y_train, minlength=n_classes) + test_counts, counts)


def test_split_stratify_accepts_one_hot_rows():
    labels = np.repeat([0, 1], [8, 4])
    onehot = np.eye(2)[labels]
    _, _, y_train, y_test = data.train_test_split(labels, onehot, test_size=0.25,
                                                  stratify=onehot, random_state=0)
    assert y_test.argmax(1).tolist().count(1) == 1 and len(y_test) == 3


def test_split_errors_name_the_function_and_values():
    with pytest.raises(ValueError, match=r"train_test_split.*\[10, 9\]"):
        data.train_test_split(np.arange(10), np.arange(9))
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=rf"train_test_split: test_size={bad}"):
            data.train_test_split(np.arange(10), test_size=bad)
    for bad in (0, 10, 11, -1):
        with pytest.raises(ValueError, match=rf"test_size={bad}.*10"):
            data.train_test_split(np.arange(10), test_size=bad)
    with pytest.raises(ValueError, match="test_size"):
        data.train_test_split(np.arange(10), test_size="half")
    with pytest.raises(ValueError, match="at least one array"):
        data.train_test_split()
    with pytest.raises(ValueError, match="shuffle"):
        data.train_test_split(np.arange(10), stratify=np.arange(10) % 2, shuffle=False)
    with pytest.raises(ValueError, match=r"only 1: \[2\]"):
        data.train_test_split(np.arange(5), stratify=[0, 0, 1, 1, 2], random_state=0)
    with pytest.raises(ValueError, match="one label per sample"):
        data.train_test_split(np.arange(6), stratify=[0, 1, 0, 1], random_state=0)


def test_split_without_random_state_uses_global_rng(seeded_global_rng):
    seeded_global_rng.manual_seed(7)
    first = data.train_test_split(np.arange(50))
    seeded_global_rng.manual_seed(7)
    second = data.train_test_split(np.arange(50))
    np.testing.assert_array_equal(first[1], second[1])


# ---------------------------------------------------------------- DataLoader

def test_loader_batches_in_order_without_shuffle():
    x = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    loader = data.DataLoader(x, y, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    assert batches[0][0].shape == (4, 2)


def test_loader_drop_last():
    loader = data.DataLoader(np.arange(10), np.arange(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [len(xb) for xb, _ in loader] == [4, 4]
    exact = data.DataLoader(np.arange(8), batch_size=4, drop_last=True)
    assert len(exact) == 2 and len(list(exact)) == 2


@settings(max_examples=50, deadline=None)
@given(n_samples=st.integers(0, 100), batch_size=st.integers(1, 40), drop_last=st.booleans(),
       shuffle=st.booleans())
def test_loader_length_and_coverage(n_samples, batch_size, drop_last, shuffle):
    loader = data.DataLoader(np.arange(n_samples), np.arange(n_samples) * 2,
                             batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                             seed=0)
    expected_batches = (n_samples // batch_size if drop_last
                        else math.ceil(n_samples / batch_size))
    batches = list(loader)
    assert len(loader) == len(batches) == expected_batches
    seen = np.concatenate([xb for xb, _ in batches]) if batches else np.array([], int)
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, xb * 2)  # x and y stay paired
    assert len(set(seen.tolist())) == len(seen)  # no sample twice in one epoch
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), np.arange(n_samples))


def test_loader_shuffle_covers_every_sample_each_epoch_and_reshuffles():
    loader = data.DataLoader(np.arange(100), batch_size=16, shuffle=True, seed=3)
    epochs = [np.concatenate([xb for xb, _ in loader]) for _ in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(100))
    assert not np.array_equal(epochs[0], np.arange(100))
    assert not np.array_equal(epochs[0], epochs[1])


def test_loader_seed_is_reproducible():
    def epochs(seed):
        loader = data.DataLoader(np.arange(50), batch_size=8, shuffle=True, seed=seed)
        return [np.concatenate([xb for xb, _ in loader]) for _ in range(2)]

    for a, b in zip(epochs(5), epochs(5)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(epochs(5)[0], epochs(6)[0])


def test_loader_without_seed_draws_from_global_rng(seeded_global_rng):
    seeded_global_rng.manual_seed(11)
    first = next(iter(data.DataLoader(np.arange(64), batch_size=64, shuffle=True)))[0]
    seeded_global_rng.manual_seed(11)
    second = next(iter(data.DataLoader(np.arange(64), batch_size=64, shuffle=True)))[0]
    np.testing.assert_array_equal(first, second)


def test_loader_with_y_none_yields_none():
    batches = list(data.DataLoader(np.ones((5, 3)), batch_size=2))
    assert [xb.shape for xb, _ in batches] == [(2, 3), (2, 3), (1, 3)]
    assert all(yb is None for _, yb in batches)


def test_loader_accepts_tensor_likes_and_lists():
    xb, yb = next(iter(data.DataLoader(FakeTensor(np.arange(6)), [1, 2, 3, 4, 5, 6],
                                       batch_size=3)))
    assert isinstance(xb, np.ndarray) and isinstance(yb, np.ndarray)
    np.testing.assert_array_equal(yb, [1, 2, 3])


def test_loader_errors():
    with pytest.raises(ValueError, match=r"DataLoader.*5 and 4"):
        data.DataLoader(np.arange(5), np.arange(4))
    for bad in (0, -1, 2.5, None):
        with pytest.raises(ValueError, match="DataLoader: batch_size"):
            data.DataLoader(np.arange(5), batch_size=bad)


# ---------------------------------------------------------------- one_hot

def test_one_hot_values_and_dtype():
    encoded = data.one_hot(np.array([2, 0, 1, 2]), 3)
    assert encoded.dtype == np.float32 and encoded.shape == (4, 3)
    np.testing.assert_array_equal(encoded, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert data.one_hot([], 4).shape == (0, 4)
    assert data.one_hot(FakeTensor([1, 1]), 2).tolist() == [[0, 1], [0, 1]]
    assert data.one_hot([[0, 1], [1, 0]], 2).shape == (2, 2, 2)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 9), max_size=50))
def test_one_hot_round_trips_through_argmax(labels):
    encoded = data.one_hot(labels, 10)
    assert encoded.shape == (len(labels), 10)
    np.testing.assert_array_equal(encoded.sum(axis=1), 1)
    np.testing.assert_array_equal(encoded.argmax(axis=1), labels)


def test_one_hot_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"label 3 at index 1 is outside \[0, 3\)"):
        data.one_hot([0, 3, 1], 3)
    with pytest.raises(ValueError, match=r"label -1"):
        data.one_hot(np.array([-1, 0]), 3)
    with pytest.raises(ValueError, match="integers"):
        data.one_hot([0.5, 1.0], 3)
    with pytest.raises(ValueError, match="num_classes"):
        data.one_hot([0, 1], 0)
    np.testing.assert_array_equal(data.one_hot([1.0, 0.0], 2), [[0, 1], [1, 0]])


# ---------------------------------------------------------------- with the real nanodl

def test_real_manual_seed_makes_unseeded_calls_reproducible():
    if not hasattr(nanodl, "manual_seed"):
        pytest.skip("nanodl.manual_seed is not available")

    def draw():
        loader = data.DataLoader(np.arange(30), batch_size=30, shuffle=True)
        return (next(iter(loader))[0], data.train_test_split(np.arange(30))[1])

    nanodl.manual_seed(123)
    first = draw()
    nanodl.manual_seed(123)
    second = draw()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_real_tensors_are_accepted():
    if not hasattr(nanodl, "tensor"):
        pytest.skip("nanodl.tensor is not available")
    x = nanodl.tensor(np.arange(12, dtype=np.float32).reshape(6, 2))
    x_train, x_test = data.train_test_split(x, test_size=2, random_state=0)
    assert isinstance(x_train, np.ndarray) and x_train.shape == (4, 2) and x_test.shape == (2, 2)
    xb, yb = next(iter(data.DataLoader(x, nanodl.tensor(np.arange(6)), batch_size=4)))
    assert xb.shape == (4, 2) and yb.tolist() == [0, 1, 2, 3]
    assert data.one_hot(nanodl.tensor(np.array([1, 0])), 2).tolist() == [[0, 1], [1, 0]]
