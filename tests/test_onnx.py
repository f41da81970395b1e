"""nanodl.onnx.export: every layer and activation checked by onnx's checker and run by onnxruntime.

Each case exports a model, loads the file back through ``onnx.checker.check_model(...,
full_check=True)`` and compares onnxruntime's outputs with ``model.predict`` (float32,
rtol 1e-5; atol 1e-6 for outputs at or near zero, where a relative error means nothing).
Skipped when onnx or onnxruntime is not installed.
"""
import os
import sys

import numpy as np
import pytest

import nanodl as nd
from nanodl import nn
from nanodl.functional import ACTIVATIONS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nanodl.onnx import export  # noqa: E402  (after the skips: the module itself needs no onnx)

RTOL, ATOL = 1e-5, 1e-6


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_exports_exactly(model, x, tmp_path, opset=17, name="model.onnx"):
    """Export, check the file, run it; returns onnxruntime's output."""
    path = tmp_path / name
    proto = export(model, path, opset=opset)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.opset_import[0].version == opset
    assert loaded.SerializeToString() == proto.SerializeToString()
    got = session(path).run(None, {"input": x})[0]
    expected = model.predict(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    return got


def inputs(shape, scale=2.0, seed=0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_with_every_activation(activation, use_bias, tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(16, activation=activation, input_dim=6, use_bias=use_bias,
                                    bias_initializer="normal")])
    assert_exports_exactly(model, inputs((33, 6)), tmp_path)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.GELU(),
                                   nn.Softmax(), nn.Softmax(axis=1)],
                         ids=lambda layer: repr(layer))
def test_activation_layers(layer, tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(12, input_dim=5), layer])
    assert_exports_exactly(model, inputs((20, 5), scale=3.0), tmp_path)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_layer_by_name_alone(name, tmp_path):
    model = nn.Sequential([nn.Activation(name)]).build((None, 7))
    x = inputs((9, 7), scale=4.0)
    x[0, :3] = [-30.0, 30.0, 0.0]  # far tails: softplus and sigmoid must not overflow
    assert_exports_exactly(model, x, tmp_path)


@pytest.mark.parametrize("opset", [13, 17, 18, 20])
def test_gelu_is_nanodls_formula_at_every_opset(opset, tmp_path):
    """onnxruntime's Gelu(approximate='tanh') (opset 20) is 5.6e-10 off in float64."""
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(10, activation="gelu", input_dim=4), nn.GELU()])
    assert_exports_exactly(model, inputs((15, 4)), tmp_path, opset=opset)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "Gelu" not in ops


def float64_model(layers, input_shape):
    nd.set_default_dtype("float64")
    try:
        nd.manual_seed(0)
        return nn.Sequential(layers).build(input_shape)
    finally:
        nd.set_default_dtype("float32")


