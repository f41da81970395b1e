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


def test_zero_dimensional_arrays_keep_their_shape(tmp_path):
    nd.save({"scalar": np.float64(2.5), "empty": np.zeros((0, 3), np.int8)}, tmp_path / "s.npz")
    loaded = nd.load(tmp_path / "s.npz")
    assert loaded["scalar"].shape == () and loaded["empty"].shape == (0, 3)


# ---------------------------------------------------------------- hostile files (issue 9, 10-12)
def npy_bytes(array=None, *, shape=None, dtype=None, data=None):
    """The bytes of an .npy member; ``shape``/``dtype``/``data`` forge a lying header."""
    import io
    buffer = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
        return buffer.getvalue()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def architecture_bytes(layers):
    text = json.dumps({"format": "nanodl.model", "version": 1, "class_name": "Sequential",
                       "layers": layers, "compile": None})
    return npy_bytes(np.frombuffer(text.encode(), dtype=np.uint8))


def peak_bytes(function):
    """The most memory (bytes, NumPy's allocations included) ``function()`` held at once."""
    import tracemalloc
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def raises_value_error(function):
    def run():
        with pytest.raises(ValueError):
            function()
    return run


@pytest.mark.parametrize("layer, weight", [
    ({"class_name": "Dense", "config": {"units": 20000, "input_dim": 2000}},
     r"layers\.0\.kernel.*\(2, 2\).*\(2000, 20000\)"),
    ({"class_name": "Embedding", "config": {"input_dim": 100000, "output_dim": 400}},
     r"layers\.0\.embeddings.*\(2, 2\).*\(100000, 400\)"),
    ({"class_name": "BatchNorm", "config": {"num_features": 4000000}},
     r"layers\.0\.gamma.*\(2, 2\).*\(4000000,\)")], ids=["Dense", "Embedding", "BatchNorm"])
def test_small_file_cannot_make_load_model_build_a_large_model(tmp_path, layer, weight):
    """A few hundred bytes describing a layer of 160 MB: refused before anything is built."""
    path = tmp_path / "bomb.npz"
    name = weight.split(".*")[0].replace("\\", "")
    write_zip(path, {"__nanodl__.npy": npy_bytes(np.array("nanodl.model/1")),
                     "__architecture__.npy": architecture_bytes([layer]),
                     f"weights/{name}.npy": npy_bytes(np.zeros((2, 2), np.float32))})
    assert os.path.getsize(path) < 2000
    assert peak_bytes(raises_value_error(lambda: nd.load_model(path))) < 4 << 20
    with pytest.raises(ValueError, match=weight):
        nd.load_model(path)


def test_lying_npy_header_allocates_nothing(tmp_path):
    """A header declaring 256 MB over 12 bytes of data is refused, not allocated."""
    path = tmp_path / "liar.npz"
    write_zip(path, {"w.npy": npy_bytes(shape=(8000, 8000), dtype=np.float32, data=b"\0" * 12)})
    assert peak_bytes(raises_value_error(lambda: nd.load(path))) < 4 << 20
    with pytest.raises(ValueError, match=r"w.*\(8000, 8000\)"):
        nd.load(path)


def test_compressed_member_out_of_proportion_is_refused(tmp_path):
    """64 MB of zeros deflate to a few hundred KB: refused without inflating them."""
    path = tmp_path / "bomb.npz"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("w.npy", "w", force_zip64=True) as member:
            member.write(npy_bytes(shape=(16 << 20,), dtype=np.float32, data=b""))
            for _ in range(64):
                member.write(zeros)
    assert os.path.getsize(path) < 1 << 20
    assert peak_bytes(raises_value_error(lambda: nd.load(path))) < 4 << 20
    with pytest.raises(ValueError, match="inflate"):
        nd.load(path)
    # a compressed file of ordinary proportions (np.savez_compressed) still loads
    values = np.random.default_rng(0).standard_normal((50, 40))
    np.savez_compressed(tmp_path / "ok.npz", values=values)
    np.testing.assert_array_equal(nd.load(tmp_path / "ok.npz")["values"], values)


def central_directory_entries(data):
    """``[(offset, length)]`` of each central-directory record of a zip held in ``data``."""
    entries, position = [], data.index(b"PK\x01\x02")
    while data[position:position + 4] == b"PK\x01\x02":
        name, extra, comment = (int.from_bytes(data[position + k:position + k + 2], "little")
                                for k in (28, 30, 32))
        length = 46 + name + extra + comment
        entries.append((position, length))
        position += length
    return entries


