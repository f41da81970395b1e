"""Captured training steps (nanodl.capture): bit-for-bit equal to the eager step.

Every test trains two identical models from the same seed, one eagerly and one
through a captured step, and compares every weight (and every reported loss) with
exact equality, on both CPU kernel tables (the ``kernel_table`` fixture).
"""
import numpy as np
import pytest

import nanodl as nd
from nanodl import autograd, backend, callbacks, losses, nn, optim
from nanodl.capture import (CapturedStep, DenseStage, EngineLoss, EngineStage, BufferedDenseStage,
                            SoftmaxXentLoss)

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.05),
    "sgd-nesterov-wd": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(lr=1e-2),
    "adam-amsgrad-wd": lambda: optim.Adam(lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda: optim.AdamW(lr=1e-2),
    "adagrad": lambda: optim.Adagrad(lr=0.05, lr_decay=0.01, weight_decay=1e-3),
    "rmsprop-centered-momentum": lambda: optim.RMSprop(lr=1e-3, momentum=0.5, centered=True),
}


def data(n=50, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, rng.integers(0, classes, n)


def mlp(extra=tuple, head="softmax", units=3):
    nd.manual_seed(1)
    return nn.Sequential([nn.Dense(16, activation="relu", input_dim=6), *extra(),
                          nn.Dense(8, activation="tanh", input_dim=16),
                          nn.Dense(units, activation=head, input_dim=8)])


def assert_same_weights(a, b):
    for (name, first), second in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(first, second, err_msg=name)


def fit_both(make_model, optimizer, loss, x, y, **fit_args):
    """The same fit twice from the same seed, eager then captured; both histories."""
    histories = []
    models = []
    for capture in (False, True):
        model = make_model()
        model.compile(optimizer=OPTIMIZERS[optimizer](), loss=loss)
        nd.manual_seed(7)  # shuffling and dropout draw from here
        histories.append(model.fit(x, y, verbose=0, capture=capture, **fit_args).history)
        models.append(model)
    assert histories[0] == histories[1]
    assert_same_weights(*models)
    return models


@pytest.fixture
def captured_steps(monkeypatch):
    """Every CapturedStep that fit creates, to look at the programs it replayed."""
    made = []
    original = CapturedStep.for_plan.__func__

    def spy(cls, plan):
        made.append(original(cls, plan))
        return made[-1]
    monkeypatch.setattr(CapturedStep, "for_plan", classmethod(spy))
    return made


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fit_capture_matches_eager_for_every_optimizer(kernel_table, optimizer, captured_steps):
    x, y = data()
    fit_both(mlp, optimizer, "sparse_categorical_crossentropy", x, y, epochs=3, batch_size=16)
    (step,) = captured_steps
    assert all(isinstance(s, BufferedDenseStage) == (kernel_table == "native") for s in step.stages)
    assert all(isinstance(s, DenseStage) for s in step.stages) and len(step.stages) == 3
    assert isinstance(step.loss_stage, SoftmaxXentLoss) and len(step._programs) == 2  # 16 and 2 rows


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dropout_masks_are_fresh_each_step_and_equal(kernel_table, optimizer):
    x, y = data()
    eager, captured = fit_both(lambda: mlp(lambda: [nn.Dropout(0.5)]), optimizer,
                               "sparse_categorical_crossentropy", x, y, epochs=3, batch_size=16)
    # Fresh masks: the same batch twice through the captured step gives different losses.
    step = CapturedStep(captured, "sparse_categorical_crossentropy", captured.optimizer)
    captured.train()
    losses_seen = {step(x[:16], y[:16]) for _ in range(4)}
    assert len(losses_seen) == 4


def test_batchnorm_moving_statistics_match(kernel_table, captured_steps):
    x, y = data()
    eager, captured = fit_both(lambda: mlp(lambda: [nn.BatchNorm()]), "adam",
                               "sparse_categorical_crossentropy", x, y, epochs=3, batch_size=16)
    assert [isinstance(s, DenseStage) for s in captured_steps[0].stages] == [True, False, True, True]
    bn = captured.layers[1]
    assert not np.array_equal(bn.moving_mean, np.zeros_like(bn.moving_mean))


def test_learning_rate_schedule_and_partial_batches(kernel_table):
    x, y = data(n=45)  # 16 + 16 + 13: the last batch has its own signature
    schedule = callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch)
    for capture in (False, True):
        model = mlp()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        nd.manual_seed(7)
        model.fit(x, y, epochs=4, batch_size=16, verbose=0, capture=capture, callbacks=[schedule])
        if capture:
            assert_same_weights(eager, model)
            assert model.history.history["lr"] == [0.1, 0.05, 0.025, 0.0125]
        eager = model


