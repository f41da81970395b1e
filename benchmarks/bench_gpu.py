"""GPU training-step benchmark: nanodl on 'cuda' (CuPy) against PyTorch on CUDA, side by side.

One step = forward + softmax-cross-entropy (mean) + backward + optimizer update, float32,
ReLU hidden layers, the same initial weights and batch for both. Times are medians of
CUDA-event intervals (``cupy.cuda.Event`` / ``torch.cuda.Event``) taken after warm-up;
the two implementations are timed round-robin, repeat by repeat, so clock changes and
noisy neighbours affect both alike. TF32 is off on both sides (nanodl never enables it;
PyTorch's ``allow_tf32`` flags are cleared here), so both run true FP32 GEMMs.

    python benchmarks/bench_gpu.py                 # tiny, small, medium, large, xlarge
    python benchmarks/bench_gpu.py --quick         # fewer repeats
    python benchmarks/bench_gpu.py --configs tiny,large --markdown

The first column pair is the time per step in milliseconds; ``nanodl/torch`` > 1 means
nanodl is slower. ``loss diff`` is the difference of the two first-step losses (same
weights, same batch): it shows both sides computed the same thing.
"""
import argparse
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nanodl as nd  # noqa: E402
from nanodl import nn, ops, optim  # noqa: E402
from nanodl.backend.cuda import cuda_status, require_cupy  # noqa: E402  (CuPy, imported lazily)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlp import init_weights, make_batch, torch_model  # noqa: E402  (the same data as the CPU benchmark)
import tables  # noqa: E402

CONFIGS = {
    # name: (layer sizes, batch, optimizer, steps per timed interval)
    "tiny": ((64, 32, 10), 32, "sgd", 50),
    "small": ((784, 128, 10), 64, "sgd", 50),
    "medium": ((784, 512, 512, 10), 256, "adam", 20),
    "large": ((1024, 4096, 4096, 10), 512, "adam", 10),
    "xlarge": ((4096, 8192, 8192, 10), 4096, "adam", 2),
}
LR = {"sgd": 0.01, "adam": 1e-3}


# ---------------------------------------------------------------- nanodl on 'cuda'
def nanodl_step(sizes, batch, opt_name, weights, captured=False):
    """A nanodl training step through the public API, on the GPU; returns (step, loss_of).
    ``captured``: through ``nanodl.CapturedStep`` (the GPU table's compute functions, no
    graph; not yet a CUDA graph)."""
    cupy = require_cupy()
    x, y = make_batch(sizes, batch)
    layers = []
    for i, (kernel, bias) in enumerate(weights):
        last = i == len(weights) - 1
        dense = nn.Dense(kernel.shape[1], activation=None if last else "relu", input_dim=kernel.shape[0])
        dense.kernel.data[...] = kernel
        dense.bias.data[...] = bias
        layers.append(dense)
    model = nn.Sequential(layers)
    model.to("cuda")
    params = model.parameters()
    opt = optim.SGD(params, lr=LR["sgd"]) if opt_name == "sgd" else optim.Adam(params, lr=LR["adam"])
    inputs = nd.Tensor(x, device="cuda")
    labels = cupy.asarray(y)  # labels live on the GPU, as a data loader would put them
    if captured:
        from nanodl import losses
        captured_step = nd.CapturedStep(model, losses.SparseCategoricalCrossentropy(from_logits=True),
                                        opt)

        def captured_run():
            return captured_step.run(inputs.data, labels)[0]
        return captured_run, lambda loss: float(loss.item())

    def step():
        loss = ops.softmax_cross_entropy(model(inputs), labels, "mean")
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step, lambda loss: float(loss.item())


# ---------------------------------------------------------------- PyTorch on CUDA
def torch_step(sizes, batch, opt_name):
    import torch
    x, y = make_batch(sizes, batch)
    model, opt = torch_model(sizes, opt_name, "cuda")
    inputs, labels = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def step():
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step, lambda loss: float(loss.item())


def torch_cuda_status():
    """None when PyTorch with CUDA is usable, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False  # true FP32 GEMMs, as nanodl
    torch.backends.cudnn.allow_tf32 = False
    return None


# ---------------------------------------------------------------- timing with CUDA events
class CupyTimer:
    def __init__(self):
        self.cupy = require_cupy()

    def interval(self, step, count):
        """Milliseconds of GPU time for ``count`` steps, between two events on CuPy's stream."""
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        for _ in range(count):
            step()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end)

    def synchronize(self):
        self.cupy.cuda.get_current_stream().synchronize()

    def release(self):
        self.synchronize()
        self.cupy.get_default_memory_pool().free_all_blocks()


