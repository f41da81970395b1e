"""per_sample_grad / per_sample_grad_norm (SPEC §17) against the loop of N single-sample
backward passes, for every built-in layer and activation and the ops where a parameter
meets the batch; float32 and float64, both CPU kernel tables; ops that mix samples refused."""
import numpy as np
import pytest

import nanodl as nd
import nanodl.functional as F
from nanodl import losses, nn
from nanodl.autograd import per_sample as per_sample_module
from nanodl.autograd.functional import per_sample_grad, per_sample_grad_norm
from helpers import Cube

N = 6
TOL = {np.float64: dict(rtol=1e-10, atol=1e-13), np.float32: dict(rtol=2e-4, atol=2e-6)}


def loop_grads(fn, params, batch):
    """The oracle: N backward passes, each on one sample alone (a batch of one)."""
    rows = [[] for _ in params]
    for i in range(N):
        out = fn(*[nd.tensor(b[i:i + 1]) for b in batch])
        grads = nd.grad(out.sum(), params, allow_unused=True)
        for row, g, p in zip(rows, grads, params):
            row.append(np.zeros(p.shape, p.dtype) if g is None else g.data)
    return [np.stack(row) for row in rows]


def check_against_loop(fn, params, batch, dtype):
    params = list(params)
    batch = [nd.tensor(b) for b in batch]
    got = per_sample_grad(fn, params, *batch)
    expected = loop_grads(fn, params, [b.data for b in batch])
    assert len(got) == len(params)
    for k, (g, e, p) in enumerate(zip(got, expected, params)):
        assert g.shape == (N,) + p.shape and g.dtype == p.dtype, f"param {k}"
        np.testing.assert_allclose(g, e, **TOL[dtype], err_msg=f"param {k} {p.shape}")
    norms = per_sample_grad_norm(fn, params, *batch)
    exact = np.sqrt(sum((e.astype(np.float64).reshape(N, -1) ** 2).sum(axis=1) for e in expected))
    assert norms.shape == (N,)
    np.testing.assert_allclose(norms, exact, rtol=TOL[dtype]["rtol"])


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    previous = nd.get_default_dtype()
    nd.set_default_dtype(request.param)
    nd.manual_seed(0)
    yield request.param
    nd.set_default_dtype(previous)


def xent(model):
    return lambda x, y: losses.sparse_categorical_crossentropy(model(x), y, from_logits=True, reduction="none")


def data(dtype, shape=(N, 4)):
    rng = np.random.default_rng(1)
    return rng.standard_normal(shape).astype(dtype), rng.integers(0, 3, N)


# ---------------------------------------------------------------- every built-in layer
@pytest.mark.parametrize("activation", F.ACTIVATIONS)
def test_dense_with_every_activation(activation, dtype, kernel_table):
    x, y = data(dtype)
    model = nn.Sequential([nn.Dense(5, activation=activation), nn.Dense(3)])
    model(nd.tensor(x))
    check_against_loop(xent(model), model.parameters(), [x, y], dtype)


def _built(layers, x, train_first=False):
    model = nn.Sequential(layers)
    model(nd.tensor(x))          # builds the layers (and, in training mode, moves BatchNorm's statistics)
    model.eval()
    return model


LAYER_STACKS = {
    "layernorm": lambda: [nn.Dense(5), nn.LayerNorm(), nn.ReLU(), nn.Dense(3)],
    "dropout_eval": lambda: [nn.Dense(5, activation="tanh"), nn.Dropout(0.5), nn.Dense(3)],
    "batchnorm_eval": lambda: [nn.Dense(5), nn.BatchNorm(momentum=0.5), nn.Tanh(), nn.Dense(3)],
    "activation_layers": lambda: [nn.Dense(5), nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.GELU(),
                                  nn.Activation("elu"), nn.Activation("softplus"), nn.Softmax(), nn.Dense(3)],
    "no_bias": lambda: [nn.Dense(5, activation="relu", use_bias=False), nn.Dense(3, use_bias=False)],
}


@pytest.mark.parametrize("stack", sorted(LAYER_STACKS))
def test_layer_stacks(stack, dtype, kernel_table):
    x, y = data(dtype)
    model = _built(LAYER_STACKS[stack](), x)
    check_against_loop(xent(model), model.parameters(), [x, y], dtype)


def test_flatten_and_dense_on_a_sequence(dtype, kernel_table):
    x, y = data(dtype, (N, 3, 4))
    model = _built([nn.Dense(5, activation="tanh"), nn.Flatten(), nn.Dense(3)], x)   # Dense on (N, 3, 4)
    check_against_loop(xent(model), model.parameters(), [x, y], dtype)


