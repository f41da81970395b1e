"""Training-step benchmark: nanodl (native and NumPy kernels, eager and captured)
against a hand-written NumPy MLP, PyTorch on the CPU and JAX (``jax.jit``), when
installed, and the machine's GEMM floor.

One step = forward + softmax-cross-entropy + backward + optimizer update, float32,
ReLU hidden layers. Implementations are timed round-robin in one run, so a noisy
neighbour slows them all alike; the ratios are what to read. PyTorch and JAX run in
worker processes of their own (driven round by round from here): a process has one
libgomp, and nanodl's short OpenMP spin setting must not be what PyTorch is measured
with. JAX's step is one jit-compiled function; its compile time is reported apart.
The GEMM floor is the step's matmul FLOPs at the rate of a 2048^3 product, timed in
the same rounds as the steps.
``nanodl captured`` is the same step through ``nanodl.CapturedStep``.

    python benchmarks/bench_mlp.py                # all four configs
    python benchmarks/bench_mlp.py --quick        # fewer repeats
    python benchmarks/bench_mlp.py --configs tiny,small --markdown
    python benchmarks/bench_mlp.py --torch-first  # `import torch` before nanodl, here
    python benchmarks/bench_mlp.py --isolated     # each alone in its own process
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {
    # name: (layer sizes, batch, optimizer)
    "tiny": ((64, 32, 10), 32, "sgd"),
    "small": ((784, 128, 10), 64, "sgd"),
    "medium": ((784, 512, 512, 10), 256, "adam"),
    "large": ((1024, 4096, 4096, 10), 512, "adam"),
}
LR = {"sgd": 0.01, "adam": 1e-3}


def make_batch(sizes, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return x, y


def init_weights(sizes, seed=0):
    """Glorot-uniform kernels (in, out) and zero biases, shared by every implementation."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6 / (fan_in + fan_out))
        weights.append((rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32),
                        np.zeros(fan_out, np.float32)))
    return weights


