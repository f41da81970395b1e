"""Callbacks (SPEC §8): each one driven by scripted logs (exact Keras semantics) and
through a real ``fit`` on a tiny model (the wiring)."""
import csv
import warnings

import numpy as np
import pytest

import nanodl as nd
from nanodl import callbacks, nn, optim


# ---------------------------------------------------------------- helpers
class FakeOptimizer:
    def __init__(self, lr):
        self.lr = lr


class FakeModel:
    """Just what callbacks touch: an optimizer, stop_training, state and save."""

    def __init__(self, lr=1.0):
        self.optimizer = FakeOptimizer(lr)
        self.stop_training = False
        self.weight = np.zeros(2)
        self.saved = []

    def state_dict(self):
        return {"weight": self.weight.copy()}

    def load_state_dict(self, state):
        self.weight = state["weight"].copy()

    def save(self, path):
        self.saved.append(str(path))


def drive(callback, model, logs_per_epoch, key="loss"):
    """Run the hooks as fit does, feeding ``{key: value}`` (or whole dicts) each epoch.

    The fake model's weight is set to the epoch index during each epoch, so a restore
    shows which epoch's weights came back. Returns the number of epochs run.
    """
    callback.set_model(model)
    callback.on_train_begin({})
    epochs_run = 0
    for epoch, logs in enumerate(logs_per_epoch):
        callback.on_epoch_begin(epoch, {})
        model.weight = np.full(2, float(epoch))
        logs = dict(logs) if isinstance(logs, dict) else {key: logs}
        callback.on_epoch_end(epoch, logs)
        epochs_run += 1
        if model.stop_training:
            break
    callback.on_train_end({})
    return epochs_run


def tiny_model(lr=0.1):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, activation="relu", input_dim=3), nn.Dense(2, activation="softmax")])
    model.compile(optimizer=optim.SGD(lr=lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


class Recorder(callbacks.Callback):
    """Records every hook call and the optimizer's lr at each batch."""

    def __init__(self):
        super().__init__()
        self.calls, self.batch_lrs = [], []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, tuple(sorted(logs))))

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))
        self.batch_lrs.append(self.model.optimizer.lr)

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch))


# ---------------------------------------------------------------- Callback and History
def test_base_callback_hooks_are_no_ops():
    callback = callbacks.Callback()
    assert callback.model is None
    model = FakeModel()
    callback.set_model(model)
    assert callback.model is model
    for hook in ("on_train_begin", "on_train_end"):
        assert getattr(callback, hook)({}) is None
    for hook in ("on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end"):
        assert getattr(callback, hook)(0, {}) is None
        assert getattr(callback, hook)(0) is None


def test_fit_calls_the_hooks_in_keras_order(tiny_data):
    x, y = tiny_data
    model, recorder = tiny_model(), Recorder()
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[recorder])
    assert recorder.model is model
    assert recorder.calls[0] == "train_begin" and recorder.calls[-1] == "train_end"
    assert recorder.calls[1:6] == [("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0),
                                   ("batch_begin", 1), ("batch_end", 1)]
    epoch_ends = [call for call in recorder.calls if call[0] == "epoch_end"]
    assert [call[1] for call in epoch_ends] == [0, 1]
    assert {"loss", "accuracy", "lr"} <= set(epoch_ends[0][2])


def test_history_records_every_key_each_epoch(tiny_data):
    x, y = tiny_data
    model = tiny_model()
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, validation_split=0.25)
    assert isinstance(history, callbacks.History)
    assert history.epoch == [0, 1, 2]
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(values) == 3 for values in history.history.values())
    assert history.history["lr"] == pytest.approx([0.1] * 3)
    assert all(np.isfinite(history.history["loss"]))


def test_history_resets_on_train_begin():
    history = callbacks.History()
    drive(history, FakeModel(), [{"loss": 1.0, "acc": 0.5}, {"loss": 0.5, "acc": 0.7}])
    assert history.history == {"loss": [1.0, 0.5], "acc": [0.5, 0.7]} and history.epoch == [0, 1]
    drive(history, FakeModel(), [{"loss": 3.0}])
    assert history.history == {"loss": [3.0]} and history.epoch == [0]


# ---------------------------------------------------------------- LearningRateScheduler
def test_scheduler_with_epoch_only(tiny_data):
    x, y = tiny_data
    model, recorder = tiny_model(lr=0.1), Recorder()
    scheduler = callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[scheduler, recorder])
    expected = [0.1, 0.05, 0.1 / 3]
    assert history.history["lr"] == pytest.approx(expected)
    # applied at the start of each epoch: every batch of epoch k ran with schedule(k)
    assert recorder.batch_lrs == pytest.approx([rate for rate in expected for _ in range(2)])


