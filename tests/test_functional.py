"""``nanodl.autograd.functional`` (vjp, jvp, hvp, jacobian, hessian) and what higher-order
gradients are for: a gradient penalty, a PDE residual, Hessians. Checked against finite
differences always and against PyTorch when it is installed."""
import numpy as np
import pytest

import nanodl as nd
from nanodl.autograd import functional as AF


def t64(array, requires_grad=False):
    return nd.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def numeric_jacobian(fn, arrays, eps=1e-6):
    """Central differences: one array ``out.shape + x.shape`` per input."""
    def run(*raw):
        with nd.no_grad():
            return fn(*[t64(r) for r in raw]).numpy()
    out = run(*arrays)
    jacobians = []
    for i, array in enumerate(arrays):
        jac = np.zeros(out.shape + array.shape)
        for index in np.ndindex(array.shape):
            up, down = [a.copy() for a in arrays], [a.copy() for a in arrays]
            up[i][index] += eps
            down[i][index] -= eps
            jac[(...,) + index] = (run(*up) - run(*down)) / (2 * eps)
        jacobians.append(jac)
    return jacobians


RNG = np.random.default_rng(0)
X = RNG.standard_normal((3,))
Y = RNG.standard_normal((2, 3))


def f_two(x, y):
    return (y @ x).tanh() * x[:2] + (y * y).sum(axis=1)


def f_scalar(x, y):
    return ((y @ x).tanh() ** 2).sum() + (x * x * x).sum() * y.mean()


def test_jacobian_shapes_and_values_against_differences():
    jx, jy = AF.jacobian(f_two, (t64(X), t64(Y)))
    assert jx.shape == (2, 3) and jy.shape == (2, 2, 3)
    nx, ny = numeric_jacobian(f_two, [X, Y])
    np.testing.assert_allclose(jx.data, nx, atol=1e-7)
    np.testing.assert_allclose(jy.data, ny, atol=1e-7)
    single = AF.jacobian(lambda x: f_two(x, t64(Y)), t64(X))  # a Tensor in, a Tensor out
    assert isinstance(single, nd.Tensor)
    np.testing.assert_allclose(single.data, nx, atol=1e-7)


def test_hessian_against_differences_of_the_gradient():
    blocks = AF.hessian(f_scalar, (t64(X), t64(Y)))
    assert [[b.shape for b in row] for row in blocks] == [[(3, 3), (3, 2, 3)], [(2, 3, 3), (2, 3, 2, 3)]]

    def gradient_of(i):
        def g(x, y):
            with nd.enable_grad():  # numeric_jacobian runs fn under no_grad
                xs = [t64(x.data, True), t64(y.data, True)]
                return nd.grad(f_scalar(*xs), xs)[i]
        return g
    for i in range(2):
        numeric = numeric_jacobian(gradient_of(i), [X, Y])
        for j in range(2):
            np.testing.assert_allclose(blocks[i][j].data, numeric[j], atol=1e-6)
    np.testing.assert_allclose(blocks[0][1].data.reshape(3, 6), blocks[1][0].data.reshape(6, 3).T,
                               atol=1e-12)  # symmetric