# ---------------------------------------------------------------- nanodl
def _nanodl():
    """Import nanodl from this checkout (only in the main process: see the module doc)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import nanodl
    return nanodl


def nanodl_step(sizes, batch, opt_name, kernels, captured=False):
    """A nanodl training step through the public API, on the chosen kernel table
    (``captured``: through ``nanodl.CapturedStep``, captured on the warm-up call)."""
    nd = _nanodl()
    backend, losses, nn, optim = nd.backend, nd.losses, nd.nn, nd.optim
    x, y = make_batch(sizes, batch)
    layers = []
    for i, (kernel, bias) in enumerate(init_weights(sizes)):
        last = i == len(sizes) - 2
        dense = nn.Dense(kernel.shape[1], activation=None if last else "relu", input_dim=kernel.shape[0])
        dense.kernel.data[...] = kernel
        dense.bias.data[...] = bias
        layers.append(dense)
    model = nn.Sequential(layers)
    params = model.parameters()
    opt = optim.SGD(params, lr=LR["sgd"]) if opt_name == "sgd" else optim.Adam(params, lr=LR["adam"])
    xt = nd.Tensor(x)
    if captured:
        captured_step = nd.CapturedStep(
            model, losses.SparseCategoricalCrossentropy(from_logits=True), opt)

        def step():
            backend.set_kernels(kernels)
            captured_step.run(x, y)
        return step

    def step():
        backend.set_kernels(kernels)
        logits = model(xt)
        loss = losses.sparse_categorical_crossentropy(logits, y, from_logits=True)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


# ---------------------------------------------------------------- hand-written NumPy
def numpy_step(sizes, batch, opt_name):
    """Manual forward/backward/update in plain NumPy: the floor for math on NumPy."""
    x, y = make_batch(sizes, batch)
    params = [array for pair in init_weights(sizes) for array in pair]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    state = {"t": 0}
    rows = np.arange(batch)
    lr = LR[opt_name]

    def step():
        activations = [x]
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i]
            h += params[i + 1]
            if i < len(params) - 2:
                np.maximum(h, 0, out=h)
            activations.append(h)
        logits = activations[-1]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        grad = logits
        grad[rows, y] -= 1
        grad /= batch
        grads = [None] * len(params)
        for i in range(len(params) - 2, -1, -2):
            inp = activations[i // 2]
            grads[i] = inp.T @ grad
            grads[i + 1] = grad.sum(axis=0)
            if i > 0:
                grad = grad @ params[i].T
                grad *= inp > 0
        if opt_name == "sgd":
            for p, g in zip(params, grads):
                p -= lr * g
        else:
            state["t"] += 1
            t = state["t"]
            step_size = lr / (1 - 0.9 ** t)
            bc2 = (1 - 0.999 ** t) ** 0.5
            for p, g, mi, vi in zip(params, grads, m, v):
                mi *= 0.9
                mi += 0.1 * g
                vi *= 0.999
                vi += 0.001 * g * g
                p -= step_size * mi / (np.sqrt(vi) / bc2 + 1e-8)
    return step


# ---------------------------------------------------------------- PyTorch
def torch_model(sizes, opt_name, device="cpu"):
    """The PyTorch twin of the benchmark MLP (same initial weights) and its optimizer."""
    import torch
    layers = []
    for i, (kernel, bias) in enumerate(init_weights(sizes)):
        linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias))
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)  # moved before the optimizer sees it
    opt = (torch.optim.SGD(model.parameters(), lr=LR["sgd"]) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=LR["adam"]))
    return model, opt


def torch_step(sizes, batch, opt_name):
    import torch
    torch.set_num_threads(thread_count())
    x, y = make_batch(sizes, batch)
    model, opt = torch_model(sizes, opt_name)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


class TorchWorker:
    """A PyTorch (or, with ``kind='jax'``, JAX) step in a child process that never
    imports nanodl; timed on request."""

    def __init__(self, config, kind="torch"):
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"--{kind}-worker", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.compile_seconds = float(self.process.stdout.readline()) if kind == "jax" else None

    def __call__(self, steps):
        """Seconds per step over ``steps`` consecutive steps, timed inside the worker."""
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def torch_worker(config):
    """The child side of TorchWorker: read a step count per line, answer seconds per step."""
    sizes, batch, opt_name = CONFIGS[config]
    step = torch_step(sizes, batch, opt_name)
    for _ in range(3):
        step()
    for line in sys.stdin:
        steps = int(line)
        for _ in range(WARM_STEPS):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print((time.perf_counter() - start) / steps, flush=True)


# ---------------------------------------------------------------- JAX
def jax_step(sizes, batch, opt_name):
    """The same step as one ``jax.jit``-compiled function (XLA fuses what it can).

    Returns ``(step, compile_seconds)``: the first call traces and compiles, and is
    timed on its own; ``step()`` then runs the compiled step, parameters and
    optimizer state donated so XLA updates them in place.
    """
    import jax
    import jax.numpy as jnp
    x, y = make_batch(sizes, batch)
    params = [jnp.asarray(array) for pair in init_weights(sizes) for array in pair]
    lr = LR[opt_name]

    def loss_fn(params, x, y):
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i < len(params) - 2:
                h = jax.nn.relu(h)
        log_probs = jax.nn.log_softmax(h, axis=1)
        return -jnp.take_along_axis(log_probs, y[:, None], axis=1).mean()

    def update(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        if opt_name == "sgd":
            return [p - lr * g for p, g in zip(params, grads)], state
        t, m, v = state
        t = t + 1
        m = [0.9 * mi + 0.1 * g for mi, g in zip(m, grads)]
        v = [0.999 * vi + 0.001 * g * g for vi, g in zip(v, grads)]
        step_size = lr / (1 - 0.9 ** t)
        bc2 = jnp.sqrt(1 - 0.999 ** t)
        params = [p - step_size * mi / (jnp.sqrt(vi) / bc2 + 1e-8) for p, mi, vi in zip(params, m, v)]
        return params, (t, m, v)

    compiled = jax.jit(update, donate_argnums=(0, 1))
    zeros = [jnp.zeros_like(p) for p in params]
    holder = {"params": params, "state": (jnp.zeros((), jnp.float32), zeros, [z + 0 for z in zeros])}
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def step():
        holder["params"], holder["state"] = compiled(holder["params"], holder["state"], xj, yj)

    start = time.perf_counter()
    step()
    jax.block_until_ready(holder["params"])
    compile_seconds = time.perf_counter() - start

    def synced_step():
        step()
        jax.block_until_ready(holder["params"][0])
    return step, synced_step, compile_seconds


def jax_worker(config):
    """Like torch_worker: the compiled JAX step, timed on request; first line: compile time."""
    sizes, batch, opt_name = CONFIGS[config]
    step, synced_step, compile_seconds = jax_step(sizes, batch, opt_name)
    print(compile_seconds, flush=True)
    for _ in range(3):
        synced_step()
    import jax
    for line in sys.stdin:
        steps = int(line)
        for _ in range(WARM_STEPS):
            synced_step()
        start = time.perf_counter()
        for _ in range(steps - 1):
            step()
        synced_step()  # one wait for the whole sample: steps queue as they would in a loop
        print((time.perf_counter() - start) / steps, flush=True)


def module_available(name):
    """Whether ``name`` is installed, found without importing it here (see the module doc)."""
    import importlib.util
    return importlib.util.find_spec(name) is not None


WARM_STEPS = 2  # untimed steps before each sample: wake the thread pools after the settle


def local_timer(step):
    """A timer for an in-process step: ``timer(steps)`` -> seconds per step."""
    def timer(steps):
        for _ in range(WARM_STEPS):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps
    return timer


def torch_available():
    """Whether PyTorch is installed, found without importing it here (see the module doc)."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def thread_count():
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