def test_entries_hidden_by_a_damaged_directory_are_noticed(tmp_path):
    """A central-directory comment length that swallows the next entries: ValueError, not a
    partial state dict."""
    path = tmp_path / "state.npz"
    nd.save({"a": np.zeros(2), "b": np.ones(2), "c": np.full(2, 2.0)}, path)
    data = bytearray(path.read_bytes())
    entries = central_directory_entries(bytes(data))
    first, _ = entries[0]
    swallowed = sum(length for _, length in entries[1:])
    data[first + 32:first + 34] = swallowed.to_bytes(2, "little")  # comment length
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:  # zipfile itself silently sees one member
        assert len(archive.infolist()) == 1
    with pytest.raises(ValueError, match="end record counts 4 members.*holds 1"):
        nd.load(path)


@pytest.mark.parametrize("damage", ["encrypted", "patched", "method", "version"])
def test_damaged_headers_raise_value_error_only(tmp_path, damage):
    """Damage zipfile meets with NotImplementedError or RuntimeError is a ValueError here."""
    model = nn.Sequential([nn.Dense(2, input_dim=3)])
    path = tmp_path / "model.npz"
    model.save(path)
    data = bytearray(path.read_bytes())
    for start in [m.start() for m in __import__("re").finditer(b"PK\x01\x02", bytes(data))]:
        if damage == "encrypted":
            data[start + 8] |= 0x01
        elif damage == "patched":
            data[start + 8] |= 0x20
        elif damage == "method":
            data[start + 10] = 99
        else:
            data[start + 6] = 99  # "version needed to extract" 9.9
    path.write_bytes(bytes(data))
    for load in (nd.load, nd.load_model):
        with pytest.raises(ValueError) as caught:
            load(path)
        assert type(caught.value) is ValueError and "model.npz" in str(caught.value)


def rewrite_weights(path, target, change):
    """Write ``path``'s model to ``target`` with its weights passed through ``change``."""
    from nanodl import archive
    with archive.Reader(path) as reader:
        arrays = reader.read_all()
    arrays = {name: change(value) if name.startswith("weights/") else value
              for name, value in arrays.items()}
    archive.write_npz(target, arrays)


def test_load_model_converts_byte_order_and_refuses_other_dtypes(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(3, activation="tanh", input_dim=4), nn.BatchNorm()])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    model.predict(x)
    model.save(tmp_path / "model.npz")
    rewrite_weights(tmp_path / "model.npz", tmp_path / "big.npz", lambda a: a.astype(">f4"))
    loaded = nd.load_model(tmp_path / "big.npz")
    assert all(p.dtype == np.float32 and p.data.dtype.isnative for p in loaded.parameters())
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for dtype in (np.float16, np.int32, np.complex64):
        rewrite_weights(tmp_path / "model.npz", tmp_path / "odd.npz", lambda a: a.astype(dtype))
        with pytest.raises(ValueError, match=rf"load_model: .*weight 'layers\.0\.kernel' is "
                                             rf"{np.dtype(dtype)}"):
            nd.load_model(tmp_path / "odd.npz")


def test_load_model_refuses_weights_of_mixed_float_dtypes(tmp_path):
    # a float64 kernel in a float32 model used to load, then fail in every predict (TypeError)
    model = nn.Sequential([nn.Dense(3, activation="tanh", input_dim=4), nn.Dense(2)])
    model.build((4,))
    model.save(tmp_path / "model.npz")
    from nanodl import archive
    with archive.Reader(tmp_path / "model.npz") as reader:
        arrays = reader.read_all()
    arrays["weights/layers.1.kernel"] = arrays["weights/layers.1.kernel"].astype(np.float64)
    archive.write_npz(tmp_path / "mixed.npz", arrays)
    with pytest.raises(ValueError, match=r"load_model: .*weight 'layers\.1\.kernel' is float64 but "
                                         r"weight 'layers\.0\.kernel' is float32"):
        nd.load_model(tmp_path / "mixed.npz")
    rewrite_weights(tmp_path / "model.npz", tmp_path / "f64.npz", lambda a: a.astype(np.float64))
    assert nd.load_model(tmp_path / "f64.npz").predict(np.ones((1, 4))).dtype == np.float64


def test_load_of_a_fifo_or_folder_raises_instead_of_blocking(tmp_path):
    import threading
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            nd.load(fifo)
        except Exception as error:  # recorded and checked below
            outcome.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked in open(): give it a writer so the thread can end
        with open(fifo, "wb"):
            pass
        thread.join(10)
        pytest.fail("nd.load blocked on a FIFO")
    assert isinstance(outcome[0], ValueError) and "regular file" in str(outcome[0])
    with pytest.raises(ValueError, match="directory"):
        nd.load(tmp_path)


def test_non_array_members_are_refused(tmp_path):
    path = tmp_path / "mixed.npz"
    write_zip(path, {"w.npy": npy_bytes(np.arange(3.0)), "notes.txt": b"hello"})
    with pytest.raises(ValueError, match="notes.txt.*not an .npy array"):
        nd.load(path)