@pytest.mark.parametrize("loss, head, units", [("mse", None, 2), ("binary_crossentropy", "sigmoid", 1),
                                               ("categorical_crossentropy", "softmax", 3)])
def test_other_losses_run_through_the_engine_and_match(kernel_table, loss, head, units):
    x, y = data()
    target = {"mse": np.stack([x[:, 0], x[:, 1] * x[:, 2]], axis=1),
              "binary_crossentropy": (x[:, :1] > 0).astype(np.float32),
              "categorical_crossentropy": np.eye(3, dtype=np.float32)[y]}[loss]
    fit_both(lambda: mlp(head=head, units=units), "adam", loss, x, target, epochs=2, batch_size=16)


def test_sample_weights_and_validation_match(kernel_table):
    x, y = data()
    weight = np.linspace(0.5, 1.5, len(x))
    fit_both(mlp, "adam", "sparse_categorical_crossentropy", x, y, epochs=2, batch_size=16,
             sample_weight=weight, validation_split=0.2)


def test_regularized_models_stay_eager_and_match(kernel_table):
    x, y = data()

    def regularized():
        nd.manual_seed(1)
        return nn.Sequential([nn.Dense(8, activation="relu", input_dim=6,
                                       kernel_regularizer=nd.regularizers.l2(1e-2)), nn.Dense(3)])
    fit_both(regularized, "sgd", losses.SparseCategoricalCrossentropy(from_logits=True), x, y,
             epochs=2, batch_size=16)


# ---------------------------------------------------------------- hand-written loops
def eager_loop(model, loss_fn, opt, batches):
    values = []
    for x, y in batches:
        out = model(nd.Tensor(x))
        loss = loss_fn(out, y)
        for p in model.parameters():
            p.grad = None
        loss.backward()
        opt.step()
        values.append(float(loss.data))
    return values


def test_hand_written_loop_matches_and_builds_no_graph(kernel_table):
    x, y = data(n=64)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)] * 2
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    nd.manual_seed(1)
    model_a = nn.Sequential([nn.Dense(16, activation="gelu", input_dim=6), nn.Dense(3, input_dim=16)])
    nd.manual_seed(1)
    model_b = nn.Sequential([nn.Dense(16, activation="gelu", input_dim=6), nn.Dense(3, input_dim=16)])
    opt_a, opt_b = optim.Adam(model_a.parameters()), optim.Adam(model_b.parameters())
    expected = eager_loop(model_a, loss, opt_a, batches)
    step = CapturedStep(model_b, loss, opt_b)
    got = [step(*batches[0])]
    assert [isinstance(s, DenseStage) for s in step.stages] == [True, True]
    assert isinstance(step.loss_stage, SoftmaxXentLoss)
    nodes = []
    original = autograd.Function.apply.__func__

    def counting(cls, *args, **kwargs):
        nodes.append(cls)
        return original(cls, *args, **kwargs)
    autograd.Function.apply = classmethod(counting)
    try:
        got += [step(bx, by) for bx, by in batches[1:]]
    finally:
        autograd.Function.apply = classmethod(original)
    assert nodes == []  # the replays created no Function node at all
    assert got == expected
    assert_same_weights(model_a, model_b)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_debug_hooks_and_detect_anomaly_see_every_step(kernel_table):
    """With autograd hooks in this thread (detect_anomaly installs them) the captured
    step runs eagerly, so the hooks see its nodes; without, replays resume."""
    x, y = data(n=16)
    model = mlp(head=None)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    step = CapturedStep(model, loss, optim.SGD(model.parameters(), lr=0.1))
    step(x, y), step(x, y)
    nodes = []
    autograd.forward_hooks.append(lambda node, *rest: nodes.append(node.name))
    try:
        step(x, y)
    finally:
        autograd.forward_hooks.pop()
    assert "Linear" in nodes
    saved = model.layers[0].kernel.data.copy()
    model.layers[0].kernel.data[0, 0] = 3e38  # x 10: inf from finite inputs
    with nd.detect_anomaly(), pytest.raises(nd.anomaly.AnomalyError, match="Linear produced"):
        step(np.full_like(x, 10), y)
    model.layers[0].kernel.data[...] = saved


