"""Per-call cost of the kernel table on a tiny training step: checked vs unchecked.

The ten kernel calls of one step of a 64-32-10 MLP (batch 32, SGD): two fused dense
forwards, softmax-cross-entropy forward and backward, two dense backwards and four
SGD updates. Each table runs them through its checked kernels (``table.<name>``: the
declared contract's checks, then the compute function) and through its unchecked
compute functions (``table.compute.<name>``), interleaved in one process; the
difference is what the checks cost.

    python benchmarks/bench_kernel_calls.py [--repeats R] [--steps N]
"""
import argparse
import os
import sys
import time

import numpy as np

try:
    from nanodl.backend import kernels_native, kernels_numpy
except ImportError:  # run from a checkout without installing: put the repo on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nanodl.backend import kernels_native, kernels_numpy


def tiny_step(kernels):
    """One training step's ten kernel calls, on ``kernels`` (a table or its .compute)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((32, 64)).astype(f32)
    w1, b1 = (rng.standard_normal((64, 32)) * 0.1).astype(f32), np.zeros(32, f32)
    w2, b2 = (rng.standard_normal((32, 10)) * 0.1).astype(f32), np.zeros(10, f32)
    y = rng.integers(0, 10, 32)
    upstream = np.full(32, 1 / 32, f32)

    def step():
        h, saved_h = kernels.linear_forward(x, w1, b1, "relu", 0.0)
        z, saved_z = kernels.linear_forward(h, w2, b2, "linear", 0.0)
        _, probs = kernels.softmax_xent_forward(z, y)
        dz = kernels.softmax_xent_backward(probs, y, upstream)
        dh, dw2, db2 = kernels.linear_backward(h, w2, saved_z, dz, "linear", 0.0, True, True, True)
        _, dw1, db1 = kernels.linear_backward(x, w1, saved_h, dh, "relu", 0.0, False, True, True)
        for param, grad in ((w1, dw1), (b1, db1), (w2, dw2), (b2, db2)):
            kernels.sgd_step(param, grad, momentum_buf=None, lr=0.0, momentum=0.0,
                             nesterov=False, weight_decay=0.0)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    tables = [kernels_numpy.TABLE] + ([kernels_native.TABLE] if kernels_native else [])
    runs = {}
    for tbl in tables:
        runs[f"{tbl.name} checked"] = tiny_step(tbl)
        runs[f"{tbl.name} unchecked"] = tiny_step(tbl.compute)
    times = {name: [] for name in runs}
    for step in runs.values():
        for _ in range(50):
            step()  # warm up
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits all alike
        for name, step in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"10 kernel calls of a 64-32-10 SGD step, batch 32, float32; median (min) of {args.repeats}")
    rows = []
    for name, record in times.items():
        median, best = sorted(record)[len(record) // 2], min(record)
        rows.append({"run": name, "median_us": median * 1e6, "min_us": best * 1e6})
        print(f"{name:20s} {median * 1e6:7.1f} us ({best * 1e6:.1f})")
    return rows


if __name__ == "__main__":
    main()
