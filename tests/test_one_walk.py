"""Issue 18 item 3: one walk for every order. A gradient never depends on ``create_graph``
(every registered op and fused node, on graphs that reuse a tensor in several roles,
against an oracle); special points are right to order 3 (and Pow's to any order); the
edge cases the two old walks disagreed on."""
import numpy as np
import pytest

import nanodl as nd
import nanodl.functional as F
from nanodl import nn
from nanodl.autograd.functional import hessian, hvp, jacobian, jvp, vjp
from nanodl.ops.registry import REGISTRY, draw_inputs

CASES = [(spec, shapes) for spec in REGISTRY for shapes in spec.cases]
IDS = [f"{spec.name}-{'x'.join(str(s) for s in shapes)}" for spec, shapes in CASES]
MIX = 0.005  # how far the shared term moves each input: well inside the drawn margin


def t64(array, requires_grad=True):
    return nd.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def reused(leaves, fn, weights, xp):
    """``fn`` whose first input also carries every leaf (``x + MIX tanh(sum of all)``) while
    the others are the leaves themselves (a kernel that also fed the fused node's input),
    then a loss that uses the output twice: each leaf plays several roles in one graph."""
    shared = sum(0.1 * leaf.sum() for leaf in leaves)
    shared = shared.tanh() if xp is None else np.tanh(shared)
    out = fn(leaves[0] + MIX * shared, *leaves[1:])
    return (out * weights).sum() + 0.1 * (out * out).sum()


@pytest.mark.parametrize("spec,shapes", CASES, ids=IDS)
def test_gradient_does_not_depend_on_create_graph(spec, shapes, kernel_table):
    rng = np.random.default_rng(3)
    arrays = draw_inputs(spec, shapes, rng, margin=0.05)
    leaves = [t64(a) for a in arrays]
    weights = rng.standard_normal(spec.fn(*[t64(a, False) for a in arrays]).shape)
    plain = nd.grad(reused(leaves, spec.fn, weights, None), leaves)
    graphed = nd.grad(reused(leaves, spec.fn, weights, None), leaves, create_graph=True)
    eps = 1e-6
    for index, (a, b) in enumerate(zip(plain, graphed)):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-11, atol=1e-12,
                                   err_msg=f"{spec.name} input {index}: create_graph changed it")
        numeric = np.zeros(arrays[index].shape)  # the oracle: differences of the NumPy reference
        for k in np.ndindex(numeric.shape):
            values = []
            for step in (eps, -eps):
                moved = [x.copy() for x in arrays]
                moved[index][k] += step
                values.append(reused(moved, spec.reference, weights, np))
            numeric[k] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(a.data, numeric, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{spec.name} input {index} against the reference")


# ---------------------------------------------------------------- fused F.linear, JAX oracle
@pytest.mark.parametrize("activation", ["linear", "tanh", "relu", "gelu", "elu", "leaky_relu",
                                        "sigmoid", "softplus", "softmax"])
@pytest.mark.parametrize("pattern", ["x@W as input", "linear of linear", "x+b as input"])
def test_fused_linear_reusing_its_weight_matches_jax(pattern, activation):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    acts = {"linear": lambda z: z, "tanh": jnp.tanh, "relu": jax.nn.relu,
            "gelu": lambda z: jax.nn.gelu(z, approximate=True), "elu": jax.nn.elu,
            "leaky_relu": lambda z: jax.nn.leaky_relu(z, 0.01), "sigmoid": jax.nn.sigmoid,
            "softplus": jax.nn.softplus, "softmax": jax.nn.softmax}
    graphs = {"x@W as input": lambda x, w, b, lin: lin(x @ w, w, b),
              "linear of linear": lambda x, w, b, lin: lin(lin(x, w, b), w, b),
              "x+b as input": lambda x, w, b, lin: lin(x + b, w, b)}
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3)
    c = rng.standard_normal((4, 3))

    def ours(w_, b_):
        return (graphs[pattern](t64(x, False), w_, b_, lambda i, k, bb: F.linear(i, k, bb, activation))
                * nd.tensor(c)).sum()

    def theirs(w_, b_):
        return (graphs[pattern](x, w_, b_, lambda i, k, bb: acts[activation](i @ k + bb)) * c).sum()
    expected = jax.grad(theirs, argnums=(0, 1))(w, b)
    for create_graph in (False, True):
        W, B = t64(w), t64(b)
        got = nd.grad(ours(W, B), [W, B], create_graph=create_graph)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.data, np.asarray(e), rtol=1e-10, atol=1e-12)
    # a gradient penalty through the tied node (second order) against JAX's
    W, B = t64(w), t64(b)
    (gw, gb) = nd.grad(ours(W, B), [W, B], create_graph=True)
    penalty = nd.grad((gw * gw).sum() + (gb * gb).sum(), [W, B])

    def jax_penalty(w_, b_):
        gw_, gb_ = jax.grad(theirs, argnums=(0, 1))(w_, b_)
        return (gw_ * gw_).sum() + (gb_ * gb_).sum()
    for g, e in zip(penalty, jax.grad(jax_penalty, argnums=(0, 1))(w, b)):
        np.testing.assert_allclose(g.data, np.asarray(e), rtol=1e-8, atol=1e-10)


