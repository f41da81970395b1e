"""A physics-informed net: solve -u'' = π² sin(πx) on [-1, 1], u(±1) = 0, with no data.

The exact solution is ``u = sin(πx)``; the net never sees it. It is trained only to
make the equation's residual ``-u''(x) - π² sin(πx)`` small at collocation points,
which needs the second derivative of the net's output with respect to its *input*:
``nd.grad(u, x, create_graph=True)`` gives ``u'`` as a Tensor with a graph, a second
``nd.grad`` gives ``u''``, and ``loss.backward()`` then differentiates the residual
with respect to the weights (a third derivative of the network, in all).

The boundary condition is built in: ``u = (1 - x²)·N(x)`` is 0 at ±1 whatever the
MLP ``N`` computes. ``N`` uses tanh, a smooth activation: relu's second derivative
is 0 almost everywhere, so a relu net would see no ``u''`` at all. It prints the
relative L2 error against ``sin(πx)``: about 1e-4 after 2,000 Adam steps and 2e-5
after the default 5,000 (under a minute on a laptop core).

Run: python examples/pinn_poisson.py [--steps 5000]
"""
import argparse
import os
import sys
import time

import numpy as np

import nanodl as nd
from nanodl import nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast
PI = np.pi


def make_net(width=32, depth=2):
    layers = [nn.Dense(width, activation="tanh", input_dim=1)]
    layers += [nn.Dense(width, activation="tanh", input_dim=width) for _ in range(depth - 1)]
    return nn.Sequential(layers + [nn.Dense(1, input_dim=width)])


def solution(net, x):
    """``u(x) = (1 - x²)·N(x)``: zero at both ends by construction."""
    return (1 - x * x) * net(x)


def residual(net, x):
    """``-u''(x) - π² sin(πx)`` at the points ``x`` (an (n, 1) Tensor that requires grad)."""
    u = solution(net, x)
    # u_i depends on x_i only, so the gradient of sum(u) holds every u'(x_i) (and so on for u'')
    (u_x,) = nd.grad(u.sum(), x, create_graph=True)
    (u_xx,) = nd.grad(u_x.sum(), x, create_graph=True)
    return -u_xx - nd.tensor(PI ** 2 * np.sin(PI * x.data))  # the source: a constant


def relative_error(net, points=1001):
    """‖u - sin(πx)‖ / ‖sin(πx)‖ on a fine grid."""
    x = np.linspace(-1, 1, points, dtype=np.float64).reshape(-1, 1)
    with nd.no_grad():
        u = solution(net, nd.tensor(x)).numpy()
    exact = np.sin(PI * x)
    return float(np.linalg.norm(u - exact) / np.linalg.norm(exact))


def train(steps=5000, points=64, width=32, depth=2, lr=1e-3, seed=0, report_every=None, log=print):
    """Train the PINN; returns ``(net, history)``, history a list of (step, loss, error)."""
    nd.manual_seed(seed)
    nd.set_default_dtype("float64")  # a residual of second derivatives wants float64
    try:
        net = make_net(width, depth)
        opt = optim.Adam(net.parameters(), lr=lr)
        # collocation points: Chebyshev-like, denser near the ends, fixed
        x = nd.tensor(np.cos(np.linspace(0, PI, points)).reshape(-1, 1), requires_grad=True)
        history = []
        report_every = report_every or max(1, steps // 10)
        for step in range(1, steps + 1):
            loss = (residual(net, x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 1 or step % report_every == 0:
                history.append((step, float(loss.item()), relative_error(net)))
                log(f"step {step:5d}  residual loss {loss.item():.3e}  "
                    f"relative L2 error {history[-1][2]:.2e}")
    finally:
        nd.set_default_dtype("float32")
    return net, history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300 if QUICK else 5000)
    parser.add_argument("--points", type=int, default=64, help="collocation points")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2, help="hidden tanh layers")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    net, _ = train(args.steps, args.points, args.width, args.depth, args.lr, args.seed)
    print(f"relative L2 error against sin(pi x): {relative_error(net):.2e} after {args.steps} steps "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
