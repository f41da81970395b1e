"""Per-sample gradient norms find labels that were flipped on purpose.

5% of the digits get a wrong label. A network trained for a few epochs learns what
the many agreeing samples teach; a wrongly labelled sample disagrees with it, so its
loss stays high and its gradient stays large. Ranking the samples by the norm of
their own gradient, ||d loss_i / d params|| (``per_sample_grad_norm``: one forward
and one backward pass for the whole training set; for Dense layers the norm is
||x_i|| ||delta_i|| and the per-sample gradients are never formed, docs/
per_sample_gradients.md derives it), puts the flipped labels first.

Precision at k: of the k samples with the largest norms, the fraction that were
flipped (k = the number flipped; picking at random would give 5%).

Run: python examples/per_sample.py
"""
import os
import time

import numpy as np

import nanodl as nd
from nanodl import datasets, losses, nn
from nanodl.autograd.functional import per_sample_grad, per_sample_grad_norm

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"   # the test suite sets it to run fast
FLIPPED_FRACTION = 0.05

nd.manual_seed(0)
rng = np.random.default_rng(0)
x, labels = datasets.load_digits()
flipped = rng.choice(len(x), size=int(FLIPPED_FRACTION * len(x)), replace=False)
noisy = labels.copy()
noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10   # always a wrong class
print(f"{len(x)} digits, {len(flipped)} labels flipped on purpose")

model = nn.Sequential([nn.Dense(32, activation="tanh", input_dim=64), nn.Dense(10, input_dim=32)])
model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
epochs = 3 if QUICK else 8
model.fit(x, noisy, batch_size=32, epochs=epochs, verbose=0)
model.eval()


def per_sample_losses(inputs, targets):
    """One loss per sample (reduction='none'): what the per-sample tools differentiate."""
    return losses.sparse_categorical_crossentropy(model(inputs), targets, from_logits=True, reduction="none")


params = list(model.parameters())
start = time.perf_counter()
norms = per_sample_grad_norm(per_sample_losses, params, x, noisy)
seconds = time.perf_counter() - start
print(f"per-sample gradient norms of all {len(x)} samples in one pass: {1e3 * seconds:.1f} ms")

# The same norms from the materialised per-sample gradients, on the first 100 samples.
first = per_sample_grad(per_sample_losses, params, x[:100], noisy[:100])
formed = np.sqrt(sum((g.reshape(100, -1).astype(np.float64) ** 2).sum(axis=1) for g in first))
assert np.allclose(norms[:100], formed, rtol=1e-4)


def precision_at(scores, k):
    top = np.argsort(-scores)[:k]
    return np.isin(top, flipped).mean()


with nd.no_grad():
    loss_values = per_sample_losses(nd.tensor(x), nd.tensor(noisy)).numpy()
k = len(flipped)
print(f"precision at k={k}: gradient norm {precision_at(norms, k):.2f}, loss {precision_at(loss_values, k):.2f}, "
      f"random {FLIPPED_FRACTION:.2f}")
print(f"precision at k={k // 2}: gradient norm {precision_at(norms, k // 2):.2f}")
print("largest norms (sample, given label, true label, norm):")
for i in np.argsort(-norms)[:5]:
    print(f"  {i:5d}  {noisy[i]}  {labels[i]}  {norms[i]:.3f}{'  <- flipped' if i in flipped else ''}")
