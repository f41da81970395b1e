"""nanodl.optim: each optimizer against its update formula written out by hand here,
with both kernel tables; state_dict round trips; clipping; schedules.

The comparison with torch.optim itself lives in test_torch_optim.py (skipped when
torch is not installed).
"""
import io
import math

import numpy as np
import pytest

from nanodl import nn, optim
from nanodl.optim import lr_scheduler

STEPS = 12
# The optimizers whose step() takes the gradients as they are (optim.LBFGS, which drives a
# closure, has tests of its own in test_lbfgs.py).
GRADIENT_STEP = sorted(name for name, cls in optim.OPTIMIZERS.items() if not cls.__dict__.get("full_batch"))
SHAPES = [(3, 4), (5,)]
# (step, parameter index) pairs whose gradient is None: that parameter is skipped
# (and its own step count, which drives bias corrections, does not advance).
NO_GRAD = {(3, 1), (7, 1), (8, 1)}


# ---------------------------------------------------------------- fixtures and helpers
def make_param(array, dtype=np.float64):
    """A parameter: ``.data`` updated in place, ``.grad`` an array or None."""
    return nn.Parameter(np.array(array, dtype=dtype))


def initial_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in SHAPES]


def gradient_noise(seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(STEPS)]


def gradient(step, index, value, noise):
    """A gradient that changes every step and depends on where the parameter is."""
    if (step, index) in NO_GRAD:
        return None
    return noise[step][index] + 0.5 * value + 0.1 * math.sin(step)


# ---------------------------------------------------------------- the formulas, by hand
def reference_update(name, config, value, grad, state):
    """One update of one parameter, textbook style; ``state`` is this parameter's dict."""
    lr = config.get("lr")
    wd = config.get("weight_decay", 0.01 if name == "adamw" else 0.0)
    state["t"] = t = state.get("t", 0) + 1
    if name == "sgd":
        momentum = config.get("momentum", 0.0)
        d = grad + wd * value
        if momentum:
            state["buf"] = d.copy() if t == 1 else momentum * state["buf"] + d
            d = d + momentum * state["buf"] if config.get("nesterov") else state["buf"]
        return value - lr * d
    if name in ("adam", "adamw"):
        beta1, beta2 = config.get("betas", (0.9, 0.999))
        eps = config.get("eps", 1e-8)
        if name == "adamw":
            value = value * (1 - lr * wd)
        else:
            grad = grad + wd * value
        m = state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * grad
        v = state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * grad ** 2
        if config.get("amsgrad"):
            v = state["vmax"] = np.maximum(state.get("vmax", 0.0), v)
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        return value - lr * m_hat / (np.sqrt(v_hat) + eps)
    if name == "adagrad":
        eps = config.get("eps", 1e-10)
        decayed_lr = lr / (1 + (t - 1) * config.get("lr_decay", 0.0))
        grad = grad + wd * value
        total = state["sum"] = state.get("sum", config.get("initial_accumulator_value", 0.0)) + grad ** 2
        return value - decayed_lr * grad / (np.sqrt(total) + eps)
    if name == "rmsprop":
        alpha, eps = config.get("alpha", 0.99), config.get("eps", 1e-8)
        momentum = config.get("momentum", 0.0)
        grad = grad + wd * value
        v = state["v"] = alpha * state.get("v", 0.0) + (1 - alpha) * grad ** 2
        if config.get("centered"):
            mean = state["mean"] = alpha * state.get("mean", 0.0) + (1 - alpha) * grad
            v = v - mean ** 2
        scaled = grad / (np.sqrt(v) + eps)
        if momentum:
            scaled = state["buf"] = momentum * state.get("buf", 0.0) + scaled
        return value - lr * scaled
    raise AssertionError(name)


CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, momentum=0.5, weight_decay=0.05)),
    ("sgd", dict(lr=0.05, weight_decay=0.1)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, initial_accumulator_value=0.5, lr_decay=0.05)),
    ("adagrad", dict(lr=0.1, eps=1e-6, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, centered=True)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
]
CASE_IDS = [name + "-" + "-".join(f"{k}={v}" for k, v in config.items()) for name, config in CASES]


