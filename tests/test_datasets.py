"""Tests for nanodl.datasets: the embedded digits, the toy generators and load_mnist."""
import gzip
import hashlib

import numpy as np
import pytest

from nanodl import datasets

# Counts of each digit 0..9, checked against scikit-learn 1.9.1's digits.csv.gz when
# nanodl/datasets/digits.npz was made (tools/make_digits.py).
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
DIGITS_PIXEL_SUM = 561718  # sum of all raw 0..16 pixel values
DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"
FIRST_DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8,
               0, 0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
               0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


# ---------------------------------------------------------------- load_digits

def test_load_digits_shapes_dtypes_and_range():
    x, y = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0


def test_load_digits_content_matches_the_source():
    x, y = datasets.load_digits()
    assert np.bincount(y).tolist() == DIGITS_CLASS_COUNTS
    pixels = np.rint(x * 16).astype(np.uint8)
    np.testing.assert_array_equal(pixels / np.float32(16), x)  # exact multiples of 1/16
    assert int(pixels.sum()) == DIGITS_PIXEL_SUM
    assert pixels[0].tolist() == FIRST_DIGIT and y[:10].tolist() == list(range(10))
    digest = hashlib.sha256(pixels.tobytes() + y.astype(np.uint8).tobytes()).hexdigest()
    assert digest == DIGITS_SHA256


def test_load_digits_returns_fresh_arrays():
    x, _ = datasets.load_digits()
    x[:] = -1
    assert datasets.load_digits()[0].min() == 0.0


def test_digits_file_is_small_and_pickle_free():
    from importlib import resources
    stored = resources.files("nanodl.datasets").joinpath("digits.npz")
    assert len(stored.read_bytes()) < 100_000
    with stored.open("rb") as handle, np.load(handle, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["labels", "pixels"]
        assert arrays["pixels"].dtype == np.uint8 and arrays["labels"].dtype == np.uint8


def test_nanodl_datasets_does_not_need_scikit_learn():
    import nanodl.datasets.digits as digits_module
    import nanodl.data as data_module
    for module in (digits_module, data_module, datasets.synthetic, datasets.mnist):
        source = open(module.__file__).read()
        assert "import sklearn" not in source and "from sklearn" not in source


# ---------------------------------------------------------------- toy generators

GENERATORS = {
    "moons": lambda n, seed: datasets.make_moons(n, noise=0.1, seed=seed),
    "spirals": lambda n, seed: datasets.make_spirals(n, n_classes=3, noise=0.1, seed=seed),
    "xor": lambda n, seed: datasets.make_xor(n, seed=seed),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_shapes_dtypes_and_seed(name):
    make = GENERATORS[name]
    x, y = make(150, 0)
    assert x.shape == (150, 2) and x.dtype == np.float32
    assert y.shape == (150,) and y.dtype == np.int64
    x_again, y_again = make(150, 0)
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    x_other, _ = make(150, 1)
    assert not np.array_equal(x, x_other)


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_without_seed_use_global_rng(name, seeded_global_rng):
    make = GENERATORS[name]
    seeded_global_rng.manual_seed(5)
    first = make(40, None)
    seeded_global_rng.manual_seed(5)
    second = make(40, None)
    np.testing.assert_array_equal(first[0], second[0])
    third = make(40, None)  # the global stream has moved on
    assert not np.array_equal(first[0], third[0])


def test_make_moons_geometry():
    x, y = datasets.make_moons(101, seed=0)
    assert np.bincount(y).tolist() == [50, 51]  # as scikit-learn: n // 2 in class 0
    upper, lower = x[y == 0].astype(np.float64), x[y == 1].astype(np.float64)
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1, atol=1e-6)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1, atol=1e-6)
    assert upper[:, 1].min() >= -1e-6 and lower[:, 1].max() <= 0.5 + 1e-6
    assert len(np.unique(y[:20])) == 2  # shuffled, not sorted by class
    noisy, _ = datasets.make_moons(101, noise=0.2, seed=0)
    assert not np.allclose(noisy, x)