def test_ambiguous_names_are_refused_at_save(tmp_path):
    path = tmp_path / "state.npz"
    with pytest.raises(ValueError, match=r"'x' and 'x\.npy' are ambiguous"):
        nd.save({"x": np.zeros(1), "x.npy": np.ones(1)}, path)
    assert os.listdir(tmp_path) == []
    nd.save({"x.npy": np.ones(1)}, path)  # alone, the name is fine
    np.testing.assert_array_equal(nd.load(path)["x.npy"], np.ones(1))


KILLED_WRITER = r"""
import sys, time
import numpy as np
import nanodl as nd
real_write = np.lib.format.write_array
def slow_write(*args, **kwargs):
    real_write(*args, **kwargs)
    print("writing", flush=True)
    time.sleep(60)
np.lib.format.write_array = slow_write
nd.save({"w": np.zeros(1000)}, sys.argv[1])
"""


def test_temporary_file_of_a_killed_save_is_recognisable_and_removed(tmp_path):
    import signal
    import subprocess
    import sys
    path = tmp_path / "model.npz"
    nd.save({"w": np.ones(3)}, path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(nd.__file__)), os.environ.get("PYTHONPATH", "")]))
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
        left = [name for name in os.listdir(tmp_path) if name != "model.npz"]
        assert len(left) == 1 and left[0].startswith(".model.npz.nanodl-tmp-")
        nd.save({"w": np.zeros(3)}, tmp_path / "other.npz")  # another target: left alone
        nd.save({"w": np.zeros(3)}, path)  # the writer is alive and writing: left alone
        assert left[0] in os.listdir(tmp_path)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert left[0] in os.listdir(tmp_path)  # kill -9: nothing could clean up
    np.testing.assert_array_equal(nd.load(path)["w"], np.zeros(3))  # the earlier file is intact
    nd.save({"w": np.full(3, 2.0)}, path)  # the next save to that path removes it
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "other.npz"]
    np.testing.assert_array_equal(nd.load(path)["w"], np.full(3, 2.0))


def test_saving_over_a_symlink_writes_through_to_its_target(tmp_path):
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "weights.npz"
    nd.save({"w": np.zeros(2)}, target)
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    nd.save({"w": np.ones(2)}, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(nd.load(target)["w"], np.ones(2))
    assert os.listdir(tmp_path / "store") == ["weights.npz"]


def test_zip64_end_records_are_read(tmp_path):
    """Files over 4 GB (or 65,535 members) end with zip64 records: their counts are checked too."""
    import struct
    path = tmp_path / "state.npz"
    state = {"a": np.arange(3.0), "b": np.ones((2, 2), np.float32)}
    nd.save(state, path)
    data = path.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    _, _, _, _, entries, size, start, _ = struct.unpack("<4sHHHHIIH", data[end:end + 22])

    def with_zip64_end(count):
        record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start)
        locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
        classic = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                              0xFFFFFFFF, 0)
        return data[:end] + record + locator + classic

    path.write_bytes(with_zip64_end(entries))
    loaded = nd.load(path)
    assert list(loaded) == list(state) and all(np.array_equal(loaded[k], state[k]) for k in state)
    path.write_bytes(with_zip64_end(entries + 1))
    with pytest.raises(ValueError, match="end record counts"):
        nd.load(path)


def test_a_save_while_another_thread_trains_holds_the_weights_of_one_step(tmp_path):
    # issue 18: saving beside a training thread wrote files whose layers came from different
    # steps (45 of 638). Each file must hold a state the training actually passed through.
    import hashlib
    import threading
    from nanodl import callbacks

    def digest(state):
        return hashlib.sha1(b"".join(np.ascontiguousarray(v).tobytes() for v in state.values())).hexdigest()

    class Record(callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.add(digest(self.model.state_dict()))

    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(256, activation="tanh", input_dim=64)] +
                          [nn.Dense(256, activation="tanh") for _ in range(4)] + [nn.Dense(1)])
    model.compile(optimizer=nd.optim.SGD(lr=1e-4), loss="mse")
    x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    y = x[:, :1].copy()
    model.build((64,))
    seen = {digest(model.state_dict())}
    done = threading.Event()

    def train():
        try:
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
        finally:
            done.set()

    import sys
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a save lands inside steps
    try:
        trainer = threading.Thread(target=train)
        trainer.start()
        saved = []
        while not done.is_set() and len(saved) < 40:
            path = tmp_path / f"m{len(saved)}.npz"
            model.save(path, include_optimizer=False)
            saved.append(path)
        trainer.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(saved) >= 5
    mixed = [p.name for p in saved if digest(nd.load_model(p).state_dict()) not in seen]
    assert not mixed, f"{len(mixed)} of {len(saved)} files mix steps: {mixed[:5]}"
