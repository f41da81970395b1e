"""Where a captured training step's time goes, against the GEMM floor.

``bench_mlp.py`` compares whole steps; this splits nanodl's captured step (native
kernels) into its parts and sets each beside what it would cost alone:

* every stage of the step, timed in place (forward of each layer, the fused loss,
  backward of each layer, the optimizer update), median over the steps;
* the same GEMMs alone: each matmul of the step on its exact shapes and layouts
  (``out=`` buffers, nanodl's thread policy), back to back, caches warm;
* the optimizer update alone (the same call on the same arrays, caches warm);
* the GEMM floor: the step's matmul FLOPs at the rate of a 2048^3 SGEMM, timed
  just before and after the steps (the median of ten).

The gap between "GEMMs alone" and the floor is what the BLAS library loses on these
shapes; the gap between the step and "GEMMs alone + update alone" is what the rest of
the step (elementwise passes, cache misses, Python) costs.

    python benchmarks/bench_profile.py                    # medium
    python benchmarks/bench_profile.py --configs medium,large --markdown
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mlp  # noqa: E402  (the configs, the step builders and the floor)


def _timed(method, name, samples):
    def timed(*args):
        start = time.perf_counter()
        result = method(*args)
        samples.setdefault(name, []).append(time.perf_counter() - start)
        return result
    return timed


def _captured(sizes, batch, opt_name, samples):
    """The benchmark's captured step, its stages, loss and update wrapped in timers."""
    nd = bench_mlp._nanodl()
    step = bench_mlp.nanodl_step(sizes, batch, opt_name, "native", captured=True)
    for _ in range(3):
        step()
    captured = next(cell.cell_contents for cell in step.__closure__
                    if isinstance(cell.cell_contents, nd.CapturedStep))
    (program,) = captured._programs.values()
    for index, stage in enumerate(program.stages):
        stage.forward = _timed(stage.forward, f"forward {index}", samples)
        stage.backward = _timed(stage.backward, f"backward {index}", samples)
    program.loss = _timed(program.loss, "loss (softmax xent)", samples)
    if program.flat is not None:
        program.flat.step = _timed(program.flat.step, "optimizer (one call)", samples)
    else:
        optimizer = program.optimizer
        optimizer.step = _timed(optimizer.step, "optimizer (per parameter)", samples)
    return step, program


def _gemms_alone(program, rows):
    """The step's matmuls on their own, on the stages' shapes, under the thread policy."""
    threads = bench_mlp._nanodl().backend.threads
    rng = np.random.default_rng(0)
    calls = []
    for index, stage in enumerate(program.stages):
        kernel = stage.kernel.data
        inputs, units = kernel.shape
        x = rng.standard_normal((rows, inputs)).astype(kernel.dtype)
        z = np.empty((rows, units), kernel.dtype)
        calls.append((rows, inputs, units, lambda x=x, k=kernel, z=z: np.matmul(x, k, out=z)))
        dz = rng.standard_normal((rows, units)).astype(kernel.dtype)
        dkernel = np.empty_like(kernel)
        calls.append((rows, inputs, units, lambda x=x, dz=dz, d=dkernel: np.matmul(x.T, dz, out=d)))
        if index > 0:
            dx = np.empty((rows, inputs), kernel.dtype)
            calls.append((rows, inputs, units,
                          lambda dz=dz, k=kernel, dx=dx: np.matmul(dz, k.T, out=dx)))

    def run():
        for rows_, inputs, units, call in calls:
            with threads.gemm(rows_, inputs, units):
                call()
    return run


def _update_alone(program):
    flat = program.flat
    optimizer = program.optimizer
    if flat is not None:
        data, grad = flat.data.copy(), flat.grad.copy()
        state = {name: (value.copy() if isinstance(value, np.ndarray) else value)
                 for name, value in flat.state.items()}

        def run():
            optimizer._kernels = program._compute_table  # the unchecked kernels, as a replay
            try:
                optimizer._update(data, grad, state)
            finally:
                del optimizer._kernels
        return run
    return None


def median_ms(values):
    return statistics.median(values) * 1e3


def profile(name, steps):
    sizes, batch, opt_name = bench_mlp.CONFIGS[name]
    samples = {}
    step, program = _captured(sizes, batch, opt_name, samples)
    gemms = _gemms_alone(program, batch)
    update = _update_alone(program)
    probe = bench_mlp.sgemm_probe()
    probes = [probe(1) for _ in range(5)]  # before and after the steps (a probe between
    whole, alone_gemm, alone_update = [], [], []  # two steps would evict their caches)
    for _ in range(3):
        gemms()
    samples.clear()
    for _ in range(steps):  # interleaved: the step, the GEMMs alone, the update alone
        start = time.perf_counter()
        step()
        whole.append(time.perf_counter() - start)
        start = time.perf_counter()
        gemms()
        alone_gemm.append(time.perf_counter() - start)
        if update is not None:
            start = time.perf_counter()
            update()
            alone_update.append(time.perf_counter() - start)
    probes += [probe(1) for _ in range(5)]
    return {"name": name, "sizes": sizes, "batch": batch, "optimizer": opt_name,
            "stages": {key: median_ms(values) for key, values in samples.items()},
            "step": median_ms(whole), "gemms": median_ms(alone_gemm),
            "update": median_ms(alone_update) if alone_update else None,
            "flops": bench_mlp.gemm_flops(sizes, batch),
            "rate": 2 * bench_mlp.PROBE ** 3 / statistics.median(probes)}


def report(result, markdown):
    floor = result["flops"] / result["rate"] * 1e3
    print(f"\n{result['name']}: {'-'.join(map(str, result['sizes']))}, batch {result['batch']}, "
          f"{result['optimizer']}; GEMM floor {floor:.3f} ms (the matmul FLOPs at "
          f"{result['rate'] / 1e9:.1f} GFLOP/s, the median {bench_mlp.PROBE}^3 rate around the steps)")
    rows = [(key, value) for key, value in result["stages"].items()]
    rows += [("sum of the stages", sum(result["stages"].values())),
             ("whole captured step", result["step"]),
             ("the step's GEMMs alone", result["gemms"])]
    if result["update"] is not None:
        rows.append(("the update alone (caches warm)", result["update"]))
    rows.append(("GEMM floor", floor))
    if markdown:
        print("| part | median ms | share of the step | / GEMM floor |")
        print("|---|---|---|---|")
    for key, value in rows:
        share, over = value / result["step"], value / floor
        if markdown:
            print(f"| {key} | {value:.3f} | {share:.0%} | {over:.2f} |")
        else:
            print(f"  {key:<32} {value:9.3f} ms  {share:5.0%} of the step  {over:5.2f} x floor")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="medium")
    parser.add_argument("--steps", type=int, default=None, help="steps timed (default by size)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    nd = bench_mlp._nanodl()
    if not nd.backend.native_available():
        sys.exit("bench_profile: the native kernels are not built (pip install -e .)")
    previous = nd.backend.get_kernels()
    try:
        for name in [n for n in args.configs.split(",") if n]:
            steps = args.steps or (15 if name == "large" else 60)
            report(profile(name, steps), args.markdown)
    finally:
        nd.backend.set_kernels(previous)


if __name__ == "__main__":
    main()