def test_rosenbrock_hessian():
    def rosenbrock(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
    h = AF.hessian(rosenbrock, t64([1.0, 1.0]))
    np.testing.assert_allclose(h.data, [[802, -400], [-400, 200]])


def test_products_match_the_full_matrices():
    xs = (t64(X), t64(Y))
    v = (t64(RNG.standard_normal(3)), t64(RNG.standard_normal((2, 3))))
    jx, jy = AF.jacobian(f_two, xs)
    out, jv = AF.jvp(f_two, xs, v)
    np.testing.assert_allclose(jv.data, jx.data @ v[0].data + np.einsum("oij,ij->o", jy.data, v[1].data),
                               atol=1e-12)
    np.testing.assert_allclose(out.data, f_two(*xs).data)
    u = t64(RNG.standard_normal(2))
    out, (gx, gy) = AF.vjp(f_two, xs, u)
    np.testing.assert_allclose(gx.data, u.data @ jx.data, atol=1e-12)
    np.testing.assert_allclose(gy.data, np.einsum("o,oij->ij", u.data, jy.data), atol=1e-12)
    blocks = AF.hessian(f_scalar, xs)
    out, (hx, hy) = AF.hvp(f_scalar, xs, v)
    np.testing.assert_allclose(hx.data, blocks[0][0].data @ v[0].data +
                               np.einsum("aij,ij->a", blocks[0][1].data, v[1].data), atol=1e-10)
    np.testing.assert_allclose(hy.data, np.einsum("ija,a->ij", blocks[1][0].data, v[0].data) +
                               np.einsum("ijkl,kl->ij", blocks[1][1].data, v[1].data), atol=1e-10)
    assert not any(t.requires_grad for t in (out, hx, hy, jv, gx))


def test_functional_leaves_inputs_alone_and_linear_parts_give_zeros():
    x = t64([1.0, 2.0], requires_grad=True)
    h = AF.hessian(lambda t: (t * 3).sum(), x)
    np.testing.assert_array_equal(h.data, np.zeros((2, 2)))
    assert x.grad is None
    out, jv = AF.jvp(lambda t: t * 0 + 1, x, t64([1.0, 1.0]))
    np.testing.assert_array_equal(jv.data, [0, 0])
    with pytest.raises(ValueError, match="one-element"):
        AF.hessian(lambda t: t * t, x)


def test_create_graph_keeps_the_results_differentiable():
    w = t64([0.5, -1.0], requires_grad=True)
    jac = AF.jacobian(lambda t: (t * t * t), w, create_graph=True)
    (d,) = nd.grad(jac.sum(), w)  # d/dw sum(diag(3 w^2)) = 6 w
    np.testing.assert_allclose(d.data, 6 * w.data)


# ---------------------------------------------------------------- what it is for
def test_wgan_gp_penalty_gradient_for_a_linear_critic_is_the_closed_form():
    """Critic D(x) = x.w + b: grad_x D = w on every interpolate, so the penalty
    lam * (|w| - 1)^2 has parameter gradient 2 lam (|w| - 1) w / |w|."""
    rng = np.random.default_rng(3)
    lam = 10.0
    w = t64(rng.standard_normal(4) * 0.7, requires_grad=True)
    b = t64([0.3], requires_grad=True)
    real, fake = rng.standard_normal((16, 4)), rng.standard_normal((16, 4)) + 2
    mix = rng.uniform(size=(16, 1))
    interpolates = t64(mix * real + (1 - mix) * fake, requires_grad=True)
    scores = interpolates @ w + b
    (g,) = nd.grad(scores.sum(), interpolates, create_graph=True)
    penalty = lam * (((g * g).sum(axis=1).sqrt() - 1) ** 2).mean()
    penalty.backward()
    norm = np.linalg.norm(w.data)
    np.testing.assert_allclose(w.grad, 2 * lam * (norm - 1) * w.data / norm, rtol=1e-12)
    assert b.grad is None or np.all(b.grad == 0)


def test_u_xx_of_a_tanh_mlp_against_differences():
    rng = np.random.default_rng(4)
    w1, b1 = rng.standard_normal((1, 8)), rng.standard_normal(8)
    w2, b2 = rng.standard_normal((8, 1)), rng.standard_normal(1)

    def u(x):
        return nd.functional.linear(nd.functional.linear(x, t64(w1), t64(b1), "tanh"), t64(w2), t64(b2))

    x = t64(np.linspace(-1, 1, 7).reshape(-1, 1), requires_grad=True)
    (u_x,) = nd.grad(u(x).sum(), x, create_graph=True)
    (u_xx,) = nd.grad(u_x.sum(), x)

    def value(points):
        with nd.no_grad():
            return u(t64(points)).numpy()
    h = 1e-4
    points = x.numpy()
    numeric = (value(points + h) - 2 * value(points) + value(points - h)) / h ** 2
    np.testing.assert_allclose(u_xx.data, numeric, atol=1e-5)
    numeric_x = (value(points + 1e-6) - value(points - 1e-6)) / 2e-6
    np.testing.assert_allclose(u_x.data, numeric_x, atol=1e-8)


def test_dropout_is_differentiable_twice():
    x = t64([0.5, -1.0, 2.0, 1.5], requires_grad=True)
    nd.manual_seed(0)
    y = nd.functional.dropout(x, 0.5)
    (g,) = nd.grad((y * y * y).sum(), x, create_graph=True)
    (gg,) = nd.grad(g.sum(), x)
    scale = y.data / x.data  # 0 or 2 per element
    np.testing.assert_allclose(g.data, 3 * scale ** 3 * x.data ** 2)
    np.testing.assert_allclose(gg.data, 6 * scale ** 3 * x.data)


# ---------------------------------------------------------------- PyTorch as oracle
torch_only = pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is None,
                                reason="torch is not installed")


