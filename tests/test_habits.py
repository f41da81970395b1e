"""The habits PyTorch and Keras users bring (SPEC §16, §1's NumPy scalars): each
spelling works, and each error names what the user can act on."""
import io
import os
import warnings

import numpy as np
import pytest

import nanodl as nd
import nanodl.functional as F
from nanodl import callbacks, losses, nn, optim


def binary_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x, (x[:, 0] > 0.3).astype(np.float32)


# ---------------------------------------------------------------- tensors
def test_numpy_scalars_keep_their_dtype():
    assert nd.tensor(np.float64(0.3)).dtype == np.float64  # was float32
    assert nd.tensor(np.float64(0.3)).item() == 0.3
    assert nd.tensor(np.float32(0.3)).dtype == np.float32
    assert nd.tensor(0.3).dtype == nd.get_default_dtype()  # Python floats: the default
    assert nd.tensor([np.float64(0.3)]).dtype == nd.get_default_dtype()  # a list is a list


def test_float_and_int_of_one_element_tensors():
    assert float(nd.tensor([1.5])) == 1.5 and int(nd.tensor([[3.7]])) == 3
    assert float(nd.tensor(2.0, requires_grad=True) * 2) == 4.0
    with pytest.raises(ValueError, match="one-element"):
        float(nd.tensor([1.0, 2.0]))


# ---------------------------------------------------------------- layers
def test_dense_input_shape_is_input_dim():
    layer = nn.Dense(4, input_shape=(10,))
    assert layer.input_dim == 10 and layer.kernel.shape == (10, 4)
    with pytest.raises(ValueError, match="input_shape"):
        nn.Dense(4, input_shape=(10, 2))
    with pytest.raises(ValueError, match="disagree"):
        nn.Dense(4, input_dim=3, input_shape=(10,))


@pytest.mark.parametrize("function, name", [(nd.tanh, "tanh"), (F.relu, "relu"),
                                            (nd.Tensor.sigmoid, "sigmoid"), (F.softmax, "softmax")])
def test_dense_activation_built_in_callable_becomes_its_name_and_saves(tmp_path, function, name):
    model = nn.Sequential([nn.Dense(3, activation=function, input_dim=2)])
    assert model[0].activation == name
    model.save(tmp_path / "m.npz")
    assert nd.load_model(tmp_path / "m.npz")[0].activation == name


def swish(x):
    return x * x.sigmoid()


