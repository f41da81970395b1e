"""A physics-informed net: solve -u'' = π² sin(πx) on [-1, 1], u(±1) = 0, with no data.

The exact solution is ``u = sin(πx)``; the net never sees it. It is trained only to
make the equation's residual ``-u''(x) - π² sin(πx)`` small at collocation points,
which needs the second derivative of the net's output with respect to its *input*:
``nd.grad(u, x, create_graph=True)`` gives ``u'`` as a Tensor with a graph, a second
``nd.grad`` gives ``u''``, and ``loss.backward()`` then differentiates the residual
with respect to the weights (a third derivative of the network, in all).

The boundary condition is built in: ``u = (1 - x²)·N(x)`` is 0 at ±1 whatever the
MLP ``N`` computes. ``N`` uses tanh, a smooth activation: relu's second derivative
is 0 almost everywhere, so a relu net would see no ``u''`` at all.

Training runs in the two stages PINNs usually get: Adam first (robust far from a
solution), then L-BFGS (``optim.LBFGS`` with the strong Wolfe line search), which
uses curvature and polishes a nearly converged fit far faster than more Adam steps
would. The example prints the relative L2 error against ``sin(πx)`` after each stage:
about 1e-4 after the default 2,000 Adam steps, and about 1e-6 after the L-BFGS stage
(200 iterations; some 20 s on a laptop core in all).

Run: python examples/pinn_poisson.py [--steps 2000] [--lbfgs-iterations 200]
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


def collocation_points(points=64):
    """Fixed points, Chebyshev-like: denser near the ends. An (n, 1) float64 Tensor."""
    return nd.tensor(np.cos(np.linspace(0, PI, points)).reshape(-1, 1), dtype="float64",
                     requires_grad=True)


def residual_loss(net, x):
    return (residual(net, x) ** 2).mean()


def train(steps=2000, points=64, width=32, depth=2, lr=1e-3, seed=0, report_every=None, log=print):
    """Stage 1, Adam; returns ``(net, history)``, history a list of (step, loss, error)."""
    nd.manual_seed(seed)
    nd.set_default_dtype("float64")  # a residual of second derivatives wants float64
    try:
        net = make_net(width, depth)
        opt = optim.Adam(net.parameters(), lr=lr)
        x = collocation_points(points)
        history = []
        report_every = report_every or max(1, steps // 10)
        for step in range(1, steps + 1):
            loss = residual_loss(net, x)
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


def refine(net, iterations=200, points=64, report_every=50, log=print):
    """Stage 2, L-BFGS from where Adam stopped: ``step(closure)`` runs up to
    ``report_every`` iterations, the closure recomputing the residual loss and its
    gradient (second derivatives of the net inside, as in stage 1). Returns a list of
    (iterations so far, loss, error)."""
    x = collocation_points(points)
    opt = optim.LBFGS(net.parameters(), max_iter=report_every, history_size=50,
                      line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = residual_loss(net, x)
        loss.backward()
        return loss
    history = []
    while opt.state["n_iter"] < iterations:
        before = opt.state["n_iter"]
        opt.max_iter = min(report_every, iterations - before)
        opt.step(closure)
        history.append((opt.state["n_iter"], float(closure().item()), relative_error(net)))
        log(f"L-BFGS iteration {history[-1][0]:4d}  residual loss {history[-1][1]:.3e}  "
            f"relative L2 error {history[-1][2]:.2e}")
        if opt.state["n_iter"] == before:
            break  # converged: a step that makes no iteration
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300 if QUICK else 2000, help="Adam steps")
    parser.add_argument("--lbfgs-iterations", type=int, default=40 if QUICK else 200,
                        help="L-BFGS iterations after Adam (0: none)")
    parser.add_argument("--points", type=int, default=64, help="collocation points")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2, help="hidden tanh layers")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    net, _ = train(args.steps, args.points, args.width, args.depth, args.lr, args.seed)
    adam_error, adam_seconds = relative_error(net), time.perf_counter() - started
    print(f"relative L2 error against sin(pi x): {adam_error:.2e} after {args.steps} Adam steps "
          f"({adam_seconds:.1f} s)")
    if args.lbfgs_iterations:
        started = time.perf_counter()
        refine(net, args.lbfgs_iterations, args.points)
        print(f"relative L2 error against sin(pi x): {relative_error(net):.2e} after "
              f"{args.lbfgs_iterations} more L-BFGS iterations ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