def test_changing_batch_size_recaptures(kernel_table):
    x, y = data(n=60)
    sizes = [16, 16, 7, 16, 7, 3, 16]
    batches, start = [], 0
    for size in sizes:
        batches.append((x[start % 40:start % 40 + size], y[start % 40:start % 40 + size]))
        start += size
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    model_a, model_b = mlp(head=None), mlp(head=None)
    opt_a, opt_b = optim.SGD(model_a.parameters(), lr=0.1), optim.SGD(model_b.parameters(), lr=0.1)
    expected = eager_loop(model_a, loss, opt_a, batches)
    step = CapturedStep(model_b, loss, opt_b)
    got = [step(bx, by) for bx, by in batches]
    np.testing.assert_array_equal(got, expected)
    assert_same_weights(model_a, model_b)
    assert len(step._programs) == 3  # 16, 7 and 3 rows


def test_optimizer_swap_and_table_switch_recapture(kernel_table):
    x, y = data(n=32)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    nd.manual_seed(1)
    model_a = nn.Sequential([nn.Dense(8, activation="elu", input_dim=6), nn.Dense(3, input_dim=8)])
    nd.manual_seed(1)
    model_b = nn.Sequential([nn.Dense(8, activation="elu", input_dim=6), nn.Dense(3, input_dim=8)])
    opt_a, opt_b = optim.Adam(model_a.parameters()), optim.Adam(model_b.parameters())
    step = CapturedStep(model_b, loss, opt_b)
    assert eager_loop(model_a, loss, opt_a, [(x, y)] * 3) == [step(x, y) for _ in range(3)]
    # A new parameter list (set_params: here the first layer frozen out) is a new signature.
    opt_a.set_params(model_a.layers[1].parameters())
    opt_b.set_params(model_b.layers[1].parameters())
    assert eager_loop(model_a, loss, opt_a, [(x, y)] * 2) == [step(x, y) for _ in range(2)]
    assert len(step._programs) == 2
    other = "numpy" if backend.get_kernels() == "native" else "native"
    if backend.native_available():
        backend.set_kernels(other)
        assert eager_loop(model_a, loss, opt_a, [(x, y)] * 2) == [step(x, y) for _ in range(2)]
        assert len(step._programs) == 3
    assert_same_weights(model_a, model_b)


def test_replacing_a_layers_weights_recaptures(kernel_table):
    x, y = data(n=16)
    model = mlp()
    step = CapturedStep(model, "sparse_categorical_crossentropy", optim.SGD(model.parameters()))
    step(x, y)
    old_stage = step.stages[0]
    model.layers[0].kernel = nn.Parameter(model.layers[0].kernel.data.copy())
    step.optimizer.set_params(model.parameters())
    step(x, y)
    assert step.stages[0] is not old_stage and step.stages[0].kernel is model.layers[0].kernel


