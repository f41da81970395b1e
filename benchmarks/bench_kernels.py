"""Elementwise kernel bandwidth: native vs NumPy tables vs a plain memory copy.

For each activation (forward and backward) and each optimizer update, on float32
arrays of 16M elements (``--quick``: 1M), the median time over several repeats and
the effective bandwidth: bytes read + bytes written, divided by the time. The
reference is ``np.copyto`` into a preallocated array (read n, write n bytes); the
last columns are each table's bandwidth as a fraction of it.

Forward and backward activation kernels return a fresh array, so their time
includes the first touch of newly mapped pages, which an in-place copy does not
pay (``fresh copy`` in the output, ``x.copy()``, shows that cost); optimizer updates
are in place.

    python benchmarks/bench_kernels.py [--quick] [--repeats R] [--size N]

``main(argv)`` returns the rows (dicts) so ``nanodl bench`` can reuse it.
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

GB = 1e9


def median_seconds(fns, repeats):
    """Median seconds of each function in ``fns``, timed in turn within each repeat
    (interleaved, so drift on a shared machine hits all of them alike)."""
    for fn in fns:
        fn()  # warm up: first touch of state arrays, thread pool start
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [sorted(record)[len(record) // 2] for record in times]


def cases(n, rng):
    """(name, arrays read, arrays written, call(table)) for every elementwise kernel."""
    x = rng.standard_normal(n, dtype=np.float32) * 3
    g = rng.standard_normal(n, dtype=np.float32)
    y = np.tanh(x)
    state = {name: np.zeros(n, np.float32) for name in ("a", "b", "c")}
    state["b"] += 1e-3
    out = []
    for act in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus"):
        extra = (0.1,) if act in ("leaky_relu", "elu") else ()
        saved = y if act in ("relu", "sigmoid", "tanh") else x
        out.append((f"{act}_forward", 1, 1,
                    lambda t, f=f"{act}_forward", e=extra: getattr(t, f)(x, *e)))
        out.append((f"{act}_backward", 2, 1,
                    lambda t, f=f"{act}_backward", s=saved, e=extra: getattr(t, f)(s, g, *e)))
    p = x.copy()
    out += [
        ("sgd_step (momentum)", 3, 2,
         lambda t: t.sgd_step(p, g, momentum_buf=state["a"], lr=1e-6, momentum=0.9)),
        ("adam_step", 4, 3,
         lambda t: t.adam_step(p, g, exp_avg=state["a"], exp_avg_sq=state["b"], step=10, lr=1e-6,
                               beta1=0.9, beta2=0.999, eps=1e-8)),
        ("adam_step (amsgrad, AdamW)", 5, 4,
         lambda t: t.adam_step(p, g, exp_avg=state["a"], exp_avg_sq=state["b"],
                               max_exp_avg_sq=state["c"], step=10, lr=1e-6, beta1=0.9, beta2=0.999,
                               eps=1e-8, weight_decay=1e-2, decoupled=True, amsgrad=True)),
        ("adagrad_step", 3, 2,
         lambda t: t.adagrad_step(p, g, state_sum=state["b"], lr=1e-6, eps=1e-10)),
        ("rmsprop_step (centered, momentum)", 5, 4,
         lambda t: t.rmsprop_step(p, g, square_avg=state["b"], momentum_buf=state["a"],
                                  grad_avg=state["c"], lr=1e-6, alpha=0.99, eps=1e-8,
                                  momentum=0.9, centered=True)),
    ]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M elements, 5 repeats")
    parser.add_argument("--size", type=int, default=None, help="elements per array")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.size or (1 << 20 if args.quick else 1 << 24)
    repeats = args.repeats or (5 if args.quick else 11)
    itemsize = 4
    rng = np.random.default_rng(0)

    src = rng.standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    copy = lambda: np.copyto(dst, src)  # noqa: E731
    copy_s, fresh_s = median_seconds([copy, src.copy], repeats)
    print(f"float32, {n} elements, median of {repeats}; copy (np.copyto, preallocated) "
          f"{2 * n * itemsize / copy_s / GB:.1f} GB/s, fresh copy (x.copy()) "
          f"{2 * n * itemsize / fresh_s / GB:.1f} GB/s")
    header = (f"{'kernel':34s} {'native ms':>9s} {'GB/s':>6s} {'numpy ms':>9s} {'GB/s':>6s} "
              f"{'copy GB/s':>9s} {'native/copy':>11s} {'numpy/copy':>10s} {'speedup':>7s}")
    print(header)
    print("-" * len(header))
    tables = [("native", kernels_native and kernels_native.TABLE), ("numpy", kernels_numpy.TABLE)]
    if kernels_native is None:
        print("(native kernels not built: the native columns are NaN)")
        tables = tables[1:]
    nan = float("nan")
    rows = []
    for name, reads, writes, call in cases(n, rng):
        nbytes = (reads + writes) * n * itemsize
        # The copy is timed again next to each kernel: bandwidth drifts on a shared machine.
        calls = [copy] + [lambda t=table: call(t) for _, table in tables]
        seconds = median_seconds(calls, repeats)
        row = {"kernel": name, "bytes": nbytes, "copy_gbs": 2 * n * itemsize / seconds[0] / GB,
               "native_s": nan, "native_gbs": nan, "native_vs_copy": nan}
        for (table_name, _), sec in zip(tables, seconds[1:]):
            row[f"{table_name}_s"] = sec
            row[f"{table_name}_gbs"] = nbytes / sec / GB
            row[f"{table_name}_vs_copy"] = row[f"{table_name}_gbs"] / row["copy_gbs"]
        rows.append(row)
        print(f"{name:34s} {row['native_s'] * 1e3:9.2f} {row['native_gbs']:6.1f} "
              f"{row['numpy_s'] * 1e3:9.2f} {row['numpy_gbs']:6.1f} {row['copy_gbs']:9.1f} "
              f"{row['native_vs_copy']:11.0%} {row['numpy_vs_copy']:10.0%} "
              f"{row['numpy_s'] / row['native_s']:6.1f}x")
    return rows


if __name__ == "__main__":
    main()