def test_scheduler_with_epoch_and_lr(tiny_data):
    x, y = tiny_data
    model = tiny_model(lr=0.1)
    scheduler = callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[scheduler])
    assert history.history["lr"] == pytest.approx([0.05, 0.025, 0.0125])
    assert model.optimizer.lr == pytest.approx(0.0125)


def test_scheduler_arity_detection():
    def by_epoch(epoch):
        return 0.5

    def by_epoch_and_lr(epoch, lr):
        return lr / 2

    def with_default(epoch, lr=None):  # two positional parameters: called with lr
        return 0.25 if lr is None else lr * 3

    for schedule, expected in ((by_epoch, 0.5), (by_epoch_and_lr, 0.5), (with_default, 3.0)):
        model = FakeModel(lr=1.0)
        scheduler = callbacks.LearningRateScheduler(schedule)
        scheduler.set_model(model)
        scheduler.on_epoch_begin(0)
        assert model.optimizer.lr == pytest.approx(expected)


def test_scheduler_rejects_a_non_number():
    scheduler = callbacks.LearningRateScheduler(lambda epoch: "fast")
    scheduler.set_model(FakeModel())
    with pytest.raises(ValueError, match="schedule"):
        scheduler.on_epoch_begin(0)


def test_scheduler_verbose_prints(capsys):
    scheduler = callbacks.LearningRateScheduler(lambda epoch: 0.01, verbose=1)
    scheduler.set_model(FakeModel())
    scheduler.on_epoch_begin(4)
    assert "Epoch 5" in capsys.readouterr().out


# ---------------------------------------------------------------- EarlyStopping
def test_early_stopping_patience_zero():
    model = FakeModel()
    stopper = callbacks.EarlyStopping(monitor="loss")
    assert drive(stopper, model, [1.0, 0.9, 0.95, 0.5]) == 3
    assert model.stop_training and stopper.stopped_epoch == 2 and stopper.best == 0.9


def test_early_stopping_patience():
    model = FakeModel()
    stopper = callbacks.EarlyStopping(monitor="loss", patience=2)
    assert drive(stopper, model, [1.0, 0.9, 0.95, 0.91, 0.5]) == 4
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    # an improvement within the patience window resets the count
    model = FakeModel()
    assert drive(callbacks.EarlyStopping(monitor="loss", patience=2), model, [1.0, 1.1, 0.8, 0.9]) == 4
    assert not model.stop_training


def test_early_stopping_min_delta():
    model = FakeModel()
    stopper = callbacks.EarlyStopping(monitor="loss", min_delta=0.1, patience=1)
    assert drive(stopper, model, [1.0, 0.95, 0.5]) == 2  # 0.05 better is not an improvement
    model = FakeModel()
    assert drive(callbacks.EarlyStopping(monitor="loss", min_delta=0.1, patience=1),
                 model, [1.0, 0.8, 0.6]) == 3


def test_early_stopping_mode():
    # auto: accuracies are maximised
    model = FakeModel()
    assert drive(callbacks.EarlyStopping(monitor="val_accuracy"), model, [0.5, 0.6, 0.55, 0.9],
                 key="val_accuracy") == 3
    # explicit max on a name without 'acc'
    model = FakeModel()
    assert drive(callbacks.EarlyStopping(monitor="score", mode="max"), model, [1.0, 2.0, 1.5],
                 key="score") == 3
    # explicit min on an accuracy: rising counts as no improvement
    model = FakeModel()
    assert drive(callbacks.EarlyStopping(monitor="val_accuracy", mode="min"), model, [0.5, 0.6, 0.4],
                 key="val_accuracy") == 2
    with pytest.raises(ValueError, match="mode"):
        callbacks.EarlyStopping(mode="up")


def test_early_stopping_restores_best_weights_when_stopped():
    model = FakeModel()
    stopper = callbacks.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    drive(stopper, model, [1.0, 0.5, 0.7, 0.8, 0.1])
    assert stopper.stopped_epoch == 2
    np.testing.assert_array_equal(model.weight, [1.0, 1.0])  # epoch 1 was the best


def test_early_stopping_restores_best_weights_at_train_end():
    model = FakeModel()
    drive(callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True),
          model, [1.0, 0.2, 0.7])
    assert not model.stop_training
    np.testing.assert_array_equal(model.weight, [1.0, 1.0])
    model = FakeModel()  # without the flag the last weights stay
    drive(callbacks.EarlyStopping(monitor="loss", patience=5), model, [1.0, 0.2, 0.7])
    np.testing.assert_array_equal(model.weight, [2.0, 2.0])


def test_early_stopping_warns_on_a_missing_key():
    model = FakeModel()
    with pytest.warns(RuntimeWarning, match="val_loss"):
        assert drive(callbacks.EarlyStopping(), model, [1.0, 2.0, 3.0]) == 3
    assert not model.stop_training