def test_dense_called_twice_matches_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4))
    nd.set_default_dtype("float64")
    try:
        layer = nn.Dense(4, activation="tanh", input_dim=4)
    finally:
        nd.set_default_dtype("float32")
    w, b = layer.kernel.data.copy(), layer.bias.data.copy()
    expected = jax.grad(lambda w_, b_: (jax.numpy.tanh(jax.numpy.tanh(x @ w_ + b_) @ w_ + b_) ** 2).sum(),
                        argnums=(0, 1))(w, b)
    for create_graph in (False, True):
        loss = (layer(layer(t64(x, False))) ** 2).sum()
        got = nd.grad(loss, [layer.kernel, layer.bias], create_graph=create_graph)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.data, np.asarray(e), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- special points
def nested(fn, inputs, order, rng):
    """The order-``order`` derivative of ``sum(w * fn)``, contracted with random directions
    between orders; returns the last gradient and the scalar it differentiates."""
    out = fn(*inputs)
    scalar = (out * nd.tensor(rng.standard_normal(out.shape))).sum()
    for _ in range(order - 1):
        grads = nd.grad(scalar, inputs, create_graph=True, allow_unused=True)
        scalar = sum(((g * nd.tensor(rng.standard_normal(g.shape))).sum() for g in grads if g is not None),
                     nd.tensor(0.0, dtype="float64"))
    if not scalar.requires_grad:
        return [np.zeros(x.shape) for x in inputs]
    return [np.zeros(x.shape) if g is None else g.data
            for g in nd.grad(scalar, inputs, allow_unused=True)]


