"""Per-sample gradients: their norms and the gradients themselves against the batch gradient,
a loop of single-sample backward passes, and ``torch.func`` (``vmap(grad(...))``), in one run.

Model: a Dense MLP (tanh hidden layers, softmax cross-entropy per sample), float32.
Columns, each the median of ``--repeats`` rounds timing ``--number`` calls of each in turn
(milliseconds per call; the loop gets fewer calls):

* batch grad: ``nd.grad`` of the mean loss (forward + backward), the reference;
* ps norms: ``per_sample_grad_norm`` (no (N, in, out) arrays for the Dense kernels);
* ps grads: ``per_sample_grad`` (every per-sample gradient formed);
* loop: N single-sample ``nd.grad`` calls;
* torch.func: ``vmap(grad(loss), in_dims=(None, 0, 0))`` on the same weights (when torch
  is installed), and torch's own batch gradient for scale; ``--torch-threads`` (1 by
  default, what nanodl's BLAS uses on a busy machine).

    flock /tmp/nanodl-bench.lock python benchmarks/bench_per_sample.py [--markdown]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import format_table  # noqa: E402

CONFIGS = {"small": ((784, 128, 10), 64), "medium": ((784, 256, 128, 10), 128)}


def timed_round_robin(calls, numbers, repeats):
    """{label: median ms per call}; each round times every call once, so a drift in the
    machine's speed (it is shared) hits all columns alike rather than the last ones."""
    for call in calls.values():
        call()  # warm up
    runs = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            start = time.perf_counter()
            for _ in range(numbers[label]):
                call()
            runs[label].append((time.perf_counter() - start) / numbers[label] * 1e3)
    return {label: statistics.median(values) for label, values in runs.items()}


def nanodl_calls(sizes, batch, rng):
    import nanodl as nd
    from nanodl import losses, nn
    from nanodl.autograd.functional import per_sample_grad, per_sample_grad_norm
    layers = [nn.Dense(units, activation="tanh", input_dim=fan_in)
              for fan_in, units in zip(sizes[:-2], sizes[1:-1])]
    model = nn.Sequential(layers + [nn.Dense(sizes[-1], input_dim=sizes[-2])])
    params = list(model.parameters())
    x = nd.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = nd.tensor(rng.integers(0, sizes[-1], batch))

    def per_sample_loss(xb, yb):
        return losses.sparse_categorical_crossentropy(model(xb), yb, from_logits=True, reduction="none")

    def batch_grad():
        return nd.grad(per_sample_loss(x, y).mean(), params)

    def loop():
        return [nd.grad(per_sample_loss(x[i:i + 1], y[i:i + 1]).sum(), params) for i in range(batch)]

    calls = {"batch grad": batch_grad,
             "ps norms": lambda: per_sample_grad_norm(per_sample_loss, params, x, y),
             "ps grads": lambda: per_sample_grad(per_sample_loss, params, x, y),
             "loop": loop}
    return calls, model, x, y


def torch_calls(model, x, y, threads):
    try:
        import torch
        from torch.func import grad, vmap
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    weights = [torch.tensor(p.data) for p in model.parameters()]
    xt, yt = torch.tensor(x.data), torch.tensor(y.data)

    def loss(params, xb, yb):
        h = xb
        for k in range(0, len(params) - 2, 2):
            h = torch.tanh(h @ params[k] + params[k + 1])
        logits = h @ params[-2] + params[-1]
        return torch.nn.functional.cross_entropy(logits.unsqueeze(0), yb.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    leaves = [w.clone().requires_grad_(True) for w in weights]

    def batch_grad():
        h = xt
        for k in range(0, len(leaves) - 2, 2):
            h = torch.tanh(h @ leaves[k] + leaves[k + 1])
        out = torch.nn.functional.cross_entropy(h @ leaves[-2] + leaves[-1], yt)
        return torch.autograd.grad(out, leaves)

    return {"torch.func": lambda: per_sample(weights, xt, yt), "torch batch grad": batch_grad}


def check_agreement(calls, torch_side):
    """The per-sample gradients agree with torch.func's (float32 rounding) and the loop's."""
    ours = calls["ps grads"]()
    looped = calls["loop"]()
    for k, array in enumerate(ours):
        np.testing.assert_allclose(array, np.stack([g[k].data for g in looped]), rtol=1e-3, atol=1e-5)
        if torch_side:
            np.testing.assert_allclose(array, torch_side["torch.func"]()[k].numpy(), rtol=1e-3, atol=1e-5)
    norms = calls["ps norms"]()
    flat = np.concatenate([a.reshape(a.shape[0], -1) for a in ours], axis=1)
    np.testing.assert_allclose(norms, np.sqrt((flat.astype(np.float64) ** 2).sum(1)), rtol=1e-4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch's intra-op threads (1: as nanodl's BLAS on a busy machine)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    header = ("config", "batch grad", "ps norms", "ps grads", "loop", "torch.func", "torch batch grad",
              "norms / batch", "grads / torch.func")
    rows = []
    for name in args.configs.split(","):
        sizes, batch = CONFIGS[name]
        calls, model, x, y = nanodl_calls(sizes, batch, rng)
        torch_side = torch_calls(model, x, y, args.torch_threads)
        check_agreement(calls, torch_side)
        everything = {**calls, **torch_side}
        numbers = {label: max(1, args.number // (batch // 8)) if label == "loop" else args.number
                   for label in everything}
        times = timed_round_robin(everything, numbers, args.repeats)
        shown = lambda label: f"{times[label]:.3f}" if label in times else "-"
        ratio = f"{times['ps grads'] / times['torch.func']:.2f}" if "torch.func" in times else "-"
        rows.append((f"{name} {'-'.join(map(str, sizes))}, batch {batch}",
                     *[shown(label) for label in header[1:7]],
                     f"{times['ps norms'] / times['batch grad']:.2f}", ratio))
    print(format_table(header, rows, markdown=args.markdown, rule=True))
    print(f"\nmilliseconds per call, median of {args.repeats} round-robin rounds; float32; targets: "
          "norms / batch <= 1.5, grads / torch.func <= 0.5 at small")


if __name__ == "__main__":
    main()
