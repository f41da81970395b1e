"""nanodl.sklearn.MLPClassifier next to sklearn.neural_network.MLPClassifier on the digits.

Both get the same hyperparameters (the ones nanodl.sklearn and scikit-learn share):
hidden_layer_sizes=(100,), relu, adam, alpha=1e-4, batch_size=32 (scikit-learn's
default 'auto' would be 200), learning_rate_init=1e-3, max_iter=200, tol=1e-4,
n_iter_no_change=10, shuffle, on the embedded digits (1347 train / 450 test,
stratified), standardised with a StandardScaler fitted on the training split.

Two runs of each: with the shared stopping rule (the training loss improves by less
than tol for n_iter_no_change epochs), and a fixed number of epochs (n_iter_no_change
set to max_iter) so the time per epoch compares like with like. The estimators run
interleaved, alternating which goes first, and each figure is the median of
``--repeats`` runs (3), every run with its own random_state.

    python benchmarks/bench_sklearn.py                 # about a minute
    python benchmarks/bench_sklearn.py --repeats 5 --fixed-epochs 50 --markdown
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import format_table  # noqa: E402

SHARED = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam", alpha=1e-4, batch_size=32,
              learning_rate_init=1e-3, max_iter=200, tol=1e-4, n_iter_no_change=10, shuffle=True)


def digits():
    import nanodl as nd
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    x, y = nd.datasets.load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def one_run(cls, params, data):
    from sklearn.exceptions import ConvergenceWarning
    x_train, x_test, y_train, y_test = data
    estimator = cls(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        estimator.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    return {"accuracy": float(estimator.score(x_test, y_test)), "seconds": seconds,
            "epochs": int(estimator.n_iter_), "ms_per_epoch": 1e3 * seconds / estimator.n_iter_}


def compare(label, params, repeats, data):
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    from nanodl.sklearn import MLPClassifier as NanodlMLP
    runs = {"nanodl.sklearn": [], "sklearn.neural_network": []}
    contenders = [("nanodl.sklearn", NanodlMLP), ("sklearn.neural_network", SklearnMLP)]
    for repeat in range(repeats):
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for name, cls in order:
            runs[name].append(one_run(cls, dict(params, random_state=repeat), data))
    rows = []
    for name, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in results[0]}
        rows.append((label, name, median, [r["accuracy"] for r in results]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed-epochs", type=int, default=30,
                        help="epochs of the fixed-length run (default 30)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    import nanodl
    import sklearn
    data = digits()
    fixed = dict(SHARED, max_iter=args.fixed_epochs, n_iter_no_change=args.fixed_epochs)
    rows = compare("stopping rule", SHARED, args.repeats, data) + \
        compare(f"{args.fixed_epochs} epochs", fixed, args.repeats, data)
    print(f"digits: {len(data[0])} train / {len(data[1])} test; nanodl {nanodl.__version__} (kernels "
          f"{nanodl.backend.get_kernels()}), scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs; median of {args.repeats} interleaved runs")
    header = ("run", "estimator", "test accuracy", "fit time (s)", "epochs", "ms / epoch", "accuracies")
    lines = []
    for label, name, median, accuracies in rows:
        lines.append((label, name, f"{median['accuracy']:.4f}", f"{median['seconds']:.2f}",
                      f"{median['epochs']:.0f}", f"{median['ms_per_epoch']:.1f}",
                      " ".join(f"{a:.4f}" for a in accuracies)))
    print(format_table(header, lines, args.markdown))
    for label in dict.fromkeys(row[0] for row in rows):
        nano, peer = [row[2] for row in rows if row[0] == label]
        print(f"{label}: nanodl/sklearn time per epoch {nano['ms_per_epoch'] / peer['ms_per_epoch']:.2f}x, "
              f"fit time {nano['seconds'] / peer['seconds']:.2f}x, accuracy "
              f"{nano['accuracy'] - peer['accuracy']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