@pytest.mark.parametrize("pool", ["flatten", "mean"])
def test_embedding_with_repeated_indices(pool, dtype, kernel_table):
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 7, (N, 5))
    tokens[0] = [3, 3, 1, 3, 0]                      # a row used three times by one sample
    y = rng.integers(0, 3, N)
    embed, head = nn.Embedding(7, 4), nn.Dense(3)
    pooled = (lambda h: nn.Flatten()(h)) if pool == "flatten" else (lambda h: h.mean(axis=1))
    fn = lambda t, labels: losses.sparse_categorical_crossentropy(head(pooled(embed(t))), labels,
                                                                 from_logits=True, reduction="none")
    fn(nd.tensor(tokens), nd.tensor(y))
    check_against_loop(fn, [embed.embeddings, head.kernel, head.bias], [tokens, y], dtype)


def test_a_regression_head_may_give_n_by_1_losses_and_float64_inputs_meet_float32_weights(kernel_table):
    previous = nd.get_default_dtype()
    nd.set_default_dtype("float32")
    try:
        x, _ = data(np.float64)                                   # cast inside Dense (an AsType node)
        target = np.random.default_rng(6).standard_normal((N, 1)).astype(np.float32)
        model = _built([nn.Dense(5, activation="softplus"), nn.Dense(1)], x)
        fn = lambda xb, tb: losses.mse(model(xb), tb, reduction="none")   # (N, 1)
        check_against_loop(fn, model.parameters(), [x, target], np.float32)
    finally:
        nd.set_default_dtype(previous)


@pytest.mark.parametrize("loss", ["mse", "bce_logits", "probs"])
def test_other_losses(loss, dtype, kernel_table):
    x, y = data(dtype)
    target = np.random.default_rng(3).uniform(0, 1, (N, 3)).astype(dtype)
    if loss == "probs":
        model = _built([nn.Dense(5, activation="relu"), nn.Dense(3, activation="softmax")], x)
        fn = lambda xb, yb: losses.sparse_categorical_crossentropy(model(xb), yb, reduction="none")
        check_against_loop(fn, model.parameters(), [x, y], dtype)
        return
    model = _built([nn.Dense(5, activation="elu"), nn.Dense(3)], x)
    call = losses.mse if loss == "mse" else (lambda p, t, reduction: losses.binary_crossentropy(
        p, t, from_logits=True, reduction=reduction))
    fn = lambda xb, tb: call(model(xb), tb, reduction="none").mean(axis=1)
    check_against_loop(fn, model.parameters(), [x, target], dtype)


# ---------------------------------------------------------------- where parameters meet the batch
def _params(dtype):
    rng = np.random.default_rng(4)
    return (nn.Parameter(rng.standard_normal((4, 3)).astype(dtype)), nn.Parameter(rng.standard_normal(3).astype(dtype)),
            nn.Parameter(rng.standard_normal((1, 4)).astype(dtype)))


OP_MODELS = {
    "broadcast_mul_add_matmul": lambda w, v, s: lambda x: (x * s).sin() @ w + v,
    "matmul_vector": lambda w, v, s: lambda x: (x @ w[:, 0]).reshape(-1, 1) * v,
    "batched_matmul": lambda w, v, s: lambda x: (x.reshape(-1, 2, 2) @ w[:2, :2]).reshape(-1, 4) @ w + v,
    "shared_left_matmul": lambda w, v, s: lambda x: ((w.T @ x.reshape(-1, 4, 1)).reshape(-1, 3) * v).erf(),
    "einsum": lambda w, v, s: lambda x: nd.einsum("ni,ij,j->nj", x.cos(), w, v.exp()),
    "einsum_sequence": lambda w, v, s: lambda x: nd.einsum("nti,ij->ntj", x.reshape(-1, 2, 2), w[:2]).sum(axis=1) * v,
    "shared_subgraph": lambda w, v, s: lambda x: x @ (w * w) + (v * 2).tanh() * (s * s).sum(),
    "tied_weights": lambda w, v, s: lambda x: (x @ w) @ w.T @ w + v,
    "reductions": lambda w, v, s: lambda x: nd.stack([(x * s).norm(axis=1), (x * s).prod(axis=1),
                                                      (x * s).std(axis=1, ddof=1), (x @ w).cumsum(1)[:, -1]], axis=1) @ w.T[:, :4].T,
    "index_and_concat": lambda w, v, s: lambda x: nd.concatenate(
        [(x @ w)[np.arange(len(x)), np.zeros(len(x), int)].reshape(-1, 1), (x * s)[:, [0, 2]]], axis=1) * v,
    "where_maximum": lambda w, v, s: lambda x: nd.maximum(nd.where(x.data > 0, x * s, s.exp()), 0.1) @ w - v,
    "unused_param": lambda w, v, s: lambda x: (x @ w).tanh() + 0 * x[:, :3],
}