F64_RTOL, F64_ATOL = 1e-13, 1e-15


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float64_dense_with_every_activation_runs_and_matches(activation, opset, tmp_path):
    """Every activation in float64: softplus ran into onnxruntime's missing float64 Softplus,
    LeakyRelu's float32 alpha was 1.2e-8 off, Gelu at opset 20 5.6e-10."""
    model = float64_model([nn.Dense(16, activation=activation, bias_initializer="normal")], (None, 6))
    x = 3 * np.random.default_rng(0).standard_normal((40, 6))
    x[0] = [-40.0, 40.0, 0.0, 1e-9, -1e-9, 700.0]
    export(model, tmp_path / "m.onnx", opset=opset)
    got = session(tmp_path / "m.onnx").run(None, {"input": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(x), rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.parametrize("layer", [lambda: nn.LeakyReLU(0.01), lambda: nn.LeakyReLU(0.3), nn.Sigmoid,
                                   nn.GELU, lambda: nn.Activation("softplus"), lambda: nn.Activation("elu")],
                         ids=["leaky0.01", "leaky0.3", "sigmoid", "gelu", "softplus", "elu"])
def test_float64_activation_layers_match_to_the_last_bits(layer, tmp_path):
    model = float64_model([nn.Dense(5, bias_initializer="normal"), layer()], (None, 5))
    x = 4 * np.random.default_rng(1).standard_normal((30, 5))
    export(model, tmp_path / "m.onnx", opset=20)
    got = session(tmp_path / "m.onnx").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=F64_RTOL, atol=F64_ATOL)


def test_every_activation_record_and_activation_layer_has_an_export():
    """The exporter's table comes from the records: each activation, and each activation
    record that names a registered layer, is exportable."""
    from nanodl.backend.activations import ACTIVATIONS as RECORDS
    from nanodl.nn.layers import LAYERS
    from nanodl.onnx import SUPPORTED_LAYERS, _ACTIVATION_NODES
    assert {record.name for record in RECORDS} <= set(_ACTIVATION_NODES)
    assert {record.op for record in RECORDS if record.op in LAYERS} <= set(SUPPORTED_LAYERS)
    assert {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Dense", "Embedding"} <= set(SUPPORTED_LAYERS)


def test_an_op_onnxruntime_cannot_run_in_the_models_dtype_is_refused(monkeypatch, tmp_path):
    import nanodl.onnx as nd_onnx
    monkeypatch.setitem(nd_onnx._ACTIVATION_NODES, "softplus",
                        lambda graph, x, scope, alpha: graph.node("Softplus", [x], scope))
    model = float64_model([nn.Dense(3), nn.Activation("softplus")], (None, 2))
    with pytest.raises(ValueError, match=r"layers\.1 would need onnxruntime's Softplus in float64"):
        export(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    nd.manual_seed(0)
    export(nn.Sequential([nn.Activation("softplus")]).build((None, 2)), tmp_path / "m.onnx")  # float32 runs


def test_dropout_is_identity_after_training(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(16, activation="relu", input_dim=4), nn.Dropout(0.5),
                           nn.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    x = inputs((64, 4))
    model.fit(x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 0), epochs=2, verbose=0)
    assert_exports_exactly(model, x, tmp_path)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert "Identity" in ops and "Dropout" not in ops


def test_flatten_of_three_dimensional_inputs(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Flatten(), nn.Dense(5, activation="tanh")]).build((None, 3, 4))
    assert_exports_exactly(model, inputs((8, 3, 4)), tmp_path)


def test_dense_on_a_sequence_axis_keeps_it(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(6, activation="relu"), nn.LayerNorm(), nn.Dense(2)]).build((None, 5, 3))
    got = assert_exports_exactly(model, inputs((4, 5, 3)), tmp_path)
    assert got.shape == (4, 5, 2)


def test_trained_batchnorm_uses_its_running_statistics(tmp_path):
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256, 6)) * [1, 2, 3, 4, 5, 6] + [5, -3, 0, 2, 10, -7]).astype(np.float32)
    y = (x[:, 0] > 5).astype(np.float32)
    model = nn.Sequential([nn.BatchNorm(momentum=0.8),
                           nn.Dense(8, activation="relu"), nn.BatchNorm(), nn.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    first = model.layers[0]
    assert np.abs(first.moving_mean - [5, -3, 0, 2, 10, -7]).max() < 1.0  # non-trivial statistics
    assert first.moving_variance.max() > 10
    assert not np.allclose(first.gamma.numpy(), 1)  # and trained gamma, beta
    assert_exports_exactly(model, x[:50], tmp_path)


def test_batchnorm_and_layernorm_on_three_dimensional_inputs(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.BatchNorm(momentum=0.5), nn.LayerNorm(), nn.Flatten(), nn.Dense(3)])
    x = inputs((16, 4, 5)) + 3
    model.build((None, 4, 5))
    with model._mode(True):
        model(x)  # one training pass: the moving statistics leave 0 and 1
    assert not np.allclose(model.layers[0].moving_mean, 0)
    assert_exports_exactly(model, x, tmp_path)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_layernorm_across_the_reduce_mean_signature_change(opset, tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, input_dim=3), nn.LayerNorm(epsilon=1e-3, num_features=8)])
    model.layers[1].gamma.data[:] = np.linspace(0.5, 2, 8)
    assert_exports_exactly(model, inputs((10, 3)) + 4, tmp_path, opset=opset)


def test_embedding_exports_as_gather_with_int64_input(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Embedding(10, 4), nn.Flatten(), nn.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).integers(0, 10, size=(12, 5))
    model.build((None, 5))
    path = tmp_path / "embedding.onnx"
    export(model, path)
    graph = onnx.load(str(path)).graph
    assert graph.node[0].op_type == "Gather"
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    got = session(path).run(None, {"input": x.astype(np.int64)})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=RTOL, atol=ATOL)


