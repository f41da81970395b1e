"""nn.Embedding: lookups of any shape, errors, the scatter-add backward, saving, training."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd
from nanodl import nn

from helpers import numerical_grads

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4)])
def test_lookup_of_any_shape_adds_one_axis(shape):
    nd.manual_seed(0)
    layer = nn.Embedding(7, 3)
    indices = np.random.default_rng(0).integers(0, 7, size=shape)
    out = layer(nd.Tensor(indices))
    assert out.shape == shape + (3,)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, layer.embeddings.data[indices])


def test_parameter_and_keras_uniform_initializer():
    nd.manual_seed(0)
    layer = nn.Embedding(50, 8)
    assert [name for name, _ in layer.named_parameters()] == ["embeddings"]
    table = layer.embeddings.data
    assert table.shape == (50, 8)
    assert np.abs(table).max() <= 0.05 and table.std() > 0.01  # uniform(-0.05, 0.05), as Keras
    ones = nn.Embedding(4, 2, embeddings_initializer="ones")
    np.testing.assert_array_equal(ones.embeddings.data, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8])
def test_every_integer_dtype_is_accepted(dtype):
    layer = nn.Embedding(5, 2)
    out = layer(np.array([[0, 4]], dtype=dtype))
    np.testing.assert_array_equal(out.data, layer.embeddings.data[[[0, 4]]])


@pytest.mark.parametrize("bad", [5, 12, -1])
def test_out_of_range_index_names_the_index_and_input_dim(bad):
    layer = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match=rf"index {bad}\b.*input_dim=5"):
        layer(np.array([0, bad, 1]))


@pytest.mark.parametrize("values", [np.array([0.0, 1.0]), np.array([True, False])])
def test_non_integer_inputs_raise_type_error(values):
    with pytest.raises(TypeError, match="Embedding: expected integer indices"):
        nn.Embedding(5, 2)(values)


@pytest.mark.parametrize("args", [(0, 2), (3, 0), (2.5, 2), (True, 2)])
def test_bad_sizes_raise_value_error(args):
    with pytest.raises(ValueError, match="Embedding"):
        nn.Embedding(*args)


def test_backward_scatter_adds_repeated_indices():
    layer = nn.Embedding(4, 3)
    indices = np.array([[1, 1, 3], [1, 0, 3]])
    weights = np.random.default_rng(1).standard_normal((2, 3, 3)).astype(np.float32)
    layer(indices).backward(weights)
    expected = np.zeros((4, 3), np.float32)
    np.add.at(expected, indices, weights)
    np.testing.assert_allclose(layer.embeddings.grad, expected, rtol=1e-6)
    assert not np.allclose(layer.embeddings.grad[1], weights[0, 0])  # three rows summed, not one kept
    np.testing.assert_array_equal(layer.embeddings.grad[2], 0)  # unused row: zero gradient


def test_gradient_matches_central_differences_in_float64():
    nd.set_default_dtype("float64")
    try:
        layer = nn.Embedding(6, 4)
    finally:
        nd.set_default_dtype("float32")
    indices = np.array([[0, 5, 5], [2, 0, 5]])

    def lookup(table):
        layer.embeddings.data = table
        with nd.no_grad():
            return layer(indices).data

    table = np.random.default_rng(2).standard_normal((6, 4))
    (numeric,), weights = numerical_grads(lookup, [table])
    layer.embeddings.data = table.copy()
    layer.embeddings.grad = None
    layer(indices).backward(weights)
    np.testing.assert_allclose(layer.embeddings.grad, numeric, rtol=1e-6, atol=1e-8)


def test_sequential_with_embedding_trains_predicts_saves_and_loads(tmp_path):
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=(240, 2))
    y = (x[:, 0] + x[:, 1]) % 3  # a function of the categories only: needs the embeddings
    model = nn.Sequential([nn.Embedding(6, 4), nn.Flatten(), nn.Dense(16, activation="relu"),
                           nn.Dense(3, activation="softmax")])
    model.compile(optimizer=nd.optim.Adam(lr=0.03), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    predictions = model.predict(x)
    assert predictions.shape == (240, 3)
    path = tmp_path / "embedding.npz"
    model.save(path)
    loaded = nd.load_model(path)
    assert isinstance(loaded[0], nn.Embedding) and loaded[0].get_config() == model[0].get_config()
    np.testing.assert_array_equal(loaded.predict(x), predictions)
    np.testing.assert_array_equal(loaded[0].embeddings.data, model[0].embeddings.data)


def test_float_inputs_to_an_embedding_model_say_how_to_fix_them():
    model = nn.Sequential([nn.Embedding(6, 4), nn.Flatten(), nn.Dense(2)])
    with pytest.raises(TypeError, match="astype"):
        model.predict(np.zeros((3, 2), np.float32))


def test_embedding_tabular_example_runs():
    env = dict(os.environ, NANODL_EXAMPLE_QUICK="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "embedding_tabular.py")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test accuracy with the embedding" in result.stdout
    accuracy = float(result.stdout.split("test accuracy with the embedding:")[1].split()[0])
    assert accuracy > 0.8, result.stdout