def run_optimizer(opt, params, noise, steps=range(STEPS)):
    for step in steps:
        for index, p in enumerate(params):
            p.grad = gradient(step, index, p.data, noise)
        opt.step()


# ---------------------------------------------------------------- the updates
@pytest.mark.parametrize("name, config", CASES, ids=CASE_IDS)
def test_matches_hand_formula(kernel_table, name, config):
    start, noise = initial_arrays(), gradient_noise()
    params = [make_param(a) for a in start]
    opt = optim.OPTIMIZERS[name](params, **config)
    expected = [a.copy() for a in start]
    states = [{} for _ in params]
    for step in range(STEPS):
        for index, p in enumerate(params):
            p.grad = gradient(step, index, p.data, noise)
            if p.grad is not None:
                expected[index] = reference_update(name, config, expected[index], p.grad, states[index])
        opt.step()
        for p, want in zip(params, expected):
            np.testing.assert_allclose(p.data, want, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} {config} step {step}")
    assert opt.step_count == STEPS
    moved = [np.abs(p.data - a).max() for p, a in zip(params, start)]
    assert min(moved) > 1e-4  # the run really moved both parameters


@pytest.mark.parametrize("name", GRADIENT_STEP)
def test_float32_stays_float32(kernel_table, name):
    p = make_param(np.linspace(-1, 1, 4), dtype=np.float32)
    assert p.data.dtype == np.float32
    opt = optim.OPTIMIZERS[name]([p], lr=0.01)
    for _ in range(3):
        p.grad = (p.data * 2 + 1).astype(np.float32)
        opt.step()
    assert p.data.dtype == np.float32
    assert all(a.dtype == np.float32 for arrays in opt.state_dict()["state"].values() for a in arrays)


def test_defaults_match_spec():
    assert optim.SGD().get_config() == dict(lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0)
    assert optim.Adam().get_config() == dict(lr=0.001, betas=(0.9, 0.999), eps=1e-8,
                                             weight_decay=0.0, amsgrad=False)
    assert optim.AdamW().get_config()["weight_decay"] == 0.01
    assert optim.Adagrad().get_config() == dict(lr=0.01, eps=1e-10, initial_accumulator_value=0.0,
                                                lr_decay=0.0, weight_decay=0.0)
    assert optim.RMSprop().get_config() == dict(lr=0.001, alpha=0.99, eps=1e-8, momentum=0.0,
                                                centered=False, weight_decay=0.0)
    assert repr(optim.SGD(lr=0.5)) == "SGD(lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0)"


def test_lr_change_between_steps_takes_effect(kernel_table):
    p = make_param([1.0, 2.0])
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, 1.9])
    opt.lr = 0.5
    p.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.4, 1.4])
    # Adam's update size is about lr; halving lr halves the next move.
    q, r = make_param([0.0]), make_param([0.0])
    adam_q, adam_r = optim.Adam([q], lr=0.1), optim.Adam([r], lr=0.1)
    for opt_, param in ((adam_q, q), (adam_r, r)):
        param.grad = np.array([1.0])
        opt_.step()
    adam_r.lr = 0.05
    for opt_, param in ((adam_q, q), (adam_r, r)):
        param.grad = np.array([1.0])
        opt_.step()
    np.testing.assert_allclose(q.data, [-0.2], rtol=1e-6)
    np.testing.assert_allclose(r.data, [-0.15], rtol=1e-6)


@pytest.mark.parametrize("name", GRADIENT_STEP)
def test_params_without_grad_are_skipped(kernel_table, name):
    a, b = make_param([1.0, -2.0]), make_param([3.0])
    opt = optim.OPTIMIZERS[name]([a, b], lr=0.1)
    a.grad, b.grad = np.array([0.5, 0.5]), None
    opt.step()
    assert not np.allclose(a.data, [1.0, -2.0])
    np.testing.assert_array_equal(b.data, [3.0])  # weight decay must not touch it either
    assert list(opt.state_dict()["param_steps"]) == [1, 0]
    # b's first real update is a first step (its own bias corrections), like a fresh optimizer's
    fresh = make_param([3.0])
    fresh_opt = optim.OPTIMIZERS[name]([fresh], lr=0.1)
    a.grad, b.grad, fresh.grad = None, np.array([0.25]), np.array([0.25])
    opt.step()
    fresh_opt.step()
    np.testing.assert_allclose(b.data, fresh.data, rtol=1e-14)