CRITICAL = [(spec, point) for spec in REGISTRY for point in spec.critical_points]


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("spec,point", CRITICAL, ids=[f"{s.name}-{i}" for i, (s, _) in enumerate(CRITICAL)])
def test_special_points_to_order_three(spec, point, order):
    """Finite there, and (where the op is smooth there) equal to central differences of the
    order below: pow at 0 (x^0, x, x^2, x^3, 0^w), a loss at pred == target, a logit of 0."""
    inputs = [t64(a) for a in point]
    got = nested(spec.fn, inputs, order, np.random.default_rng(order))
    assert all(np.all(np.isfinite(g)) for g in got), f"{spec.name}: NaN/inf at order {order}"
    if spec.kink_distance is not None and spec.kink_distance(*point) < 1e-9:
        return  # a genuine kink there (mae, huber's |d| == delta): finite is the promise
    eps = 1e-6
    for index, array in enumerate(point):
        numeric = np.zeros(np.shape(array))
        for k in np.ndindex(numeric.shape):
            numeric[k] = _contracted(spec.fn, point, index, k, order, eps)
        np.testing.assert_allclose(got[index], numeric, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{spec.name} input {index}, order {order}")


def _contracted(fn, point, index, k, order, eps):
    """Central difference, in element ``k`` of input ``index``, of the scalar that
    ``nested(fn, ., order)`` differentiates last (same random directions)."""
    values = []
    for step in (eps, -eps):
        moved = [np.array(a, dtype=np.float64) for a in point]
        moved[index][k] += step
        inputs = [t64(a) for a in moved]
        rng = np.random.default_rng(order)
        out = fn(*inputs)
        scalar = (out * nd.tensor(rng.standard_normal(out.shape))).sum()
        for _ in range(order - 1):
            grads = nd.grad(scalar, inputs, create_graph=True, allow_unused=True)
            scalar = sum(((g * nd.tensor(rng.standard_normal(g.shape))).sum() for g in grads
                          if g is not None), nd.tensor(0.0, dtype="float64"))
        values.append(float(scalar.item()))
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize("power,order", [(0, 1), (1, 2), (2, 3), (3, 4), (3, 3), (2, 2)])
def test_pow_at_zero_to_any_order_matches_torch(power, order):
    torch = pytest.importorskip("torch")
    x = t64(0.0)
    out = x ** power
    for _ in range(order):
        (out,) = nd.grad(out, x, create_graph=True)
    tx = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    tout = tx ** power
    for _ in range(order):
        (tout,) = torch.autograd.grad(tout, tx, create_graph=True, allow_unused=True)
        if tout is None:
            tout = torch.zeros((), dtype=torch.float64, requires_grad=True)
    assert out.item() == pytest.approx(float(tout.detach()), abs=0) and np.isfinite(out.item())


def test_pow_of_zero_and_a_hessian_at_zero_are_finite():
    w = t64(1.5)
    assert nd.grad(nd.tensor(0.0, dtype="float64") ** w, w)[0].item() == 0.0
    h = hessian(lambda p: (p ** 1 + p * p).sum(), t64([0.0, 0.0], False))
    np.testing.assert_array_equal(h.data, 2 * np.eye(2))


# ---------------------------------------------------------------- functional API on constants
@pytest.mark.parametrize("name", ["vjp", "jvp", "hvp", "jacobian", "hessian"])
def test_functional_api_of_a_constant_function_gives_zeros(name):
    x = t64([1.0, 2.0], False)
    const = lambda p: nd.tensor(3.0, dtype="float64")  # noqa: E731
    if name == "vjp":
        result = vjp(const, x)[1]
    elif name in ("jvp", "hvp"):
        result = {"jvp": jvp, "hvp": hvp}[name](const, x, t64([1.0, 1.0], False))[1]
    else:
        result = {"jacobian": jacobian, "hessian": hessian}[name](const, x)
    expected = {"jvp": (), "vjp": (2,), "hvp": (2,), "jacobian": (2,), "hessian": (2, 2)}[name]
    assert result.shape == expected and not np.any(result.data)


# ---------------------------------------------------------------- small engine promises
def test_ops_linear_uses_each_activation_default_alpha():
    x = nd.tensor([[-1.0, 2.0]])
    eye = nd.tensor(np.eye(2, dtype=np.float32))
    for activation in ("elu", "leaky_relu"):
        np.testing.assert_allclose(nd.ops.linear(x, eye, None, activation).data,
                                   F.linear(x, eye, None, activation).data)
    np.testing.assert_allclose(nd.ops.linear(x, eye, None, "leaky_relu").data, [[-0.01, 2.0]], rtol=1e-6)


def test_retain_grad_is_filled_under_create_graph_too():
    a = t64([1.0, 2.0])
    for create_graph in (False, True):
        h = a * 3
        h.retain_grad()
        nd.grad((h * h).sum(), a, create_graph=create_graph)
        np.testing.assert_array_equal(h.grad, [6.0, 12.0])
        assert isinstance(h.grad, np.ndarray)


def test_bad_dropout_rate_and_bad_custom_function_results_name_the_op():
    with pytest.raises(TypeError, match="dropout: rate"):
        F.dropout(nd.tensor([1.0]), "0.5")

    class ListForward(nd.Function):
        def forward(self, x):
            return [1.0, 2.0]

    with pytest.raises(TypeError, match="ListForward.forward returned a list"):
        ListForward.apply(nd.tensor([1.0], requires_grad=True))

    class ListBackward(nd.Function):
        def forward(self, x):
            return x * 2

        def backward(self, grad):
            return [grad * 2]  # a list of one gradient: accepted like a tuple

    x = nd.tensor([1.0, 2.0], requires_grad=True)
    ListBackward.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])

    class NestedList(nd.Function):
        def forward(self, x):
            return x * 2

        def backward(self, grad):
            return [[2.0, 2.0]]

    with pytest.raises(TypeError, match="NestedList.backward returned a list for input 0"):
        NestedList.apply(nd.tensor([1.0, 2.0], requires_grad=True)).sum().backward()


def test_gelu_is_defined_once_and_the_native_kernel_agrees():
    from nanodl.backend import activations, kernels_numpy
    x = np.linspace(-9, 9, 201)
    g = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(kernels_numpy.gelu_backward(x, g), g * activations.gelu_derivative(x))
    np.testing.assert_array_equal(kernels_numpy.gelu_forward(x), activations.gelu(x))
    xt = t64(x)
    (dx,) = nd.grad(F.gelu(xt), xt, g, create_graph=True)
    np.testing.assert_allclose(dx.data, g * activations.gelu_derivative(x), rtol=1e-13, atol=1e-15)
    native = pytest.importorskip("nanodl.backend.kernels_native")
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        xs, gs = x.astype(dtype), g.astype(dtype)
        np.testing.assert_allclose(native.gelu_backward(xs, gs), gs * activations.gelu_derivative(xs),
                                   rtol=rtol, atol=1e-30)
        np.testing.assert_allclose(native.gelu_forward(xs), activations.gelu(xs), rtol=rtol, atol=1e-30)


def test_tensor_ops_and_autograd_are_in_no_import_cycle():
    """Function-level imports count: the engine is layered autograd < tensor < ops (< the
    higher-order helpers), and nothing reaches back (ops hand themselves to Tensor)."""
    from test_imports import import_graph
    graph = import_graph()
    engine = {m for m in graph if m == "nanodl.tensor" or m.startswith(("nanodl.ops", "nanodl.autograd"))}
    edges = {m: {t for t in graph[m][0] | graph[m][1] if t in engine and t != m} for m in engine}
    for start in engine:
        seen, stack = set(), list(edges[start])
        while stack:
            module = stack.pop()
            assert module != start, f"{start} imports itself through a cycle"
            if module not in seen:
                seen.add(module)
                stack.extend(edges[module])