def test_opaque_models_and_penalties_say_how_they_run(kernel_table):
    class Custom(nn.Model):
        def __init__(self):
            super().__init__()
            self.dense = nn.Dense(3, input_dim=6)

        def forward(self, x):
            return self.dense(x) * 2.0

    x, y = data(n=16)
    model = Custom()
    step = CapturedStep(model, losses.SparseCategoricalCrossentropy(from_logits=True),
                        optim.SGD(model.parameters()))
    step(x, y)
    step(x, y)
    assert [type(s) for s in step.stages] == [EngineStage] and step.reason is None
    regularized = nn.Sequential([nn.Dense(3, input_dim=6, kernel_regularizer=nd.regularizers.l2(0.1))])
    step = CapturedStep(regularized, "mse", optim.SGD(regularized.parameters()))
    step(x, np.zeros((16, 3), np.float32))
    assert step.reason == "weight penalties" and step.stages == ()
    model = mlp(head=None)
    step = CapturedStep(model, "mse", optim.SGD(model.parameters()))
    step(x, np.zeros((16, 3), np.float32))
    assert isinstance(step.loss_stage, EngineLoss) and step.reason is None


def test_bad_labels_in_a_replay_raise_the_kernels_error(kernel_table):
    x, y = data(n=16)
    model = mlp(head=None)
    step = CapturedStep(model, losses.SparseCategoricalCrossentropy(from_logits=True),
                        optim.SGD(model.parameters()))
    step(x, y)
    bad = y.copy()
    bad[5] = 3
    with pytest.raises(ValueError, match="label 3 at index 5 is out of range"):
        step(x, bad)


# ---------------------------------------------------------------- one update call (FlatUpdate)
def native_only():
    if backend.get_kernels() != "native":
        pytest.skip("the flat update applies to the compiled table's Dense stages")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_update_call_over_all_parameters(kernel_table, optimizer, captured_steps, monkeypatch):
    native_only()
    x, y = data()
    eager, captured = fit_both(mlp, optimizer, "sparse_categorical_crossentropy", x, y,
                               epochs=2, batch_size=16)
    (step,) = captured_steps
    flat = step._flat
    assert flat is not None and all(program.flat is flat for program in step._programs.values())
    params = captured.parameters()
    assert all(np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad)
               for p in params)
    for state in captured.optimizer._state:
        assert state["step"] == eager.optimizer._state[0]["step"]
        for name, value in state.items():
            if name != "step":
                assert np.shares_memory(value, flat.state[name])
    sd_eager, sd_captured = eager.optimizer.state_dict(), captured.optimizer.state_dict()
    assert sd_eager["step_count"] == sd_captured["step_count"]
    for name, arrays in sd_eager["state"].items():
        for a, b in zip(arrays, sd_captured["state"][name]):
            np.testing.assert_array_equal(a, b)
    # A replay calls the update once, on the whole flat array.
    calls, update = [], type(captured.optimizer)._update

    def counting(self, data, grad, state):
        calls.append(data.shape)
        update(self, data, grad, state)
    monkeypatch.setattr(type(captured.optimizer), "_update", counting, raising=False)
    step.run(x[:16], y[:16])
    assert calls == [flat.data.shape]


def adam_twins():
    """Two identical models with Adam: ``(x, y, loss, model_a, opt_a, model_b, opt_b,
    step)``, ``step`` the second one's CapturedStep."""
    native_only()
    x, y = data(n=32)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    model_a, model_b = mlp(head=None), mlp(head=None)
    opt_a, opt_b = optim.Adam(model_a.parameters()), optim.Adam(model_b.parameters())
    return x, y, loss, model_a, opt_a, model_b, opt_b, CapturedStep(model_b, loss, opt_b)


