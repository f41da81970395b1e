"""Model.find_lr: the sweep, its suggestion, the sharpness beside it, and that it
leaves the model, its optimizer and nanodl's generator exactly as they were."""
import copy
import sys

import numpy as np
import pytest

import nanodl as nd
from nanodl import losses, nn, optim
from nanodl.autograd.functional import hessian_eigenvalues
from nanodl.nn import LRFinder
from nanodl.nn.lr_finder import _steepest


def blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def classifier(optimizer, seed=0, dropout=False, batchnorm=False, float64=False):
    nd.manual_seed(seed)
    layers = [nn.Dense(8, activation="tanh", input_dim=4)]
    layers += [nn.BatchNorm()] if batchnorm else []
    layers += [nn.Dropout(0.2)] if dropout else []
    layers += [nn.Dense(3, activation="softmax")]
    model = nn.Sequential(layers)
    model.build((None, 4))
    if float64:
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


OPTIMIZERS = {
    "adam": lambda: optim.Adam(lr=0.01, amsgrad=True),
    "sgd-momentum": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
}


def everything(model):
    """Weights, buffers and the optimizer's state_dict, as host copies."""
    state = model.optimizer.state_dict()
    flat = {f"w.{k}": v for k, v in model.state_dict().items()}
    for key, value in state.items():
        if key == "state":
            for slot, arrays in value.items():
                flat.update({f"s.{slot}.{i}": a for i, a in enumerate(arrays)})
        else:
            flat[key] = np.array(value)
    return flat


def assert_bit_identical(before, after):
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype, key
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_sweep_leaves_weights_optimizer_state_and_the_generator_as_they_were(name):
    x, y = blobs()
    model, twin = classifier(OPTIMIZERS[name]()), classifier(OPTIMIZERS[name]())
    nd.manual_seed(1)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    nd.manual_seed(1)
    twin.fit(x, y, epochs=2, batch_size=16, verbose=0)
    arrays = [p.data for p in model.parameters()]
    moments = [state for state in model.optimizer._state]
    before = everything(model)
    stream = nd.random.generator().bit_generator.state
    finder = model.find_lr(x, y, steps=30, batch_size=16)
    assert nd.random.generator().bit_generator.state == stream  # nanodl's generator not advanced
    assert_bit_identical(before, everything(model))
    assert all(a is p.data for a, p in zip(arrays, model.parameters()))  # the same arrays
    assert all(a is b for a, b in zip(moments, model.optimizer._state))
    assert model.optimizer.lr == twin.optimizer.lr and model.optimizer.step_count == twin.optimizer.step_count
    assert len(finder.lrs) > 5
    # Both go on training the same, bit for bit.
    nd.manual_seed(3)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    nd.manual_seed(3)
    twin.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_bit_identical(everything(twin), everything(model))


def test_a_model_never_fit_is_left_unfit_and_trains_as_its_twin():
    x, y = blobs()
    model, twin = classifier("adam"), classifier("adam")
    model.find_lr(x, y, steps=10)
    assert model.optimizer.params is None and model._plan_cache is None
    nd.manual_seed(2)
    model.fit(x, y, epochs=1, verbose=0)
    nd.manual_seed(2)
    twin.fit(x, y, epochs=1, verbose=0)
    assert_bit_identical(everything(twin), everything(model))


def test_training_flags_buffers_and_the_plan_cache_are_unharmed():
    x, y = blobs()
    model = classifier(optim.SGD(lr=0.1), dropout=True, batchnorm=True)
    model.fit(x, y, epochs=1, verbose=0)
    model.eval()
    model.layers[2].train()  # a mixed state: only the dropout layer in training mode
    flags = [m.training for m in model.modules()]
    plan = model._plan_cache
    before = everything(model)
    finder = model.find_lr(x, y, steps=20, batch_size=16)
    assert [m.training for m in model.modules()] == flags
    assert model._plan_cache is plan
    assert_bit_identical(before, everything(model))  # BatchNorm's moving statistics too
    assert np.isfinite(finder.sharpness["start"])


