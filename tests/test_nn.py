"""Tests for nanodl.nn: Module bookkeeping, layers, initializers, regularizers."""
import math

import numpy as np
import pytest

import nanodl as nd
from nanodl import nn, regularizers
from nanodl.nn import init
from nanodl.ops.linear import Linear

from helpers import check_gradients


@pytest.fixture
def float64():
    """Make new parameters float64 (for gradient checks), then restore the default."""
    previous = nd.get_default_dtype()
    nd.set_default_dtype("float64")
    yield
    nd.set_default_dtype(previous)


def swap_params(layer, **tensors):
    """Make ``layer`` read the given Tensors as its parameters (for gradient checks)."""
    for name, tensor in tensors.items():
        layer.__dict__[name] = tensor


def np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


NP_ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "softmax": np_softmax,
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "softplus": lambda z: np.logaddexp(z, 0),
}


# ---------------------------------------------------------------- Parameter and Module
def test_parameter_copies_and_requires_grad():
    source = np.array([1.0, 2.0], dtype=np.float64)
    p = nn.Parameter(source)
    source[0] = 100
    assert p.requires_grad and p.is_leaf and p.data[0] == 1.0 and p.dtype == np.float64
    assert nn.Parameter([1.0, 2.0]).dtype == nd.get_default_dtype()
    assert nn.Parameter([1, 2]).dtype == nd.get_default_dtype()  # integers become float
    assert isinstance(p, nd.Tensor)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Dense(3, input_dim=2)
        self.scale = nn.Parameter([1.0])
        self.rest = [nn.Dense(2, input_dim=3), nn.BatchNorm(num_features=2)]

    def forward(self, x):
        x = self.first(x) * self.scale
        for layer in self.rest:
            x = layer(x)
        return x


def test_parameters_in_definition_order_with_dotted_names():
    block = Block()
    names = [name for name, _ in block.named_parameters()]
    assert names == ["first.kernel", "first.bias", "scale", "rest.0.kernel", "rest.0.bias",
                     "rest.1.gamma", "rest.1.beta"]
    assert [id(p) for p in block.parameters()] == [id(p) for _, p in block.named_parameters()]
    assert isinstance(block.rest, nn.ModuleList)
    model = nn.Sequential([nn.Dense(4, input_dim=3), nn.ReLU(), nn.Dense(2, input_dim=4)])
    assert [name for name, _ in model.named_parameters()] == [
        "layers.0.kernel", "layers.0.bias", "layers.2.kernel", "layers.2.bias"]


