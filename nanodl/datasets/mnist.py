"""Read MNIST (or anything in its layout, such as Fashion-MNIST) from IDX files."""
import gzip
import os
import zlib

import numpy as np

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SIDE = 28

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def _find_file(folder, name):
    """The path of ``name`` in ``folder``, maybe ``.gz`` or spelled ``train-images.idx3-ubyte``."""
    dotted = name.replace("-idx", ".idx")
    candidates = [name, name + ".gz", dotted, dotted + ".gz"]
    for candidate in candidates:
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"load_mnist: {os.path.join(folder, name)} not found "
                            f"(looked for {', '.join(candidates)} in {folder})")


def _read_bytes(path):
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"load_mnist: cannot read {path}: {error}") from None


def _read_idx(path, expected_magic, expected_dims):
    """An IDX file of unsigned bytes as an array of shape (count, *expected_dims)."""
    content = _read_bytes(path)
    n_dims = 1 + len(expected_dims)
    header_size = 4 + 4 * n_dims
    if len(content) < 4:
        raise ValueError(f"load_mnist: {path} is {len(content)} bytes long, too short "
                         f"for an IDX header (expected magic number {expected_magic})")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"load_mnist: {path} has magic number {magic} (0x{magic:08x}); "
                         f"expected {expected_magic} (0x{expected_magic:08x})")
    if len(content) < header_size:
        raise ValueError(f"load_mnist: {path} is truncated: its header needs "
                         f"{header_size} bytes, the file has {len(content)}")
    sizes = np.frombuffer(content, dtype=">u4", count=n_dims, offset=4).tolist()
    if sizes[1:] != list(expected_dims):
        raise ValueError(f"load_mnist: {path} holds items of shape {tuple(sizes[1:])}; "
                         f"expected {tuple(expected_dims)}")
    expected_size = int(np.prod(sizes))
    found_size = len(content) - header_size
    if found_size != expected_size:
        problem = "truncated" if found_size < expected_size else "longer than its header says"
        raise ValueError(f"load_mnist: {path} is {problem}: {sizes[0]} items of shape {tuple(sizes[1:])} "
                         f"need {expected_size} bytes of data, found {found_size}")
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(sizes)


def _load_part(folder, images_name, labels_name):
    images_path = _find_file(folder, images_name)
    labels_path = _find_file(folder, labels_name)
    images = _read_idx(images_path, IMAGE_MAGIC, (IMAGE_SIDE, IMAGE_SIDE))
    labels = _read_idx(labels_path, LABEL_MAGIC, ())
    if len(images) != len(labels):
        raise ValueError(f"load_mnist: {images_path} has {len(images)} images but {labels_path} has "
                         f"{len(labels)} labels; expected one label per image")
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    return x, labels.astype(np.int64)


def load_mnist(path):
    """``((x_train, y_train), (x_test, y_test))`` from the four IDX files (or ``.gz``) in ``path``.

    ``x`` is float32 ``(n, 784)`` in [0, 1]; a malformed file raises ``ValueError``.

    >>> load_mnist("/no/such/folder")
    Traceback (most recent call last):
        ...
    FileNotFoundError: load_mnist: folder /no/such/folder not found (expected the MNIST IDX files in it)
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"load_mnist: folder {folder} not found "
                                f"(expected the MNIST IDX files in it)")
    return _load_part(folder, TRAIN_IMAGES, TRAIN_LABELS), _load_part(folder, TEST_IMAGES, TEST_LABELS)