# ---------------------------------------------------------------- GEMM floor
def gemm_flops(sizes, batch):
    """Matmul FLOPs of one step: forward, kernel gradients, input gradients (not the first layer's)."""
    total = 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gemms = 2 if i == 0 else 3
        total += gemms * 2 * batch * fan_in * fan_out
    return total


PROBE = 2048  # the floor's GEMM: PROBE^3, float32


def sgemm_probe():
    """A timer of one PROBE^3 float32 product (seconds), for the round-robin."""
    a = np.ones((PROBE, PROBE), np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)

    def timer(steps):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        return time.perf_counter() - start
    return timer


def sgemm_rate(repeats=7):
    """Measured float32 GEMM rate of this machine in FLOP/s (best of a PROBE^3 product)."""
    timer = sgemm_probe()
    return 2 * PROBE ** 3 / min(timer(1) for _ in range(repeats))


# ---------------------------------------------------------------- timing
SETTLE_SECONDS = 0.15  # > OpenBLAS's idle spin (2^28 cycles) and libgomp's: a quiet start


def time_round_robin(timers, repeats, inner, settle=SETTLE_SECONDS):
    """Median seconds per step for each named timer, interleaving them repeat by repeat.

    Before each sample the machine is left idle for ``settle`` seconds, so the thread
    pools of the previous implementation (BLAS, OpenMP, in this process or PyTorch's
    worker) have stopped spinning on the cores the next one needs.
    """
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            time.sleep(settle)
            samples[name].append(timer(inner))
    return {name: statistics.median(values) for name, values in samples.items()}