def test_a_model_saved_loaded_and_exported(tmp_path):
    nd.manual_seed(0)
    x, y = nd.datasets.load_digits()
    model = nn.Sequential([nn.Dense(32, activation="relu", input_dim=64), nn.BatchNorm(),
                           nn.Dropout(0.1), nn.Dense(16, activation="elu"), nn.LayerNorm(),
                           nn.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "digits.npz")
    loaded = nd.load_model(tmp_path / "digits.npz")
    got = assert_exports_exactly(loaded, x[:300], tmp_path)
    np.testing.assert_allclose(got, model.predict(x[:300]), rtol=RTOL, atol=ATOL)
    assert (got.argmax(axis=1) == model.predict(x[:300]).argmax(axis=1)).all()


def test_batch_dimension_is_dynamic(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(4, activation="tanh", input_dim=3)])
    export(model, tmp_path / "m.onnx")
    graph_input = onnx.load(str(tmp_path / "m.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    run = session(tmp_path / "m.onnx")
    for batch in (1, 7, 129):
        x = inputs((batch, 3), seed=batch)
        np.testing.assert_allclose(run.run(None, {"input": x})[0], model.predict(x), rtol=RTOL, atol=ATOL)


def test_weights_are_initializers_named_as_in_the_state_dict(tmp_path):
    model = nn.Sequential([nn.Dense(4, input_dim=3), nn.Dense(2, input_dim=4)])
    proto = export(model, tmp_path / "m.onnx")
    names = {init.name for init in proto.graph.initializer}
    assert set(model.state_dict()) <= names


def test_nested_sequential_is_inlined(tmp_path):
    nd.manual_seed(0)
    block = nn.Sequential([nn.Dense(6, activation="relu", input_dim=3), nn.Dense(6, activation="tanh")])
    model = nn.Sequential([block, nn.Dense(2)]).build((None, 3))
    assert_exports_exactly(model, inputs((5, 3)), tmp_path)


def test_float64_model_exports_as_double(tmp_path):
    nd.set_default_dtype("float64")
    try:
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(5, activation="relu", input_dim=3),
                               nn.Dense(2, activation="tanh", input_dim=5)])
    finally:
        nd.set_default_dtype("float32")
    x = inputs((6, 3)).astype(np.float64)
    export(model, tmp_path / "m.onnx")
    got = session(tmp_path / "m.onnx").run(None, {"input": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- errors
class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


def test_unsupported_layer_raises_value_error_naming_it(tmp_path):
    model = nn.Sequential([nn.Dense(4, input_dim=3), Doubler()])
    with pytest.raises(ValueError, match=r"layers\.1 \(Doubler\)"):
        export(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class Scaled(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


class Named(nn.Sequential):
    """A subclass that computes what Sequential computes: exportable."""

    def describe(self):
        return "named"


def test_a_sequential_subclass_that_overrides_forward_is_refused(tmp_path):
    nd.manual_seed(0)
    model = Scaled([nn.Dense(4, activation="tanh", input_dim=3)])
    with pytest.raises(ValueError, match=r"the model \(Scaled\) overrides forward"):
        export(model, tmp_path / "m.onnx")
    nested = nn.Sequential([Scaled([nn.Dense(4, input_dim=3)]), nn.Dense(2)]).build((None, 3))
    with pytest.raises(ValueError, match=r"layers\.0 \(Scaled\) overrides forward"):
        export(nested, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert_exports_exactly(Named([nn.Dense(4, activation="tanh", input_dim=3)]), inputs((5, 3)), tmp_path)


def test_a_layer_whose_forward_is_replaced_is_refused(tmp_path):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(4, input_dim=3), nn.ReLU()])
    relu = model.layers[1]
    relu.forward = lambda x: nd.functional.relu(x) * 2
    with pytest.raises(ValueError, match=r"layers\.1 \(ReLU\) overrides forward"):
        export(model, tmp_path / "m.onnx")

    class DoubledDense(nn.Dense):
        def forward(self, x):
            return super().forward(x) * 2
    with pytest.raises(ValueError, match=r"layers\.0 \(DoubledDense\)"):
        export(nn.Sequential([DoubledDense(4, input_dim=3)]), tmp_path / "m.onnx")


@pytest.mark.parametrize("where", ["model", "layer", "nested"])
def test_any_forward_hook_is_refused(where, tmp_path):
    nd.manual_seed(0)
    inner = nn.Sequential([nn.Dense(4, input_dim=3), nn.Tanh()])
    model = nn.Sequential([inner, nn.Dense(2)]).build((None, 3))
    target = {"model": model, "layer": model.layers[1], "nested": inner.layers[1]}[where]
    handle = target.register_forward_hook(lambda module, args, out: out * 3)
    with pytest.raises(ValueError, match="forward hook"):
        export(model, tmp_path / "m.onnx")
    handle.remove()
    assert_exports_exactly(model, inputs((6, 3)), tmp_path)


def test_subclassed_model_is_refused(tmp_path):
    class Custom(nn.Model):
        def forward(self, x):
            return x
    with pytest.raises(ValueError, match="Sequential"):
        export(Custom(), tmp_path / "m.onnx")


@pytest.mark.parametrize("first", ["flatten", "activation", "dropout", "embedding"])
def test_a_model_built_only_by_predict_exports(first, tmp_path):
    """The refusal says predicting on a batch is enough: it is, whatever the first layer."""
    nd.manual_seed(0)
    head = {"flatten": nn.Flatten(), "activation": nn.Activation("tanh"), "dropout": nn.Dropout(0.3),
            "embedding": nn.Embedding(10, 3)}[first]
    model = nn.Sequential([head, nn.Flatten(), nn.Dense(4, activation="softmax")])
    if first == "embedding":
        x = np.random.default_rng(0).integers(0, 10, size=(7, 5))
    else:
        x = inputs((7, 2, 3))
    expected = model.predict(x)
    export(model, tmp_path / "m.onnx")
    feed = x.astype(np.int64) if first == "embedding" else x
    got = session(tmp_path / "m.onnx").run(None, {"input": feed})[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_unbuilt_model_says_to_build_it_first(tmp_path):
    with pytest.raises(ValueError, match="not built.*build"):
        export(nn.Sequential([nn.Dense(4)]), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="input shape is unknown.*build"):
        export(nn.Sequential([nn.ReLU()]), tmp_path / "m.onnx")


@pytest.mark.parametrize("opset", [12, 10_000, 17.0, True])
def test_bad_opset(opset, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export(nn.Sequential([nn.Dense(2, input_dim=2)]), tmp_path / "m.onnx", opset=opset)


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"nanodl\[onnx\]"):
        export(nn.Sequential([nn.Dense(2, input_dim=2)]), tmp_path / "m.onnx")


def test_write_is_atomic(monkeypatch, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"an earlier file")
    import nanodl.io

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(nanodl.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        export(nn.Sequential([nn.Dense(2, input_dim=2)]), path)
    assert path.read_bytes() == b"an earlier file"
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary file left behind


# ---------------------------------------------------------------- command line
def test_cli_train_export_onnx(tmp_path, capsys):
    from nanodl.cli import main
    path = tmp_path / "xor.onnx"
    status = main(["train", "--dataset", "xor", "--epochs", "2", "--hidden", "8", "--verbose", "0",
                   "--export-onnx", str(path)])
    assert status == 0
    assert f"ONNX model written to {path}" in capsys.readouterr().out
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    probabilities = session(path).run(None, {"input": inputs((10, 2))})[0]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_cli_export_onnx_into_a_missing_folder_fails_cleanly(tmp_path, capsys):
    from nanodl.cli import main
    status = main(["train", "--dataset", "xor", "--epochs", "1", "--hidden", "4", "--verbose", "0",
                   "--export-onnx", str(tmp_path / "no" / "such" / "m.onnx")])
    assert status == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_export_onnx_without_onnx_stops_before_training(monkeypatch, tmp_path, capsys):
    import importlib.util

    from nanodl.cli import main
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    status = main(["train", "--dataset", "xor", "--export-onnx", str(tmp_path / "m.onnx")])
    captured = capsys.readouterr()
    assert status == 2 and r"nanodl[onnx]" in captured.err
    assert "test accuracy" not in captured.out  # refused before any training
