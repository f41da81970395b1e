"""Engine overhead micro-timings: what one ``Function.apply`` and one small backward cost.

The ops run on tiny arrays, so the figures are the engine's own bookkeeping (grad
mode, hooks, node creation, the walk, leaf ownership), not arithmetic. Compare two
checkouts by running this file from each (it imports nanodl from its own checkout),
interleaved, under the bench lock:

    python benchmarks/bench_engine.py            # best of 7 rounds, microseconds
"""
import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import nanodl as nd  # noqa: E402


def cases():
    a = nd.tensor(np.ones(4, np.float32), requires_grad=True)
    b = nd.tensor(np.ones(4, np.float32), requires_grad=True)
    c = nd.tensor(np.ones(4, np.float32))
    w = nd.tensor(np.ones((4, 4), np.float32), requires_grad=True)

    def apply_recorded():
        return a * b

    def apply_constant():
        return c * c

    def apply_no_grad():
        with nd.no_grad():
            return a * b

    def backward_small():
        ((a * b + a) @ w).sum().backward()
        a.grad = b.grad = w.grad = None

    return {"apply (records a node)": apply_recorded, "apply (constants)": apply_constant,
            "no_grad block + apply": apply_no_grad, "5-node forward + backward": backward_small}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"nanodl from {Path(nd.__file__).parent}")
    for name, fn in cases().items():
        number = args.number if "backward" not in name else args.number // 10
        times = [timeit.timeit(fn, number=number) / number * 1e6 for _ in range(args.rounds)]
        print(f"{name:28s} {min(times):8.3f} us")


if __name__ == "__main__":
    main()
