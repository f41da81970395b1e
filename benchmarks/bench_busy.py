"""Training on a busy machine: two small fits, quiet and beside CPU-bound neighbours.

Small networks are trained where the machine is shared: a laptop with a browser
open, a notebook, a CI runner, ``GridSearchCV(n_jobs=2)``. This benchmark times two
Keras-style fits, for nanodl and for PyTorch, first on a quiet machine and then
beside ``--neighbours`` (default 3) CPU-bound background processes, each bounded in
time so none can outlive the run:

* digits: 64-128-64-10, ReLU, softmax cross-entropy, Adam, batch 32, 30 epochs
  (the 1,797 embedded 8x8 digits);
* moons: 2-128-128-1, ReLU, sigmoid binary cross-entropy, Adam, batch 32, 10 epochs
  (2,000 two-moons samples).

Each implementation runs in a worker process of its own (PyTorch's never imports
nanodl: one process has one libgomp), started once and asked for fit after fit;
the workers and both conditions are interleaved round by round, so the ratios
(busy / quiet, nanodl / PyTorch) are what to read. A fair share of 2 cores beside
three busy processes makes any job 2x slower.

    python benchmarks/bench_busy.py                  # 3 rounds (~1.5 min on a quiet 2-core
                                                     # machine; fewer if they pass --budget)
    python benchmarks/bench_busy.py --quick          # 1 round
    python benchmarks/bench_busy.py --no-torch --markdown
    NANODL_THREAD_POLICY=off python benchmarks/bench_busy.py   # without the policy
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import format_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FITS = {
    # name: (layer sizes, epochs)
    "digits": ((64, 128, 64, 10), 30),
    "moons": ((2, 128, 128, 1), 10),
}
BATCH = 32
LR = 1e-3
NEIGHBOUR_LIMIT_SECONDS = 300  # a neighbour stops by itself after this, whatever happens


# ---------------------------------------------------------------- data
def write_data(path):
    """Both data sets into one .npz the workers read (PyTorch's worker never imports nanodl)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from nanodl import datasets
    x_digits, y_digits = datasets.load_digits()
    x_moons, y_moons = datasets.make_moons(2000, noise=0.2, seed=0)
    np.savez(path, digits_x=(x_digits / 16).astype(np.float32), digits_y=y_digits,
             moons_x=x_moons.astype(np.float32), moons_y=y_moons)


# ---------------------------------------------------------------- workers
def nanodl_fit(name, x, y):
    """A function that runs the whole fit once with nanodl's public API."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import nanodl as nd
    from nanodl import nn
    sizes, epochs = FITS[name]

    def run():
        nd.manual_seed(0)
        layers = [nn.Dense(units, activation="relu") for units in sizes[1:-1]]
        if sizes[-1] == 1:
            layers.append(nn.Dense(1, activation="sigmoid"))
            loss = "binary_crossentropy"
        else:
            layers.append(nn.Dense(sizes[-1], activation="softmax"))
            loss = "sparse_categorical_crossentropy"
        model = nn.Sequential(layers)
        model.compile(optimizer=nd.optim.Adam(lr=LR), loss=loss)
        target = y.astype(np.float32)[:, None] if sizes[-1] == 1 else y
        model.fit(x, target, batch_size=BATCH, epochs=epochs, verbose=0)
    return run


def torch_fit(name, x, y):
    """The same fit as a hand-written PyTorch loop (shuffled batches, per-epoch loss)."""
    import torch
    sizes, epochs = FITS[name]
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.float32)[:, None] if sizes[-1] == 1 else y)
    loss_fn = (torch.nn.functional.binary_cross_entropy_with_logits if sizes[-1] == 1
               else torch.nn.functional.cross_entropy)

    def run():
        torch.manual_seed(0)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        n = len(xt)
        for _ in range(epochs):
            order = torch.randperm(n)
            total = 0.0
            for start in range(0, n, BATCH):
                index = order[start:start + BATCH]
                loss = loss_fn(model(xt[index]), yt[index])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(index)
    return run


def worker(kind, data_path):
    """Read a fit name per line, run it, answer the seconds it took."""
    data = np.load(data_path)
    make = nanodl_fit if kind == "nanodl" else torch_fit
    fits = {name: make(name, data[f"{name}_x"], data[f"{name}_y"]) for name in FITS}
    for run in fits.values():  # warm-up: imports, lazy state, thread pools
        run()
    print("ready", flush=True)
    for line in sys.stdin:
        run = fits[line.strip()]
        start = time.perf_counter()
        run()
        print(time.perf_counter() - start, flush=True)


class Worker:
    def __init__(self, kind, data_path):
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", kind, data_path],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {kind} worker did not start")

    def __call__(self, name):
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------- neighbours
BURN = ("import time\nend = time.monotonic() + {limit}\nx = 0\n"
        "while time.monotonic() < end:\n    for i in range(100000):\n        x += i\n")


class Neighbours:
    """``count`` CPU-bound processes, each stopping by itself after ``limit`` seconds."""

    def __init__(self, count, limit=NEIGHBOUR_LIMIT_SECONDS):
        self.count, self.limit, self.processes = count, limit, []

    def __enter__(self):
        code = BURN.format(limit=self.limit)
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        time.sleep(0.5)  # let them take their cores
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=30)
        self.processes = []
        time.sleep(0.5)  # quiet again before the next sample


# ---------------------------------------------------------------- the switch
def switch_cost(repeats=200_000):
    """Microseconds per thread-policy switch: ``with threads.SERIAL_BLAS`` (read the
    count, set 1, set it back) and one raw ``openblas_set_num_threads`` call."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from nanodl.backend import threads
    if threads.blas_threads() is None:
        return None, None
    scope = threads.SERIAL_BLAS
    start = time.perf_counter()
    for _ in range(repeats):
        with scope:
            pass
    pair = (time.perf_counter() - start) / repeats
    get, set_ = threads._blas
    count = get()
    start = time.perf_counter()
    for _ in range(repeats):
        set_(count)
    return pair * 1e6, (time.perf_counter() - start) / repeats * 1e6


# ---------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2])
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds: start no new round after this (at least one round runs)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--neighbours", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    import importlib.util
    kinds = ["nanodl"] + ([] if args.no_torch or importlib.util.find_spec("torch") is None
                          else ["pytorch"])
    samples = {(kind, fit, cond): [] for kind in kinds for fit in FITS for cond in ("quiet", "busy")}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.npz")
        write_data(data_path)
        workers = {kind: Worker(kind if kind == "nanodl" else "torch", data_path) for kind in kinds}
        started = time.perf_counter()
        try:
            for round_index in range(rounds):
                if round_index and time.perf_counter() - started > args.budget:
                    rounds = round_index  # a loaded machine: fewer rounds, said in the report
                    break
                for cond in ("quiet", "busy"):
                    scope = Neighbours(args.neighbours) if cond == "busy" else _Quiet()
                    with scope:
                        for fit in FITS:
                            for kind in kinds:
                                samples[kind, fit, cond].append(workers[kind](fit))
        finally:
            for w in workers.values():
                w.close()
    medians = {key: statistics.median(values) for key, values in samples.items()}
    report(medians, kinds, args, rounds)
    scope, raw = switch_cost()
    if scope is not None:
        print(f"thread-policy switch: {scope:.2f} us per serial scope (read, set 1, restore); "
              f"{raw:.2f} us per openblas_set_num_threads call")
    return medians


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def report(medians, kinds, args, rounds):
    print(f"cores: {os.cpu_count()}   neighbours: {args.neighbours}   rounds: {rounds} (medians)   "
          f"NANODL_THREAD_POLICY={os.environ.get('NANODL_THREAD_POLICY', 'on')}")
    header = ["fit", "implementation", "quiet (s)", "busy (s)", "busy / quiet"]
    if "pytorch" in kinds:
        header += ["nanodl / PyTorch quiet", "nanodl / PyTorch busy"]
    rows = []
    for fit in FITS:
        for kind in kinds:
            quiet, busy = medians[kind, fit, "quiet"], medians[kind, fit, "busy"]
            row = [fit, kind, f"{quiet:.3f}", f"{busy:.3f}", f"{busy / quiet:.2f}"]
            if "pytorch" in kinds:
                if kind == "nanodl":
                    row += [f"{quiet / medians['pytorch', fit, 'quiet']:.2f}",
                            f"{busy / medians['pytorch', fit, 'busy']:.2f}"]
                else:
                    row += ["", ""]
            rows.append(row)
    print(format_table(header, rows, args.markdown))


if __name__ == "__main__":
    main()