def test_lrs_losses_and_suggestion():
    x, y = blobs()
    model = classifier(optim.SGD(lr=0.1))
    finder = model.find_lr(x, y, start_lr=1e-4, end_lr=1.0, steps=40, batch_size=32, sharpness=False)
    assert isinstance(finder, LRFinder) and finder.sharpness is None
    expected = 1e-4 * (1e4 ** (np.arange(40) / 39))
    np.testing.assert_allclose(finder.lrs, expected[:len(finder.lrs)], rtol=1e-12)
    assert len(finder.losses) == len(finder.lrs) == len(finder.raw_losses)
    assert np.isfinite(finder.losses).all()
    assert finder.suggestion in finder.lrs
    # the suggestion is where the smoothed loss falls fastest against log(lr), before its minimum
    stop = int(np.argmin(finder.losses)) + 1
    slopes = np.gradient(finder.losses[:stop], np.log(finder.lrs[:stop]))
    assert finder.suggestion == finder.lrs[int(np.argmin(slopes))]
    # the smoothed losses are the bias-corrected moving average of the raw ones
    average = 0.0
    for i, raw in enumerate(finder.raw_losses):
        average = 0.98 * average + 0.02 * raw
        assert abs(finder.losses[i] - average / (1 - 0.98 ** (i + 1))) < 1e-12


def test_the_sweep_stops_on_divergence():
    x, y = blobs()
    model = classifier(optim.SGD(lr=0.1))
    finder = model.find_lr(x, y, start_lr=1e-2, end_lr=1e6, steps=100, batch_size=len(x), sharpness=False)
    assert finder.diverged and len(finder.lrs) < 100
    assert finder.losses[-1] > 4 * finder.losses.min() or not np.isfinite(finder.raw_losses).all()
    assert finder.suggestion < finder.lrs[-1]


def test_steepest_on_a_known_curve():
    lrs = np.logspace(-4, 0, 9)
    smoothed = np.array([2.0, 2.0, 1.9, 1.5, 0.8, 0.5, 0.45, 0.9, 3.0])
    assert _steepest(lrs, smoothed) == lrs[3]  # the slope at 3 and 4: (0.8-1.9)/2 vs (0.5-1.5)/2
    assert _steepest(lrs[:1], smoothed[:1]) == lrs[0]
    assert _steepest(lrs, np.linspace(1, 5, 9)) == lrs[0]  # rising from the start


def test_sharpness_is_the_top_hessian_eigenvalue_on_the_first_batch():
    x, y = blobs()
    model = classifier(optim.SGD(lr=0.1), float64=True)
    finder = model.find_lr(x, y, start_lr=1e-3, end_lr=1.0, steps=25, batch_size=len(x))
    loss = losses.SparseCategoricalCrossentropy()
    xs, ys = nd.tensor(x.astype(np.float64)), nd.tensor(y)
    exact, _ = hessian_eigenvalues(lambda: loss(model(xs), ys), model.parameters())
    assert finder.sharpness["start"] == pytest.approx(exact[0], rel=1e-6)
    assert finder.sharpness["stable_lr"] == 2.0 / finder.sharpness["start"]
    assert np.isfinite(finder.sharpness["end"]) and finder.sharpness["end"] != finder.sharpness["start"]
    assert "stable_lr" in repr(finder)


def test_full_batch_gradient_descent_converges_below_the_stable_rate_and_diverges_far_above():
    x, y = blobs()
    model = classifier(optim.SGD(lr=0.1), float64=True)
    stable = model.find_lr(x, y, steps=5, batch_size=len(x)).sharpness["stable_lr"]
    results = {}
    for multiple in (0.5, 20.0):
        twin = classifier(optim.SGD(lr=multiple * stable), float64=True)
        history = twin.fit(x, y, epochs=30, batch_size=len(x), shuffle=False, verbose=0)
        results[multiple] = history.history["loss"]
    assert np.all(np.diff(results[0.5]) < 0)  # a stable rate: the loss falls every step
    assert not np.all(np.diff(results[20.0]) < 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_lr=0), "find_lr: start_lr must be a positive finite number, got 0"),
    (dict(end_lr=float("inf")), "find_lr: end_lr must be a positive finite number, got inf"),
    (dict(start_lr=1.0, end_lr=0.1), "find_lr: end_lr must be larger than start_lr"),
    (dict(steps=1), "find_lr: steps must be an integer >= 2, got 1"),
    (dict(batch_size=0), "find_lr: batch_size must be a positive integer, got 0"),
    (dict(sharpness="yes"), "find_lr: sharpness must be True or False, got 'yes'"),
])
def test_bad_arguments(kwargs, message):
    x, y = blobs()
    model = classifier(optim.SGD())
    before = everything(model)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.find_lr(x, y, **kwargs)
    assert_bit_identical(before, everything(model))