@pytest.mark.parametrize("name", sorted(OP_MODELS))
def test_ops_where_parameters_meet_the_batch(name, dtype, kernel_table):
    x, y = data(dtype)
    w, v, s = _params(dtype)
    body = OP_MODELS[name](w, v, s)
    fn = lambda xb, yb: losses.sparse_categorical_crossentropy(body(xb), yb, from_logits=True, reduction="none")
    check_against_loop(fn, [w, v, s], [x, y], dtype)


def test_a_parameter_the_losses_do_not_use_gets_zero_rows():
    x, y = data(np.float64)
    w, v, s = _params(np.float64)
    grads = per_sample_grad(lambda xb: (xb @ w).sum(axis=1), [w, v], nd.tensor(x))
    assert grads[1].shape == (N, 3) and not grads[1].any()


# ---------------------------------------------------------------- norms without forming per-sample gradients
def test_norms_never_form_dense_or_embedding_gradients(monkeypatch, dtype):
    def refuse(self):
        raise AssertionError("per-sample gradients were formed")
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 9, (N, 4))
    tokens[1] = [2, 5, 2, 2]
    y = rng.integers(0, 3, N)
    embed, hidden, head = nn.Embedding(9, 20), nn.Dense(20, activation="tanh"), nn.Dense(3)
    fn = lambda t, labels: losses.sparse_categorical_crossentropy(
        head(hidden(embed(t)).mean(axis=1)), labels, from_logits=True, reduction="none")
    fn(nd.tensor(tokens), nd.tensor(y))
    params = [embed.embeddings, hidden.kernel, hidden.bias, head.kernel, head.bias]
    expected = loop_grads(fn, params, [tokens, y])
    monkeypatch.setattr(per_sample_module._DenseKernel, "array", refuse)
    monkeypatch.setattr(per_sample_module._EmbeddingRows, "array", refuse)
    norms = per_sample_grad_norm(fn, params, tokens, y)    # hidden: T=4 rows, the Gram form
    exact = np.sqrt(sum((e.astype(np.float64).reshape(N, -1) ** 2).sum(axis=1) for e in expected))
    np.testing.assert_allclose(norms, exact, rtol=TOL[dtype]["rtol"])


# ---------------------------------------------------------------- ops that mix samples
def _mlp(x):
    model = nn.Sequential([nn.Dense(5), nn.BatchNorm(), nn.Dense(3)])
    model(nd.tensor(x))
    return model


def test_batchnorm_in_training_mode_is_refused_by_name():
    x, y = data(np.float64)
    model = _mlp(x)
    with pytest.raises(ValueError, match=r"Mean over axis 0 \(the batch axis\) mixes samples.*BatchNorm"):
        per_sample_grad(xent(model), model.parameters(), x, y)
    with pytest.raises(ValueError, match="per_sample_grad_norm: Mean"):
        per_sample_grad_norm(xent(model), model.parameters(), x, y)
    model.eval()
    per_sample_grad(xent(model), model.parameters(), x, y)


@pytest.mark.parametrize("body,op", [
    (lambda x, w: (x @ w - (x @ w).mean(axis=0)).sum(axis=1), "Mean"),
    (lambda x, w: (x @ w).sum() * nd.ones(N), "Sum"),
    (lambda x, w: (x @ (x.T @ x) @ w).sum(axis=1), "Transpose"),
    (lambda x, w: (x @ w).softmax(axis=0).sum(axis=1), "Softmax"),
    (lambda x, w: (x @ w).reshape(-1)[:N], "Reshape"),
    (lambda x, w: nd.concatenate([x @ w, x @ w], axis=0)[:N].sum(axis=1), "Concatenate"),
    (lambda x, w: (w.T @ x.T).T.sum(axis=1), "Transpose"),
    (lambda x, w: losses.sparse_categorical_crossentropy(x @ w, np.zeros(N, int), from_logits=True)
     * nd.ones(N), "SoftmaxCrossEntropy"),
    (lambda x, w: (x @ w)[::-1].sum(axis=1), "GetItem"),
    (lambda x, w: Cube.apply(x @ w).sum(axis=1), "Cube"),
])
def test_ops_that_mix_samples_raise_value_error_naming_them(body, op):
    x, _ = data(np.float64)
    w = _params(np.float64)[0]
    with pytest.raises(ValueError, match=f"per_sample_grad: {op}"):
        per_sample_grad(lambda xb: body(xb, w), [w], x)


