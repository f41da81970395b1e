"""Higher-order gradients: ``nd.grad``'s semantics, both tiers of every registered op,
second and third derivatives against central differences, custom Functions, leaks."""
import gc
import weakref

import numpy as np
import pytest

import nanodl as nd
from helpers import Cube
import nanodl.functional as F
from nanodl import gradcheck
from nanodl.ops.registry import REGISTRY, draw_inputs


def t64(array, requires_grad=True):
    return nd.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


# ---------------------------------------------------------------- nd.grad semantics
def test_grad_returns_a_tuple_and_touches_no_grad():
    x, y = t64([1.0, 2.0]), t64([3.0, -1.0])
    out = (x * y).sum()
    result = nd.grad(out, [x, y])
    assert isinstance(result, tuple) and len(result) == 2
    np.testing.assert_array_equal(result[0].data, [3, -1])
    np.testing.assert_array_equal(result[1].data, [1, 2])
    assert x.grad is None and y.grad is None
    assert not result[0].requires_grad  # without create_graph: constants
    (single,) = nd.grad((x * x).sum(), x)
    np.testing.assert_array_equal(single.data, [2, 4])


def test_grad_outputs_required_for_non_scalar_outputs():
    x = t64([1.0, 2.0])
    with pytest.raises(ValueError, match="grad_outputs"):
        nd.grad(x * 2, x)
    (g,) = nd.grad(x * x, x, grad_outputs=np.array([1.0, 10.0]))
    np.testing.assert_array_equal(g.data, [2, 40])
    (g,) = nd.grad(x * x, x, grad_outputs=nd.tensor(np.array([1.0, 10.0])))
    np.testing.assert_array_equal(g.data, [2, 40])
    with pytest.raises(ValueError, match="shape"):
        nd.grad(x * x, x, grad_outputs=np.ones(3))


def test_grad_of_several_outputs_sums_their_weighted_gradients():
    x = t64([1.0, 2.0])
    a, b = (x * x).sum(), (x * 3).sum()
    (g,) = nd.grad([a, b], x, grad_outputs=[np.array(1.0), np.array(2.0)])
    np.testing.assert_array_equal(g.data, 2 * x.data + 6)


def test_unused_input_raises_naming_it_unless_allowed():
    x, unused = t64([1.0]), t64([5.0])
    unused.name = "bias"
    with pytest.raises(RuntimeError, match=r"input 1 'bias'.*allow_unused"):
        nd.grad((x * 2).sum(), [x, unused])
    gx, gu = nd.grad((x * 2).sum(), [x, unused], allow_unused=True)
    assert gu is None and gx.data.tolist() == [2.0]
    with pytest.raises(RuntimeError, match="does not require grad"):
        nd.grad((x * 2).sum(), [nd.tensor([1.0])])


def test_retain_graph_defaults_to_create_graph():
    x = t64([1.0, 2.0])
    out = (x.exp() * x).sum()
    nd.grad(out, x)  # frees the graph
    with pytest.raises(RuntimeError, match="second time"):
        nd.grad(out, x)
    out = (x.exp() * x).sum()
    nd.grad(out, x, create_graph=True)  # keeps it
    nd.grad(out, x)
    out = (x.exp() * x).sum()
    nd.grad(out, x, retain_graph=True)
    out.backward()
    np.testing.assert_allclose(x.grad, np.exp(x.data) * (1 + x.data))


def test_grad_with_respect_to_an_intermediate_tensor():
    x = t64([1.0, 2.0])
    h = x * 3
    out = (h * h).sum() + h.sum()
    gh, gx = nd.grad(out, [h, x])
    np.testing.assert_array_equal(gh.data, 2 * h.data + 1)
    np.testing.assert_array_equal(gx.data, 3 * (2 * h.data + 1))


def test_create_graph_gradient_is_differentiable_again():
    x = t64([0.5, -1.0])
    (g,) = nd.grad((x ** 3).sum(), x, create_graph=True)
    assert g.requires_grad and g.grad_fn is not None
    np.testing.assert_allclose(g.data, 3 * x.data ** 2)
    (gg,) = nd.grad(g.sum(), x, create_graph=True)
    np.testing.assert_allclose(gg.data, 6 * x.data)
    (ggg,) = nd.grad(gg.sum(), x)
    np.testing.assert_allclose(ggg.data, [6, 6])
    # and backward() runs the usual engine through the gradient's graph
    x.grad = None
    (g,) = nd.grad((x ** 3).sum(), x, create_graph=True)
    (g * g).sum().backward()  # d/dx sum(9 x^4) = 36 x^3
    np.testing.assert_allclose(x.grad, 36 * x.data ** 3)