class TorchTimer:
    def __init__(self):
        import torch
        self.torch = torch

    def interval(self, step, count):
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def synchronize(self):
        self.torch.cuda.synchronize()

    def release(self):
        self.synchronize()
        self.torch.cuda.empty_cache()


def time_round_robin(runs, repeats, inner, warmup):
    """Median milliseconds per step for each named ``(step, timer)``, interleaved by repeat."""
    for step, timer in runs.values():
        for _ in range(warmup):  # compiles kernels, fills the memory pools, creates optimizer state
            step()
        timer.synchronize()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (step, timer) in runs.items():
            samples[name].append(timer.interval(step, inner) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------- driver
def bench_config(name, repeats, warmup, with_torch):
    sizes, batch, opt_name, inner = CONFIGS[name]
    weights = init_weights(sizes)
    runs, first_loss = {}, {}
    nanodl_run, nanodl_loss = nanodl_step(sizes, batch, opt_name, weights)
    runs["nanodl"] = (nanodl_run, CupyTimer())
    first_loss["nanodl"] = nanodl_loss(nanodl_run())
    try:  # never run on a GPU before it lands here: a failure is reported, not fatal
        captured_run, _ = nanodl_step(sizes, batch, opt_name, weights, captured=True)
        captured_run()
        runs["captured"] = (captured_run, CupyTimer())
    except Exception as error:  # noqa: BLE001 - reported in the table's note
        print(f"{name}: the captured step failed: {type(error).__name__}: {error}")
    if with_torch:
        torch_run, torch_loss = torch_step(sizes, batch, opt_name)
        runs["torch"] = (torch_run, TorchTimer())
        first_loss["torch"] = torch_loss(torch_run())
    times = time_round_robin(runs, repeats, inner, warmup)
    for _, timer in runs.values():
        timer.release()
    delta = abs(first_loss["nanodl"] - first_loss["torch"]) if with_torch else None
    return {"config": name, "layers": "-".join(map(str, sizes)), "batch": batch, "optimizer": opt_name,
            "nanodl": times["nanodl"], "captured": times.get("captured"), "torch": times.get("torch"),
            "dloss": delta}


def environment_lines(torch_status):
    from nanodl.backend import kernels_cupy
    cupy = require_cupy()
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = device["name"].decode() if isinstance(device["name"], bytes) else device["name"]
    lines = [f"GPU: {name}",
             f"CuPy {cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}), "
             f"TF32 in nanodl/CuPy: {'ON' if kernels_cupy.tf32_enabled() else 'off'}"]
    if torch_status is None:
        import torch
        lines.append(f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}), TF32 matmul: "
                     f"{'ON' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, cuDNN TF32: "
                     f"{'ON' if torch.backends.cudnn.allow_tf32 else 'off'}")
    else:
        lines.append(f"PyTorch: {torch_status}; nanodl only")
    return lines


def format_table(rows, markdown=False):
    headers = ("config", "layers", "batch", "opt", "nanodl ms", "captured ms", "torch ms",
               "nanodl/torch", "captured/torch", "loss diff")
    table = []

    def ratio(row, key):
        return "n/a" if not row["torch"] or row[key] is None else f"{row[key] / row['torch']:.2f}x"
    for row in rows:
        table.append((row["config"], row["layers"], str(row["batch"]), row["optimizer"],
                      f"{row['nanodl']:.3f}",
                      "n/a" if row["captured"] is None else f"{row['captured']:.3f}",
                      "n/a" if row["torch"] is None else f"{row['torch']:.3f}",
                      ratio(row, "nanodl"), ratio(row, "captured"),
                      "n/a" if row["dloss"] is None else f"{row['dloss']:.1e}"))
    return tables.format_table(headers, table, markdown, justify="right", rule=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and warm-up steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed intervals per config (default 7)")
    parser.add_argument("--no-torch", action="store_true", help="time nanodl only")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; valid: {', '.join(CONFIGS)}")
    args.names = names
    return args


def main(argv=None):
    args = parse_args(argv)
    if not nd.cuda_available():
        print(f"bench_gpu: device 'cuda' is not available: {cuda_status()}", file=sys.stderr)
        return 1
    torch_status = "skipped (--no-torch)" if args.no_torch else torch_cuda_status()
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 2 if args.quick else 3
    for line in environment_lines(torch_status):
        print(line)
    print(f"median of {repeats} CUDA-event intervals after {warmup} warm-up steps; float32, "
          "ReLU, softmax-cross-entropy\n", flush=True)
    rows = []
    for name in args.names:
        rows.append(bench_config(name, repeats, warmup, torch_status is None))
        row = rows[-1]
        print(f"  {name}: nanodl {row['nanodl']:.3f} ms" +
              ("" if row["torch"] is None else f", torch {row['torch']:.3f} ms"), flush=True)
    print()
    print(format_table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