def test_parameter_between_two_submodules_keeps_its_place():
    """SPEC 4: definition order in parameters(), named_parameters() and state_dict()."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Dense(3, input_dim=2)
            self.scale = nn.Parameter([2.0])
            self.register_buffer("steps", np.zeros(1))
            self.fc2 = nn.Dense(1, input_dim=3)

    model = Scaled()
    expected = ["fc1.kernel", "fc1.bias", "scale", "fc2.kernel", "fc2.bias"]
    assert [name for name, _ in model.named_parameters()] == expected
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]
    assert model.parameters()[2] is model.scale
    assert list(model.state_dict()) == ["fc1.kernel", "fc1.bias", "scale", "steps", "fc2.kernel",
                                        "fc2.bias"]
    # re-assigning keeps the place; deleting and assigning again moves it to the end
    model.scale = nn.Parameter([3.0])
    assert [name for name, _ in model.named_parameters()] == expected
    del model.fc1
    model.fc1 = nn.Dense(3, input_dim=2)
    assert [name for name, _ in model.named_parameters()] == [
        "scale", "fc2.kernel", "fc2.bias", "fc1.kernel", "fc1.bias"]
    # and the order survives a save/load_state_dict round trip by name
    fresh = Scaled()
    fresh.load_state_dict(Scaled().state_dict())


def test_shared_parameter_listed_once():
    shared = nn.Dense(2, input_dim=2)
    model = nn.Sequential([shared, shared])
    assert len(model.parameters()) == 2


def test_buffers_are_state_but_not_parameters():
    block = Block()
    sd = block.state_dict()
    assert "rest.1.moving_mean" in sd and "rest.1.moving_variance" in sd
    assert all("moving" not in name for name, _ in block.named_parameters())
    assert len(sd) == len(block.parameters()) + 2


def test_assigning_a_plain_tensor_to_a_parameter_name_is_an_error():
    layer = nn.Dense(2, input_dim=2)
    with pytest.raises(TypeError, match="kernel"):
        layer.kernel = nd.tensor([[1.0]])
    layer.bias = None
    assert [name for name, _ in layer.named_parameters()] == ["kernel"]


def test_module_without_super_init_still_registers():
    class Lazy(nn.Module):
        def __init__(self):
            self.inner = nn.Dense(1, input_dim=1)

        def forward(self, x):
            return self.inner(x)

    assert len(Lazy().parameters()) == 2


def test_train_eval_recursive_and_zero_grad():
    block = Block()
    block.eval()
    assert not any(m.training for m in block.modules())
    block.train()
    assert all(m.training for m in block.modules())
    out = block(nd.ones((4, 2))).sum()
    out.backward()
    assert all(p.grad is not None for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())


def test_state_dict_round_trip_and_copies():
    nd.manual_seed(0)
    source = Block()
    source(nd.randn(5, 2))  # updates the running statistics
    sd = source.state_dict()
    sd["first.kernel"][...] = 0  # a copy: the module is untouched
    assert np.abs(source.first.kernel.data).sum() > 0
    sd = source.state_dict()
    target = Block()
    result = target.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
    x = nd.randn(3, 2)
    source.eval(), target.eval()
    np.testing.assert_array_equal(source(x).data, target(x).data)


@pytest.mark.parametrize("change, error", [
    (lambda sd: sd.pop("rest.0.bias"), KeyError),
    (lambda sd: sd.update(extra=np.zeros(1)), KeyError),
    (lambda sd: sd.update({"rest.1.moving_mean": np.zeros(5)}), ValueError),
    (lambda sd: sd.update({"rest.1.beta": np.zeros((2, 1))}), ValueError),
])
def test_load_state_dict_errors_leave_module_unchanged(change, error):
    target = Block()
    before = target.state_dict()
    sd = {name: value + 1 for name, value in Block().state_dict().items()}
    change(sd)
    with pytest.raises(error):
        target.load_state_dict(sd)
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_not_strict_reports_keys():
    target = Block()
    sd = target.state_dict()
    sd.pop("scale")
    sd["bogus"] = np.zeros(1)
    result = target.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["scale"] and result.unexpected_keys == ["bogus"]


def test_load_state_dict_casts_to_parameter_dtype():
    layer = nn.Dense(2, input_dim=2)
    layer.load_state_dict({"kernel": np.ones((2, 2), dtype=np.float64), "bias": np.zeros(2)})
    assert layer.kernel.dtype == nd.get_default_dtype()


def test_to_cpu_is_in_place_and_cuda_without_gpu_raises():
    layer = nn.BatchNorm(num_features=3)
    kernel = layer.gamma
    assert layer.to("cpu") is layer and layer.gamma is kernel
    if not nd.cuda_available():
        with pytest.raises(RuntimeError):
            layer.to("cuda")


def test_modules_repr_mentions_layers():
    text = repr(nn.Sequential([nn.Dense(4, activation="relu", input_dim=2), nn.Dropout(0.5)]))
    assert "Dense(4" in text and "relu" in text and "Dropout" in text


# ---------------------------------------------------------------- Dense
@pytest.mark.parametrize("activation", list(NP_ACTIVATIONS))
def test_dense_forward_matches_numpy(activation):
    nd.manual_seed(1)
    layer = nn.Dense(5, activation=activation, input_dim=4)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    expected = NP_ACTIVATIONS[activation](x @ layer.kernel.data + layer.bias.data)
    np.testing.assert_allclose(layer(nd.tensor(x)).data, expected, rtol=1e-5, atol=1e-6)


def test_dense_is_one_linear_node():
    layer = nn.Dense(3, activation="relu", input_dim=2)
    x = nd.randn(4, 2)
    out = layer(x)
    assert isinstance(out.grad_fn, Linear)
    assert len(out.grad_fn.inputs) == 3
    assert out.grad_fn.inputs[0] is x
    assert out.grad_fn.inputs[1] is layer.kernel and out.grad_fn.inputs[2] is layer.bias


def test_dense_builds_lazily_and_eagerly():
    layer = nn.Dense(3)
    assert layer.kernel is None and layer.parameters() == []
    layer(nd.ones((2, 7)))
    assert layer.kernel.shape == (7, 3) and layer.bias.shape == (3,)
    assert nn.Dense(3, input_dim=5).kernel.shape == (5, 3)
    no_bias = nn.Dense(3, input_dim=5, use_bias=False)
    assert no_bias.bias is None and len(no_bias.parameters()) == 1
    assert no_bias(nd.ones((1, 5))).shape == (1, 3)


def test_dense_folds_leading_axes():
    layer = nn.Dense(3, input_dim=4)
    x = nd.randn(2, 5, 4)
    np.testing.assert_allclose(layer(x).data, x.data @ layer.kernel.data + layer.bias.data,
                               rtol=1e-5, atol=1e-6)


def test_dense_rejects_unknown_names():
    with pytest.raises(ValueError, match="relu"):
        nn.Dense(3, activation="swish")
    with pytest.raises(ValueError, match="glorot_uniform"):
        nn.Dense(3, kernel_initializer="xavier")
    with pytest.raises(ValueError):
        nn.Dense(0)


def test_dense_initializer_callable_and_names():
    layer = nn.Dense(2, input_dim=3, kernel_initializer=lambda shape, dtype=None: np.full(shape, 0.5),
                     bias_initializer="ones")
    np.testing.assert_array_equal(layer.kernel.data, np.full((3, 2), 0.5))
    np.testing.assert_array_equal(layer.bias.data, np.ones(2))


def test_dense_gradients_float64(float64):
    nd.manual_seed(2)
    for activation in ("tanh", "softmax", "gelu"):
        layer = nn.Dense(3, activation=activation, input_dim=4)
        arrays = [np.random.default_rng(3).standard_normal((5, 4)), layer.kernel.data, layer.bias.data]

        def fn(x, kernel, bias):
            swap_params(layer, kernel=kernel, bias=bias)
            return layer(x)
        check_gradients(fn, arrays)


# ---------------------------------------------------------------- activation layers, dropout, flatten
@pytest.mark.parametrize("layer, reference", [
    (nn.ReLU(), NP_ACTIVATIONS["relu"]),
    (nn.LeakyReLU(alpha=0.2), lambda z: np.where(z > 0, z, 0.2 * z)),
    (nn.Sigmoid(), NP_ACTIVATIONS["sigmoid"]),
    (nn.Tanh(), np.tanh),
    (nn.Softmax(), np_softmax),
    (nn.Softmax(axis=0), lambda z: np_softmax(z, axis=0)),
    (nn.GELU(), NP_ACTIVATIONS["gelu"]),
    (nn.Activation("elu"), NP_ACTIVATIONS["elu"]),
    (nn.Activation("softplus"), NP_ACTIVATIONS["softplus"]),
    (nn.Activation(None), lambda z: z),
])
def test_activation_layers_match_numpy(layer, reference):
    x = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(nd.tensor(x)).data, reference(x), rtol=1e-5, atol=1e-6)


def test_activation_layer_rejects_unknown_name():
    with pytest.raises(ValueError, match="leaky_relu"):
        nn.Activation("swish")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_must_be_a_fraction(rate):
    with pytest.raises(ValueError):
        nn.Dropout(rate)


def test_dropout_rate_semantics_and_eval_passthrough():
    nd.manual_seed(5)
    layer = nn.Dropout(0.3)
    x = nd.ones((200, 100))
    out = layer(x).data
    dropped = np.mean(out == 0)
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)
    layer.eval()
    assert layer(x) is x
    assert nn.Dropout(0.0)(x) is x


def test_flatten():
    x = nd.randn(2, 3, 4)
    assert nn.Flatten()(x).shape == (2, 12)
    y = nd.randn(2, 3)
    assert nn.Flatten()(y) is y


# ---------------------------------------------------------------- BatchNorm and LayerNorm
def test_batchnorm_training_forward_and_running_stats():
    layer = nn.BatchNorm(momentum=0.9, epsilon=1e-3)
    x = np.random.default_rng(6).standard_normal((8, 3)).astype(np.float32) * 2 + 1
    out = layer(nd.tensor(x)).data
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, 0.9 + 0.1 * var, rtol=1e-5)
    assert [name for name, _ in layer.named_parameters()] == ["gamma", "beta"]
    assert set(layer.state_dict()) == {"gamma", "beta", "moving_mean", "moving_variance"}


def test_batchnorm_eval_uses_running_stats():
    layer = nn.BatchNorm(num_features=2)
    layer.moving_mean[...] = [1.0, -1.0]
    layer.moving_variance[...] = [4.0, 0.25]
    layer.gamma.data[...] = [2.0, 1.0]
    layer.beta.data[...] = [0.5, 0.0]
    layer.eval()
    x = np.array([[3.0, 0.0], [1.0, -1.0]], dtype=np.float32)
    expected = (x - [1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-3) * [2.0, 1.0] + [0.5, 0.0]
    before = layer.moving_mean.copy()
    np.testing.assert_allclose(layer(nd.tensor(x)).data, expected, rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean, before)  # eval does not update


def test_batchnorm_3d_normalises_all_but_last_axis():
    layer = nn.BatchNorm()
    x = np.random.default_rng(7).standard_normal((4, 5, 3)).astype(np.float32)
    out = layer(nd.tensor(x)).data
    expected = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert layer.gamma.shape == (3,)


def test_batchnorm_gradients_float64(float64):
    layer = nn.BatchNorm(num_features=3)
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal((6, 3)), rng.standard_normal(3), rng.standard_normal(3)]

    def fn(x, gamma, beta):
        swap_params(layer, gamma=gamma, beta=beta)
        return layer(x)
    check_gradients(fn, arrays)


def test_layernorm_matches_numpy_and_gradients(float64):
    layer = nn.LayerNorm()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6)) * 3 + 2
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(layer(nd.tensor(x)).data, expected, rtol=1e-10, atol=1e-10)
    arrays = [rng.standard_normal((4, 6)), rng.standard_normal(6), rng.standard_normal(6)]

    def fn(x, gamma, beta):
        swap_params(layer, gamma=gamma, beta=beta)
        return layer(x)
    check_gradients(fn, arrays)


# ---------------------------------------------------------------- initializers
@pytest.mark.parametrize("name, low_std, expected_std, bound", [
    ("glorot_uniform", None, math.sqrt(2 / 600), math.sqrt(6 / 600)),
    ("he_uniform", None, math.sqrt(2 / 200), math.sqrt(6 / 200)),
    ("lecun_uniform", None, math.sqrt(1 / 200), math.sqrt(3 / 200)),
    ("glorot_normal", "truncated", math.sqrt(2 / 600), None),
    ("he_normal", "truncated", math.sqrt(2 / 200), None),
    ("lecun_normal", "truncated", math.sqrt(1 / 200), None),
])
def test_initializer_statistics_and_fans(name, low_std, expected_std, bound):
    nd.manual_seed(10)
    w = init.get(name)((200, 400))  # fan_in = 200, fan_out = 400
    assert w.shape == (200, 400) and w.dtype == nd.get_default_dtype()
    assert abs(w.mean()) < 0.05 * expected_std
    assert abs(w.std() / expected_std - 1) < 0.02
    if bound is not None:
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.99 * bound
    else:  # truncated at two (uncorrected) standard deviations
        assert np.abs(w).max() <= 2 * expected_std / 0.87962566103423978 + 1e-6


def test_simple_initializers():
    nd.manual_seed(11)
    assert np.all(init.zeros((3, 2)) == 0) and np.all(init.ones((3,)) == 1)
    w = init.normal((300, 300), std=0.1)
    assert abs(w.std() - 0.1) < 0.002
    u = init.uniform((300, 300), limit=0.2)
    assert np.abs(u).max() <= 0.2 and abs(u.std() - 0.2 / math.sqrt(3)) < 0.002
    assert init.glorot_uniform((3, 4), dtype="float64").dtype == np.float64
    assert init.compute_fans((3, 4)) == (3, 4)
    assert init.compute_fans((5,)) == (5, 5)
    assert init.compute_fans((3, 3, 8, 16)) == (72, 144)


def test_initializers_are_seeded():
    nd.manual_seed(12)
    a = init.he_normal((5, 5))
    nd.manual_seed(12)
    np.testing.assert_array_equal(a, init.he_normal((5, 5)))


def test_unknown_initializer_lists_names():
    with pytest.raises(ValueError, match="he_normal"):
        init.get("kaiming")


# ---------------------------------------------------------------- regularizers
def test_regularizer_values():
    w = nd.tensor([[1.0, -2.0], [0.5, 0.0]], dtype="float64")
    assert regularizers.l2(0.1)(w).item() == pytest.approx(0.1 * 5.25)
    assert regularizers.l1(0.1)(w).item() == pytest.approx(0.1 * 3.5)
    assert regularizers.l1_l2(l1=0.1, l2=0.2)(w).item() == pytest.approx(0.35 + 0.2 * 5.25)
    assert regularizers.l1_l2().get_config() == {"l1": 0.01, "l2": 0.01}


def test_layer_penalties_are_collected():
    model = nn.Sequential([
        nn.Dense(3, input_dim=2, kernel_regularizer=regularizers.l2(0.5)),
        nn.Dense(1, input_dim=3, bias_initializer="ones", bias_regularizer=regularizers.l1(0.25)),
        nn.Dense(1, input_dim=1)])
    penalties = model.regularization_losses()
    assert len(penalties) == 2
    expected = 0.5 * (model[0].kernel.data ** 2).sum() + 0.25
    assert model.regularization_loss().item() == pytest.approx(expected, rel=1e-6)
    model.regularization_loss().backward()
    np.testing.assert_allclose(model[0].kernel.grad, model[0].kernel.data, rtol=1e-6)
    assert nn.Dense(2, input_dim=2).regularization_loss() is None


def test_batchnorm_refuses_a_batch_of_one_in_training():
    """As PyTorch: one value per feature has no variance; eval mode still takes it."""
    layer = nn.BatchNorm(num_features=3)
    for shape in [(1, 3), (1, 1, 3), (3,)]:
        with pytest.raises(ValueError, match=r"BatchNorm: .*shape \(%s" % shape[0]):
            layer(nd.ones(shape))
    np.testing.assert_array_equal(layer.moving_mean, np.zeros(3))  # nothing was updated
    layer.eval()
    assert layer(nd.ones((1, 3))).shape == (1, 3)
    layer.train()
    assert layer(nd.ones((1, 2, 3))).shape == (1, 2, 3)  # two values per feature are enough