def test_a_constant_gradient_still_requires_grad_and_differentiates_to_zero():
    x = t64([1.0, np.inf])
    (g,) = nd.grad((x * 2).sum(), x, create_graph=True)
    assert g.requires_grad
    (gg,) = nd.grad(g.sum(), x)
    np.testing.assert_array_equal(gg.data, [0, 0])  # finite even where x is inf


def test_second_derivative_at_kinks_is_zero_never_nan():
    x = t64([0.0, -1.0, 2.0])
    for fn in (lambda t: t.relu(), lambda t: t.abs(), lambda t: t.clip(0.0, 1.0),
               lambda t: nd.maximum(t, 0.0), lambda t: F.leaky_relu(t, 0.1)):
        (g,) = nd.grad(fn(x).sum(), x, create_graph=True)
        (gg,) = nd.grad(g.sum(), x)
        np.testing.assert_array_equal(gg.data, [0, 0, 0])
    y = t64([[1.0, 1.0, 0.0]])  # a tie of max
    (g,) = nd.grad(y.max(), y, create_graph=True)
    np.testing.assert_array_equal(g.data, [[0.5, 0.5, 0]])
    (gg,) = nd.grad((g * g).sum(), y)
    np.testing.assert_array_equal(gg.data, [[0, 0, 0]])


# ---------------------------------------------------------------- custom Functions
class CubeWithVjp(Cube):
    def vjp(self, grad, x):
        return 3 * x ** 2 * grad


def test_custom_function_without_vjp_works_first_order_and_refuses_create_graph():
    x = t64([2.0])
    Cube.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [12])
    (g,) = nd.grad(Cube.apply(x).sum(), x)
    np.testing.assert_array_equal(g.data, [12])
    with pytest.raises(RuntimeError, match="Cube has no vjp"):
        nd.grad(Cube.apply(x).sum(), x, create_graph=True)


def test_custom_function_opts_in_with_vjp():
    x = t64([2.0, -1.0])
    (g,) = nd.grad((CubeWithVjp.apply(x) * 2).sum(), x, create_graph=True)
    np.testing.assert_array_equal(g.data, 6 * x.data ** 2)
    (gg,) = nd.grad(g.sum(), x)
    np.testing.assert_array_equal(gg.data, 12 * x.data)


def test_vjp_returning_an_array_is_refused():
    class Detached(Cube):
        def vjp(self, grad, x):
            return 3 * x.data ** 2 * grad.data  # an array: a silently detached gradient

    x = t64([1.0])
    with pytest.raises(RuntimeError, match="Detached.vjp returned a ndarray"):
        nd.grad(Detached.apply(x).sum(), x, create_graph=True)


# ---------------------------------------------------------------- leaks
def test_a_dropped_create_graph_graph_is_collected_without_gc():
    x = t64(np.ones((3, 3)))
    gc.disable()
    try:
        out = ((x * 2).tanh() @ x).sum()
        (g,) = nd.grad(out, x, create_graph=True)
        penalty = (g * g).sum()
        refs = [weakref.ref(penalty.grad_fn), weakref.ref(g.grad_fn), weakref.ref(out.grad_fn)]
        penalty.backward()
        del out, g, penalty
        assert all(r() is None for r in refs), "a create_graph graph outlived its outputs"
    finally:
        gc.enable()


# ---------------------------------------------------------------- every registered op
def _cases():
    return [(spec, shapes) for spec in REGISTRY for shapes in spec.cases]