def test_early_stopping_ends_fit(tiny_data):
    x, y = tiny_data
    model = tiny_model()
    stopper = callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1)
    history = model.fit(x, y, batch_size=20, epochs=10, verbose=0, callbacks=[stopper])
    assert history.epoch == [0, 1] and stopper.stopped_epoch == 1


def test_early_stopping_restores_real_weights(tiny_data):
    x, y = tiny_data
    model = tiny_model(lr=0.5)
    stopper = callbacks.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)

    class Snapshots(callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.states = []

        def on_epoch_end(self, epoch, logs=None):
            self.states.append((logs["loss"], self.model.state_dict()))

    snapshots = Snapshots()
    model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[snapshots, stopper])
    best_state = min(snapshots.states, key=lambda item: item[0])[1]
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, best_state[name])


def test_stop_training_from_a_custom_callback(tiny_data):
    x, y = tiny_data

    class StopAfterOne(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model = tiny_model()
    history = model.fit(x, y, batch_size=20, epochs=5, verbose=0, callbacks=[StopAfterOne()])
    assert history.epoch == [0]


# ---------------------------------------------------------------- ModelCheckpoint
def test_checkpoint_formats_the_filename(tiny_data, tmp_path):
    x, y = tiny_data
    model = tiny_model()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}-{loss:.2f}.npz"), monitor="loss")
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[checkpoint])
    expected = sorted(f"ckpt-{epoch + 1:02d}-{loss:.2f}.npz"
                      for epoch, loss in zip(history.epoch, history.history["loss"]))
    assert sorted(path.name for path in tmp_path.iterdir()) == expected
    loaded = nd.load_model(tmp_path / expected[-1])
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)


def test_checkpoint_save_weights_only(tiny_data, tmp_path):
    x, y = tiny_data
    model = tiny_model()
    checkpoint = callbacks.ModelCheckpoint(tmp_path / "sub" / "w-{epoch}.npz", monitor="loss",
                                           save_weights_only=True)
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[checkpoint])
    state = nd.load(tmp_path / "sub" / "w-2.npz")  # the folder is created
    assert set(state) == set(model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(state[name], value)


def test_checkpoint_save_best_only(tmp_path):
    model = FakeModel()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "best-{epoch}.npz"), save_best_only=True)
    drive(checkpoint, model, [1.0, 0.8, 0.9, 0.7, 0.75], key="val_loss")
    assert [p.rsplit("/", 1)[-1] for p in model.saved] == ["best-1.npz", "best-2.npz", "best-4.npz"]
    model = FakeModel()  # mode auto maximises accuracies
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "acc-{epoch}.npz"), monitor="val_accuracy",
                                           save_best_only=True)
    drive(checkpoint, model, [0.5, 0.4, 0.6], key="val_accuracy")
    assert [p.rsplit("/", 1)[-1] for p in model.saved] == ["acc-1.npz", "acc-3.npz"]


def test_checkpoint_every_epoch_and_missing_fields(tmp_path):
    model = FakeModel()
    drive(callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:03d}.npz")), model, [1.0, 2.0])
    assert [p.rsplit("/", 1)[-1] for p in model.saved] == ["m-001.npz", "m-002.npz"]
    with pytest.raises(KeyError, match="val_loss"):
        drive(callbacks.ModelCheckpoint(str(tmp_path / "{val_loss}.npz")), FakeModel(), [1.0])
    with pytest.warns(RuntimeWarning, match="val_loss"):
        drive(callbacks.ModelCheckpoint(str(tmp_path / "x.npz"), save_best_only=True), FakeModel(), [1.0])


# ---------------------------------------------------------------- ReduceLROnPlateau
def lrs_after_each_epoch(callback, values, lr=1.0, key="loss"):
    model, lrs = FakeModel(lr=lr), []
    callback.set_model(model)
    callback.on_train_begin({})
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {key: value})
        lrs.append(model.optimizer.lr)
    return lrs


def test_reduce_lr_on_plateau_patience_and_min_lr():
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)
    assert lrs_after_each_epoch(reduce, [1.0] * 5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_lr=0.3)
    assert lrs_after_each_epoch(reduce, [1.0] * 4) == pytest.approx([1, 0.5, 0.3, 0.3])


def test_reduce_lr_on_plateau_improvement_min_delta_and_cooldown():
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    assert lrs_after_each_epoch(reduce, [1.0, 0.9, 0.8, 0.79995]) == pytest.approx([1, 1, 1, 0.5])
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2)
    assert lrs_after_each_epoch(reduce, [1.0] * 6) == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.25])
    reduce = callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)  # auto: max
    assert lrs_after_each_epoch(reduce, [0.5, 0.6, 0.55], key="val_accuracy") == pytest.approx([1, 1, 0.5])
    with pytest.raises(ValueError, match="factor"):
        callbacks.ReduceLROnPlateau(factor=1.5)


