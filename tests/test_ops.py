"""Every op of the registry: forward against NumPy, backward against central differences."""
import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from hypothesis.extra import numpy as hnp

import nanodl as nd
from nanodl.ops.registry import REGISTRY, draw_inputs
from helpers import check_gradients

CASES = [(spec, shapes) for spec in REGISTRY for shapes in spec.cases]
CASE_IDS = [f"{spec.name}-{'x'.join(map(str, shapes))}" for spec, shapes in CASES]


def _forward(spec, arrays):
    with nd.no_grad():
        return spec.fn(*[nd.Tensor(a) for a in arrays]).data


@pytest.mark.parametrize("spec,shapes", CASES, ids=CASE_IDS)
def test_forward_matches_numpy(spec, shapes, kernel_table):
    arrays = draw_inputs(spec, shapes, np.random.default_rng(0))
    expected = spec.reference(*arrays)
    np.testing.assert_allclose(_forward(spec, arrays), expected, rtol=1e-10, atol=1e-12)
    arrays32 = [a.astype(np.float32) for a in arrays]
    out32 = _forward(spec, arrays32)
    assert out32.dtype == np.float32, f"{spec.name} changed float32 to {out32.dtype}"
    np.testing.assert_allclose(out32, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("spec,shapes", CASES, ids=CASE_IDS)
def test_gradient_matches_central_differences(spec, shapes, kernel_table):
    arrays = draw_inputs(spec, shapes, np.random.default_rng(1), margin=1e-2)
    check_gradients(spec.fn, arrays)


def _strided(array):
    """The same values in a non-contiguous view (every other element of a wider array)."""
    if array.ndim == 0:
        return array
    wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), dtype=array.dtype)
    wide[..., ::2] = array
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or view.size <= 1
    return view


@pytest.mark.parametrize("spec,shapes", CASES, ids=CASE_IDS)
def test_noncontiguous_inputs(spec, shapes, kernel_table):
    arrays = draw_inputs(spec, shapes, np.random.default_rng(2), margin=1e-2)
    views = [_strided(a) for a in arrays]
    tensors = [nd.Tensor(v, requires_grad=True) for v in views]
    out = spec.fn(*tensors)
    np.testing.assert_allclose(out.data, spec.reference(*arrays), rtol=1e-10, atol=1e-12)
    out.backward(np.ones(out.shape))
    plain = [nd.Tensor(a, requires_grad=True) for a in arrays]
    spec.fn(*plain).backward(np.ones(out.shape))
    for t, p in zip(tensors, plain):
        np.testing.assert_allclose(t.grad, p.grad, rtol=1e-10, atol=1e-12)


def _shapes_for(spec, draw):
    if spec.shape_kind == "unary":
        return (draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)),)
    if spec.shape_kind == "binary":
        pair = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                       min_side=1, max_side=4))
        return pair.input_shapes
    return (draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)),)


RANDOM_SHAPE_SPECS = [spec for spec in REGISTRY if spec.shape_kind is not None]


@pytest.mark.parametrize("spec", RANDOM_SHAPE_SPECS, ids=[s.name for s in RANDOM_SHAPE_SPECS])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_shapes_gradients(spec, data, kernel_table):
    shapes = _shapes_for(spec, data.draw)
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    arrays = draw_inputs(spec, shapes, np.random.default_rng(seed), margin=1e-2)
    np.testing.assert_allclose(_forward(spec, arrays), spec.reference(*arrays), rtol=1e-10, atol=1e-12)
    check_gradients(spec.fn, arrays)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "sigmoid", "softplus",
                                  "softmax_xent"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_large_magnitude(name, dtype, kernel_table):
    from nanodl.ops.registry import BY_NAME
    spec = BY_NAME[name]
    shape = spec.cases[0][0]
    values = np.resize(np.array([1e4, -1e4, 0.5, -3.0, 1e4 - 1], dtype=dtype), shape)
    x = nd.Tensor(values, requires_grad=True)
    out = spec.fn(x)
    assert np.all(np.isfinite(out.data)), f"{name} overflowed at |x|=1e4"
    out.backward(np.ones(out.shape, dtype=dtype))
    assert np.all(np.isfinite(x.grad)), f"{name} backward overflowed at |x|=1e4"