def _case_id(case):
    spec, shapes = case
    return f"{spec.name}-{'x'.join(str(s) for s in shapes)}"


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_array_backward_and_tensor_vjp_agree(case, kernel_table):
    """STYLE habit 13: the two written derivatives of every op agree to rounding."""
    spec, shapes = case
    rng = np.random.default_rng(0)
    arrays = draw_inputs(spec, shapes, rng)
    inputs = [t64(a) for a in arrays]
    out = spec.fn(*inputs)
    weights = rng.standard_normal(out.shape)
    by_backward = nd.grad(out, inputs, weights, retain_graph=True)
    by_vjp = nd.grad(out, inputs, weights, create_graph=True)
    for index, (a, b) in enumerate(zip(by_backward, by_vjp)):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-12, atol=1e-13,
                                   err_msg=f"{spec.name} input {index}")


def first_derivative(fn, weights):
    """``x -> d<weights, fn(x)>/dx`` (all inputs, flattened and joined), with a graph:
    its second derivatives are ``fn``'s third."""
    def derivative(*tensors):
        with nd.enable_grad():  # the checker evaluates fn under no_grad for its differences
            grads = nd.grad((fn(*tensors) * nd.tensor(weights)).sum(), tensors, create_graph=True,
                            allow_unused=True)
            return nd.concatenate([(g if g is not None else t * 0).reshape(-1)
                                   for g, t in zip(grads, tensors)])
    return derivative


def check_order(spec, shapes, order):
    """``gradcheck.gradgradcheck`` on the op (order 2) or on its first derivative (order 3)."""
    rng = np.random.default_rng(7)
    arrays = draw_inputs(spec, shapes, rng, margin=1e-2)
    fn = spec.fn
    if order == 3:
        out = spec.fn(*[t64(a, requires_grad=False) for a in arrays])
        fn = first_derivative(spec.fn, rng.standard_normal(out.shape))
    assert gradcheck.gradgradcheck(fn, *[t64(a) for a in arrays], atol=1e-5, rtol=1e-4), spec.name


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_higher_derivatives_match_central_differences(case, order):
    """Second and third derivatives of every registered op (broadcasting cases included)."""
    spec, shapes = case
    check_order(spec, shapes, order)


def test_every_built_in_op_defines_a_vjp():
    """No op of nanodl.ops falls back to Function.vjp (which refuses create_graph)."""
    import inspect
    from nanodl import ops
    from nanodl.ops import accumulate, activation, einsum, elementwise, linear, loss, reduce, shape, special
    missing = [cls.__name__ for module in (accumulate, activation, einsum, elementwise, linear, loss, reduce,
                                           shape, special, ops)
               for cls in vars(module).values()
               if inspect.isclass(cls) and issubclass(cls, nd.Function) and cls is not nd.Function
               and not cls.__name__.startswith("_")
               and cls.vjp is nd.Function.vjp]
    assert not missing, f"ops without a vjp: {missing}"


def test_hessian_vector_product_through_every_layer_kind():
    """A model made of every layer kind is differentiable twice (parameters' hvp vs differences)."""
    from nanodl import nn
    rng = np.random.default_rng(9)
    nd.set_default_dtype("float64")
    try:
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(6, activation="tanh"), nn.LayerNorm(), nn.Dense(5),
                               nn.GELU(), nn.BatchNorm(), nn.Dense(3, activation="softmax")])
        x = nd.tensor(rng.standard_normal((8, 4)))
        labels = rng.integers(0, 3, 8)
        model(x)
        params = list(model.parameters())

        def loss_of():
            return nd.losses.sparse_categorical_crossentropy(model(x), labels)
        grads = nd.grad(loss_of(), params, create_graph=True)
        direction = [rng.standard_normal(p.shape) for p in params]
        contracted = sum(((g * nd.tensor(d)).sum() for g, d in zip(grads, direction)), nd.tensor(0.0))
        hvp = nd.grad(contracted, params, allow_unused=True)

        eps = 1e-6
        originals = [p.data.copy() for p in params]

        def gradient_at(step):
            for p, o, d in zip(params, originals, direction):
                p.data[...] = o + step * d
            return [g.data for g in nd.grad(loss_of(), params)]
        up, down = gradient_at(eps), gradient_at(-eps)
        gradient_at(0.0)
        for index, (h, u, w) in enumerate(zip(hvp, up, down)):
            numeric = (u - w) / (2 * eps)
            np.testing.assert_allclose(h.data if h is not None else 0 * numeric, numeric,
                                       atol=1e-6, rtol=1e-5, err_msg=f"parameter {index}")
    finally:
        nd.set_default_dtype("float32")
