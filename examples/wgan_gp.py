"""WGAN-GP on a 2-D mixture of 8 Gaussians: a gradient penalty is a gradient of a gradient.

A Wasserstein GAN's critic ``D`` must be 1-Lipschitz. WGAN-GP (Gulrajani et al., 2017)
asks for it softly: on points ``x̂`` drawn between real and generated samples, the
penalty ``λ·(‖∇x̂ D(x̂)‖ - 1)²`` pulls the norm of the critic's input gradient to 1.
Training the critic on that penalty differentiates ``∇x̂ D`` with respect to the
critic's weights, which is why the gradient is taken with
``nd.grad(..., create_graph=True)``: it comes back as a Tensor with a graph of its
own, and ``loss.backward()`` runs through it.

The setting is the paper's toy experiment, made small enough to watch: 3-layer ReLU
critic and generator 128 wide, Adam with betas (0.5, 0.9), 5 critic steps per
generator step, λ = 10, and 400 generator steps at lr 1e-3 on batches of 64, which
cover all 8 modes in about ten seconds. It prints the critic's Wasserstein estimate
``E[D(real)] - E[D(fake)]`` and the mean gradient norm on the interpolates, which
goes to 1. The paper's own settings are ``--width 512 --batch 256 --lr 1e-4`` for
100,000 steps (a few hundred of those only start to spread the samples).

Run: python examples/wgan_gp.py [--steps 400] [--plot samples.png]
"""
import argparse
import os
import sys
import time

import numpy as np

import nanodl as nd
from nanodl import nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast


def eight_gaussians(n, rng, radius=2.0, std=0.05):
    """``n`` points around 8 centres on a circle of ``radius`` (float32, shape (n, 2))."""
    angle = rng.integers(0, 8, size=n) * (np.pi / 4)
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + std * rng.standard_normal((n, 2))).astype(np.float32)


def mlp(width, depth, n_in, n_out, activation):
    layers = [nn.Dense(width, activation=activation, input_dim=n_in)]
    layers += [nn.Dense(width, activation=activation, input_dim=width) for _ in range(depth - 1)]
    return nn.Sequential(layers + [nn.Dense(n_out, input_dim=width)])


def gradient_penalty(critic, real, fake, rng):
    """``(mean (‖∇D(x̂)‖ - 1)², mean ‖∇D(x̂)‖)`` on random interpolates ``x̂`` of real and fake."""
    share = rng.uniform(size=(len(real), 1)).astype(np.float32)
    between = nd.Tensor(share * real + (1 - share) * fake, requires_grad=True)
    (slope,) = nd.grad(critic(between).sum(), between, create_graph=True)  # a graph, not constants
    norm = ((slope * slope).sum(axis=1) + 1e-12).sqrt()
    return ((norm - 1) ** 2).mean(), float(norm.data.mean())


def train(steps=400, batch=64, width=128, depth=3, critic_steps=5, penalty=10.0, lr=1e-3,
          activation="relu", seed=0, report_every=None, log=print):
    """Train; returns ``(generator, history)``, history a list of (step, W estimate, grad norm)."""
    nd.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = mlp(width, depth, 2, 2, activation)
    critic = mlp(width, depth, 2, 1, activation)
    opt_g = optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    history = []
    report_every = report_every or max(1, steps // 10)
    for step in range(1, steps + 1):
        for _ in range(critic_steps):
            real = eight_gaussians(batch, rng)
            with nd.no_grad():
                fake = generator(nd.randn(batch, 2)).numpy()
            gp, grad_norm = gradient_penalty(critic, real, fake, rng)
            distance = critic(nd.tensor(real)).mean() - critic(nd.tensor(fake)).mean()
            loss = -distance + penalty * gp
            opt_c.zero_grad()
            loss.backward()           # through the penalty's gradient graph too
            opt_c.step()
        opt_g.zero_grad()
        (-critic(generator(nd.randn(batch, 2))).mean()).backward()
        opt_g.step()
        if step == 1 or step % report_every == 0:
            history.append((step, float(distance.item()), grad_norm))
            log(f"step {step:5d}  Wasserstein estimate {distance.item():7.4f}  "
                f"mean |grad D| on interpolates {grad_norm:.3f}")
    return generator, history


def mode_coverage(generator, n=2000, radius=2.0):
    """(share of samples within 0.5 of a centre, how many of the 8 centres get >= 2% of them)."""
    with nd.no_grad():
        samples = generator(nd.randn(n, 2)).numpy()
    angles = np.arange(8) * (np.pi / 4)
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    distance = np.linalg.norm(samples[:, None, :] - centres[None], axis=2)
    near = distance.min(axis=1) < 0.5
    counts = np.bincount(distance.argmin(axis=1)[near], minlength=8)
    return float(near.mean()), int((counts >= 0.02 * n).sum()), samples


def plot(samples, path, rng):
    """Real vs generated points as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    real = eight_gaussians(len(samples), rng)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(real[:, 0], real[:, 1], s=3, alpha=0.4, label="real")
    axis.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.4, label="generated")
    axis.set_aspect("equal")
    axis.legend(loc="upper right")
    axis.set_title("WGAN-GP on 8 Gaussians")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30 if QUICK else 400, help="generator steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64 if QUICK else 128)
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--penalty", type=float, default=10.0, help="λ, the penalty's weight")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PATH", help="save real vs generated samples as a PNG")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    generator, history = train(args.steps, args.batch, args.width, critic_steps=args.critic_steps,
                               penalty=args.penalty, lr=args.lr, activation=args.activation,
                               seed=args.seed)
    near, modes, samples = mode_coverage(generator)
    first, last = history[0][2], history[-1][2]
    print(f"gradient norm on interpolates: {first:.3f} at the start, {last:.3f} at the end (target 1)")
    print(f"{near:.0%} of generated points lie within 0.5 of a centre; {modes} of the 8 modes covered "
          f"({time.perf_counter() - started:.0f} s)")
    if args.plot:
        if plot(samples, args.plot, np.random.default_rng(args.seed)):
            print(f"saved {args.plot}")
        else:
            print("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