def test_zero_grad_sets_none_and_set_to_none_false_gives_new_zeros():
    a, b = make_param([1.0]), make_param([2.0, 3.0])
    shared = np.ones(1)
    a.grad, b.grad = shared, np.ones(2)
    opt = optim.SGD([a, b])
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    a.grad = shared
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, [0.0])
    np.testing.assert_array_equal(shared, [1.0])  # not zeroed in place


def test_params_none_then_set_params():
    opt = optim.Adam(lr=0.1)
    assert opt.params is None
    with pytest.raises(RuntimeError, match="set_params"):
        opt.step()
    p = make_param([1.0])
    opt.set_params(x for x in [p, p])  # a generator; the duplicate is dropped
    assert opt.params == [p]
    p.grad = np.array([1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9], rtol=1e-6)


def test_set_params_again_keeps_state_new_params_reset_it():
    p = make_param([1.0])
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.array([1.0])
    opt.step()
    opt.set_params([p])  # e.g. a second Model.fit
    assert list(opt.state_dict()["param_steps"]) == [1]
    opt.set_params([make_param([1.0]), p])
    assert list(opt.state_dict()["param_steps"]) == [0, 0]


def test_hyperparameter_only_state_loads_into_an_optimizer_with_params():
    saved = to_npz_and_back(optim.RMSprop(lr=0.02, centered=True).state_dict())  # no params yet
    p = make_param([1.0, 2.0])
    opt = optim.RMSprop([p])
    opt.load_state_dict(saved)
    assert opt.lr == 0.02 and opt.centered is True
    p.grad = np.array([1.0, 1.0])
    opt.step()
    assert list(opt.state_dict()["state"]) == ["square_avg", "grad_avg"]


def test_bad_params_arguments():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([])
    with pytest.raises(TypeError):
        optim.SGD([1.0, 2.0])
    with pytest.raises(TypeError, match="list"):
        optim.SGD(make_param([1.0]))


BAD_HYPERPARAMETERS = [
    (optim.SGD, dict(lr=-0.1), "-0.1"),
    (optim.SGD, dict(momentum=-0.5), "-0.5"),
    (optim.SGD, dict(weight_decay=-1e-4), "-0.0001"),
    (optim.SGD, dict(nesterov=True), "nesterov"),
    (optim.Adam, dict(lr=-1.0), "-1.0"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "index 0: 1.0"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "index 1: -0.1"),
    (optim.Adam, dict(eps=-1e-8), "-1e-08"),
    (optim.Adam, dict(weight_decay=-0.1), "-0.1"),
    (optim.Adam, dict(lr=float("nan")), "nan"),
    (optim.AdamW, dict(betas=(0.9, 1.5)), "1.5"),
    (optim.AdamW, dict(weight_decay=-0.01), "-0.01"),
    (optim.Adagrad, dict(lr=-0.01), "-0.01"),
    (optim.Adagrad, dict(lr_decay=-1.0), "-1.0"),
    (optim.Adagrad, dict(initial_accumulator_value=-1.0), "-1.0"),
    (optim.Adagrad, dict(eps=-1.0), "-1.0"),
    (optim.RMSprop, dict(alpha=-0.5), "-0.5"),
    (optim.RMSprop, dict(momentum=-0.9), "-0.9"),
    (optim.RMSprop, dict(eps=-1.0), "-1.0"),
    (optim.RMSprop, dict(weight_decay=-1.0), "-1.0"),
]