def test_linear_is_one_node_and_matches_composed():
    rng = np.random.default_rng(3)
    x = nd.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    w = nd.Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    b = nd.Tensor(rng.standard_normal(2), requires_grad=True)
    fused = nd.functional.linear(x, w, b, "tanh")
    assert type(fused.grad_fn).__name__ == "Linear"
    assert fused.grad_fn.inputs == (x, w, b)
    fused.sum().backward()
    grads = [t.grad.copy() for t in (x, w, b)]
    for t in (x, w, b):
        t.zero_grad()
    ((x @ w + b).tanh()).sum().backward()
    for fused_grad, t in zip(grads, (x, w, b)):
        np.testing.assert_allclose(fused_grad, t.grad, rtol=1e-12)


def test_softmax_xent_matches_composed():
    rng = np.random.default_rng(4)
    logits = nd.Tensor(rng.standard_normal((6, 4)), requires_grad=True)
    target = rng.integers(0, 4, 6)
    fused = nd.ops.softmax_cross_entropy(logits, target)
    fused.sum().backward()
    fused_grad = logits.grad.copy()
    logits.zero_grad()
    composed = -logits.log_softmax(axis=1)[np.arange(6), target]
    np.testing.assert_allclose(fused.data, composed.data, rtol=1e-12)
    composed.sum().backward()
    np.testing.assert_allclose(fused_grad, logits.grad, rtol=1e-10, atol=1e-12)
    dense = nd.ops.softmax_cross_entropy(nd.Tensor(logits.data), np.eye(4)[target])
    np.testing.assert_allclose(dense.data, fused.data, rtol=1e-12)


def test_max_ties_share_gradient():
    x = nd.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_repeated_indices_accumulate():
    x = nd.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad, [3, 0, 1])


CRITICAL = [(spec, point) for spec in REGISTRY for point in spec.critical_points]


@pytest.mark.parametrize("spec,point", CRITICAL,
                         ids=[f"{s.name}-{i}" for i, (s, _) in enumerate(CRITICAL)])
def test_gradient_at_critical_points_is_the_analytic_one(spec, point, kernel_table):
    """Issue 9: where a composition would kink (z = 0, pred == target, |d| == delta)."""
    inputs = [nd.Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in point]
    out = spec.fn(*inputs)
    out.backward(np.ones(out.shape))
    for index, (tensor, expected) in enumerate(zip(inputs, spec.derivative(*point))):
        np.testing.assert_allclose(tensor.grad, expected, rtol=1e-12, atol=1e-15,
                                   err_msg=f"{spec.name}: input {index} at a critical point")
    if spec.name != "mae":  # mae is genuinely kinked there; elsewhere smooth: differences agree
        check_gradients(spec.fn, point)
    first = nd.grad(spec.fn(*inputs).sum(), inputs, create_graph=True)
    for g in first:  # second derivatives there are finite (0 for the kinked mae)
        (second,) = nd.grad(g.sum(), [inputs[0]], allow_unused=True)
        assert second is None or np.all(np.isfinite(second.data))


def test_every_loss_has_a_registry_entry_with_its_critical_points():
    names = {spec.name for spec in REGISTRY}
    assert {"mse", "mae", "huber", "bce_logits", "bce_probs", "categorical_crossentropy_probs",
            "sparse_categorical_crossentropy_probs", "softmax_xent", "softmax_xent_onehot"} <= names
    for name in ("mse", "mae", "huber", "bce_logits"):
        spec = next(s for s in REGISTRY if s.name == name)
        assert spec.critical_points and spec.derivative is not None