def test_dense_activation_any_callable_trains_but_does_not_save(tmp_path):
    nd.manual_seed(0)
    layer = nn.Dense(3, activation=swish, input_dim=2)
    x = nd.tensor(np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32))
    expected = swish(x @ layer.kernel + layer.bias)
    np.testing.assert_allclose(layer(x).data, expected.data, rtol=1e-6)
    model = nn.Sequential([layer, nn.Dense(1)])
    with pytest.raises(ValueError, match="swish"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_dense_activation_callable_under_the_captured_step():
    """A captured step runs the user's activation too (not a linear Dense)."""
    x, y = binary_data()
    results = []
    for capture in (False, True):
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(8, activation=swish, input_dim=3), nn.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        results.append(model.fit(x, y, epochs=2, verbose=0, shuffle=False,
                                 capture=capture).history["loss"])
    assert results[0] == results[1]


def test_build_is_called_once_before_the_first_forward():
    calls = []

    class Scale(nn.Module):  # a Keras-style custom layer: weights made in build
        def build(self, input_shape):
            calls.append(input_shape)
            self.scale = nn.Parameter(np.full(input_shape[-1], 2.0, np.float32))

        def forward(self, x):
            return x * self.scale

    model = nn.Sequential([nn.Dense(4, input_dim=3), Scale(), nn.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = binary_data()
    model.fit(x, y, epochs=2, verbose=0)
    model.predict(x)
    assert calls == [(2, 4)]  # once, with the shape of its first input
    assert model[1].built and model[1].scale.grad is not None  # and it trained
    assert "layers.1.scale" in model.state_dict()


# ---------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_learning_rate_is_lr(name):
    opt = optim.OPTIMIZERS[name](learning_rate=0.123)
    assert opt.lr == opt.learning_rate == 0.123
    opt.learning_rate = 0.5
    assert opt.lr == 0.5
    with pytest.raises(TypeError, match="learning_rate"):
        optim.OPTIMIZERS[name](lr=0.1, learning_rate=0.2)



def test_learning_rate_follows_a_subclass_lr():
    # learning_rate goes through lr, so an optimizer that overrides lr gets it under both names
    class Halved(optim.SGD):
        @property
        def lr(self):
            return self._lr / 2

        @lr.setter
        def lr(self, value):
            self._lr = float(value)

    opt = Halved(lr=0.5)
    assert opt.learning_rate == opt.lr == 0.25
    opt.learning_rate = 0.2
    assert opt._lr == 0.2 and opt.learning_rate == 0.1

def stepped(name, **options):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(3, input_dim=2), nn.Dense(1, input_dim=3)])
    opt = optim.OPTIMIZERS[name](model.parameters(), **options)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    opt.step()
    return model, opt


def same_tree(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same_tree(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_tree(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a != a and b != b)


@pytest.mark.parametrize("name, options", [("sgd", {"momentum": 0.9}), ("adam", {"amsgrad": True}),
                                           ("adamw", {}), ("adagrad", {}),
                                           ("rmsprop", {"centered": True, "momentum": 0.5})])
def test_optimizer_state_dict_saves_and_loads_exactly(tmp_path, name, options):
    model, opt = stepped(name, **options)
    opt.lr = 0.000375  # a scheduler lowered it
    nd.save(opt.state_dict(), tmp_path / "opt.npz")  # was: "'state' is an object array"
    loaded = nd.load(tmp_path / "opt.npz")
    same_tree(loaded, opt.state_dict())
    fresh = optim.OPTIMIZERS[name](model.parameters(), **options)
    fresh.load_state_dict(loaded)
    same_tree(fresh.state_dict(), opt.state_dict())
    assert fresh.lr == 0.000375


def test_nested_state_round_trip_and_damage(tmp_path):
    state = {"a": 1, "b": [0.1, float("inf"), None, True, "text"], "c": (2, 3),
             "d": {"x": np.arange(3.0), 7: np.int32(5), "deep": [{"z": np.zeros((2, 0))}]},
             "e": np.float64(0.3), "f": float("nan")}
    path = tmp_path / "tree.npz"
    nd.save(state, path)
    same_tree(nd.load(path), state)
    with pytest.raises(TypeError, match="d/obj"):
        nd.save({"d": {"obj": object()}}, tmp_path / "bad.npz")
    from nanodl import nested
    tree, arrays = nested.flatten(state)
    arrays["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match="does not name"):
        nested.unflatten(tree, arrays)
    with pytest.raises(ValueError, match="missing or named twice"):
        nested.unflatten({"list": [{"array": "x"}, {"array": "x"}]}, {"x": np.zeros(1)})
    with pytest.raises(ValueError, match="unknown node"):
        nested.unflatten({"set": []}, {})


# ---------------------------------------------------------------- compile, fit, evaluate
def test_metrics_may_be_one_name():
    x, y = binary_data()
    model = nn.Sequential([nn.Dense(1, activation="sigmoid", input_dim=3)])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics="accuracy")  # was: 'a'
    assert "accuracy" in model.fit(x, y, epochs=1, verbose=0).history


def by_hand(pred, y):
    predicted, actual = pred[:, 0] > 0.5, y > 0.5
    hits = (predicted & actual).sum()
    return {"rmse": float(np.sqrt(np.mean((pred[:, 0] - y) ** 2))),
            "precision": hits / predicted.sum(), "recall": hits / actual.sum()}


@pytest.mark.parametrize("activation, loss", [("sigmoid", "binary_crossentropy"),
                                              ("sigmoid", "mse")])
def test_rmse_precision_recall_are_computed_over_the_whole_epoch(activation, loss):
    """Batches of 4 where per-batch averages would differ from the epoch's values."""
    x, y = binary_data(n=40)
    model = nn.Sequential([nn.Dense(1, activation=activation, input_dim=3)])
    model.set_weights([np.array([[1.0], [0.8], [0.0]], np.float32), np.zeros(1, np.float32)])
    model.compile(optimizer=optim.SGD(lr=0.0), loss=loss, metrics=["rmse", "precision", "recall"])
    logs = model.evaluate(x, y, batch_size=4, return_dict=True)
    expected = by_hand(model.predict(x), y)
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)  # lr 0: same model
    for key, value in expected.items():
        assert history.history[key][0] == pytest.approx(value, rel=1e-5), key
    per_batch = [np.sqrt(np.mean((model.predict(x[i:i + 4])[:, 0] - y[i:i + 4]) ** 2))
                 for i in range(0, 40, 4)]
    assert abs(np.mean(per_batch) - expected["rmse"]) > 1e-3  # the test can tell the difference


def test_callable_metrics_are_reported_under_their_name():
    x, y = binary_data()

    def max_error(pred, target):  # arrays; targets come shaped like the predictions
        return float(np.max(np.abs(pred - target)))

    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer="sgd", loss="mse", metrics=[max_error, "mae"])
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True)
    assert list(logs) == ["loss", "max_error", "mae"]
    assert logs["max_error"] == pytest.approx(np.max(np.abs(model.predict(x)[:, 0] - y)), rel=1e-6)


def test_evaluate_return_dict():
    x, y = binary_data()
    model = nn.Sequential([nn.Dense(1, activation="sigmoid", input_dim=3)])
    model.compile(loss="binary_crossentropy", metrics=["accuracy"])
    as_list = model.evaluate(x, y)
    as_dict = model.evaluate(x, y, return_dict=True)
    assert list(as_dict) == ["loss", "accuracy"] and list(as_dict.values()) == as_list
    model.compile(loss="binary_crossentropy")
    assert model.evaluate(x, y, return_dict=True) == {"loss": model.evaluate(x, y)}


