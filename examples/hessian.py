"""Second-order information from nanodl: a Hessian, its top eigenvalue, a Newton-CG step.

1. The Hessian of Rosenbrock's function ``(1 - x)² + 100 (y - x²)²`` at its minimum
   (1, 1) is ``[[802, -400], [-400, 200]]``: ``autograd.functional.hessian`` builds it
   row by row from gradients of the gradient.
2. A model's loss has as many Hessian rows as weights, too many to build in general.
   A Hessian-vector product ``H v`` costs about two gradients (``functional.hvp``), so
   power iteration on ``hvp`` finds the top eigenvalue (the loss's sharpness) without
   ever forming ``H``; here it is compared with ``numpy.linalg.eigvalsh`` of the full
   Hessian of a small tanh net's loss.
3. Newton's step solves ``H p = -g``. Conjugate gradients solve it with ``hvp`` alone
   (Newton-CG, as scipy's ``minimize(method='Newton-CG')``): from (-1.2, 1), the
   classic start, a few dozen steps reach Rosenbrock's minimum.

Run: python examples/hessian.py
"""
import argparse
import sys

import numpy as np

import nanodl as nd
import nanodl.functional as F
from nanodl.autograd import functional


def rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def small_model_loss(seed=0, n=64, n_in=3, hidden=6):
    """``(loss, theta)``: the mean squared error of a 3-6-1 tanh net as a function of one
    flat weight vector ``theta`` (31 numbers), and a starting ``theta``."""
    rng = np.random.default_rng(seed)
    x = nd.tensor(rng.standard_normal((n, n_in)))
    y = nd.tensor(np.sin(x.numpy() @ rng.standard_normal((n_in, 1))))
    shapes = [(n_in, hidden), (hidden,), (hidden, 1), (1,)]
    sizes = [int(np.prod(shape)) for shape in shapes]
    bounds = np.cumsum([0] + sizes)

    def loss(theta):
        w1, b1, w2, b2 = (theta[a:b].reshape(shape) for a, b, shape in zip(bounds, bounds[1:], shapes))
        pred = F.linear(F.linear(x, w1, b1, activation="tanh"), w2, b2)
        return ((pred - y) ** 2).mean()
    theta = nd.tensor(rng.standard_normal(bounds[-1]) * 0.5)
    return loss, theta


def top_eigenvalue(fn, theta, iterations=100, seed=0):
    """The Hessian eigenvalue of largest magnitude, by power iteration on ``hvp``."""
    v = np.random.default_rng(seed).standard_normal(theta.shape)
    v /= np.linalg.norm(v)
    value = 0.0
    for _ in range(iterations):
        _, hv = functional.hvp(fn, theta, nd.tensor(v))
        hv = hv.numpy()
        value = float(v @ hv)                # the Rayleigh quotient v^T H v
        v = hv / np.linalg.norm(hv)
    return value


def conjugate_gradient(hessian_times, b, iterations=50, tol=1e-10):
    """Solve ``H p = b`` with products ``H v`` only; stops early on negative curvature."""
    p, r = np.zeros_like(b), b.copy()
    d = r.copy()
    for _ in range(iterations):
        hd = hessian_times(d)
        curvature = d @ hd
        if curvature <= 0:                   # not a descent problem along d: stop here
            return p if p.any() else b
        step = (r @ r) / curvature
        p, r_next = p + step * d, r - step * hd
        if np.linalg.norm(r_next) < tol:
            return p
        d = r_next + (r_next @ r_next) / (r @ r) * d
        r = r_next
    return p


def newton_cg_step(fn, theta):
    """One Newton-CG step with a backtracking line search; returns the new point (array)."""
    point = nd.tensor(theta)
    value, (gradient,) = functional.vjp(fn, (point,))
    g = gradient.numpy()
    direction = conjugate_gradient(lambda v: functional.hvp(fn, point, nd.tensor(v))[1].numpy(), -g)
    f0, step = float(value.item()), 1.0
    with nd.no_grad():
        while float(fn(nd.tensor(theta + step * direction)).item()) > f0 + 1e-4 * step * (g @ direction):
            step /= 2
            if step < 1e-10:
                break
    return theta + step * direction


def minimize_newton_cg(fn, start, tol=1e-10, max_steps=100):
    """Newton-CG steps until the gradient is below ``tol``; returns (point, steps taken)."""
    theta = np.asarray(start, dtype=np.float64)
    for steps in range(max_steps + 1):
        _, (gradient,) = functional.vjp(fn, (nd.tensor(theta),))
        if np.linalg.norm(gradient.numpy()) < tol:
            return theta, steps
        theta = newton_cg_step(fn, theta)
    return theta, max_steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100, help="power iterations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    h = functional.hessian(rosenbrock, nd.tensor([1.0, 1.0], dtype="float64")).numpy()
    print(f"1. Hessian of Rosenbrock at (1, 1):\n{h}")

    loss, theta = small_model_loss(args.seed)
    top = top_eigenvalue(loss, theta, args.iterations, args.seed)
    full = functional.hessian(loss, theta).numpy()
    exact = np.linalg.eigvalsh(full)
    print(f"2. top Hessian eigenvalue of the small net's loss ({theta.size} weights): power iteration "
          f"on hvp {top:.6f}, eigvalsh of the full Hessian {exact[np.abs(exact).argmax()]:.6f}")

    point, steps = minimize_newton_cg(rosenbrock, [-1.2, 1.0])
    print(f"3. Newton-CG from (-1.2, 1): ({point[0]:.8f}, {point[1]:.8f}) after {steps} steps; "
          f"loss {float(rosenbrock(nd.tensor(point)).item()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
