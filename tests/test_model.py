"""Tests for nn.Model / nn.Sequential: compile, fit, evaluate, predict, summary."""
import io
import re
import sys
import time

import numpy as np
import pytest

import nanodl as nd
from nanodl import callbacks, datasets, losses, nn, optim, regularizers


def blobs(n=120, classes=3, features=4, seed=0):
    """Well separated Gaussian blobs: (x float32, y int64)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 4
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y


def classifier(classes=3, hidden=16, **compile_options):
    model = nn.Sequential([nn.Dense(hidden, activation="relu"), nn.Dense(classes, activation="softmax")])
    options = dict(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    options.update(compile_options)
    model.compile(**options)
    return model


# ---------------------------------------------------------------- compile
def test_compile_rejects_unknown_names():
    model = nn.Sequential([nn.Dense(1)])
    with pytest.raises(ValueError, match="rmsprop"):
        model.compile(optimizer="adamax")
    with pytest.raises(ValueError, match="huber"):
        model.compile(loss="cross_entropy")
    with pytest.raises(ValueError, match="accuracy"):
        model.compile(metrics=["f1_score"])


def test_fit_requires_compile():
    with pytest.raises(RuntimeError, match="compile"):
        nn.Sequential([nn.Dense(1)]).fit(np.zeros((2, 1)), np.zeros(2), verbose=0)


def test_optimizer_instance_gets_the_built_parameters():
    nd.manual_seed(0)
    x, y = blobs()
    model = classifier(optimizer=optim.SGD(lr=0.1))
    assert model.optimizer.params is None
    model.fit(x, y, epochs=1, verbose=0)
    assert [id(p) for p in model.optimizer.params] == [id(p) for p in model.parameters()]
    steps = model.optimizer.step_count
    model.fit(x, y, epochs=1, verbose=0)  # a second fit keeps the optimizer and its state
    assert model.optimizer.step_count == 2 * steps == 2 * 4


# ---------------------------------------------------------------- fit: history, validation, averaging
def test_fit_history_with_validation_data():
    nd.manual_seed(1)
    x, y = blobs()
    model = classifier()
    history = model.fit(x[:90], y[:90], epochs=3, batch_size=16, verbose=0,
                        validation_data=(x[90:], y[90:]))
    assert isinstance(history, callbacks.History) and model.history is history
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(values) == 3 for values in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert history.history["lr"] == [pytest.approx(0.001)] * 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    val_loss, val_acc = model.evaluate(x[90:], y[90:])
    assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_acc)


def test_validation_split_takes_the_last_fraction():
    nd.manual_seed(2)
    x, y = blobs(100)
    model = classifier(optimizer=optim.SGD(lr=0.0))
    history = model.fit(x, y, epochs=2, verbose=0, validation_split=0.2)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(x[80:], y[80:])[0], rel=1e-6)
    assert history.history["loss"][0] == pytest.approx(model.evaluate(x[:80], y[:80])[0], rel=1e-6)
    with pytest.raises(ValueError):
        model.fit(x, y, verbose=0, validation_split=1.5)


def test_single_class_validation_split_warns():
    x, y = blobs(60)
    order = np.argsort(y)  # sorted labels: the last 20% are all one class
    model = classifier()
    with pytest.warns(UserWarning, match="single class"):
        model.fit(x[order], y[order], epochs=1, verbose=0, validation_split=0.2)


def test_losses_and_metrics_are_averaged_per_sample():
    # 10 samples in batches of 4, 4 and 2; with lr=0 the weights never move, so the epoch's
    # loss must equal the loss over all samples at once, not the mean of the batch means.
    nd.manual_seed(3)
    x, y = blobs(10)
    model = classifier(optimizer=optim.SGD(lr=0.0))
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    pred = model.predict(x)
    per_sample = -np.log(pred[np.arange(10), y])
    assert history.history["loss"][0] == pytest.approx(per_sample.mean(), rel=1e-5)
    batch_means = np.mean([per_sample[:4].mean(), per_sample[4:8].mean(), per_sample[8:].mean()])
    assert abs(batch_means - per_sample.mean()) > 1e-4  # the case tells the two apart
    correct = pred.argmax(1) == y
    assert history.history["accuracy"][0] == pytest.approx(correct.mean())
    assert model.evaluate(x, y, batch_size=3)[0] == pytest.approx(per_sample.mean(), rel=1e-5)


def test_length_mismatch_raises_before_training():
    model = classifier()
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(np.zeros((10, 4)), np.zeros(9, dtype=int), verbose=0)
    assert model.parameters() == []  # nothing was built, nothing trained
    with pytest.raises(ValueError, match="validation"):
        model.fit(np.zeros((10, 4)), np.zeros(10, dtype=int), verbose=0,
                  validation_data=(np.zeros((3, 4)), np.zeros(2, dtype=int)))


def test_regularizer_penalty_is_added_to_the_loss():
    nd.manual_seed(4)
    x, y = blobs(40)
    plain = nn.Sequential([nn.Dense(8, activation="relu", input_dim=4),
                           nn.Dense(3, activation="softmax", input_dim=8)])
    l2 = nn.Sequential([nn.Dense(8, activation="relu", input_dim=4,
                                 kernel_regularizer=regularizers.l2(0.1)),
                        nn.Dense(3, activation="softmax", input_dim=8)])
    l2.load_state_dict(plain.state_dict())
    for model in (plain, l2):
        model.compile(optimizer=optim.SGD(lr=0.0), loss="sparse_categorical_crossentropy")
    base = plain.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    penalised = l2.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    penalty = 0.1 * float((l2[0].kernel.data.astype(np.float64) ** 2).sum())
    assert penalised == pytest.approx(base + penalty, rel=1e-5)
    # and the penalty's gradient reaches the weights: with lr > 0 the kernel shrinks more
    for model in (plain, l2):
        model.compile(optimizer=optim.SGD(lr=0.5), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=3, verbose=0, shuffle=False)
    assert np.abs(l2[0].kernel.data).sum() < np.abs(plain[0].kernel.data).sum()


def test_stop_training_ends_after_the_current_epoch():
    class StopAtOne(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    x, y = blobs(30)
    history = classifier().fit(x, y, epochs=10, verbose=0, callbacks=[StopAtOne()])
    assert history.epoch == [0, 1]


def test_callbacks_are_called_keras_style():
    events = []

    class Recorder(callbacks.Callback):
        def set_model(self, model):
            events.append("set_model")
            super().set_model(model)

        def on_train_begin(self, logs=None):
            events.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            events.append(f"epoch_begin {epoch}")

        def on_batch_begin(self, batch, logs=None):
            events.append(f"batch_begin {batch}")

        def on_batch_end(self, batch, logs=None):
            events.append(f"batch_end {batch} {sorted(logs)}")

        def on_epoch_end(self, epoch, logs=None):
            events.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            events.append("train_end")

    x, y = blobs(20)
    classifier().fit(x[:12], y[:12], batch_size=8, epochs=1, verbose=0, callbacks=[Recorder()],
                     validation_data=(x[12:], y[12:]))
    assert events == [
        "set_model", "train_begin", "epoch_begin 0",
        "batch_begin 0", "batch_end 0 ['accuracy', 'batch', 'loss', 'size']",
        "batch_begin 1", "batch_end 1 ['accuracy', 'batch', 'loss', 'size']",
        "epoch_end 0 ['accuracy', 'loss', 'lr', 'val_accuracy', 'val_loss']", "train_end"]


def test_learning_rate_schedule_is_recorded():
    x, y = blobs(20)
    scheduler = callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    history = classifier(optimizer="sgd").fit(x, y, epochs=3, verbose=0, callbacks=[scheduler])
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_shuffling_is_seeded():
    x, y = blobs(50)
    runs = []
    for _ in range(2):
        nd.manual_seed(5)
        runs.append(classifier().fit(x, y, epochs=2, batch_size=8, verbose=0).history["loss"])
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- verbosity
def test_verbose_2_prints_one_line_per_epoch(capsys):
    x, y = blobs(30)
    classifier().fit(x[:20], y[:20], epochs=2, verbose=2, validation_data=(x[20:], y[20:]))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().split("\n")
    assert len(lines) == 2
    pattern = (r"^Epoch {}/2 - \d+\.\d\ds - loss: \d+\.\d{{4}} - accuracy: \d\.\d{{4}} - "
               r"val_loss: \d+\.\d{{4}} - val_accuracy: \d\.\d{{4}}$")
    for epoch, line in enumerate(lines, start=1):
        assert re.match(pattern.format(epoch), line), line


def test_verbose_1_progress_bar_on_stderr(capsys):
    x, y = blobs(30)
    classifier().fit(x, y, epochs=1, verbose=1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Epoch 1/1" in captured.err
    assert re.search(r"1/1 \[=+\] - \d+s \d+(ms|us)/step - loss: \d+\.\d{4} - accuracy", captured.err)


def test_verbose_1_redraws_in_place_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    class Slow(callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            time.sleep(0.03)

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    x, y = blobs(64)
    classifier().fit(x, y, batch_size=8, epochs=1, verbose=1, callbacks=[Slow()])
    text = stream.getvalue()
    assert text.count("\r") >= 2 and "ETA" in text
    assert text.endswith("\n") and "8/8 [" in text


def test_verbose_0_is_silent(capsys):
    x, y = blobs(30)
    classifier().fit(x, y, epochs=2, verbose=0, validation_split=0.2)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- evaluate and predict
def test_evaluate_and_predict():
    nd.manual_seed(6)
    x, y = blobs(40)
    model = nn.Sequential([nn.Dense(8, activation="relu"), nn.Dropout(0.5), nn.Dense(3)])
    model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0)
    loss = model.evaluate(x, y)
    assert isinstance(loss, float)
    pred = model.predict(nd.tensor(x), batch_size=7)
    assert isinstance(pred, np.ndarray) and pred.shape == (40, 3) and pred.dtype == np.float32
    np.testing.assert_array_equal(pred, model.predict(x))  # eval mode: no dropout
    assert all(m.training for m in model.modules())  # the modes are restored
    expected = losses.sparse_categorical_crossentropy(nd.tensor(pred), y, from_logits=True).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    model.compile(optimizer="adam", loss="mse", metrics=["mae", "mse"])
    one_hot = np.eye(3)[y]
    loss, mae, mse = model.evaluate(x, one_hot)
    assert mae == pytest.approx(np.abs(pred - one_hot).mean(), rel=1e-5)
    assert mse == pytest.approx(loss, rel=1e-6) and mse == pytest.approx(((pred - one_hot) ** 2).mean(),
                                                                           rel=1e-5)


def test_predict_builds_no_graph():
    model = nn.Sequential([nn.Dense(2, input_dim=3)])
    model.predict(np.ones((4, 3)))
    assert all(p.grad is None for p in model.parameters())


def test_fused_softmax_cross_entropy_matches_the_composed_loss():
    # Training a softmax output with a cross-entropy on probabilities runs the fused logits
    # node; one SGD step must land where the composed (clipped-probability) loss lands.
    nd.set_default_dtype("float64")
    try:
        x, y = blobs(16)
        nd.manual_seed(7)
        fused = classifier(optimizer=optim.SGD(lr=0.5), metrics=None)
        fused.build((None, 4))
        composed = classifier(optimizer=optim.SGD(lr=0.5), metrics=None,
                              loss=lambda pred, target: losses.sparse_categorical_crossentropy(
                                  pred, target.data.astype(np.int64)))
        composed.build((None, 4))
        composed.load_state_dict(fused.state_dict())
        assert fused.evaluate(x, y) == pytest.approx(composed.evaluate(x, y), rel=1e-9)
        fused.fit(x, y, batch_size=16, epochs=1, verbose=0)
        composed.fit(x, y, batch_size=16, epochs=1, verbose=0)
        for (name, a), b in zip(fused.state_dict().items(), composed.state_dict().values()):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
        assert fused._plan_cache[1].logits == "softmax" and composed._plan_cache[1].logits is None
    finally:
        nd.set_default_dtype("float32")


def test_one_hot_targets_and_binary_outputs():
    nd.manual_seed(8)
    x, y = blobs(60, classes=2)
    model = nn.Sequential([nn.Dense(8, activation="tanh"), nn.Dense(2, activation="softmax")])
    model.compile(optimizer=optim.Adam(lr=0.05), loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, np.eye(2)[y], epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    binary = nn.Sequential([nn.Dense(8, activation="tanh"), nn.Dense(1, activation="sigmoid")])
    binary.compile(optimizer=optim.Adam(lr=0.05), loss="binary_crossentropy", metrics=["accuracy"])
    history = binary.fit(x, y, epochs=10, verbose=0)  # (N,) labels against (N, 1) outputs
    assert history.history["accuracy"][-1] > 0.9
    assert binary._plan_cache[1].logits == "sigmoid"
    pred = binary.predict(x)
    assert pred.shape == (60, 1) and ((pred > 0) & (pred < 1)).all()


def test_regression_with_flat_targets_and_train_on_batch():
    nd.manual_seed(9)
    x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    model = nn.Sequential([nn.Dense(16, activation="tanh"), nn.Dense(1)])
    model.compile(optimizer=optim.Adam(lr=0.02), loss="mse", metrics=["mae"])
    first = model.train_on_batch(x, 3 * x[:, 0])
    model.fit(x, 3 * x[:, 0], epochs=100, verbose=0)
    loss, mae = model.evaluate(x, 3 * x[:, 0])
    assert loss < 0.01 < first[0] and mae < 0.1
    with pytest.raises(ValueError, match="output shape"):
        model.fit(x, np.zeros((64, 2)), verbose=0)


def test_subclassed_model_trains():
    class TwoLayer(nn.Model):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Dense(16, activation="relu")
            self.norm = nn.LayerNorm()
            self.out = nn.Dense(3)

        def forward(self, x):
            return self.out(self.norm(self.hidden(x)))

    nd.manual_seed(10)
    x, y = blobs(90)
    model = TwoLayer()
    model.compile(optimizer=optim.Adam(lr=0.01),
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.9


def test_batchnorm_model_updates_running_stats_in_fit():
    nd.manual_seed(11)
    x, y = blobs(64)
    model = nn.Sequential([nn.Dense(8), nn.BatchNorm(), nn.ReLU(), nn.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    assert np.abs(model[1].moving_mean).sum() > 0
    frozen = model[1].moving_mean.copy()
    model.predict(x)
    np.testing.assert_array_equal(frozen, model[1].moving_mean)


# ---------------------------------------------------------------- Sequential, summary
def test_sequential_container():
    model = nn.Sequential()
    model.add(nn.Dense(4, input_dim=3))
    model.add(nn.ReLU())
    model.add(nn.Dense(2))
    assert len(model) == 3 and isinstance(model[1], nn.ReLU) and len(model.layers) == 3
    assert isinstance(model[1:], nn.Sequential) and len(model[1:]) == 2
    assert [type(layer).__name__ for layer in model] == ["Dense", "ReLU", "Dense"]
    with pytest.raises(TypeError):
        model.add("dense")
    assert isinstance(model.pop(), nn.Dense) and len(model) == 2


def test_summary_returns_and_prints_the_table(capsys):
    model = nn.Sequential([nn.Dense(64, activation="relu", input_dim=32), nn.BatchNorm(),
                           nn.Dense(10, activation="softmax")])
    text = model.summary()
    assert capsys.readouterr().out.strip() == text.strip()
    assert "(None, 64)" in text and "(None, 10)" in text
    assert "2,112" in text and "650" in text
    assert f"Trainable params: {2112 + 128 + 650:,}" in text
    assert "Non-trainable params: 128" in text
    with pytest.raises(ValueError, match="not built"):
        nn.Sequential([nn.Dense(3)]).summary()


# ---------------------------------------------------------------- learning
def test_learns_xor():
    nd.manual_seed(12)
    x, y = datasets.make_xor(200, seed=0)
    model = nn.Sequential([nn.Dense(16, activation="tanh"), nn.Dense(2, activation="softmax")])
    model.compile(optimizer=optim.Adam(lr=0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=60, batch_size=16, verbose=0)
    assert model.evaluate(x, y)[1] >= 0.95


def test_learns_moons():
    nd.manual_seed(13)
    x, y = datasets.make_moons(400, noise=0.1, seed=0)
    model = nn.Sequential([nn.Dense(32, activation="relu"), nn.Dense(32, activation="relu"),
                           nn.Dense(1, activation="sigmoid")])
    model.compile(optimizer=optim.Adam(lr=0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    assert model.evaluate(x, y)[1] >= 0.97


@pytest.mark.skipif(not hasattr(datasets, "load_digits"), reason="no embedded digits set")
def test_digits_reach_97_percent():
    from nanodl.data import train_test_split
    nd.manual_seed(0)
    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    model = nn.Sequential([nn.Dense(128, activation="relu"), nn.Dense(10, activation="softmax")])
    model.compile(optimizer=optim.Adam(lr=0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(x_test, y_test)[1]
    print(f"\ndigits: test accuracy {accuracy:.4f} after 30 epochs in {seconds:.2f}s")
    assert accuracy >= 0.97


def test_moving_a_trained_model_keeps_the_optimizer_state():
    x, y = blobs(40)
    runs = []
    for move in (False, True):
        nd.manual_seed(14)
        model = classifier()
        model.fit(x, y, epochs=1, verbose=0)
        if move:
            model.to("cpu")
        model.fit(x, y, epochs=1, verbose=0)
        runs.append(model.state_dict())
    for name, value in runs[0].items():
        np.testing.assert_array_equal(runs[1][name], value, err_msg=name)


# ---------------------------------------------------------------- the training step and its hooks
class Traced(nn.Sequential):
    """Records every batch that reaches the training step."""

    def __init__(self, layers):
        super().__init__(layers)
        self.batches = []

    def _train_step(self, plan, x, target, weight=None):
        self.batches.append(np.array(x))
        return super()._train_step(plan, x, target, weight)


def test_fit_and_train_on_batch_share_one_training_step():
    nd.manual_seed(15)
    x, y = blobs(20)
    model = Traced([nn.Dense(3, activation="softmax")])
    model.compile(optimizer=optim.SGD(lr=0.1), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert [len(b) for b in model.batches] == [8, 8, 4]
    model.train_on_batch(x[:5], y[:5])
    assert len(model.batches) == 4 and np.array_equal(model.batches[-1], x[:5])
    assert model.optimizer.step_count == 4


def test_the_epoch_order_comes_from_one_overridable_method():
    class Reversed(Traced):
        def _epoch_order(self, n, shuffle):
            return np.arange(n)[::-1].copy()

    x, y = blobs(12)
    model = Reversed([nn.Dense(3, activation="softmax")])
    model.compile(optimizer=optim.SGD(lr=0.0), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=5, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.concatenate(model.batches), x[::-1])


def test_reported_logs_come_from_the_reduced_totals():
    # a data-parallel fit sums the EpochTotals across processes; here "two processes"
    # that saw the same samples: the averages must not change, the counts double.
    seen = []

    class Doubled(nn.Sequential):
        def _reduce_totals(self, totals):
            seen.append(list(totals.values))
            totals.values = [2 * v for v in totals.values]
            return totals

    nd.manual_seed(16)
    x, y = blobs(20)
    model = Doubled([nn.Dense(3, activation="softmax")])
    model.compile(optimizer=optim.SGD(lr=0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    loss_sum, count, weight, correct = seen[0]
    assert count == 20 and weight == 20
    assert history.history["loss"][0] == pytest.approx(loss_sum / count)
    assert history.history["accuracy"][0] == pytest.approx(correct / 20)
    loss, accuracy = model.evaluate(x, y)
    assert history.history["loss"][0] == pytest.approx(loss, rel=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(accuracy)


def test_progress_is_printed_by_a_callback_only():
    # verbose=0 with an explicit ProgressBar prints exactly what verbose=2 prints
    x, y = blobs(20)
    stream = io.StringIO()
    classifier().fit(x, y, epochs=2, verbose=0, callbacks=[callbacks.ProgressBar(2, stream=stream)])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 - ") and "accuracy: " in lines[1]
    assert "lr" not in stream.getvalue()
    with pytest.raises(ValueError, match="verbose"):
        callbacks.ProgressBar(0)


def test_the_logits_fusion_is_named():
    from nanodl.nn.model import fuse_logits
    model = classifier()
    model.build((None, 4))
    forward, loss_fn, kind = fuse_logits(model, "sparse_categorical_crossentropy", {})
    assert kind == "softmax"
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(forward(nd.tensor(x)).data, model[1].pre_activation(model[0](nd.tensor(x))).data)
    assert fuse_logits(model, "mse", {}) is None
    assert fuse_logits(model, "sparse_categorical_crossentropy", {"from_logits": True}) is None


# ---------------------------------------------------------------- hostile inputs (issue 9)
def test_metrics_with_a_callable_loss_do_not_broadcast():
    # (N, 1) outputs against (N,) targets: a broadcast would compare every pair (N x N)
    nd.manual_seed(17)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = nn.Sequential([nn.Dense(1, activation="sigmoid")])
    model.compile(optimizer=optim.SGD(lr=0.0), metrics=["accuracy", "mae", "mse"],
                  loss=lambda pred, target: ((pred - target.reshape(-1, 1)) ** 2).mean())
    history = model.fit(x, y, batch_size=40, epochs=1, verbose=0)
    pred = model.predict(x)[:, 0]
    expected = {"accuracy": ((pred > 0.5) == (y > 0.5)).mean(), "mae": np.abs(pred - y).mean(),
                "mse": ((pred - y) ** 2).mean()}
    for name, value in expected.items():
        assert history.history[name][0] == pytest.approx(value, rel=1e-5), name
    _, accuracy, mae, mse = model.evaluate(x, y)
    assert (accuracy, mae, mse) == pytest.approx(tuple(expected.values()), rel=1e-5)
    # a real mismatch is an error naming the metric and both shapes
    wide = nn.Sequential([nn.Dense(1)])
    wide.compile(optimizer="sgd", metrics=["mae"], loss=lambda pred, target: (pred * 0).sum())
    with pytest.raises(ValueError, match=r"metric 'mae'.*\(8, 3\).*\(8, 1\)"):
        wide.evaluate(x[:8], np.zeros((8, 3)))


def test_sparse_accuracy_with_column_labels_and_a_callable_loss():
    nd.manual_seed(18)
    x, y = blobs(30)
    model = nn.Sequential([nn.Dense(3)])
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=lambda pred, target: losses.sparse_categorical_crossentropy(
                      pred, target.data.reshape(-1).astype(np.int64), from_logits=True))
    model.build((None, 4))
    _, accuracy = model.evaluate(x, y[:, None])
    assert accuracy == pytest.approx((model.predict(x).argmax(1) == y).mean())


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5, "32", True])
def test_evaluate_and_predict_validate_batch_size(batch_size):
    x, y = blobs(10)
    model = classifier()
    model.fit(x, y, verbose=0)
    for call in (lambda: model.evaluate(x, y, batch_size=batch_size),
                 lambda: model.predict(x, batch_size=batch_size),
                 lambda: model.fit(x, y, batch_size=batch_size, verbose=0)):
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            call()


def test_batch_size_none_means_32_everywhere():
    x, y = blobs(40)
    model = classifier()
    model.fit(x, y, batch_size=None, verbose=0)
    assert model.evaluate(x, y, batch_size=None) == pytest.approx(model.evaluate(x, y))
    np.testing.assert_array_equal(model.predict(x, batch_size=None), model.predict(x))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy's, on NaN
@pytest.mark.parametrize("where", ["x", "y"])
def test_fit_warns_once_on_nan_or_inf_data(where):
    x, y = blobs(20)
    y = y.astype(np.float32)
    if where == "x":
        x[3, 1] = np.nan
    else:
        y[5] = np.inf
    model = nn.Sequential([nn.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(RuntimeWarning, match=rf"fit: {where} holds NaN or inf") as record:
        model.fit(x, y, epochs=3, verbose=0)
    assert len([w for w in record if str(w.message).startswith("fit:")]) == 1


def test_fit_on_clean_data_does_not_warn():
    import warnings
    x, y = blobs(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classifier().fit(x, y, epochs=1, verbose=0)
