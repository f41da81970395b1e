"""Data-parallel benchmark: the training step on 1 and 2 MPI ranks, and what averaging costs.

For the medium (784-512-512-10, batch 256, Adam) and large (1024-4096-4096-10, batch
512, Adam) MLPs of ``bench_mlp.py`` it measures, on 1 and 2 ranks (the batch is the
total: each of N ranks trains on batch/N samples):

* the step time (forward, loss, backward, gradient averaging, Adam update), through
  ``Model.train_on_batch`` with a ``DistributedOptimizer``;
* the averaging time inside the step (``DistributedOptimizer.comm_seconds``: packing,
  the allreduce, unpacking, and any wait for the slower rank) and its share of the step;
* the allreduce alone (MPI_Allreduce of a buffer the size of all gradients, nothing else
  running), the transport's own cost;
* one flat allreduce against one allreduce per parameter (``mode='per_parameter'``).

    python benchmarks/bench_distributed.py               # both configs, 2 rounds
    python benchmarks/bench_distributed.py --quick       # fewer steps, 1 round
    python benchmarks/bench_distributed.py --configs medium --markdown

It starts ``mpirun`` itself (1 rank, then 2, alternating for each round), so run it as a
plain script. The BLAS threads are the machine's cores divided by the ranks (2 cores: 2
threads on 1 rank, 1 each on 2), and the ranks are not pinned (``--bind-to none``). As
root it passes Open MPI's run-as-root switches to its own ``mpirun`` (the library never
does). On one 2-core machine this measures correctness and overhead, not a speed-up:
two ranks share the cores one rank had.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_mlp import CONFIGS, LR, make_batch  # noqa: E402  (one definition of the configs)

DISTRIBUTED_CONFIGS = ("medium", "large")
MODES = ("flat", "per_parameter")
STEPS = {"medium": 30, "large": 6}  # timed steps per mode and round (--quick: a third)


# ---------------------------------------------------------------- worker (under mpirun)
def _build(nd, nn, sizes):
    layers = [nn.Dense(units, activation="relu", **({"input_dim": sizes[0]} if i == 0 else {}))
              for i, units in enumerate(sizes[1:-1])]
    return nn.Sequential(layers + [nn.Dense(sizes[-1], activation="softmax")])


def _raw_allreduce_seconds(dist, count, repeats):
    """Median seconds of one MPI_Allreduce of ``count`` float32 values (None on one rank)."""
    world = dist.world._world  # the process's MPI world (nanodl/distributed/world.py)
    if world.comm is None:
        return None
    buffer = np.ones(count, dtype=np.float32)
    times = []
    for _ in range(repeats + 2):
        world.comm.Barrier()
        started = time.perf_counter()
        world.comm.Allreduce(world.MPI.IN_PLACE, buffer, op=world.MPI.SUM)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def worker(configs, steps_scale, warmup):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import nanodl as nd
    import nanodl.distributed as dist
    from nanodl import nn, optim

    dist.init()
    rank, size = dist.rank(), dist.size()
    results = []
    for name in configs:
        sizes, batch, opt_name = CONFIGS[name]
        x, y = make_batch(sizes, batch)
        x_local, y_local = x[rank::size], y[rank::size]
        steps = max(2, int(STEPS[name] * steps_scale))
        runs = []
        for mode in MODES:  # both models side by side: their steps alternate (same noise)
            nd.manual_seed(0)
            model = _build(nd, nn, sizes)
            opt = dist.DistributedOptimizer(optim.get(opt_name), mode=mode)
            opt.lr = LR[opt_name]
            model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
            runs.append((mode, model, opt, [], []))
        for step in range(warmup + steps):
            for mode, model, opt, step_times, comm_times in runs:
                comm_before = opt.comm_seconds
                started = time.perf_counter()
                model.train_on_batch(x_local, y_local)
                if step >= warmup:
                    step_times.append(time.perf_counter() - started)
                    comm_times.append(opt.comm_seconds - comm_before)
        count = sum(int(p.data.size) for p in runs[0][1].parameters())
        raw = _raw_allreduce_seconds(dist, count, repeats=steps)
        for mode, model, opt, step_times, comm_times in runs:
            results.append({"config": name, "ranks": size, "mode": mode, "params": count,
                            "calls_per_step": opt.allreduce_calls / (steps + warmup),
                            "step": step_times, "comm": comm_times,
                            "raw_allreduce": raw if mode == "flat" else None})
        del runs
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)


# ---------------------------------------------------------------- driver
def _launch(ranks, configs, steps_scale, warmup, timeout, mpirun_args=()):
    mpirun = next(filter(None, (shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
                                for name in ("mpirun", "mpiexec"))), None)
    if mpirun is None:
        raise SystemExit("bench_distributed: mpirun not found; pip install 'nanodl[distributed]'")
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // ranks))
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [mpirun, "-n", str(ranks), "--oversubscribe", "--bind-to", "none", *mpirun_args, sys.executable,
               str(Path(__file__).resolve()), "--worker", "--configs", ",".join(configs),
               "--steps-scale", str(steps_scale), "--warmup", str(warmup)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench_distributed: {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(runs):
    """Per (config, ranks, mode): medians over every step of every round, in ms."""
    merged = {}
    for entry in runs:
        key = (entry["config"], entry["ranks"], entry["mode"])
        slot = merged.setdefault(key, {"step": [], "comm": [], "raw": [], "params": entry["params"],
                                       "calls": entry["calls_per_step"]})
        slot["step"] += entry["step"]
        slot["comm"] += entry["comm"]
        if entry.get("raw_allreduce") is not None:
            slot["raw"].append(entry["raw_allreduce"])
    rows = []
    for (config, ranks, mode), slot in merged.items():
        step = statistics.median(slot["step"]) * 1e3
        comm = statistics.median(slot["comm"]) * 1e3
        raw = statistics.median(slot["raw"]) * 1e3 if slot["raw"] else None
        rows.append({"config": config, "ranks": ranks, "mode": mode, "params": slot["params"],
                     "grad_mb": slot["params"] * 4 / 1e6, "calls": slot["calls"], "step_ms": step,
                     "comm_ms": comm, "share": comm / step, "raw_ms": raw,
                     "samples_per_s": CONFIGS[config][1] / step * 1e3})
    rows.sort(key=lambda r: (DISTRIBUTED_CONFIGS.index(r["config"]), r["ranks"], MODES.index(r["mode"])))
    return rows


def report(rows, markdown):
    header = ["config", "ranks", "allreduce", "calls/step", "step ms", "samples/s",
              "averaging ms", "share of step", "allreduce alone ms", "gradients MB"]
    table = []
    for r in rows:
        table.append([r["config"], str(r["ranks"]), r["mode"], f"{r['calls']:.0f}", f"{r['step_ms']:.1f}",
                      f"{r['samples_per_s']:.0f}", f"{r['comm_ms']:.2f}", f"{100 * r['share']:.1f}%",
                      "-" if r["raw_ms"] is None else f"{r['raw_ms']:.2f}", f"{r['grad_mb']:.2f}"])
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for line in table:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in table:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print()
    print("What a multi-node run needs: a ring allreduce sends and receives 2(N-1)/N times the "
          "gradient bytes per rank per step (about 2x for large N). For averaging to cost 10% "
          "of the compute time of a 2-rank step (step minus averaging), each node needs:")
    for r in rows:
        if r["ranks"] == 2 and r["mode"] == "flat":
            compute_s = (r["step_ms"] - r["comm_ms"]) / 1e3
            bytes_per_step = 2 * r["params"] * 4
            print(f"  {r['config']}: {bytes_per_step / 1e6:.1f} MB per step in {compute_s * 1e3:.0f} ms "
                  f"of compute -> {bytes_per_step / (0.1 * compute_s) / 1e9:.2f} GB/s "
                  f"({8 * bytes_per_step / (0.1 * compute_s) / 1e9:.1f} Gbit/s); "
                  f"fully hidden behind compute: {bytes_per_step / compute_s / 1e9:.2f} GB/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(DISTRIBUTED_CONFIGS))
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1-rank/2-rank launches")
    parser.add_argument("--quick", action="store_true", help="a third of the steps, one round")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the summary rows here")
    parser.add_argument("--mpirun-args", default="", metavar="ARGS",
                        help="extra mpirun options as one string, e.g. --mpirun-args='--mca btl self,sm'")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [name for name in args.configs.split(",") if name]
    unknown = [name for name in configs if name not in DISTRIBUTED_CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; valid: {', '.join(DISTRIBUTED_CONFIGS)}")
    if args.worker:
        worker(configs, args.steps_scale, args.warmup)
        return 0
    scale, rounds = (1 / 3, 1) if args.quick else (1.0, args.rounds)
    runs = []
    for round_index in range(rounds):
        for ranks in (1, 2) if round_index % 2 == 0 else (2, 1):
            runs += _launch(ranks, configs, scale, args.warmup, timeout=1200,
                            mpirun_args=args.mpirun_args.split())
    rows = summarise(runs)
    report(rows, args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