def test_make_spirals_classes_and_arms():
    x, y = datasets.make_spirals(301, n_classes=3, seed=0)
    assert x.shape == (301, 2)
    assert np.bincount(y).tolist() == [101, 100, 100]
    radius = np.hypot(x[:, 0], x[:, 1])
    assert radius.max() <= 1 + 1e-6
    # each arm is the first one rotated by 2*pi*k/3, so radii per arm match
    for arm in range(3):
        assert np.isclose(radius[y == arm].max(), 1, atol=1e-6)
    x2, y2 = datasets.make_spirals(10, seed=0)
    assert np.bincount(y2).tolist() == [5, 5]


def test_make_xor_labels_follow_signs():
    x, y = datasets.make_xor(500, seed=3)
    assert np.all(np.abs(x) <= 1)
    np.testing.assert_array_equal(y, (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(np.int64))
    assert 150 < y.sum() < 350


def test_generator_errors():
    with pytest.raises(ValueError, match="make_moons: n_samples"):
        datasets.make_moons(0)
    with pytest.raises(ValueError, match="make_moons: noise"):
        datasets.make_moons(10, noise=-0.1)
    with pytest.raises(ValueError, match="make_spirals: n_samples"):
        datasets.make_spirals(2, n_classes=3)
    with pytest.raises(ValueError, match="make_spirals: n_classes"):
        datasets.make_spirals(10, n_classes=0)
    with pytest.raises(ValueError, match="make_xor: n_samples"):
        datasets.make_xor(2.5)


# ---------------------------------------------------------------- load_mnist

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape)
    return header + array.tobytes()


def write_mnist(folder, compress=False, n_train=5, n_test=3, seed=0, **overrides):
    """Write small IDX files; ``overrides`` maps a key of MNIST_NAMES to raw bytes."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for key, name in MNIST_NAMES.items():
        content = overrides.get(key, idx_bytes(arrays[key]))
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_mnist_reads_idx_files(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(tmp_path)
    assert x_train.shape == (5, 784) and x_test.shape == (3, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0 <= x_train.min() and x_train.max() <= 1
    np.testing.assert_allclose(x_train * 255, arrays["train_images"].reshape(5, 784),
                               atol=1e-4)
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    np.testing.assert_allclose(x_test.reshape(3, 28, 28) * 255, arrays["test_images"],
                               atol=1e-4)


def test_load_mnist_accepts_a_string_path(tmp_path):
    write_mnist(tmp_path)
    (x_train, _), _ = datasets.load_mnist(str(tmp_path))
    assert len(x_train) == 5


def test_load_mnist_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / MNIST_NAMES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        datasets.load_mnist(tmp_path / "no-such-folder")


def test_load_mnist_bad_magic_is_named(tmp_path):
    labels_instead_of_images = idx_bytes(np.zeros(5))
    write_mnist(tmp_path, train_images=labels_instead_of_images)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic number 2049.*"
                                         r"expected 2051"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_truncated_file_is_named(tmp_path):
    whole = idx_bytes(np.zeros((3, 28, 28)))
    write_mnist(tmp_path, compress=True, test_images=whole[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is truncated.*2352"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_truncated_header_and_gzip_stream(tmp_path):
    write_mnist(tmp_path, train_labels=idx_bytes(np.zeros(5))[:6])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)

    broken = tmp_path / "broken"
    broken.mkdir()
    write_mnist(broken, compress=True)
    path = broken / (MNIST_NAMES["train_labels"] + ".gz")
    path.write_bytes(path.read_bytes()[:-12])  # cut the gzip stream short
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        datasets.load_mnist(broken)


def test_load_mnist_wrong_image_size_and_count_mismatch(tmp_path):
    write_mnist(tmp_path, train_images=idx_bytes(np.zeros((5, 8, 8))))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(8, 8\).*\(28, 28\)"):
        datasets.load_mnist(tmp_path)

    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    write_mnist(mismatch, test_labels=idx_bytes(np.zeros(4)))
    with pytest.raises(ValueError, match=r"3 images.*t10k-labels-idx1-ubyte has 4 labels"):
        datasets.load_mnist(mismatch)


def test_load_mnist_rejects_trailing_bytes(tmp_path):
    write_mnist(tmp_path, train_labels=idx_bytes(np.zeros(5)) + b"\x00")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is longer"):
        datasets.load_mnist(tmp_path)