def test_a_feature_count_that_does_not_fit_names_the_layer_and_the_users_shape():
    model = nn.Sequential([nn.Dense(64, activation="relu", input_dim=10), nn.Dense(1)])
    model.compile(loss="mse")
    x, y = np.zeros((100, 5), np.float32), np.zeros(100, np.float32)
    for call in (lambda: model.fit(x, y, verbose=0, validation_split=0.2),
                 lambda: model.evaluate(x, y), lambda: model.predict(x)):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "(100, 5)" in message and "layer 0" in message and "layers.0" in message \
            and "Dense" in message and "10" in message, message
        assert "(2, 5)" not in message  # not an internal probe's shape
    deeper = nn.Sequential([nn.Dense(8, input_dim=5), nn.Dense(1, input_dim=3)])
    deeper.compile(loss="mse")
    with pytest.raises(ValueError, match=r"\(100, 5\).*layer 1 \('layers.1', Dense\)"):
        deeper.fit(x, y, verbose=0)


@pytest.mark.parametrize("loss, fix", [("sparse_categorical_crossentropy", "softmax"),
                                       ("categorical_crossentropy", "softmax"),
                                       ("binary_crossentropy", "sigmoid")])
def test_a_probability_loss_on_a_head_without_activation_warns_once(loss, fix):
    model = nn.Sequential([nn.Dense(8, activation="relu", input_dim=4), nn.Dense(2)])
    with pytest.warns(UserWarning, match=f"activation='{fix}'.*from_logits=True") as caught:
        model.compile(optimizer="adam", loss=loss)
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.compile(loss=losses.LOSS_CLASSES[loss](from_logits=True))
        nn.Sequential([nn.Dense(2, activation=fix)]).compile(loss=loss)
        model.compile(loss="mse")


# ---------------------------------------------------------------- epochs and checkpoints
def test_initial_epoch_counts_epochs_schedules_and_the_bar_from_it():
    x, y = binary_data()
    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer="sgd", loss="mse")
    seen, stream = [], io.StringIO()
    schedule = callbacks.LearningRateScheduler(lambda epoch: seen.append(epoch) or 0.01)
    history = model.fit(x, y, epochs=5, initial_epoch=3, verbose=0,
                        callbacks=[schedule, callbacks.ProgressBar(2, stream=stream)])
    assert history.epoch == [3, 4] and seen == [3, 4] and model.epochs_trained == 5
    assert stream.getvalue().startswith("Epoch 4/5")
    with pytest.raises(ValueError, match="initial_epoch"):
        model.fit(x, y, initial_epoch=-1, verbose=0)


def test_model_checkpoint_format_fields_and_weights_only(tmp_path):
    x, y = binary_data()
    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer="adam", loss="mse")
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.npz")
    history = model.fit(x, y, epochs=2, verbose=0, validation_split=0.25,
                        callbacks=[callbacks.ModelCheckpoint(pattern)])
    for epoch, val_loss in zip((1, 2), history.history["val_loss"]):
        assert os.path.exists(pattern.format(epoch=epoch, val_loss=val_loss))
    last = nd.load_model(pattern.format(epoch=2, val_loss=history.history["val_loss"][1]))
    assert last.epochs_trained == 2 and last.optimizer.state_dict()["step_count"] == 2
    weights = tmp_path / "w-{epoch}.npz"
    model.fit(x, y, epochs=3, initial_epoch=2, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(str(weights), "loss", False, True)])
    saved = nd.load(str(weights).format(epoch=3))
    assert sorted(saved) == sorted(model.state_dict())  # a state dict: weights only
    with pytest.raises(ValueError, match="holds no model architecture"):
        nd.load_model(str(weights).format(epoch=3))


def test_load_model_compile_false_and_a_damaged_optimizer_state(tmp_path):
    x, y = binary_data()
    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    assert nd.load_model(tmp_path / "m.npz", compile=False).optimizer is None
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["optimizer/state/exp_avg/0"] = np.zeros((7, 7), np.float32)  # a wrong shape
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="load_model"):
        nd.load_model(tmp_path / "bad.npz")


def test_a_subclassed_model_names_the_attribute_of_the_layer_that_does_not_fit():
    class Net(nn.Model):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Dense(8, input_dim=10)
            self.out = nn.Dense(1)

        def forward(self, x):
            return self.out(self.hidden(x))

    model = Net()
    model.compile(loss="mse")
    with pytest.raises(ValueError, match=r"\(100, 5\) does not fit layer 0 \('hidden', Dense\): "
                                         r"it takes 10 features"):
        model.fit(np.zeros((100, 5), np.float32), np.zeros(100, np.float32), verbose=0)
    assert "forward" not in model.hidden.__dict__  # the watch is removed
