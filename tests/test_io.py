"""Tests for nanodl.io: save/load of state dicts and models, atomic writes, bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

import nanodl as nd
from nanodl import io as nd_io
from nanodl import nn, optim, regularizers


def trained_model():
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    model = nn.Sequential([
        nn.Dense(16, activation="relu", kernel_regularizer=regularizers.l2(1e-3)),
        nn.BatchNorm(momentum=0.9),
        nn.Dropout(0.2),
        nn.Dense(8, activation="leaky_relu", kernel_initializer="he_normal"),
        nn.LayerNorm(),
        nn.Dense(3, activation="softmax")])
    model.compile(optimizer=optim.Adam(lr=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    return model, x, y


# ---------------------------------------------------------------- state dicts
def test_state_dict_round_trip(tmp_path):
    path = tmp_path / "state.npz"
    state = {"layer.kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
             "layer.steps": np.array([1, 2], dtype=np.int64), "scalar": np.float64(2.5)}
    nd.save(state, path)
    loaded = nd.load(path)
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert isinstance(loaded[name], np.ndarray) and loaded[name].dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(loaded[name], value)


def test_module_state_dict_round_trip(tmp_path):
    model, x, _ = trained_model()
    nd.save(model.state_dict(), tmp_path / "weights.npz")
    fresh = nn.Sequential([nn.Dense(16, activation="relu"), nn.BatchNorm(momentum=0.9), nn.Dropout(0.2),
                           nn.Dense(8, activation="leaky_relu"), nn.LayerNorm(),
                           nn.Dense(3, activation="softmax")])
    fresh.build((None, 5))
    fresh.load_state_dict(nd.load(tmp_path / "weights.npz"))
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


def test_save_rejects_object_arrays(tmp_path):
    with pytest.raises(TypeError, match="object"):
        nd.save({"bad": np.array([{"a": 1}], dtype=object)}, tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == []  # no temporary file left behind


# ---------------------------------------------------------------- models
def test_model_round_trip_predictions_identical(tmp_path):
    model, x, y = trained_model()
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nd.load_model(path)
    assert isinstance(loaded, nn.Sequential)
    assert [type(layer).__name__ for layer in loaded] == [type(layer).__name__ for layer in model]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)
    assert np.abs(loaded[1].moving_mean).sum() > 0  # BatchNorm buffers came back
    assert loaded[0].kernel_regularizer.get_config() == {"l2": 1e-3}
    assert loaded[3].kernel_initializer is nn.init.he_normal
    # compiled with names: compiled again
    assert isinstance(loaded.optimizer, optim.Adam) and loaded.optimizer.lr == pytest.approx(0.01)
    assert loaded.loss == "sparse_categorical_crossentropy"
    np.testing.assert_allclose(loaded.evaluate(x, y), model.evaluate(x, y), rtol=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)  # and it trains


def test_model_file_is_plain_npz_without_pickle(tmp_path):
    model, _, _ = trained_model()
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    assert arrays["__architecture__"].dtype == np.uint8
    architecture = json.loads(arrays["__architecture__"].tobytes())
    assert architecture["class_name"] == "Sequential" and len(architecture["layers"]) == 6
    assert "weights/layers.1.moving_variance" in arrays
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert set(nd.load(path)) == set(model.state_dict())  # nd.load reads a model's weights


def test_float64_model_keeps_its_dtype(tmp_path):
    nd.set_default_dtype("float64")
    try:
        model = nn.Sequential([nn.Dense(2, input_dim=3)])
    finally:
        nd.set_default_dtype("float32")
    model.save(tmp_path / "m.npz")
    assert nd.load_model(tmp_path / "m.npz")[0].kernel.dtype == np.float64


def test_load_weights_and_unregistered_models(tmp_path):
    class Custom(nn.Model):
        def __init__(self):
            super().__init__()
            self.inner = nn.Dense(2, input_dim=3)

        def forward(self, x):
            return self.inner(x)

    model = Custom()
    model.save(tmp_path / "custom.npz")
    with pytest.raises(ValueError, match="Sequential"):
        nd.load_model(tmp_path / "custom.npz")
    other = Custom()
    other.load_weights(tmp_path / "custom.npz")
    np.testing.assert_array_equal(other.inner.kernel.data, model.inner.kernel.data)

    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="register"):
        nn.Sequential([Odd()]).save(tmp_path / "odd.npz")
    assert not (tmp_path / "odd.npz").exists()


# ---------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("failing", ["write_array", "fsync", "replace"])
def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch, failing):
    model, x, _ = trained_model()
    path = tmp_path / "model.npz"
    model.save(path)
    original = path.read_bytes()
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if failing == "write_array" and len(calls) < 3:  # let a few arrays through first
            return real_write(*args, **kwargs)
        raise OSError("disk full (simulated)")

    real_write = np.lib.format.write_array
    if failing == "write_array":
        monkeypatch.setattr(np.lib.format, "write_array", crash)
    else:
        monkeypatch.setattr(os, failing, crash)
    for p in model.parameters():
        p.data = p.data + 1  # the new save would differ
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file was removed
    assert nd.load_model(path) is not None


def test_save_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "state.npz"
    nd.save({"a": np.zeros(2)}, path)
    os.chmod(path, 0o640)
    nd.save({"a": np.ones(2)}, path)
    assert (os.stat(path).st_mode & 0o777) == 0o640
    np.testing.assert_array_equal(nd.load(path)["a"], np.ones(2))


# ---------------------------------------------------------------- bad files
def test_truncated_and_corrupt_files_raise_value_error(tmp_path):
    model, _, _ = trained_model()
    good = tmp_path / "model.npz"
    model.save(good)
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
        "text.npz": b"this is not a zip archive\n" * 10,
        "flipped.npz": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError):
            nd.load_model(tmp_path / name)
        with pytest.raises(ValueError):
            nd.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        nd.load(tmp_path / "missing.npz")


class Trap:
    """Unpickling this would call ``_sprung`` (it must never happen)."""
    sprung = []

    def __reduce__(self):
        return (Trap.sprung.append, ("code ran",))


def test_object_array_file_is_refused_without_running_code(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, weights=np.array([Trap()], dtype=object))
    with pytest.raises(ValueError):
        nd.load(path)
    with pytest.raises(ValueError):
        nd.load_model(path)
    model = nn.Sequential([nn.Dense(1, input_dim=1)])
    before = model.state_dict()
    with pytest.raises(ValueError):
        model.load_weights(path)
    assert Trap.sprung == []
    np.testing.assert_array_equal(model.state_dict()["layers.0.kernel"], before["layers.0.kernel"])


def rewrite(path, target, change):
    """Copy the model file at ``path`` to ``target`` with ``change(arrays)`` applied."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    change(arrays)
    np.savez(target, **arrays)