def test_reduce_lr_on_plateau_in_fit(tiny_data):
    x, y = tiny_data
    model = tiny_model(lr=0.1)
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)
    history = model.fit(x, y, batch_size=20, epochs=4, verbose=0, callbacks=[reduce])
    # never an improvement of 100: halved at the end of every epoch but the first
    # ('lr' is the rate used during the epoch)
    assert history.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert model.optimizer.lr == pytest.approx(0.0125)


# ---------------------------------------------------------------- CSVLogger
def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csv_logger_writes_a_row_per_epoch(tiny_data, tmp_path):
    x, y = tiny_data
    path = tmp_path / "log.csv"
    seen_rows = []

    class PeekFile(callbacks.Callback):  # runs after the logger: the row is already on disk
        def on_epoch_end(self, epoch, logs=None):
            seen_rows.append(len(read_csv(path)))

    model = tiny_model()
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[callbacks.CSVLogger(path), PeekFile()])
    rows = read_csv(path)
    keys = sorted(history.history)
    assert rows[0] == ["epoch", *keys]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    for row, epoch in zip(rows[1:], range(3)):
        for key, text in zip(keys, row[1:]):
            assert float(text) == pytest.approx(history.history[key][epoch])
    assert seen_rows == [2, 3, 4]  # flushed each epoch


def test_csv_logger_append_and_separator(tmp_path):
    path = tmp_path / "log.tsv"
    drive(callbacks.CSVLogger(path, separator="\t"), FakeModel(), [{"loss": 1.0, "acc": 0.5}])
    drive(callbacks.CSVLogger(path, separator="\t", append=True), FakeModel(), [{"loss": 0.5, "acc": 0.75}])
    assert path.read_text().splitlines() == ["epoch\tacc\tloss", "0\t0.5\t1.0", "0\t0.75\t0.5"]
    drive(callbacks.CSVLogger(path), FakeModel(), [{"loss": 2.0}])  # no append: a fresh file
    assert path.read_text().splitlines() == ["epoch,loss", "0,2.0"]


def test_callbacks_are_quiet_by_default(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive(callbacks.EarlyStopping(monitor="loss", restore_best_weights=True), FakeModel(), [1.0, 2.0])
        drive(callbacks.ReduceLROnPlateau(monitor="loss", patience=0), FakeModel(), [1.0, 2.0])
    assert capsys.readouterr().out == ""


def test_terminate_on_nan_stops_after_the_epoch_of_the_first_bad_batch(capsys):
    import warnings

    from nanodl import nn, optim
    x = np.ones((12, 2), dtype=np.float32)
    y = np.ones(12, dtype=np.float32)
    y[7] = np.nan  # the batch of samples 6..7 (batch 3) has a NaN loss
    model = nn.Sequential([nn.Dense(1)])
    model.compile(optimizer=optim.SGD(lr=0.01), loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = model.fit(x, y, batch_size=2, epochs=4, verbose=0, shuffle=False,
                            callbacks=[callbacks.TerminateOnNaN()])
    assert "Batch 3: Invalid loss, terminating training" in capsys.readouterr().out
    assert history.epoch == [0] and np.isnan(history.history["loss"][0])
    assert model.optimizer.step_count == 6  # the epoch's 6 batches (stop_training: after the epoch)
    clean = nn.Sequential([nn.Dense(1)])
    clean.compile(optimizer="sgd", loss="mse")
    assert clean.fit(x[:6], y[:6], epochs=3, verbose=0,
                     callbacks=[callbacks.TerminateOnNaN()]).epoch == [0, 1, 2]


def test_callback_list_hooks_take_keras_argument_names():
    # CallbackList's relays keep Keras' parameter names (epoch, batch, logs), so keyword calls work
    import inspect
    from nanodl.callbacks import CallbackList
    seen = []

    class Note(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch", epoch, logs))

        def on_batch_begin(self, batch, logs=None):
            seen.append(("batch", batch, logs))

    relays = CallbackList([Note()], model=None)
    relays.on_epoch_end(epoch=3, logs={"loss": 0.5})
    relays.on_batch_begin(batch=1)
    relays.on_train_begin()
    assert seen == [("epoch", 3, {"loss": 0.5}), ("batch", 1, None)]
    assert list(inspect.signature(CallbackList.on_epoch_begin).parameters) == ["self", "epoch", "logs"]
    assert list(inspect.signature(CallbackList.on_batch_end).parameters) == ["self", "batch", "logs"]
