"""A captured step never replays a stale recording (issue 18, item 2).

Each test changes something a recording depends on after the capture (a frozen
parameter, a new or removed layer, an activation, a hook, a hyperparameter, the
loss's reduction) and checks that the captured step does what the one eager step
(``nn.plan._Plan.step``) does, bit for bit; and that a step shared by threads and
the arrays it returns are safe.
"""
import threading

import numpy as np
import pytest

import nanodl as nd
from nanodl import callbacks, losses, nn, optim
from nanodl.capture import CapturedStep


def data(n=32, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


def twins(make, seed=1):
    models = []
    for _ in range(2):
        nd.manual_seed(seed)
        models.append(make())
    return models


def mlp(head=None, units=3):
    return nn.Sequential([nn.Dense(16, activation="tanh", input_dim=6),
                          nn.Dense(8, activation="tanh", input_dim=16),
                          nn.Dense(units, activation=head, input_dim=8)])


def eager_steps(model, loss_fn, opt, x, y, count):
    """The hand-written eager step the CapturedStep docstring shows."""
    values = []
    for _ in range(count):
        out = model(nd.Tensor(x))
        loss = loss_fn(out, y)
        for p in list(model.parameters()) + list(opt.params):
            p.grad = None
        loss.backward()
        opt.step()
        values.append(float(loss.data))
    return values


def assert_same_weights(a, b):
    for (name, first), second in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(first, second, err_msg=name)


XENT = losses.SparseCategoricalCrossentropy(from_logits=True)


def test_a_standalone_step_trains_on_the_compiled_reduction(kernel_table):
    # MeanSquaredError(reduction='sum') with sample weights: the sum of weight x loss,
    # as fit's step computes it (the old standalone step took the mean: 0.764 vs 6.11)
    x, _ = data()
    target = np.random.default_rng(1).standard_normal((32, 3)).astype(np.float32)
    weight = np.linspace(0.5, 2.0, 32, dtype=np.float32)
    fitted, captured = twins(mlp)
    fitted.compile(optimizer=optim.SGD(lr=0.01), loss=losses.MeanSquaredError(reduction="sum"))
    step = CapturedStep(captured, losses.MeanSquaredError(reduction="sum"),
                        optim.SGD(captured.parameters(), lr=0.01))
    for _ in range(3):
        assert step(x, target, weight) == fitted.train_on_batch(x, target, sample_weight=weight)
    assert_same_weights(fitted, captured)


def test_a_parameter_frozen_after_capture_stays_frozen(kernel_table):
    x, y = data()
    eager, captured = twins(mlp)
    opt_e, opt_c = optim.Adam(eager.parameters(), lr=0.01), optim.Adam(captured.parameters(), lr=0.01)
    step = CapturedStep(captured, XENT, opt_c)
    assert eager_steps(eager, XENT, opt_e, x, y, 2) == [step(x, y) for _ in range(2)]
    for model in (eager, captured):
        model.layers[0].kernel.requires_grad = False
    frozen = captured.layers[0].kernel.data.copy()
    assert eager_steps(eager, XENT, opt_e, x, y, 2) == [step(x, y) for _ in range(2)]
    np.testing.assert_array_equal(captured.layers[0].kernel.data, frozen)
    assert_same_weights(eager, captured)


def test_a_layer_added_after_capture_is_built_and_trained_through(kernel_table):
    x, y = data()
    eager, captured = twins(mlp)
    opt_e, opt_c = optim.SGD(eager.parameters(), lr=0.1), optim.SGD(captured.parameters(), lr=0.1)
    step = CapturedStep(captured, XENT, opt_c)
    assert eager_steps(eager, XENT, opt_e, x, y, 2) == [step(x, y) for _ in range(2)]
    for model in (eager, captured):
        nd.manual_seed(5)
        model.add(nn.Dense(3, input_dim=3))  # the old step never built it, nor ran it
    assert eager_steps(eager, XENT, opt_e, x, y, 2) == [step(x, y) for _ in range(2)]
    assert captured.layers[3].kernel is not None
    assert_same_weights(eager, captured)


def test_a_popped_layer_is_no_longer_updated(kernel_table):
    x, y = data()
    (model,) = twins(mlp)[:1]
    step = CapturedStep(model, XENT, optim.SGD(model.parameters(), lr=0.1))
    step(x, y)
    step(x, y)
    popped = model.pop()
    before = popped.kernel.data.copy()
    model.add(nn.Dense(3))
    step(x, y)
    step(x, y)
    np.testing.assert_array_equal(popped.kernel.data, before)
    assert model.layers[2].kernel is not None


class SwitchActivation(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.layers[0].activation = "relu"


class FreezeFirstKernel(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.layers[0].kernel.requires_grad = False


class CountCalls(callbacks.Callback):
    """Registers a forward hook on the first layer after the first epoch."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.layers[0].register_forward_hook(lambda *args: self.count())

    def count(self):
        self.calls += 1


@pytest.mark.parametrize("change", [SwitchActivation, FreezeFirstKernel, CountCalls])
def test_fit_with_a_change_between_epochs_matches_eager(kernel_table, change):
    # tanh -> relu after the first epoch: captured 1.640, 1.625, 1.611 against eager
    # 1.640, 1.562, 1.548 before; a frozen kernel kept training; a new hook never ran
    x, y = data(n=48)
    histories, models, changes = [], [], []
    for capture in (False, True):
        model = twins(mlp)[0]
        model.compile(optimizer=optim.SGD(lr=0.1), loss=XENT)
        changes.append(change())
        nd.manual_seed(7)
        histories.append(model.fit(x, y, epochs=3, batch_size=16, verbose=0, capture=capture,
                                   callbacks=[changes[-1]]).history)
        models.append(model)
    assert histories[0] == histories[1]
    assert_same_weights(*models)
    if change is CountCalls:
        assert changes[0].calls == changes[1].calls == 2 * 3  # two epochs of three batches


def test_a_forward_hook_registered_after_capture_runs(kernel_table):
    x, y = data()
    (model,) = twins(mlp)[:1]
    step = CapturedStep(model, XENT, optim.SGD(model.parameters(), lr=0.1))
    step(x, y)
    step(x, y)
    seen = []
    model.layers[1].register_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    step(x, y)
    step(x, y)
    assert seen == [(32, 8), (32, 8)]


def test_momentum_turned_on_after_capture(kernel_table):
    # was: "Argument 'buf' has incorrect type" (captured), a TypeError (eager)
    x, y = data()
    eager, captured = twins(mlp)
    opt_e, opt_c = optim.SGD(eager.parameters(), lr=0.05), optim.SGD(captured.parameters(), lr=0.05)
    step = CapturedStep(captured, XENT, opt_c)
    assert eager_steps(eager, XENT, opt_e, x, y, 2) == [step(x, y) for _ in range(2)]
    opt_e.momentum = opt_c.momentum = 0.9
    assert eager_steps(eager, XENT, opt_e, x, y, 3) == [step(x, y) for _ in range(3)]
    assert_same_weights(eager, captured)


def test_an_activation_and_a_reduction_changed_after_capture(kernel_table):
    x, _ = data()
    target = np.random.default_rng(2).standard_normal((32, 3)).astype(np.float32)
    eager, captured = twins(mlp)
    loss_e, loss_c = losses.MeanSquaredError(), losses.MeanSquaredError()
    opt_e, opt_c = optim.SGD(eager.parameters(), lr=0.01), optim.SGD(captured.parameters(), lr=0.01)
    step = CapturedStep(captured, loss_c, opt_c)
    assert eager_steps(eager, loss_e, opt_e, x, target, 2) == [step(x, target) for _ in range(2)]
    for model in (eager, captured):
        model.layers[1].activation = "relu"
    loss_e.reduction = loss_c.reduction = "sum"
    assert eager_steps(eager, loss_e, opt_e, x, target, 2) == [step(x, target) for _ in range(2)]
    assert_same_weights(eager, captured)


def test_threads_can_share_one_step(kernel_table):
    # two threads sharing one CapturedStep: one died with AttributeError (NoneType .shape)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((256, 64)).astype(np.float32), rng.integers(0, 3, 256)
    nd.manual_seed(1)
    model = nn.Sequential([nn.Dense(128, activation="relu", input_dim=64), nn.Dense(3, input_dim=128)])
    opt = optim.SGD(model.parameters(), lr=0.001)
    step = CapturedStep(model, XENT, opt)
    errors = []

    def train(rows):
        try:
            for _ in range(15):
                step(x[rows], y[rows])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=train, args=(rows,))
               for rows in (slice(0, 256), slice(0, 200), slice(56, 256))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and opt.step_count == 45


def test_the_arrays_a_step_returns_are_the_callers(kernel_table):
    x, y = data()
    (model,) = twins(mlp)[:1]
    step = CapturedStep(model, "mse", optim.SGD(model.parameters(), lr=0.1))
    target = np.zeros((32, 3), np.float32)
    step.run(x, target)
    loss, out = step.run(x, target)  # a replay
    kept = out.copy(), loss.copy()
    step.run(x[::-1].copy(), target)
    np.testing.assert_array_equal(out, kept[0])
    np.testing.assert_array_equal(loss, kept[1])


# ---------------------------------------------------------------- fit(capture='auto'), the default
@pytest.fixture
def made(monkeypatch):
    """The CapturedSteps fit makes."""
    steps = []
    original = CapturedStep.for_plan.__func__
    monkeypatch.setattr(CapturedStep, "for_plan",
                        classmethod(lambda cls, plan: steps.append(original(cls, plan)) or steps[-1]))
    return steps


def test_fit_captures_by_default_with_the_eager_results(kernel_table, made, monkeypatch):
    x, y = data(n=50)
    recordings, record = [], CapturedStep._capture
    monkeypatch.setattr(CapturedStep, "_capture",
                        lambda self, key, *args: recordings.append(key) or record(self, key, *args))
    histories, models = [], []
    for capture in (False, "auto"):
        model = twins(lambda: mlp(head="softmax"))[0]
        model.compile(optimizer=optim.Adam(lr=0.01), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        nd.manual_seed(7)
        kwargs = {} if capture == "auto" else {"capture": False}
        histories.append(model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                                   validation_split=0.2, **kwargs).history)
        models.append(model)
    assert histories[0] == histories[1]
    assert_same_weights(*models)
    (step,) = made
    assert step.reason is None and len(step.stages) == 3
    # recorded once per batch shape (16 and the last 8), not again each epoch: what fit
    # writes about itself (history, epochs_trained) is no part of the step's signature
    assert len(recordings) == 2


class Counting(nn.Sequential):
    steps = 0

    def _train_step(self, plan, x, target, weight=None):
        Counting.steps += 1
        return super()._train_step(plan, x, target, weight)


def test_auto_keeps_the_eager_step_where_capture_is_not_plainly_valid(made):
    Counting.steps = 0
    x, y = data(n=20)
    regularized = nn.Sequential([nn.Dense(3, input_dim=6, kernel_regularizer=nd.regularizers.l2(0.1))])
    hooked = mlp()
    hooked.layers[1].register_forward_hook(lambda *args: None)
    overridden = Counting([nn.Dense(3, input_dim=6)])
    for model in (regularized, hooked, overridden):
        model.compile(optimizer="sgd", loss=XENT)
        model.fit(x, y, batch_size=10, verbose=0)
    assert made == [] and Counting.steps == 2
    hooked.fit(x, y, batch_size=10, verbose=0, capture=True)  # asked for: captured
    assert len(made) == 1
    with pytest.raises(ValueError, match="capture must be True, False or 'auto'"):
        hooked.fit(x, y, verbose=0, capture="yes")


def test_capture_records_through_the_kernel_table():
    # no Cython module imported past the table, no branch on a table's name
    import ast
    from pathlib import Path

    import nanodl.capture
    source = "".join(path.read_text() for path in Path(nanodl.capture.__file__).parent.glob("*.py"))
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    compiled = {"_linear", "_activations", "_optim", "_xent", "kernels_native"}
    assert not {name.rsplit(".", 1)[-1] for name in names} & compiled
    assert "'native'" not in source and '"native"' not in source
    from nanodl.backend import kernels_numpy
    assert kernels_numpy.TABLE.buffered is None  # a table without them: the plain DenseStage


# ---------------------------------------------------------------- the replay's cheap check
def _swap_first_two(model):
    modules = model.layers._modules
    first, second = list(modules)[:2]
    values = modules.pop(first), modules.pop(second)
    modules[second], modules[first] = values[1], values[0]
    modules.update({key: modules.pop(key) for key in list(modules)[:-2]})


CHANGES = {
    "activation set": lambda m, opt, loss: setattr(m.layers[0], "activation", "relu"),
    "activation in __dict__": lambda m, opt, loss: m.layers[0].__dict__.update(activation="relu"),
    "new attribute": lambda m, opt, loss: setattr(m.layers[1], "scale", 2.0),
    "frozen kernel": lambda m, opt, loss: setattr(m.layers[0].kernel, "requires_grad", False),
    "kernel dtype": lambda m, opt, loss: setattr(m.layers[0].kernel, "data",
                                                 m.layers[0].kernel.data.astype(np.float64)),
    "kernel reshaped in place": lambda m, opt, loss: setattr(m.layers[2].kernel.data, "shape",
                                                             (3, 8)),
    "layer added": lambda m, opt, loss: m.add(nn.Dense(3)),
    "layer popped": lambda m, opt, loss: m.pop(),
    "layers swapped in the dict": lambda m, opt, loss: _swap_first_two(m),
    "hook on a layer": lambda m, opt, loss: m.layers[1].register_forward_hook(print),
    "hook on the model": lambda m, opt, loss: m.register_forward_hook(print),
    "eval mode": lambda m, opt, loss: m.eval(),
    "buffer registered": lambda m, opt, loss: m.layers[0].register_buffer("mask", np.ones(3)),
    "parameter dict replaced, then filled": lambda m, opt, loss: (
        m.layers[0].__dict__.update(_parameters=dict(m.layers[0]._parameters)),
        m.layers[0]._parameters.update(extra=nn.Parameter(np.ones(4)))),
    "__dict__ replaced, then set": lambda m, opt, loss: (
        setattr(m.layers[0], "__dict__", dict(m.layers[0].__dict__)),
        m.layers[0].__dict__.update(alpha=0.5)),
    "class changed": lambda m, opt, loss: setattr(m.layers[0], "__class__",
                                                  type("Sub", (nn.Dense,), {})),
    "momentum on": lambda m, opt, loss: setattr(opt, "momentum", 0.9),
    "optimizer __dict__": lambda m, opt, loss: opt.__dict__.update(nesterov=True),
    "reduction": lambda m, opt, loss: setattr(loss, "reduction", "sum"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_replays_quick_check_sees_all_the_signature_sees(change):
    # the replay compares the full signature only when the watch (_Watch) says
    # "maybe changed": it must never vouch for a state whose signature differs
    from nanodl.capture.step import same, signature
    x, y = data()
    (model,) = twins(mlp)[:1]
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = CapturedStep(model, loss, opt)
    step(x, y)
    step(x, y)
    assert step._watch.exact and step._watch.unchanged()
    CHANGES[change](model, opt, loss)
    kept = same(signature(model, opt, loss), step._recorded)
    assert kept == (change == "buffer registered")  # the signature skips buffers
    assert not step._watch.unchanged()


def test_fit_replays_without_the_full_signature(monkeypatch):
    # the signature is taken at each recording and once after fit's first epoch
    # (its history), not at every step
    import nanodl.capture.step as captured
    calls, full = [], captured.signature
    monkeypatch.setattr(captured, "signature", lambda *args: calls.append(1) or full(*args))
    x, y = data(n=160)
    model = mlp()
    model.compile(optimizer=optim.Adam(lr=0.01), loss=XENT)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert 0 < len(calls) <= 4


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(1))

    def forward(self, x):
        return x * self.scale


def test_a_one_element_parameter_is_checked_through_the_signature():
    # == compares a one-element Parameter by value: the quick check cannot tell it
    # from another, so every replay takes the full signature
    x, y = data()
    model = nn.Sequential([nn.Dense(3, input_dim=6), Scale()])
    step = CapturedStep(model, XENT, optim.SGD(model.parameters(), lr=0.1))
    step(x, y)
    assert not step._watch.exact
    other = nn.Parameter(np.ones(1))
    other.requires_grad = False
    model.layers[1].scale = other
    step(x, y)
    assert other.grad is None and (False, (1,), other.data.dtype) in step._recorded