def test_mismatched_model_files_raise_value_error(tmp_path):
    model, _, _ = trained_model()
    good = tmp_path / "model.npz"
    model.save(good)

    def bad_json(arrays):
        arrays["__architecture__"] = np.frombuffer(b"{not json", dtype=np.uint8)

    def missing_weight(arrays):
        del arrays["weights/layers.0.kernel"]

    def wrong_shape(arrays):
        arrays["weights/layers.0.kernel"] = np.zeros((2, 2), dtype=np.float32)

    def unknown_layer(arrays):
        text = arrays["__architecture__"].tobytes().replace(b'"Dense"', b'"Conv9D"')
        arrays["__architecture__"] = np.frombuffer(text, dtype=np.uint8)

    def not_bytes(arrays):
        arrays["__architecture__"] = np.array(["{}"])

    for change in (bad_json, missing_weight, wrong_shape, unknown_layer, not_bytes):
        target = tmp_path / f"{change.__name__}.npz"
        rewrite(good, target, change)
        with pytest.raises(ValueError):
            nd.load_model(target)
    state_only = tmp_path / "state.npz"
    nd.save(model.state_dict(), state_only)
    with pytest.raises(ValueError, match="architecture"):
        nd.load_model(state_only)


def test_zip_without_npy_members_is_refused(tmp_path):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/a.npy", b"\x93NUMPY garbage")
    with pytest.raises(ValueError):
        nd.load(path)


def test_io_module_names():
    assert nd.save is nd_io.save and nd.load is nd_io.load and nd.load_model is nd_io.load_model
