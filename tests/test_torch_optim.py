"""nanodl.optim against torch.optim itself (skipped when torch is not installed):
every optimizer option, the schedules and clip_grad_norm, float64, step for step."""
import math

import numpy as np
import pytest

from nanodl import nn, optim
from nanodl.optim import lr_scheduler

torch = pytest.importorskip("torch")

STEPS = 14
SHAPES = [(3, 4), (5,), (2, 1, 3)]
NO_GRAD = {(3, 1), (7, 1), (8, 1), (0, 2)}  # (step, parameter) pairs with grad None
LR_CHANGE_AT = 9  # the rate is halved before this step, in both libraries

TORCH_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                 "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}

CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, momentum=0.5, weight_decay=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("adamw", dict(lr=0.03, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.2)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, initial_accumulator_value=0.5)),
    ("adagrad", dict(lr=0.1, initial_accumulator_value=0.5, lr_decay=0.05)),
    ("adagrad", dict(lr=0.1, eps=1e-6, weight_decay=0.1, lr_decay=0.01)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, centered=True)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
]
CASE_IDS = [name + "-" + "-".join(f"{k}={v}" for k, v in config.items()) for name, config in CASES]


def make_param(array):
    """A float64 parameter: ``.data`` updated in place, ``.grad`` an array or None."""
    return nn.Parameter(np.array(array, dtype=np.float64))


def gradient(step, index, value, noise):
    if (step, index) in NO_GRAD:
        return None
    return noise[step][index] + 0.5 * value + 0.1 * math.sin(step)


@pytest.mark.parametrize("name, config", CASES, ids=CASE_IDS)
def test_matches_torch_step_for_step(kernel_table, name, config):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(shape) for shape in SHAPES]
    noise = [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(STEPS)]

    params = [make_param(a) for a in start]
    torch_params = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in start]
    opt = optim.OPTIMIZERS[name](params, **config)
    torch_opt = TORCH_CLASSES[name](torch_params, **config)
    for step in range(STEPS):
        if step == LR_CHANGE_AT:
            opt.lr = opt.lr / 2
            torch_opt.param_groups[0]["lr"] /= 2
        for index, (p, tp) in enumerate(zip(params, torch_params)):
            p.grad = gradient(step, index, p.data, noise)
            torch_grad = gradient(step, index, tp.detach().numpy(), noise)
            tp.grad = None if torch_grad is None else torch.from_numpy(torch_grad)
        opt.step()
        torch_opt.step()
        for index, (p, tp) in enumerate(zip(params, torch_params)):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} {config}: parameter {index}, step {step}")

    # The optimizer state carries torch's names and values too.
    state = opt.state_dict()
    for index, tp in enumerate(torch_params):
        torch_state = torch_opt.state[tp]
        assert state["param_steps"][index] == int(torch_state.get("step", state["param_steps"][index]))
        for slot, arrays in state["state"].items():
            np.testing.assert_allclose(arrays[index], torch_state[slot].numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name}: state {slot!r} of parameter {index}")


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape) for shape in SHAPES]
    params = [make_param(np.zeros(shape)) for shape in SHAPES]
    torch_params = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in SHAPES]
    for p, tp, g in zip(params, torch_params, grads):
        p.grad = g.copy()
        tp.grad = torch.from_numpy(g.copy())
    total = optim.clip_grad_norm(params, max_norm, norm_type=norm_type)
    torch_total = torch.nn.utils.clip_grad_norm_(torch_params, max_norm, norm_type=norm_type)
    assert total == pytest.approx(float(torch_total), rel=1e-12)
    for p, tp in zip(params, torch_params):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12, atol=1e-15)


SCHEDULES = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("ExponentialLR", dict(gamma=0.93)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=50, eta_min=0.01)),
    ("LambdaLR", dict(lr_lambda=lambda epoch: 0.95 ** epoch + 0.01 * epoch)),
]


@pytest.mark.parametrize("cls_name, kwargs", SCHEDULES,
                         ids=[f"{c}-{k}" for c, k in SCHEDULES])
def test_schedules_match_torch(cls_name, kwargs):
    opt = optim.SGD([make_param([0.0])], lr=0.1)
    scheduler = getattr(lr_scheduler, cls_name)(opt, **kwargs)
    torch_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_scheduler = getattr(torch.optim.lr_scheduler, cls_name)(torch_opt, **kwargs)
    assert scheduler.base_lrs == torch_scheduler.base_lrs
    assert scheduler.get_last_lr() == pytest.approx(torch_scheduler.get_last_lr(), rel=1e-12)
    for epoch in range(1, 51):
        opt.step()
        torch_opt.step()
        scheduler.step()
        torch_scheduler.step()
        assert scheduler.last_epoch == torch_scheduler.last_epoch == epoch
        assert scheduler.get_last_lr() == pytest.approx(torch_scheduler.get_last_lr(), rel=1e-12, abs=1e-15)
        assert opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)


PLATEAUS = [
    dict(),
    dict(factor=0.5, patience=2),
    dict(mode="max", factor=0.5, patience=1),
    dict(patience=1, threshold=0.05, threshold_mode="abs", cooldown=2),
    dict(factor=0.3, patience=0, cooldown=1, min_lr=0.002),
    dict(mode="max", patience=3, threshold=0.01, min_lr=1e-4),
]


@pytest.mark.parametrize("kwargs", PLATEAUS, ids=[str(k) for k in PLATEAUS])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    rng = np.random.default_rng(5)
    # a noisy metric that improves, then stalls in stretches
    metrics = np.concatenate([np.linspace(1.0, 0.5, 10), np.full(8, 0.5), 0.5 + 0.02 * rng.random(20),
                              np.linspace(0.5, 0.3, 5), np.full(12, 0.3)])
    opt = optim.SGD([make_param([0.0])], lr=0.1)
    scheduler = lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    torch_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
    changes = 0
    for metric in metrics:
        before = opt.lr
        scheduler.step(float(metric))
        torch_scheduler.step(float(metric))
        changes += opt.lr != before
        assert opt.lr == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        assert scheduler.get_last_lr() == pytest.approx(torch_scheduler.get_last_lr(), rel=1e-12)
        assert scheduler.num_bad_epochs == torch_scheduler.num_bad_epochs
    assert changes > 0  # each configuration really exercises a reduction
