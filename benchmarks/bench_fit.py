"""Wall time of ``Model.fit`` as users call it: the ``nanodl train`` digits model and
bench_mlp's "small" configuration, with ``capture=False`` (the eager step) and the
default (``capture='auto'``: the captured step where it is valid).

Each repetition runs both in turn in this process (so load hits both alike); the
table gives medians of the wall time and of the process's CPU time (less sensitive to
other processes on a shared machine) and their ratios. Run it under the benchmark lock::

    flock /tmp/nanodl-bench.lock python benchmarks/bench_fit.py --repeats 7

``--only auto`` (or ``eager``) times one of them, for comparing two checkouts.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nanodl as nd  # noqa: E402
from nanodl import datasets, nn, optim  # noqa: E402


def digits():
    """The ``nanodl train`` default: 64-128-64-10 relu/softmax, Adam, batch 32, 5 epochs."""
    x, y = datasets.load_digits()

    def model():
        nd.manual_seed(0)
        m = nn.Sequential([nn.Dense(128, activation="relu", input_dim=64),
                           nn.Dense(64, activation="relu"), nn.Dense(10, activation="softmax")])
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m
    return model, x, y, {"batch_size": 32, "epochs": 5}


def small():
    """bench_mlp's "small": 784-128-10, SGD(0.01), batch 64, 3200 samples, 2 epochs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3200, 784)).astype(np.float32)
    y = rng.integers(0, 10, 3200)

    def model():
        nd.manual_seed(0)
        m = nn.Sequential([nn.Dense(128, activation="relu", input_dim=784), nn.Dense(10)])
        m.compile(optimizer=optim.SGD(lr=0.01), loss=nd.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        return m
    return model, x, y, {"batch_size": 64, "epochs": 2}


def time_fit(setup, capture):
    make, x, y, kwargs = setup
    model = make()
    extra = {} if capture == "auto" else {"capture": capture}
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, verbose=0, **kwargs, **extra)
    return time.perf_counter() - start, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=("eager", "auto"))
    args = parser.parse_args()
    modes = {"eager": False, "auto": "auto"}
    if args.only:
        modes = {args.only: modes[args.only]}
    for name, setup in (("digits", digits()), ("small", small())):
        times = {mode: [] for mode in modes}
        time_fit(setup, next(iter(modes.values())))  # warm-up
        for _ in range(args.repeats):
            for mode, capture in modes.items():
                times[mode].append(time_fit(setup, capture))
        medians = {mode: [statistics.median(run[i] for run in values) for i in (0, 1)]
                   for mode, values in times.items()}
        cells = "  ".join(f"{mode} {wall * 1e3:7.1f} ms (cpu {cpu * 1e3:7.1f})"
                          for mode, (wall, cpu) in medians.items())
        ratio = ""
        if len(modes) == 2:
            ratio = "  auto/eager " + "/".join(
                f"{medians['auto'][i] / medians['eager'][i]:.2f}" for i in (0, 1))
        print(f"{name:7s} {cells}{ratio}   (median of {args.repeats}; wall, process cpu)")


if __name__ == "__main__":
    main()
