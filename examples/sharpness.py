"""The learning rate and the loss's sharpness: 2 / lambda_max, and the edge of stability.

Gradient descent on a quadratic with curvature lambda is stable only for
``lr < 2 / lambda`` (docs/curvature.md derives it). A network's loss is not a
quadratic, but its sharpness lambda_max (the Hessian's largest eigenvalue, found by
Lanczos from Hessian-vector products: ``hessian_eigenvalues``) plays the same role.

1. A learning-rate sweep (``model.find_lr``) on digits with a tanh 64-32-10 net and
   full-batch gradient descent (MSE on one-hot targets), beside 2/lambda_max at the
   start; then full-batch training at multiples of that rate, to see which converge.
2. The edge of stability (Cohen et al., 2021): at a fixed rate, lambda_max first
   drops below 2/lr (the early steps throw the weights out of the sharp region),
   then rises as training goes on (progressive sharpening) until it reaches 2/lr,
   where it stops rising and hovers: training sharpens up to what the rate allows.

Run: python examples/sharpness.py
"""
import os
import sys

import numpy as np

import nanodl as nd
from nanodl import datasets, losses, nn, optim
from nanodl.autograd.functional import hessian_eigenvalues

QUICK = bool(os.environ.get("NANODL_EXAMPLE_QUICK"))


def digits():
    x, labels = datasets.load_digits()
    return x, np.eye(10, dtype=np.float32)[labels]


def network(lr, seed=0):
    """The tanh 64-32-10 net, built, compiled with plain gradient descent at ``lr``."""
    nd.manual_seed(seed)
    model = nn.Sequential([nn.Dense(64, activation="tanh", input_dim=64),
                           nn.Dense(32, activation="tanh", input_dim=64),
                           nn.Dense(10, input_dim=32)])
    model.compile(optimizer=optim.SGD(lr=lr), loss="mse")
    return model


def sharpness(model, x, y):
    """lambda_max of the full-batch loss at the model's weights."""
    inputs, targets = nd.tensor(x), nd.tensor(y)
    values, _ = hessian_eigenvalues(lambda: losses.mse(model(inputs), targets), model.parameters(),
                                    tol=1e-6, seed=0)
    return float(values[0])


def train(model, x, y, steps):
    """Full-batch gradient descent: the loss before each step (NaN once it blew up)."""
    with np.errstate(over="ignore", invalid="ignore"):
        history = model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)
    return np.array(history.history["loss"])


def sweep(x, y):
    model = network(lr=0.1)
    finder = model.find_lr(x, y, start_lr=1e-3, end_lr=10.0, steps=100, batch_size=len(x))
    found = finder.sharpness
    print(f"1. learning-rate sweep, full batch, {len(finder.lrs)} steps "
          f"({'stopped: diverged' if finder.diverged else 'to the end'} at lr {finder.lrs[-1]:.3g})")
    print(f"   steepest descent of the smoothed loss at lr {finder.suggestion:.3g}")
    print(f"   lambda_max {found['start']:.3f} at the start -> 2/lambda_max = {found['stable_lr']:.3f}; "
          f"lambda_max {found['end']:.4g} where the sweep stopped")
    stable = found["stable_lr"]
    steps = 100 if QUICK else 200
    results, converged = [], []
    for multiple in (0.5, 1.0, 2.0, 3.0, 4.0, 5.0):
        seen = train(network(lr=multiple * stable), x, y, steps)
        diverged = not np.isfinite(seen).all() or seen[-1] > seen[0]
        results.append(f"{multiple:g}x " + ("diverged" if diverged else f"{seen[-1]:.4f}"))
        converged += [] if diverged else [multiple]
    print(f"   full-batch gradient descent, loss after {steps} steps at multiples of 2/lambda_max "
          f"(from {seen[0]:.3f}): " + ", ".join(results))
    failed = [m for m in (0.5, 1.0, 2.0, 3.0, 4.0, 5.0) if m not in converged]
    print(f"   found: gradient descent converged up to {max(converged, default=0):g}x 2/lambda_max"
          + (f" and diverged from {min(failed):g}x" if failed else "")
          + f"; the sweep's suggestion {finder.suggestion:.3g} is {finder.suggestion / stable:.2f}x "
          "2/lambda_max: the curvature gives the scale, the sweep what the steps tolerate")


def edge_of_stability(x, y, lr, steps, every):
    model = network(lr=lr)
    limit = 2 / lr
    start = sharpness(model, x, y)
    print(f"2. edge of stability: full-batch gradient descent at lr {lr:g} (2/lr = {limit:.3f}); "
          f"lambda_max {start:.3f} at the start")
    trace, seen = [], []
    for step in range(every, steps + 1, every):
        seen.extend(train(model, x, y, every))
        if not np.isfinite(seen).all():
            print(f"   diverged before step {step}")
            return
        trace.append((step, sharpness(model, x, y)))
        if step % 100 == 0:
            print(f"   step {step:4d}: lambda_max {trace[-1][1]:.3f} = {trace[-1][1] / limit:.2f} "
                  f"x 2/lr, loss {seen[-1]:.4f}")
    values = np.array([value for _, value in trace])
    peak = int(values.argmax())
    rises = np.flatnonzero(np.diff(seen[every:]) > 0) + every + 1  # after the first, transient steps
    print(f"   found: lambda_max {start:.2f} at the start, {values[0]:.2f} after {every} steps, rising "
          f"to {values[peak]:.2f} = {values[peak] / limit:.2f} x 2/lr at step {trace[peak][0]}, "
          f"{values[-1]:.2f} = {values[-1] / limit:.2f} x 2/lr at the end")
    if len(rises):
        after = values[peak:].min()
        print(f"   the loss went up on {len(rises)} steps, the first at step {rises[0]}: past 2/lr a "
              f"step overshoots along the sharpest direction, and the overshoot flattens it again "
              f"(lambda_max down to {after:.2f} = {after / limit:.2f} x 2/lr after the peak)")


def main():
    x, y = digits()
    sweep(x, y)
    edge_of_stability(x, y, lr=0.35, steps=600 if QUICK else 800, every=50 if QUICK else 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