@pytest.mark.parametrize("cls, kwargs, shown", BAD_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{k}" for c, k, _ in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_raise_value_error(cls, kwargs, shown):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert cls.__name__ in str(info.value) and shown in str(info.value)


def test_setting_a_negative_lr_raises():
    opt = optim.SGD(lr=0.1)
    with pytest.raises(ValueError, match="SGD"):
        opt.lr = -1
    assert opt.lr == 0.1


def test_get_by_name():
    assert isinstance(optim.get("Adam"), optim.Adam)
    opt = optim.RMSprop(lr=0.5)
    assert optim.get(opt) is opt
    with pytest.raises(ValueError, match="sgd, adam, adamw, adagrad, rmsprop"):
        optim.get("adamax")


# ---------------------------------------------------------------- state_dict
def to_npz_and_back(state_dict):
    """Write a state dict with np.savez (no pickle) and read it back."""
    flat = {}
    for key, value in state_dict.items():
        if key == "state":
            for slot, arrays in value.items():
                for i, array in enumerate(arrays):
                    flat[f"state/{slot}/{i}"] = array
        else:
            flat[key] = value
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    buffer.seek(0)
    loaded, state = {}, {}
    with np.load(buffer, allow_pickle=False) as npz:
        for key in npz.files:
            if key.startswith("state/"):
                _, slot, i = key.split("/")
                state.setdefault(slot, {})[int(i)] = npz[key]
            else:
                loaded[key] = npz[key]
    loaded["state"] = {slot: [arrays[i] for i in sorted(arrays)] for slot, arrays in state.items()}
    return loaded


@pytest.mark.parametrize("name, config", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_identically(kernel_table, name, config):
    noise = gradient_noise()
    params = [make_param(a) for a in initial_arrays()]
    opt = optim.OPTIMIZERS[name](params, **config)
    run_optimizer(opt, params, noise, range(6))
    state = opt.state_dict()
    for value in state.values():  # plain data only
        assert isinstance(value, (int, float, str, bool, list, dict, np.ndarray))
    loaded = to_npz_and_back(state)

    twins = [make_param(p.data.copy()) for p in params]
    twin_opt = optim.OPTIMIZERS[name](twins)  # default hyper-parameters: load brings them
    twin_opt.load_state_dict(loaded)
    assert twin_opt.get_config() == opt.get_config()
    assert twin_opt.step_count == 6
    run_optimizer(opt, params, noise, range(6, STEPS))
    run_optimizer(twin_opt, twins, noise, range(6, STEPS))
    for p, twin in zip(params, twins):
        np.testing.assert_array_equal(p.data, twin.data)


def test_state_dict_is_a_copy():
    p = make_param([1.0, 2.0])
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.array([1.0, -1.0])
    opt.step()
    state = opt.state_dict()
    saved = state["state"]["exp_avg"][0].copy()
    opt.step()
    np.testing.assert_array_equal(state["state"]["exp_avg"][0], saved)
    # and loading does not alias the caller's arrays either
    opt.load_state_dict(state)
    opt.step()
    np.testing.assert_array_equal(state["state"]["exp_avg"][0], saved)


def test_state_dict_before_any_step_is_complete():
    p = make_param(np.ones((2, 2)))
    state = optim.Adagrad([p], initial_accumulator_value=0.3).state_dict()
    np.testing.assert_array_equal(state["state"]["sum"][0], np.full((2, 2), 0.3))
    assert list(state["param_steps"]) == [0]
    assert optim.SGD(lr=0.2).state_dict()["lr"] == 0.2  # without params: hyper-parameters only


def test_load_state_dict_mismatch_raises_and_changes_nothing():
    noise = gradient_noise()
    params = [make_param(a) for a in initial_arrays()]
    opt = optim.Adam(params, lr=0.01)
    run_optimizer(opt, params, noise, range(3))
    good = opt.state_dict()

    bad_shape = to_npz_and_back(good)
    bad_shape["lr"] = 0.5
    bad_shape["state"]["exp_avg"][1] = np.zeros(6)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad_shape)
    fewer = to_npz_and_back(good)
    fewer["param_steps"] = fewer["param_steps"][:1]
    with pytest.raises(ValueError, match="1 parameters"):
        opt.load_state_dict(fewer)
    missing = to_npz_and_back(good)
    missing["amsgrad"] = True  # needs a max_exp_avg_sq it does not have
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        opt.load_state_dict(missing)
    bad_value = to_npz_and_back(good)
    bad_value["betas"] = [0.9, 1.0]
    with pytest.raises(ValueError, match="beta"):
        opt.load_state_dict(bad_value)
    with pytest.raises(ValueError, match="sgd"):
        opt.load_state_dict(optim.SGD(params).state_dict())

    # Unchanged: it continues exactly like an untouched copy.
    assert opt.lr == 0.01
    twins = [make_param(p.data.copy()) for p in params]
    twin_opt = optim.Adam(twins, lr=0.01)
    twin_opt.load_state_dict(good)
    run_optimizer(opt, params, noise, range(3, 6))
    run_optimizer(twin_opt, twins, noise, range(3, 6))
    for p, twin in zip(params, twins):
        np.testing.assert_array_equal(p.data, twin.data)


# ---------------------------------------------------------------- clip_grad_norm
def test_clip_grad_norm_scales_to_max_norm():
    a, b, c = make_param(np.zeros(2)), make_param(np.zeros((2, 2))), make_param(np.zeros(1))
    a.grad = np.array([3.0, 0.0])
    b.grad = np.array([[0.0, 4.0], [0.0, 12.0]])
    total = optim.clip_grad_norm([a, b, c], max_norm=6.5)
    assert isinstance(total, float) and total == pytest.approx(13.0, rel=1e-15)
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3.0 * coef, 0.0], rtol=1e-15)
    np.testing.assert_allclose(b.grad, [[0.0, 4.0 * coef], [0.0, 12.0 * coef]], rtol=1e-15)
    assert c.grad is None
    assert math.sqrt(np.sum(a.grad ** 2) + np.sum(b.grad ** 2)) == pytest.approx(6.5, rel=1e-6)