def run_config(name, repeats, use_torch, use_jax=False):
    sizes, batch, opt_name = CONFIGS[name]
    steps = {}
    if _nanodl().backend.native_available():
        steps["nanodl native"] = nanodl_step(sizes, batch, opt_name, "native")
        steps["nanodl captured"] = nanodl_step(sizes, batch, opt_name, "native", captured=True)
    steps["nanodl numpy"] = nanodl_step(sizes, batch, opt_name, "numpy")
    steps["numpy manual"] = numpy_step(sizes, batch, opt_name)
    flops = gemm_flops(sizes, batch)
    inner = min(500, max(1, int(2e9 // max(flops, 1))))  # >= ~10 ms of work per sample
    for step in steps.values():  # warm-up: allocations, lazy state, BLAS threads
        for _ in range(3):
            step()
    timers = {label: local_timer(step) for label, step in steps.items()}
    workers = {}
    if use_torch:
        workers["pytorch"] = TorchWorker(name)
    if use_jax:
        workers["jax (jit)"] = TorchWorker(name, "jax")
    for label, worker in workers.items():
        timers[label] = worker
        worker(1)  # wait until the worker is ready
    # The floor's probe runs in the round-robin too: a rate taken at the same moments
    # as the steps (the machine's speed drifts by tens of percent within minutes).
    timers[_PROBE_LABEL] = sgemm_probe()
    try:
        medians = time_round_robin(timers, repeats, inner)
    finally:
        for worker in workers.values():
            worker.close()
    probe = medians.pop(_PROBE_LABEL)
    compile_seconds = workers["jax (jit)"].compile_seconds if use_jax else None
    return {"config": name, "sizes": "-".join(map(str, sizes)), "batch": batch, "optimizer": opt_name,
            "flops": flops, "medians": medians, "jax_compile": compile_seconds,
            "floor": flops * probe / (2 * PROBE ** 3)}


_PROBE_LABEL = "sgemm probe"


# ---------------------------------------------------------------- isolated processes
def isolated_step(label, sizes, batch, opt_name):
    """The step of implementation ``label``, built in a process that imports only what
    that implementation needs (``--isolated``)."""
    if label.startswith("nanodl"):
        kernels = "numpy" if label == "nanodl numpy" else "native"
        return nanodl_step(sizes, batch, opt_name, kernels, captured=label == "nanodl captured")
    if label == "numpy manual":
        return numpy_step(sizes, batch, opt_name)
    if label == "pytorch":
        return torch_step(sizes, batch, opt_name)
    return jax_step(sizes, batch, opt_name)[1]  # the step that waits for its result


def isolated_worker(label, config, repeats, inner):
    """Time one implementation alone in this fresh process: back-to-back samples, no
    settling between them (as a user's own loop runs); print the median s/step."""
    sizes, batch, opt_name = CONFIGS[config]
    step = isolated_step(label, sizes, batch, opt_name)
    for _ in range(3):
        step()
    timer = local_timer(step)
    print(statistics.median(timer(inner) for _ in range(repeats)), flush=True)


def run_isolated(name, repeats, labels, processes):
    """Each implementation in processes of its own, one process at a time, in rounds
    (one process per implementation per round); the median over the rounds.

    This machine has fast and slow phases lasting seconds (the same step, one process,
    ASLR off: 0.41 ms for a second, then 0.65): one process per implementation gives
    each a different mix of phases, so single-round ratios swing by up to 1.5x.
    """
    sizes, batch, _ = CONFIGS[name]
    flops = gemm_flops(sizes, batch)
    inner = min(500, max(1, int(2e9 // max(flops, 1))))
    rounds = {label: [] for label in labels}
    for _ in range(processes):
        for label in labels:
            out = subprocess.run([sys.executable, __file__, "--isolated-worker", label, name,
                                  str(repeats), str(inner)], capture_output=True, text=True,
                                 check=True)
            rounds[label].append(float(out.stdout.split()[-1]))
    medians = {label: statistics.median(values) for label, values in rounds.items()}
    probe = sgemm_probe()
    floor = flops * statistics.median(probe(1) for _ in range(7)) / (2 * PROBE ** 3)
    return {"config": name, "sizes": "-".join(map(str, sizes)), "batch": batch,
            "optimizer": CONFIGS[name][2], "flops": flops, "medians": medians,
            "jax_compile": None, "floor": floor}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--isolated-worker"]:
        isolated_worker(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return []
    if argv[:1] == ["--torch-worker"]:
        torch_worker(argv[1])
        return []
    if argv[:1] == ["--jax-worker"]:
        jax_worker(argv[1])
        return []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--torch-first", action="store_true",
                        help="import torch in this process before nanodl (as a notebook "
                             "comparing the two would); PyTorch is still timed in its worker")
    parser.add_argument("--isolated", action="store_true",
                        help="time each implementation alone, in a fresh process of its own, "
                             "one after the other, back-to-back samples (instead of "
                             "interleaved round by round with idle settling)")
    parser.add_argument("--processes", type=int, default=3,
                        help="with --isolated: processes per implementation (rounds)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; valid: {', '.join(CONFIGS)}")
    repeats = args.repeats or (5 if args.quick else 15)
    use_torch = module_available("torch") and not args.no_torch
    use_jax = module_available("jax") and not args.no_jax
    if args.torch_first:
        import torch  # noqa: F401  (before nanodl: its libgomp is then the process's)
    backend = _nanodl().backend
    previous = backend.get_kernels()
    rate = sgemm_rate()
    policy = backend.threads.info()
    print(f"threads: {thread_count()}   SGEMM rate: {rate / 1e9:.1f} GFLOP/s   "
          f"torch: {_peer(use_torch, 'torch', args.no_torch)}   "
          f"jax: {_peer(use_jax, 'jax', args.no_jax)}   repeats: {repeats}   "
          f"torch imported first: {'yes' if args.torch_first else 'no'} "
          f"(nanodl's OpenMP cap: {policy['openmp_kernel_cap'] or 'none'})")
    rows = []
    labels = ["nanodl native", "nanodl captured"] if backend.native_available() else []
    labels += ["nanodl numpy", "numpy manual"] + ["pytorch"] * use_torch + ["jax (jit)"] * use_jax
    try:
        for name in names:
            row = (run_isolated(name, repeats, labels, args.processes) if args.isolated
                   else run_config(name, repeats, use_torch, use_jax))
            rows.append(row)
            print_row(row, args.markdown)
    finally:
        backend.set_kernels(previous)
    return rows


def _peer(used, name, refused):
    return "yes" if used else ("off" if refused else "not installed")


def print_row(row, markdown):
    medians = row["medians"]
    native = medians.get("nanodl native", medians["nanodl numpy"])
    header = f"\n{row['config']}: {row['sizes']}, batch {row['batch']}, {row['optimizer']}"
    print(header)
    if markdown:
        print("| implementation | median step (ms) | nanodl native / this |")
        print("|---|---|---|")
    for name, seconds in list(medians.items()) + [("GEMM floor", row["floor"])]:
        ratio = native / seconds
        if markdown:
            print(f"| {name} | {seconds * 1e3:.3f} | {ratio:.2f} |")
        else:
            print(f"  {name:<15} {seconds * 1e3:9.3f} ms   native/this = {ratio:5.2f}")
    print(f"  (GEMM floor: the step's matmul FLOPs at {row['flops'] / row['floor'] / 1e9:.1f} "
          f"GFLOP/s, the median rate of a {PROBE}^3 product timed in this run)")
    if row.get("jax_compile") is not None:
        print(f"  (jax: tracing + XLA compile of the step took {row['jax_compile']:.2f} s, not "
              "included above)")


if __name__ == "__main__":
    main()
