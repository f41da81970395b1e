"""Derive ``nanodl/datasets/digits.npz`` from the copy of the digits set in scikit-learn.

The data are the 1,797 8x8 images of the UCI ML hand-written digits data set
(E. Alpaydin and C. Kaynak, 1998), in the copy that scikit-learn ships as
``sklearn/datasets/data/digits.csv.gz`` (BSD-3-Clause). Each CSV row holds 64
pixel values in 0..16 followed by the label 0..9.

nanodl does not depend on scikit-learn; this script was run once to embed the
data, and can be rerun to check or rebuild it::

    pip install scikit-learn
    python tools/make_digits.py            # finds digits.csv.gz in the installed copy
    python tools/make_digits.py PATH/TO/digits.csv.gz
    pip uninstall -y scikit-learn

scikit-learn is only located, never imported. The output holds ``pixels``
(uint8, (1797, 64)) and ``labels`` (uint8, (1797,)), written with
``np.savez_compressed`` (no pickle).
"""
import gzip
import hashlib
import importlib.util
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_PATH = os.path.join(REPO_ROOT, "nanodl", "datasets", "digits.npz")

# Counts of each digit 0..9, as found in scikit-learn 1.9.1's digits.csv.gz
# (sha256 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22).
EXPECTED_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def find_sklearn_csv():
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-learn is not installed; run `pip install scikit-learn` "
                 "or pass the path to digits.csv.gz")
    package_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(package_dir, "datasets", "data", "digits.csv.gz")


def read_digits_csv(csv_path):
    with gzip.open(csv_path, "rt") as csv_file:
        table = np.loadtxt(csv_file, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        sys.exit(f"{csv_path}: expected a 1797 x 65 table, found {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        sys.exit(f"{csv_path}: pixel values outside 0..16")
    if labels.min() < 0 or labels.max() > 9:
        sys.exit(f"{csv_path}: labels outside 0..9")
    return pixels.astype(np.uint8), labels.astype(np.uint8)


def main(argv):
    csv_path = argv[1] if len(argv) > 1 else find_sklearn_csv()
    with open(csv_path, "rb") as raw_file:
        digest = hashlib.sha256(raw_file.read()).hexdigest()
    pixels, labels = read_digits_csv(csv_path)
    class_counts = np.bincount(labels, minlength=10).tolist()
    if class_counts != EXPECTED_CLASS_COUNTS:
        sys.exit(f"class counts {class_counts} differ from {EXPECTED_CLASS_COUNTS}")

    np.savez_compressed(OUTPUT_PATH, pixels=pixels, labels=labels)
    with np.load(OUTPUT_PATH, allow_pickle=False) as saved:
        assert np.array_equal(saved["pixels"], pixels)
        assert np.array_equal(saved["labels"], labels)

    print(f"source   {csv_path}")
    print(f"sha256   {digest}")
    print(f"pixels   {pixels.shape} {pixels.dtype}, values {pixels.min()}..{pixels.max()}")
    print(f"labels   {labels.shape} {labels.dtype}, counts {class_counts}")
    print(f"wrote    {OUTPUT_PATH} ({os.path.getsize(OUTPUT_PATH)} bytes)")


if __name__ == "__main__":
    main(sys.argv)