def test_bad_arguments():
    x, _ = data(np.float64)
    w = _params(np.float64)[0]
    fn = lambda xb: (xb @ w).sum(axis=1)
    with pytest.raises(ValueError, match=r"params\[0\] .* does not require grad"):
        per_sample_grad(fn, [nd.tensor(w.data)], x)
    with pytest.raises(TypeError, match=r"params\[0\] must be a Tensor"):
        per_sample_grad(fn, [w.data], x)
    with pytest.raises(ValueError, match="same first axis N"):
        per_sample_grad(lambda a, b: fn(a), [w], x, x[:3])
    with pytest.raises(ValueError, match=r"shape \(6,\) \(or \(6, 1\)\), got \(6, 3\)"):
        per_sample_grad(lambda xb: xb @ w, [w], x)
    with pytest.raises(ValueError, match=r"per-sample losses, .* got \(\)"):
        per_sample_grad(lambda xb: (xb @ w).sum(), [w], x)
    assert [g.shape for g in per_sample_grad(fn, w, x)] == [(N, 4, 3)]   # one Tensor for params


# ---------------------------------------------------------------- every op, between two Dense layers
EVERY_OP = {
    "exp": lambda h, p: h.exp(), "log_sqrt": lambda h, p: (h * h + 1).log() + (h * h + 0.5).sqrt(),
    "abs_clip_neg": lambda h, p: -h.abs().clip(0.1, 0.9), "pow": lambda h, p: h ** 3 + (h * h + 1) ** p,
    "activations": lambda h, p: F.relu(h) + F.leaky_relu(h, 0.2) + F.gelu(h) + F.elu(h) + F.softplus(h)
    + h.sigmoid() + h.tanh(),
    "softmax_log_softmax": lambda h, p: h.softmax(axis=-1) + h.log_softmax(axis=1),
    "reductions": lambda h, p: nd.stack([h.logsumexp(axis=1), h.max(axis=1), h.min(axis=-1), h.mean(axis=1),
                                         h.var(axis=1), h.sum(axis=1), h.prod(axis=1), h.norm(axis=1),
                                         h.std(axis=1)], axis=1),
    "keepdims": lambda h, p: h - h.max(axis=1, keepdims=True) + h.mean(axis=1, keepdims=True) * p,
    "binary_with_parameter": lambda h, p: nd.maximum(h, p) - nd.minimum(h, p * 2) + h / (p * p + 1) - p,
    "where": lambda h, p: nd.where(h.data > 0, h * p, p - h),
    "special": lambda h, p: h.sin() + h.cos() + (h * h).log1p() + h.expm1() + h.erf(),
    "cumsum": lambda h, p: h.cumsum(1) * p,
    "shapes": lambda h, p: ((h.reshape(-1, 2, 2).transpose(0, 2, 1) @ p.reshape(2, 2)).reshape(-1, 4)
                           .expand_dims(1).squeeze(1))[:, 1:],
    "index_concat_stack": lambda h, p: nd.concatenate([h[:, :2], nd.stack([h[:, 3], p[0] * h[:, 2]], axis=1)],
                                                     axis=1),
    "einsum_matmul": lambda h, p: nd.einsum("ni,i->ni", h, p) + h @ nd.einsum("i,j->ij", p, p),
    "astype": lambda h, p: (h.astype("float32") * p.astype("float32")).astype(h.dtype),
}


@pytest.mark.parametrize("name", sorted(EVERY_OP))
def test_every_op_between_two_dense_layers(name, kernel_table):
    previous = nd.get_default_dtype()
    nd.set_default_dtype("float64")
    try:
        x, y = data(np.float64)
        first, head = nn.Dense(4, activation="tanh", input_dim=4), nn.Dense(3)
        p = nn.Parameter(np.array([0.5, -1.0, 1.5, 0.25]))
        body = EVERY_OP[name]
        fn = lambda xb, yb: losses.sparse_categorical_crossentropy(head(body(first(xb), p)), yb,
                                                                  from_logits=True, reduction="none")
        fn(nd.tensor(x), nd.tensor(y))
        tol = dict(rtol=1e-6, atol=1e-9) if name == "astype" else TOL[np.float64]
        params = [first.kernel, first.bias, p, head.kernel, head.bias]
        got = per_sample_grad(fn, params, x, y)
        for g, e in zip(got, loop_grads(fn, params, [x, y])):
            np.testing.assert_allclose(g, e, **tol)
    finally:
        nd.set_default_dtype(previous)


def test_an_empty_batch_gives_empty_rows():
    # was NumPy's "cannot reshape array of size 0" from inside the forward record
    dense = nn.Dense(2, input_dim=3)
    x, y = nd.tensor(np.zeros((0, 3))), np.zeros(0, dtype=np.int64)

    def fn(x):
        return losses.sparse_categorical_crossentropy(dense(x), y, from_logits=True, reduction="none")

    grads = per_sample_grad(fn, dense.parameters(), x)
    assert [g.shape for g in grads] == [(0, 3, 2), (0, 2)]
    assert per_sample_grad_norm(fn, dense.parameters(), x).shape == (0,)