@torch_only
def test_functional_matches_torch():
    import torch
    from torch.autograd import functional as TF

    def torch_f(x, y):
        return ((y @ x).tanh() ** 2).sum() + (x * x * x).sum() * y.mean()

    tx, ty = torch.tensor(X), torch.tensor(Y)
    mine = AF.hessian(f_scalar, (t64(X), t64(Y)))
    theirs = TF.hessian(torch_f, (tx, ty))
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(mine[i][j].data, theirs[i][j].numpy(), rtol=1e-10, atol=1e-12)
    v = (torch.tensor(RNG.standard_normal(3)), torch.tensor(RNG.standard_normal((2, 3))))
    _, their_hvp = TF.hvp(torch_f, (tx, ty), v)
    _, my_hvp = AF.hvp(f_scalar, (t64(X), t64(Y)), tuple(t64(a.numpy()) for a in v))
    for a, b in zip(my_hvp, their_hvp):
        np.testing.assert_allclose(a.data, b.numpy(), rtol=1e-10, atol=1e-12)
    _, their_jvp = TF.jvp(lambda x, y: (y @ x).tanh() * x[:2], (tx, ty), v)
    _, my_jvp = AF.jvp(lambda x, y: (y @ x).tanh() * x[:2], (t64(X), t64(Y)), tuple(t64(a.numpy()) for a in v))
    np.testing.assert_allclose(my_jvp.data, their_jvp.numpy(), rtol=1e-10, atol=1e-12)
    their_jac = TF.jacobian(lambda x: (ty @ x).tanh() * x[:2], tx)
    np.testing.assert_allclose(AF.jacobian(lambda x: (t64(Y) @ x).tanh() * x[:2], t64(X)).data,
                               their_jac.numpy(), rtol=1e-10, atol=1e-12)


@torch_only
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "softplus", "elu", "relu"])
def test_hessian_of_a_small_mlp_loss_matches_torch(activation):
    """The Hessian over all parameters of a 2-layer MLP's cross-entropy loss."""
    import torch
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((4, 3)),
              rng.standard_normal(3)]

    def loss(w1, b1, w2, b2):
        h = nd.functional.linear(t64(x), w1, b1, activation)
        return nd.losses.sparse_categorical_crossentropy(nd.functional.linear(h, w2, b2), labels,
                                                         from_logits=True)

    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
           "gelu": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
           "softplus": torch.nn.functional.softplus, "elu": torch.nn.functional.elu}[activation]

    def torch_loss(w1, b1, w2, b2):
        h = act(torch.tensor(x) @ w1 + b1)
        return torch.nn.functional.cross_entropy(h @ w2 + b2, torch.tensor(labels))

    mine = AF.hessian(loss, tuple(t64(p) for p in params))
    theirs = torch.autograd.functional.hessian(torch_loss, tuple(torch.tensor(p) for p in params))
    for i in range(4):
        for j in range(4):
            np.testing.assert_allclose(mine[i][j].data, theirs[i][j].numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"block ({i}, {j})")


@torch_only
@pytest.mark.parametrize("name", ["mul", "div", "pow", "exp", "log", "sqrt", "matmul", "var",
                                  "logsumexp", "softmax", "log_softmax", "getitem_repeat",
                                  "softmax_xent_probs_sum", "linear_gelu", "bce_logits", "huber"])
def test_second_and_third_derivatives_match_torch(name):
    import torch
    from nanodl.ops.registry import BY_NAME, draw_inputs
    from test_torch_ops import TORCH
    spec = BY_NAME[name]
    rng = np.random.default_rng(8)
    shapes = spec.cases[-1]
    arrays = draw_inputs(spec, shapes, rng, margin=1e-2)
    mine = [t64(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out_mine, out_theirs = spec.fn(*mine), TORCH[name](*theirs)
    weights = rng.standard_normal(out_mine.shape)
    total_mine = (out_mine * t64(weights)).sum()
    total_theirs = (out_theirs * torch.tensor(weights)).sum()
    for order in (1, 2, 3):
        g_mine = nd.grad(total_mine, mine, create_graph=True, allow_unused=True)
        g_theirs = torch.autograd.grad(total_theirs, theirs, create_graph=True, allow_unused=True)
        directions = [rng.standard_normal(a.shape) for a in arrays]
        for a, b in zip(g_mine, g_theirs):
            if b is None:
                assert a is None or np.allclose(a.data, 0)
                continue
            np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-9, atol=1e-11,
                                       err_msg=f"{name}: order {order}")
        total_mine = sum(((g * t64(d)).sum() for g, d in zip(g_mine, directions) if g is not None),
                         t64(0.0))
        total_theirs = sum((g * torch.tensor(d)).sum() for g, d in zip(g_theirs, directions)
                           if g is not None and g.requires_grad)
        if not isinstance(total_theirs, torch.Tensor) or not total_theirs.requires_grad:
            break