def test_clip_grad_norm_below_max_leaves_grads_alone():
    a = make_param(np.zeros(2))
    grad = np.array([0.3, 0.4])
    a.grad = grad
    assert optim.clip_grad_norm([a], 1.0) == pytest.approx(0.5)
    assert a.grad is grad
    np.testing.assert_array_equal(grad, [0.3, 0.4])


def test_clip_grad_norm_shared_grad_array_is_scaled_once():
    a, b = make_param(np.zeros(2)), make_param(np.zeros(2))
    shared = np.array([3.0, 4.0])
    a.grad = b.grad = shared
    total = optim.clip_grad_norm(iter([a, b]), max_norm=1.0)
    assert total == pytest.approx(math.sqrt(50.0))
    coef = 1.0 / (math.sqrt(50.0) + 1e-6)
    np.testing.assert_allclose(a.grad, shared * coef, rtol=1e-15)
    np.testing.assert_allclose(b.grad, shared * coef, rtol=1e-15)
    np.testing.assert_array_equal(shared, [3.0, 4.0])


def test_clip_grad_norm_inf_norm_and_float32():
    a = make_param(np.zeros(3))
    a.grad = np.array([1.0, -5.0, 2.0], dtype=np.float32)
    assert optim.clip_grad_norm([a], 2.5, norm_type=math.inf) == 5.0
    assert a.grad.dtype == np.float32
    np.testing.assert_allclose(a.grad, np.array([1.0, -5.0, 2.0]) * 2.5 / (5.0 + 1e-6), rtol=1e-6)
    assert optim.clip_grad_norm([make_param([1.0])], 1.0) == 0.0  # no gradients at all
    with pytest.raises(ValueError):
        optim.clip_grad_norm([a], 1.0, norm_type=1)


# ---------------------------------------------------------------- schedules
def schedule(make, epochs=50, lr=0.1):
    opt = optim.SGD([make_param([0.0])], lr=lr)
    scheduler = make(opt)
    lrs = [opt.lr]
    for _ in range(epochs):
        opt.step()
        scheduler.step()
        lrs.append(opt.lr)
        assert scheduler.get_last_lr() == [opt.lr]
    return scheduler, np.array(lrs)


