"""DP-SGD on digits: clip each sample's gradient, add Gaussian noise, compare with plain SGD.

Differentially private SGD (Abadi et al., 2016) bounds how much any one sample can
move the weights: each sample's gradient g_i is scaled down to norm at most C, the
clipped gradients are summed, Gaussian noise N(0, (sigma C)^2) is added to every
coordinate of the sum, and the step uses that noisy sum over the batch size. The
noise multiplier sigma sets the privacy (larger: more private) and costs accuracy.

Clipping needs each sample's gradient norm, which ``per_sample_grad_norm`` gives in
one pass. The clipped sum never needs the per-sample gradients either:
sum_i c_i g_i is the gradient of sum_i c_i loss_i, so one ordinary backward pass of
the losses weighted by c_i = min(1, C / ||g_i||) gives it (the first step checks this
against clipping the per-sample gradients from ``per_sample_grad``).

Run: python examples/dp_sgd.py
"""
import os

import numpy as np

import nanodl as nd
from nanodl import data, datasets, losses, nn
from nanodl.autograd.functional import per_sample_grad, per_sample_grad_norm

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"   # the test suite sets it to run fast
CLIP, LR, BATCH = 1.0, 0.5, 64
EPOCHS = 3 if QUICK else 15

x, y = datasets.load_digits()
x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def network():
    nd.manual_seed(0)
    return nn.Sequential([nn.Dense(32, activation="tanh", input_dim=64), nn.Dense(10, input_dim=32)])


def per_sample_losses(model):
    return lambda inputs, targets: losses.sparse_categorical_crossentropy(
        model(inputs), targets, from_logits=True, reduction="none")


def clipped_sum(model, xb, yb):
    """sum_i min(1, C / ||g_i||) g_i, as one backward pass of the reweighted losses."""
    params = list(model.parameters())
    norms = per_sample_grad_norm(per_sample_losses(model), params, xb, yb)
    scale = np.minimum(1.0, CLIP / np.maximum(norms, 1e-12)).astype(np.float32)
    weighted = (per_sample_losses(model)(nd.tensor(xb), nd.tensor(yb)) * nd.tensor(scale)).sum()
    return [g.data for g in nd.grad(weighted, params)], norms


def check_against_per_sample_grad(model, xb, yb):
    """The same clipped sum from the materialised per-sample gradients."""
    grads = per_sample_grad(per_sample_losses(model), list(model.parameters()), xb, yb)
    norms = np.sqrt(sum((g.reshape(len(xb), -1) ** 2).sum(axis=1) for g in grads))
    scale = np.minimum(1.0, CLIP / norms)
    expected = [np.tensordot(scale, g, axes=1) for g in grads]
    for got, want in zip(clipped_sum(model, xb, yb)[0], expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def train(sigma, private):
    """Minibatch SGD for EPOCHS; DP-SGD when ``private`` (noise multiplier ``sigma``)."""
    model = network()
    params = list(model.parameters())
    noise = np.random.default_rng(1)
    order = np.random.default_rng(2)
    clipped_fraction = []
    for _ in range(EPOCHS):
        for _ in range(len(x_train) // BATCH):
            batch = order.permutation(len(x_train))[:BATCH]   # the same batches for every run
            xb, yb = x_train[batch], y_train[batch]
            if private:
                total, norms = clipped_sum(model, xb, yb)
                clipped_fraction.append(float((norms > CLIP).mean()))
                steps = [(g + noise.normal(0, sigma * CLIP, g.shape)) / BATCH for g in total]
            else:
                loss = per_sample_losses(model)(nd.tensor(xb), nd.tensor(yb)).mean()
                steps = [g.data for g in nd.grad(loss, params)]
            for p, step in zip(params, steps):
                p.data -= (LR * step).astype(p.dtype)
    model.eval()
    with nd.no_grad():
        accuracy = float((model(nd.tensor(x_test)).numpy().argmax(axis=1) == y_test).mean())
    return accuracy, (np.mean(clipped_fraction) if clipped_fraction else None)


check_against_per_sample_grad(network(), x_train[:BATCH], y_train[:BATCH])
print("clipped sum by one reweighted backward == clipping per_sample_grad's gradients: ok")
print(f"{EPOCHS} epochs, batch {BATCH}, lr {LR}, clip norm C = {CLIP}")
print(f"{'training':<26}{'test accuracy':>14}{'clipped samples':>17}")
accuracy, _ = train(0.0, private=False)
print(f"{'plain SGD':<26}{accuracy:>14.3f}{'-':>17}")
for sigma in (0.0, 0.5, 1.0, 2.0, 4.0):
    accuracy, clipped = train(sigma, private=True)
    label = f"DP-SGD, noise sigma={sigma:g}" if sigma else "clipping only (sigma=0)"
    print(f"{label:<26}{accuracy:>14.3f}{clipped:>16.0%}")
