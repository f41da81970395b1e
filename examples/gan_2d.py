"""A tiny GAN on 2-D data: a generator learns to place points on a ring.

Two models, two optimizers and a hand-written training loop. The discriminator step
uses ``fake.detach()`` so that its loss does not send gradients into the generator.
The printed statistic (mean distance of generated points from the origin) moves
from about 0 toward the ring's radius, 2; the last line checks that the points spread
around the whole ring instead of collapsing onto one spot.

Run: python examples/gan_2d.py
"""
import os

import numpy as np

import nanodl as nd
from nanodl import losses, nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast
RADIUS, BATCH, NOISE_DIM = 2.0, 128, 2
STEPS = 200 if QUICK else 1000
rng = np.random.default_rng(0)


def real_batch(n):
    """Points on a circle of radius 2, blurred a little."""
    angle = rng.uniform(0, 2 * np.pi, size=n)
    points = RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return nd.tensor((points + rng.normal(scale=0.05, size=points.shape)).astype("float32"))


def mean_radius(points):
    return float(np.linalg.norm(points.numpy(), axis=1).mean())


nd.manual_seed(0)
# Every layer gets input_dim so its parameters exist now: the optimizers below are
# created before the first call.
generator = nn.Sequential([
    nn.Dense(64, activation="relu", input_dim=NOISE_DIM),
    nn.Dense(64, activation="relu", input_dim=64),
    nn.Dense(2, input_dim=64),
])
discriminator = nn.Sequential([
    nn.Dense(64, activation="leaky_relu", input_dim=2),
    nn.Dense(64, activation="leaky_relu", input_dim=64),
    nn.Dense(1, input_dim=64),  # a logit: "this point is real"
])
opt_g = optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
opt_d = optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
bce = losses.BinaryCrossentropy(from_logits=True)
real_label, fake_label = nd.ones((BATCH, 1)), nd.zeros((BATCH, 1))

with nd.no_grad():
    radius = mean_radius(generator(nd.randn(1000, NOISE_DIM)))
print(f"before training: mean radius of generated points {radius:.2f} (data: {RADIUS:.2f})")

for step in range(1, STEPS + 1):
    fake = generator(nd.randn(BATCH, NOISE_DIM))

    # 1. discriminator: real points -> 1, generated points -> 0 (detach: leave G alone)
    d_loss = bce(discriminator(real_batch(BATCH)), real_label) + bce(discriminator(fake.detach()), fake_label)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()

    # 2. generator: make the discriminator call its points real
    g_loss = bce(discriminator(fake), real_label)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()

    if step % (STEPS // 5) == 0:
        with nd.no_grad():
            radius = mean_radius(generator(nd.randn(1000, NOISE_DIM)))
        print(f"step {step:5d}  D loss {d_loss.item():.3f}  G loss {g_loss.item():.3f}  "
              f"mean radius {radius:.2f}")

with nd.no_grad():
    samples = generator(nd.randn(1000, NOISE_DIM)).numpy()
distance = np.abs(np.linalg.norm(samples, axis=1) - RADIUS)
angle = np.arctan2(samples[:, 1], samples[:, 0])
sectors = np.unique(np.floor((angle + np.pi) / (np.pi / 4)).astype(int) % 8)
print(f"after training: {np.mean(distance < 0.3):.0%} of generated points lie within 0.3 of the ring, "
      f"spread over {len(sectors)} of its 8 eighths")