def test_step_lr():
    scheduler, lrs = schedule(lambda opt: lr_scheduler.StepLR(opt, step_size=7, gamma=0.5))
    epochs = np.arange(51)
    np.testing.assert_allclose(lrs, 0.1 * 0.5 ** (epochs // 7), rtol=1e-12)
    assert scheduler.base_lrs == [0.1] and scheduler.last_epoch == 50


def test_exponential_lr():
    _, lrs = schedule(lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.9))
    np.testing.assert_allclose(lrs, 0.1 * 0.9 ** np.arange(51), rtol=1e-12)


@pytest.mark.parametrize("T_max, eta_min", [(10, 0.0), (7, 0.001), (50, 0.01)])
def test_cosine_annealing_lr(T_max, eta_min):
    _, lrs = schedule(lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=T_max, eta_min=eta_min))
    epochs = np.arange(51)
    closed_form = eta_min + (0.1 - eta_min) * (1 + np.cos(np.pi * epochs / T_max)) / 2
    np.testing.assert_allclose(lrs, closed_form, rtol=1e-12, atol=1e-14)


def test_lambda_lr():
    _, lrs = schedule(lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)))
    np.testing.assert_allclose(lrs, 0.1 / (1 + np.arange(51)), rtol=1e-12)


def test_recursive_schedules_follow_a_manual_change():
    opt = optim.SGD([make_param([0.0])], lr=1.0)
    scheduler = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    scheduler.step()
    opt.lr = 10.0
    scheduler.step()
    assert opt.lr == 5.0 and scheduler.get_last_lr() == [5.0]


def test_scheduler_state_dict_round_trip():
    _, lrs = schedule(lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=9), epochs=20)
    opt = optim.SGD([make_param([0.0])], lr=0.1)
    first = lr_scheduler.CosineAnnealingLR(opt, T_max=9)
    for _ in range(8):
        first.step()
    saved = first.state_dict()
    opt2 = optim.SGD([make_param([0.0])], lr=opt.lr)
    second = lr_scheduler.CosineAnnealingLR(opt2, T_max=9)
    second.load_state_dict(saved)
    for epoch in range(9, 21):
        second.step()
        assert opt2.lr == pytest.approx(lrs[epoch], rel=1e-12)


def test_scheduler_bad_arguments():
    opt = optim.SGD(lr=0.1)
    with pytest.raises(ValueError):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError):
        lr_scheduler.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError):
        lr_scheduler.StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="min, max"):
        lr_scheduler.ReduceLROnPlateau(opt, mode="lowest")
    with pytest.raises(ValueError, match="factor"):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.5)


def plateau(metrics, **kwargs):
    opt = optim.SGD(lr=1.0)
    scheduler = lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    lrs = []
    for metric in metrics:
        scheduler.step(metric)
        lrs.append(opt.lr)
        assert scheduler.get_last_lr() == [opt.lr]
    return lrs


def test_reduce_lr_on_plateau_patience():
    # best 5 at epoch 1; epochs 2, 3, 4 are no better; patience 2 -> cut after the 3rd bad one
    lrs = plateau([5.0, 5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0], factor=0.5, patience=2)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_reduce_lr_on_plateau_threshold_cooldown_min_lr():
    # rel threshold 0.1: 9.5 is not 10% better than 10
    assert plateau([10.0, 9.5, 9.5], patience=1, threshold=0.1) == [1.0, 1.0, 0.1]
    assert plateau([10.0, 9.5, 9.5], patience=1, threshold=0.1, threshold_mode="abs") == [1.0, 1.0, 1.0]
    # cooldown 2: two epochs after a cut are not counted
    assert plateau([1.0] * 8, patience=0, cooldown=2, factor=0.5) == [
        1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    # min_lr floors the rate
    assert plateau([1.0] * 6, patience=0, factor=0.1, min_lr=0.005) == pytest.approx(
        [1.0, 0.1, 0.01, 0.005, 0.005, 0.005], rel=1e-15)


def test_reduce_lr_on_plateau_max_mode():
    assert plateau([0.5, 0.6, 0.6, 0.59, 0.7], mode="max", patience=1, factor=0.5) == [
        1.0, 1.0, 1.0, 0.5, 0.5]
