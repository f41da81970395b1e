"""An optimizer written in one file with ``array_module`` runs on every table and device.

The Lion optimizer below is the example of ``docs/extending.md``: its update uses only
``xp = array_module(param)``, its state is a dict by name from ``_new_state``, and the
base class counts steps, skips parameters without a gradient and saves the state.
It is checked against a plain NumPy transcription of the paper's update (Chen et al.,
2023, Algorithm 2), on both CPU kernel tables and, where a GPU is present, on CuPy.
"""
import numpy as np
import pytest

import nanodl as nd
from nanodl import nn
from nanodl.backend import array_module
from nanodl.optim import Optimizer


class Lion(Optimizer):
    """Lion: ``p -= lr * (sign(b1 m + (1 - b1) g) + wd p)``, then ``m = b2 m + (1 - b2) g``."""

    name = "lion"

    def __init__(self, params=None, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        self.betas = self._check_betas(betas)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        super().__init__(params, lr)

    def _new_state(self, data):
        return {"exp_avg": array_module(data).zeros_like(data)}

    def get_config(self):
        return {"lr": self.lr, "betas": self.betas, "weight_decay": self.weight_decay}

    def step(self):
        (beta1, beta2), lr, wd = self.betas, self.lr, self.weight_decay
        for param, grad, state in self._updates():
            xp = array_module(param)
            m = state["exp_avg"]
            update = xp.sign(beta1 * m + (1 - beta1) * grad)
            param -= lr * (update + wd * param)
            m *= beta2
            m += (1 - beta2) * grad


def lion_reference(params, grads, steps, lr, betas, wd):
    """The paper's update, in float64 NumPy, for a fixed sequence of gradients."""
    params = [p.astype(np.float64) for p in params]
    moments = [np.zeros_like(p) for p in params]
    for step in range(steps):
        for p, m, g in zip(params, moments, grads[step]):
            c = betas[0] * m + (1 - betas[0]) * g
            p -= lr * (np.sign(c) + wd * p)
            m[...] = betas[1] * m + (1 - betas[1]) * g
    return params


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not nd.cuda_available(), reason="needs CuPy and a GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_one_file_optimizer_matches_its_reference(kernel_table, device):
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(5)]
    params = [nd.tensor(p, requires_grad=True, device=device) for p in initial]
    opt = Lion(params, lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(5):
        for p, g in zip(params, grads[step]):
            p.grad = nd.tensor(g, device=device).data
        opt.step()
    expected = lion_reference(initial, grads, 5, 0.05, (0.9, 0.99), 0.1)
    for p, want in zip(params, expected):
        assert p.device == device
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-12, atol=1e-12)
    assert opt.step_count == 5


def test_the_base_class_counts_skips_and_saves_by_name(kernel_table):
    w = nd.tensor(np.ones(3), requires_grad=True)
    b = nd.tensor(np.ones(2), requires_grad=True)
    opt = Lion([w, b], lr=0.1)
    w.grad = np.array([1.0, -1.0, 0.0])   # b has no gradient: not updated, not counted
    opt.step()
    np.testing.assert_allclose(w.data, [0.9, 1.1, 1.0])
    np.testing.assert_allclose(b.data, [1.0, 1.0])
    saved = opt.state_dict()
    assert saved["name"] == "lion" and saved["param_steps"].tolist() == [1, 0]
    assert sorted(saved["state"]) == ["exp_avg"]
    np.testing.assert_allclose(saved["state"]["exp_avg"][0], [0.01, -0.01, 0.0])
    again = Lion([w, b], lr=0.5)
    again.load_state_dict(saved)
    assert again.lr == 0.1 and again._state[0]["step"] == 1
    np.testing.assert_allclose(again._state[0]["exp_avg"], saved["state"]["exp_avg"][0])


def test_a_one_file_optimizer_trains_a_model(kernel_table):
    nd.manual_seed(0)  # the Dense's initial weights: without a seed they depend on the tests run before
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer=Lion(lr=0.05), loss="mse")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.1 * losses[0], losses
