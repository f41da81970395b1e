"""Every registered op against PyTorch (forward values and gradients), when torch is installed."""
import numpy as np
import pytest

import nanodl as nd
from nanodl.ops.registry import REGISTRY, draw_inputs

torch = pytest.importorskip("torch")
F = torch.nn.functional

XENT_TARGET = torch.tensor([0, 2, 1, 2, 0])
TARGET = np.array([[0.5, -1.0, 1.5], [0.0, 1.25, -0.5]])
LABELS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.25]])
XENT_PROBS = torch.tensor([[0.2, 0.3, 0.5], [1, 0, 0], [0.1, 0.1, 0.8], [0, 0.5, 0.5], [0.3, 0.3, 0.4]],
                          dtype=torch.float64)


def _dense(act):
    return lambda x, w, b: act(x @ w + b)


TORCH = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "pow_scalar": lambda a: a ** 3,
    "pow_integer": lambda a: a ** torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=a.dtype),
    "pow_of_zero": lambda w: torch.zeros(3, dtype=w.dtype) ** w, "neg": torch.neg, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "abs": torch.abs, "clip": lambda a: torch.clamp(a, -0.5, 0.7),
    "maximum": torch.maximum, "minimum": torch.minimum,
    "where": lambda a, b: torch.where(a > 0, a, b), "matmul": torch.matmul,
    "sum": torch.sum, "sum_axis": lambda a: a.sum(dim=(0, -1), keepdim=True),
    "mean": lambda a: a.mean(dim=0), "var": lambda a: a.var(dim=-1, correction=0),
    "max": lambda a: a.max(dim=-1).values, "min": lambda a: a.min(dim=0, keepdim=True).values,
    "max_all": torch.max, "logsumexp": lambda a: torch.logsumexp(a, dim=-1),
    "reshape": lambda a: a.reshape(-1), "transpose": lambda a: a.permute(tuple(reversed(range(a.ndim)))),
    "transpose_axes": lambda a: a.permute(1, 2, 0), "squeeze": torch.squeeze,
    "expand_dims": lambda a: a.unsqueeze(1), "getitem_slice": lambda a: a[1:, ::2],
    "getitem_repeat": lambda a: a[torch.tensor([0, 2, 0, 0])],
    "concatenate": lambda a, b: torch.cat([a, b], dim=1),
    "stack": lambda a, b: torch.stack([a, b], dim=-1),
    "relu": torch.relu, "leaky_relu": lambda a: F.leaky_relu(a, 0.1), "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "gelu": lambda a: F.gelu(a, approximate="tanh"),
    "elu": lambda a: F.elu(a, 1.5), "softplus": F.softplus,
    "softmax": lambda a: torch.softmax(a, dim=-1), "log_softmax": lambda a: torch.log_softmax(a, dim=0),
    "linear": _dense(lambda z: z), "linear_relu": _dense(torch.relu), "linear_tanh": _dense(torch.tanh),
    "linear_sigmoid": _dense(torch.sigmoid), "linear_softmax": _dense(lambda z: torch.softmax(z, -1)),
    "linear_gelu": _dense(lambda z: F.gelu(z, approximate="tanh")),
    "linear_nobias": lambda x, w: x @ w,
    "softmax_xent": lambda a: F.cross_entropy(a, XENT_TARGET, reduction="none"),
    "softmax_xent_mean": lambda a: F.cross_entropy(a, XENT_TARGET),
    "softmax_xent_probs_sum": lambda a: F.cross_entropy(a, XENT_PROBS, reduction="sum"),
    "linear_leaky_relu": _dense(lambda z: F.leaky_relu(z, 0.1)), "linear_elu": _dense(F.elu),
    "linear_softplus": _dense(F.softplus),
    "broadcast_to": lambda a: a.broadcast_to((2, 3, 4)),
    "scatter_add": lambda a: torch.zeros(4, 2, dtype=a.dtype).index_add(0, torch.tensor([0, 2, 0]), a),
    "softmax_xent_sum": lambda a: F.cross_entropy(a, XENT_TARGET, reduction="sum"),
    "softmax_xent_onehot": lambda a: F.cross_entropy(a, F.one_hot(XENT_TARGET, 3).double(), reduction="none"),
    "softmax_xent_onehot_mean": lambda a: F.cross_entropy(a, F.one_hot(XENT_TARGET, 3).double()),
    "mse": lambda p: F.mse_loss(p, torch.tensor(TARGET)),
    "mae": lambda p: F.l1_loss(p, torch.tensor(TARGET), reduction="sum"),
    "huber": lambda p: F.huber_loss(p, torch.tensor(TARGET), reduction="none", delta=0.75),
    "bce_logits": lambda z: F.binary_cross_entropy_with_logits(z, torch.tensor(LABELS)),
    "bce_probs": lambda p: F.binary_cross_entropy(p, torch.tensor(LABELS), reduction="sum"),
    "categorical_crossentropy_probs": lambda p: -(XENT_PROBS * p.log()).sum(-1),
    "sparse_categorical_crossentropy_probs": lambda p: F.nll_loss(p.log(), XENT_TARGET, reduction="sum"),
    "sin": torch.sin, "cos": torch.cos, "log1p": torch.log1p, "expm1": torch.expm1, "erf": torch.erf,
    "prod": lambda a: a.prod(dim=-1),
    "prod_axes": lambda a: a.prod(dim=2, keepdim=True).prod(dim=0, keepdim=True),
    "cumsum": lambda a: torch.cumsum(a, dim=-1), "cumsum_flat": lambda a: torch.cumsum(a.reshape(-1), 0),
    "std": lambda a: a.std(dim=-1, correction=1), "norm": torch.linalg.vector_norm,
    "norm_axis": lambda a: torch.linalg.vector_norm(a, dim=-1, keepdim=True),
    "einsum": lambda a, b: torch.einsum("ij,jk->ik", a, b),
    "einsum_batch": lambda a, b: torch.einsum("bij,bjk->bik", a, b),
    "einsum_ellipsis": lambda a, b: torch.einsum("...ij,...jk", a, b),
    "einsum_diagonal": lambda a, b: torch.einsum("ii,ijk->j", a, b),
}

CASES = [(spec, shapes) for spec in REGISTRY for shapes in spec.cases]


def test_every_registered_op_has_a_torch_twin():
    assert sorted(TORCH) == sorted(spec.name for spec in REGISTRY)


@pytest.mark.parametrize("spec,shapes", CASES,
                         ids=[f"{s.name}-{'x'.join(map(str, sh))}" for s, sh in CASES])
def test_forward_and_gradients_match_torch(spec, shapes, kernel_table):
    arrays = draw_inputs(spec, shapes, np.random.default_rng(5), margin=1e-2)
    tensors = [nd.Tensor(a, requires_grad=True) for a in arrays]
    out = spec.fn(*tensors)
    weights = np.random.default_rng(6).standard_normal(out.shape)
    out.backward(weights)

    torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    torch_out = TORCH[spec.name](*torch_inputs)
    np.testing.assert_allclose(out.data, torch_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch_out.backward(torch.tensor(weights))
    for i, (mine, theirs) in enumerate(zip(tensors, torch_inputs)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=f"{spec.name}: gradient of input {i}")
