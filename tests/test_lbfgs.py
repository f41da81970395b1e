"""optim.LBFGS: iterate for iterate against torch.optim.LBFGS (float64, with and without
the strong Wolfe line search), known optima without torch, saving and resuming its state."""
import numpy as np
import pytest

import nanodl as nd
from nanodl import nn, optim

STEPS = 20


# ---------------------------------------------------------------- problems, written twice
def softmax_regression(lib, params, rng_seed=0):
    """Mean cross-entropy of a linear softmax classifier plus an L2 term: convex, so two
    correct implementations stay within round-off of each other for many iterations."""
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((60, 5))
    targets = np.eye(3)[rng.integers(0, 3, 60)]
    if lib == "torch":
        import torch
        x, targets = torch.tensor(x), torch.tensor(targets)
        log_softmax = lambda z: torch.log_softmax(z, dim=1)  # noqa: E731
    else:
        x, targets = nd.tensor(x), nd.tensor(targets)
        log_softmax = lambda z: nd.log_softmax(z, axis=1)  # noqa: E731
    kernel, bias = params
    return lambda: (-(targets * log_softmax(x @ kernel + bias)).sum(1)).mean() + \
        0.01 * (kernel * kernel).sum()


def rosenbrock(lib, params):
    (w,) = params
    return lambda: ((1 - w[:-1]) ** 2 + 100 * (w[1:] - w[:-1] ** 2) ** 2).sum()


PROBLEMS = {
    "softmax-regression": (softmax_regression, lambda rng: [0.1 * rng.standard_normal((5, 3)),
                                                            np.zeros(3)], {}),
    # lr=0.5: with lr=1 and no line search, torch's own iterates move by 1e-6 when the
    # start moves by one ulp (an ill-conditioned run), which no second implementation can match.
    "rosenbrock": (rosenbrock, lambda rng: [np.array([-1.2, 1.0])], {"max_iter": 5, "lr": 0.5}),
}


def nanodl_run(problem, line_search_fn, steps=STEPS, **options):
    make_loss, make_init, settings = PROBLEMS[problem]
    params = [nn.Parameter(a) for a in make_init(np.random.default_rng(0))]
    loss_fn = make_loss("nanodl", params)

    def closure():
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        return loss
    opt = optim.LBFGS(params, line_search_fn=line_search_fn, **dict(settings, **options))
    trace = []
    for _ in range(steps):
        loss = opt.step(closure)
        trace.append((float(loss.item()), [p.data.copy() for p in params]))
    return trace, opt, params, closure


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_iterates_match_torch(problem, line_search_fn):
    torch = pytest.importorskip("torch")
    make_loss, make_init, settings = PROBLEMS[problem]
    ours, opt, _, _ = nanodl_run(problem, line_search_fn)
    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
              for a in make_init(np.random.default_rng(0))]
    loss_fn = make_loss("torch", params)
    reference = torch.optim.LBFGS(params, line_search_fn=line_search_fn, **settings)

    def closure():
        reference.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    for step, (our_loss, our_params) in enumerate(ours):
        their_loss = float(reference.step(closure).item())
        np.testing.assert_allclose(our_loss, their_loss, rtol=1e-8, err_msg=f"loss at step {step}")
        for mine, theirs in zip(our_params, params):
            np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-8, atol=1e-12,
                                       err_msg=f"parameters after step {step}")
    state = reference.state[params[0]]
    assert (opt.state["n_iter"], opt.state["func_evals"]) == (state["n_iter"], state["func_evals"])
    assert opt.state["n_iter"] > STEPS  # several iterations per step: the history was used


# ---------------------------------------------------------------- without torch
def test_finds_the_rosenbrock_minimum():
    trace, opt, (w,), _ = nanodl_run("rosenbrock", "strong_wolfe", steps=5, max_iter=50, lr=1.0,
                                     tolerance_change=1e-14)
    np.testing.assert_allclose(w.data, [1.0, 1.0], atol=1e-6)
    assert trace[-1][0] < 1e-12


def test_solves_a_quadratic():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((6, 6))
    a, b = m @ m.T + 6 * np.eye(6), rng.standard_normal(6)
    w = nn.Parameter(np.zeros(6))

    def closure():  # f(w) = w'Aw/2 - b'w, gradient Aw - b, minimum at A^-1 b
        w.grad = a @ w.data - b
        return 0.5 * w.data @ a @ w.data - b @ w.data
    opt = optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                      tolerance_change=0)
    opt.step(closure)
    np.testing.assert_allclose(w.data, np.linalg.solve(a, b), rtol=1e-9)
    assert opt.state["n_iter"] < 40  # quasi-Newton: far fewer than gradient descent would take