def test_find_lr_needs_compile_and_matching_lengths():
    x, y = blobs()
    model = nn.Sequential([nn.Dense(3, activation="softmax", input_dim=4)])
    with pytest.raises(RuntimeError, match="find_lr: call compile"):
        model.find_lr(x, y)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="find_lr: x and y must hold the same number of samples"):
        model.find_lr(x, y[:-1])


def test_plot_saves_a_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = blobs()
    finder = classifier(optim.SGD()).find_lr(x, y, steps=20)
    path = tmp_path / "lr.png"
    figure = finder.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any("2 / lambda_max" in label for label in labels)
    assert any("steepest" in label for label in labels)


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch):
    x, y = blobs()
    finder = classifier(optim.SGD()).find_lr(x, y, steps=5, sharpness=False)
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"LRFinder.plot needs matplotlib.*nanodl\[plot\]"):
        finder.plot("never.png")


def test_a_captured_fit_goes_on_as_if_no_sweep_happened():
    x, y = blobs()
    model, twin = classifier("adam"), classifier("adam")
    for m in (model, twin):
        nd.manual_seed(4)
        m.fit(x, y, epochs=1, batch_size=16, verbose=0, capture=True)
    arrays = [p.data for p in model.parameters()]  # views of one flat array, on the native table
    model.find_lr(x, y, steps=15, batch_size=16)
    assert all(a is p.data for a, p in zip(arrays, model.parameters()))
    for m in (model, twin):
        nd.manual_seed(5)
        m.fit(x, y, epochs=2, batch_size=16, verbose=0, capture=True)
    assert_bit_identical(everything(twin), everything(model))


def test_an_optimizer_whose_step_needs_a_closure_is_refused_by_name():
    class ClosureOnly(optim.SGD):
        def step(self, closure):
            return closure()

    x, y = blobs()
    model = classifier(ClosureOnly(lr=0.1))
    with pytest.raises(ValueError, match="find_lr: .*ClosureOnly.step needs closure"):
        model.find_lr(x, y, steps=5)


def test_a_subclassed_model_with_a_weight_penalty():
    from nanodl import regularizers

    class TwoLayer(nn.Model):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Dense(6, activation="tanh", input_dim=4,
                                   kernel_regularizer=regularizers.l2(0.1))
            self.out = nn.Dense(1, input_dim=6)

        def forward(self, x):
            return self.out(self.hidden(x))

    x, _ = blobs(n=48)
    y = x[:, :1] * x[:, 1:2]
    nd.manual_seed(0)
    model = TwoLayer()
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    model.compile(optimizer=optim.SGD(lr=0.1, momentum=0.5), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    before = everything(model)
    finder = model.find_lr(x, y, start_lr=1e-3, end_lr=1.0, steps=20, batch_size=len(x))
    assert_bit_identical(before, everything(model))
    xs, ys = nd.tensor(x.astype(np.float64)), nd.tensor(y.astype(np.float64))
    penalised = lambda: losses.mse(model(xs), ys) + model.regularization_loss()  # noqa: E731
    exact, _ = hessian_eigenvalues(penalised, model.parameters())
    assert finder.sharpness["start"] == pytest.approx(exact[0], rel=1e-6)


def test_lbfgs_sweeps_full_batch_and_its_memory_is_restored():
    x, y = blobs(n=40)
    model = classifier("lbfgs", float64=True)
    model.fit(x, y, epochs=2, verbose=0)
    memory = copy.deepcopy(model.optimizer._memory)
    before = everything(model)
    finder = model.find_lr(x, y, start_lr=1e-3, end_lr=1.0, steps=6, batch_size=8)
    assert_bit_identical(before, everything(model))
    assert_nested_equal(memory, model.optimizer._memory)
    # full batch, as fit trains LBFGS: the first loss is the loss of the whole set
    assert finder.raw_losses[0] == pytest.approx(model.evaluate(x, y), rel=1e-12)


def assert_nested_equal(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_nested_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for left, right in zip(a, b):
            assert_nested_equal(left, right)
    else:
        np.testing.assert_array_equal(a, b)