def test_flat_layout_rebound_recaptures_and_stays_equal(kernel_table):
    x, y, loss, model_a, opt_a, model_b, opt_b, step = adam_twins()
    assert eager_loop(model_a, loss, opt_a, [(x, y)] * 3) == [step(x, y) for _ in range(3)]
    first = step._flat
    # load_state_dict gives the optimizer new state arrays: the flat layout is rebuilt.
    saved = opt_a.state_dict()
    opt_a.load_state_dict(saved)
    opt_b.load_state_dict(saved)
    assert eager_loop(model_a, loss, opt_a, [(x, y)] * 2) == [step(x, y) for _ in range(2)]
    assert step._flat is not first and step._flat.intact()
    # A parameter given a new array (same values): captured again, still equal.
    second = step._flat
    model_b.layers[0].kernel.data = model_b.layers[0].kernel.data.copy()
    assert eager_loop(model_a, loss, opt_a, [(x, y)] * 2) == [step(x, y) for _ in range(2)]
    assert step._flat is not second
    assert_same_weights(model_a, model_b)


def test_flat_layout_survives_a_table_switch(kernel_table):
    """A program on the other table (whose stages do not write the flat gradient)
    updates per parameter on the flat views; back on the compiled table the flat
    update resumes. Every step equal to the eager one."""
    x, y, loss, model_a, opt_a, model_b, _, step = adam_twins()
    expected, got = [], []
    for table in ("native", "numpy", "native", "numpy"):
        backend.set_kernels(table)
        expected += eager_loop(model_a, loss, opt_a, [(x, y)] * 3)
        got += [step(x, y) for _ in range(3)]
        (program,) = [p for key, p in step._programs.items() if table in key]
        assert (program.flat is not None) == (table == "native")
    backend.set_kernels("native")
    assert got == expected
    assert_same_weights(model_a, model_b)


def test_flat_update_only_where_it_applies(kernel_table):
    native_only()
    x, y = data(n=32)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    # BatchNorm's gamma and beta get their gradients from the engine: per-parameter update.
    nd.manual_seed(1)
    model = nn.Sequential([nn.Dense(8, activation="relu", input_dim=6), nn.BatchNorm(), nn.Dense(3)])
    step = CapturedStep(model, loss, optim.SGD(model.parameters(), lr=0.1))
    step(x, y), step(x, y)
    assert step._flat is None and step._programs
    # An optimizer over some of the trained parameters only: per-parameter update.
    model = mlp(head=None)
    step = CapturedStep(model, loss, optim.SGD(model.layers[2].parameters(), lr=0.1))
    step(x, y), step(x, y)
    assert step._flat is None
    # An optimizer whose step() is its own (not elementwise): called as it is.
    class Clipped(optim.SGD):
        def step(self):
            optim.clip_grad_norm(self.params, 0.1)
            super().step()
    model = mlp(head=None)
    step = CapturedStep(model, loss, Clipped(model.parameters(), lr=0.1))
    step(x, y), step(x, y)
    assert step._flat is None
    # An optimizer whose step() was replaced on the instance (a counter, say): called.
    model = mlp(head=None)
    opt = optim.SGD(model.parameters(), lr=0.1)
    calls = []
    opt.step = lambda step=opt.step: (calls.append(1), step())
    step = CapturedStep(model, loss, opt)
    step(x, y), step(x, y)
    assert step._flat is None and len(calls) == 2
    # A parameter array (or a view of it) the user holds stays the one that is trained.
    for keep in (lambda m: m.layers[0].kernel.data, lambda m: m.layers[2].bias.data[:2],
                 lambda m: None):
        model = mlp(head=None)
        opt = optim.Adam(model.parameters())
        kept = keep(model)
        step = CapturedStep(model, loss, opt)
        step(x, y), step(x, y)
        if kept is None:
            assert step._flat is not None
        else:
            assert step._flat is None
            before = kept.copy()
            step(x, y)
            assert not np.array_equal(kept, before)  # still the parameter's own array
    # Nor is a state array moved that someone holds.
    model = mlp(head=None)
    opt = optim.Adam(model.parameters())
    step = CapturedStep(model, loss, opt)
    nd.manual_seed(0)
    eager_loop(model, loss, opt, [(x, y)])  # creates the optimizer state
    held = opt._state[0]["exp_avg"]
    step(x, y), step(x, y)
    assert step._flat is None and held is opt._state[0]["exp_avg"]
