"""nanodl.sklearn's MLPs next to sklearn.neural_network's, with the same settings.

Two data sets, standardised with a StandardScaler fitted on the training split:
the digits (1347 train / 450 test, 10 classes, 64 features) and breast cancer
(426 / 143, 2 classes, 30 features), both split with ``stratify`` and
``random_state=0``. Both libraries get the same parameters, scikit-learn's defaults
(``hidden_layer_sizes=(100,)``, relu, ``alpha=1e-4``, ``batch_size='auto'``,
``max_iter=200``, ``tol=1e-4``, ``n_iter_no_change=10``) with ``solver`` set to
``'adam'`` (``learning_rate_init=1e-3``), ``'sgd'`` (momentum 0.9, Nesterov) and
``'lbfgs'`` (``max_iter=200`` iterations, ``max_fun=15000``). They stop by their own
(identical) rules, so the iteration counts are reported next to the times, and the
time per iteration compares like with like. The estimators run interleaved,
alternating which goes first, each figure is the median of ``--repeats`` runs (3),
every run with its own ``random_state`` (0, 1, 2, the same for both).

    flock /tmp/nanodl-bench.lock python benchmarks/bench_sklearn.py            # about a minute
    flock /tmp/nanodl-bench.lock python benchmarks/bench_sklearn.py --repeats 5 --markdown
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

SOLVERS = {"adam": {}, "sgd": {}, "lbfgs": {}}  # scikit-learn's defaults otherwise


def datasets():
    import nanodl as nd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    found = {"digits": nd.datasets.load_digits()}
    cancer = load_breast_cancer()
    found["breast cancer"] = (cancer.data, cancer.target)
    prepared = {}
    for name, (x, y) in found.items():
        x_train, x_test, y_train, y_test = train_test_split(np.asarray(x, dtype=np.float64), y,
                                                            test_size=0.25, stratify=y, random_state=0)
        scaler = StandardScaler().fit(x_train)
        prepared[name] = (scaler.transform(x_train), scaler.transform(x_test), y_train, y_test)
    return prepared


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
            "iterations": int(estimator.n_iter_), "ms_per_iteration": 1e3 * seconds / estimator.n_iter_}


def compare(dataset, solver, params, repeats, data):
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    from nanodl.sklearn import MLPClassifier as NanodlMLP
    runs = {"nanodl.sklearn": [], "sklearn.neural_network": []}
    contenders = [("nanodl.sklearn", NanodlMLP), ("sklearn.neural_network", SklearnMLP)]
    for repeat in range(repeats):
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for name, cls in order:
            runs[name].append(one_run(cls, dict(params, solver=solver, random_state=repeat), data))
    rows = []
    for name, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in results[0]}
        rows.append((dataset, solver, name, median, [r["accuracy"] for r in results]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated (default: all)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    import nanodl
    import sklearn
    prepared = datasets()
    rows = []
    for dataset, data in prepared.items():
        for solver in args.solvers.split(","):
            rows += compare(dataset, solver, SOLVERS[solver], args.repeats, data)
    sizes = ", ".join(f"{name} {len(d[0])} train / {len(d[1])} test" for name, d in prepared.items())
    print(f"{sizes}; nanodl {nanodl.__version__} (kernels {nanodl.backend.get_kernels()}), "
          f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} interleaved runs, float64 inputs")
    header = ("data", "solver", "estimator", "test accuracy", "fit time (s)", "iterations",
              "ms / iteration", "accuracies")
    lines = [(dataset, solver, name, f"{median['accuracy']:.4f}", f"{median['seconds']:.3f}",
              f"{median['iterations']:.0f}", f"{median['ms_per_iteration']:.2f}",
              " ".join(f"{a:.4f}" for a in accuracies))
             for dataset, solver, name, median, accuracies in rows]
    print(format_table(header, lines, args.markdown))
    for i in range(0, len(rows), 2):
        (dataset, solver, _, nano, _), (_, _, _, peer, _) = rows[i], rows[i + 1]
        print(f"{dataset}, {solver}: nanodl/sklearn time per iteration "
              f"{nano['ms_per_iteration'] / peer['ms_per_iteration']:.2f}x, fit time "
              f"{nano['seconds'] / peer['seconds']:.2f}x, accuracy {nano['accuracy'] - peer['accuracy']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