def test_step_returns_the_first_loss_and_stops_at_a_minimum():
    w = nn.Parameter(np.array([2.0]))
    calls = []

    def closure():
        calls.append(float(w.data[0]))
        w.grad = 2 * w.data
        return nd.tensor(float(w.data[0] ** 2))
    opt = optim.LBFGS([w])
    assert opt.step(closure).item() == 4.0
    assert abs(w.data[0]) < 1e-7
    calls.clear()
    w.data[:] = 0.0
    opt.step(closure)  # the gradient is already 0: one evaluation, no move
    assert calls == [0.0] and w.data[0] == 0.0


def test_max_eval_limits_the_closure_calls():
    trace, opt, _, _ = nanodl_run("softmax-regression", "strong_wolfe", steps=1, max_iter=100,
                                  max_eval=7)
    assert opt.state["func_evals"] <= 7 + 25  # the last line search may finish its bracket
    _, capped, _, _ = nanodl_run("softmax-regression", None, steps=1, max_iter=100, max_eval=7)
    assert capped.state["func_evals"] == 7


def test_compile_name_and_defaults():
    opt = optim.get("lbfgs")
    assert isinstance(opt, optim.LBFGS) and "lbfgs" in optim.OPTIMIZERS
    assert opt.get_config() == {"lr": 1.0, "max_iter": 20, "max_eval": 25, "tolerance_grad": 1e-7,
                                "tolerance_change": 1e-9, "history_size": 100,
                                "line_search_fn": None}
    assert optim.LBFGS(max_iter=8).max_eval == 10


@pytest.mark.parametrize("bad, match", [({"line_search_fn": "armijo"}, "line_search_fn"),
                                        ({"max_iter": 0}, "max_iter"),
                                        ({"history_size": 0}, "history_size"),
                                        ({"lr": -1.0}, "learning rate")])
def test_bad_options_raise_value_error_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        optim.LBFGS(**bad)


def test_step_without_a_closure_says_what_it_needs():
    opt = optim.LBFGS([nn.Parameter(np.zeros(2))])
    with pytest.raises(TypeError, match="closure"):
        opt.step()


# ---------------------------------------------------------------- keeping the state
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_state_saves_and_resumes_exactly(tmp_path, line_search_fn):
    """k steps, save the parameters and the optimizer state, load them into fresh
    objects, m more steps: the same iterates as k + m steps in one go."""
    whole, _, _, _ = nanodl_run("softmax-regression", line_search_fn, steps=5, max_iter=3)
    _, opt, params, _ = nanodl_run("softmax-regression", line_search_fn, steps=2, max_iter=3)
    state = opt.state_dict()
    assert state["old_dirs"].shape == (len(opt.state["old_dirs"]), 18)
    nd.save(state, tmp_path / "lbfgs.npz")
    nd.save({str(i): p.data for i, p in enumerate(params)}, tmp_path / "params.npz")

    _, _, fresh, closure = nanodl_run("softmax-regression", line_search_fn, steps=0)
    for i, p in enumerate(fresh):
        p.data[...] = nd.load(tmp_path / "params.npz")[str(i)]
    resumed = optim.LBFGS(fresh)
    resumed.load_state_dict(nd.load(tmp_path / "lbfgs.npz"))
    assert resumed.get_config() == opt.get_config()
    for step in range(2, 5):
        loss = float(resumed.step(closure).item())
        assert loss == whole[step][0]
        for mine, expected in zip(fresh, whole[step][1]):
            np.testing.assert_array_equal(mine.data, expected)


def test_load_state_dict_checks_before_changing_anything():
    _, opt, params, _ = nanodl_run("softmax-regression", None, steps=1)
    state = opt.state_dict()
    other = optim.LBFGS([nn.Parameter(np.zeros(4))])
    with pytest.raises(ValueError, match="'d' has shape"):
        other.load_state_dict(state)
    assert other.state == {"func_evals": 0, "n_iter": 0}
    with pytest.raises(ValueError, match="'adam'"):
        other.load_state_dict(optim.Adam(params).state_dict())


# ---------------------------------------------------------------- compile(optimizer='lbfgs')
def regression_data(n=50):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 2))
    return x, np.sin(2 * x[:, :1]) + x[:, 1:] ** 2


def small_model(seed=0):
    nd.manual_seed(seed)
    nd.set_default_dtype("float64")
    try:
        return nn.Sequential([nn.Dense(8, activation="tanh", input_dim=2,
                                       kernel_regularizer=nd.regularizers.l2(1e-3)),
                              nn.Dense(1, input_dim=8)])
    finally:
        nd.set_default_dtype("float32")


def test_fit_with_lbfgs_is_one_closure_step_per_epoch_over_every_sample():
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer="lbfgs", loss="mse")
    assert isinstance(model.optimizer, optim.LBFGS)
    model.build((None, 2))
    sizes = []
    model.layers[0].register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    full = [size for size in sizes if size != 2]  # fit builds on a 2-sample probe first
    assert set(full) == {len(x)}  # full batch, whatever batch_size says
    assert len(full) == model.optimizer.state["func_evals"] > 3  # several evaluations per epoch
    assert model.optimizer.step_count == 3 and len(history.history["loss"]) == 3

    # The same by hand: optim.LBFGS on the same closure (forward, loss + penalty, backward).
    twin = small_model()
    twin.build((None, 2))
    opt = optim.LBFGS(twin.parameters())
    xt, yt = nd.tensor(x), nd.tensor(y)
    losses = []

    def closure():
        twin.zero_grad()
        loss = nd.losses.mse(twin(xt), yt) + twin.regularization_loss()
        loss.backward()
        return loss
    for _ in range(3):
        losses.append(opt.step(closure).item())
    # (round-off grows along an L-BFGS trajectory on a network: 1e-17 after the first
    # epoch, 5e-10 after the third)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-9)
    for mine, theirs in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-7, atol=1e-9)
    assert model.evaluate(x, y) < losses[0] / 10


def test_fit_with_lbfgs_and_sample_weights_trains_on_the_weighted_loss():
    x, y = regression_data()
    weights = np.r_[np.zeros(25), np.ones(25)]
    model = small_model()
    model.compile(optimizer=optim.LBFGS(line_search_fn="strong_wolfe"), loss="mse")
    model.fit(x, y, epochs=2, verbose=0, sample_weight=weights)
    trained_half = model.evaluate(x[25:], y[25:])
    ignored_half = model.evaluate(x[:25], y[:25])
    assert trained_half < ignored_half


def test_pinn_example_second_stage_polishes_the_adam_fit():
    """examples/pinn_poisson.py: L-BFGS after Adam lowers the error against the exact
    solution by far more than the Adam steps before it did."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "pinn_poisson.py"
    spec = importlib.util.spec_from_file_location("pinn_poisson_example", path)
    pinn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pinn)
    net, history = pinn.train(steps=300, log=lambda line: None)
    after_adam = pinn.relative_error(net)
    refined = pinn.refine(net, iterations=60, report_every=30, log=lambda line: None)
    assert [it for it, _, _ in refined] == [30, 60]
    assert refined[-1][2] == pinn.relative_error(net) < after_adam / 5, (after_adam, refined)


def test_fit_capture_true_with_lbfgs_runs_the_eager_closure_step():
    x, y = regression_data()
    results = []
    for capture in (False, True):
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=2), nn.Dense(1, input_dim=8)])
        model.compile(optimizer="lbfgs", loss="mse")  # no penalties: capture would apply
        results.append(model.fit(x, y, epochs=2, verbose=0, capture=capture).history["loss"])
    assert results[0] == results[1]


def test_a_model_compiled_with_lbfgs_saves_and_resumes(tmp_path):
    """k epochs, model.save (with the optimizer), load_model(compile=True), m more epochs:
    the weights of k + m epochs in one fit."""
    x, y = regression_data()

    def fresh():
        nd.manual_seed(0)
        nd.set_default_dtype("float64")
        try:
            model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=2), nn.Dense(1, input_dim=8)])
        finally:
            nd.set_default_dtype("float32")
        model.compile(optim.LBFGS(max_iter=5, line_search_fn="strong_wolfe"), "mse")
        return model
    whole = fresh()
    whole.fit(x, y, epochs=5, verbose=0, shuffle=False)
    first = fresh()
    first.fit(x, y, epochs=2, verbose=0, shuffle=False)
    first.save(tmp_path / "model.npz")
    resumed = nd.load_model(tmp_path / "model.npz", compile=True)
    assert resumed.optimizer.get_config() == first.optimizer.get_config()
    assert len(resumed.optimizer.state["old_dirs"]) == len(first.optimizer.state["old_dirs"]) > 0
    resumed.fit(x, y, initial_epoch=2, epochs=5, verbose=0, shuffle=False)
    for mine, expected in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_array_equal(mine, expected)
