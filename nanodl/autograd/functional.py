"""Jacobians, Hessians and their products, built on ``nd.grad`` (PyTorch's names).

``inputs`` is a Tensor or a tuple of Tensors, and each result has the same structure.
No ``.grad`` is touched. See docs/higher_order.md.

>>> import nanodl as nd
>>> from nanodl.autograd.functional import hessian
>>> rosenbrock = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
>>> hessian(rosenbrock, nd.tensor([1.0, 1.0], dtype="float64")).tolist()
[[802.0, -400.0], [-400.0, 200.0]]
"""
import numpy as np

from . import enable_grad
from .. import ops
from ..backend import array_module
from ..tensor import Tensor
from .curvature import hessian_diagonal, hessian_eigenvalues, hessian_trace  # noqa: F401
from .higher import grad
from .per_sample import per_sample_grad, per_sample_grad_norm  # noqa: F401

__all__ = ["vjp", "jvp", "hvp", "jacobian", "hessian", "hessian_eigenvalues", "hessian_trace",
           "hessian_diagonal", "per_sample_grad", "per_sample_grad_norm"]


def vjp(fn, inputs, v=None, create_graph=False):
    """``(fn(*inputs), v^T J)``: the vector-Jacobian product; ``v`` may be omitted for a scalar.

    >>> import nanodl as nd
    >>> out, (gx,) = vjp(lambda x: x * x, (nd.tensor([1.0, 3.0]),), nd.tensor([1.0, 1.0]))
    >>> gx.tolist()
    [2.0, 6.0]
    """
    is_tuple, xs = _prepare(inputs, create_graph, "vjp")
    out = _call(fn, xs, "vjp")
    v = _tensor_of(v, out, "vjp") if v is not None else None
    grads = grad(out, xs, v, create_graph=create_graph, allow_unused=True) if out.requires_grad \
        else [None] * len(xs)
    return _finish(out, create_graph), _shaped(_zeros_for_none(grads, xs, create_graph), is_tuple)


def jvp(fn, inputs, v, create_graph=False):
    """``(fn(*inputs), J v)``: the Jacobian-vector product, by two reverse passes
    (``J^T u`` is linear in ``u``; its derivative along ``v`` is ``J v``).

    >>> import nanodl as nd
    >>> out, jv = jvp(lambda x: x * x, nd.tensor([1.0, 3.0]), nd.tensor([1.0, 0.0]))
    >>> jv.tolist()
    [2.0, 0.0]
    """
    is_tuple, xs = _prepare(inputs, create_graph, "jvp")
    directions = _directions(v, xs, is_tuple, "jvp")
    out = _call(fn, xs, "jvp")
    dummy = Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype), requires_grad=True)
    transposed = grad(out, xs, dummy, create_graph=True, allow_unused=True) if out.requires_grad \
        else ()
    pairs = [(g, d) for g, d in zip(transposed, directions) if g is not None and g.requires_grad]
    result = None
    if pairs:
        (result,) = grad([g for g, _ in pairs], dummy, [d for _, d in pairs],
                         create_graph=create_graph, allow_unused=True)
    if result is None:
        result = Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype))
    return _finish(out, create_graph), (result if create_graph else result.detach())


def hvp(fn, inputs, v, create_graph=False):
    """``(fn(*inputs), H v)`` for a scalar ``fn``: the gradient of ``<grad fn, v>``.

    >>> import nanodl as nd
    >>> out, hv = hvp(lambda x: (x ** 3).sum(), nd.tensor([1.0, 2.0]), nd.tensor([1.0, 1.0]))
    >>> hv.tolist()
    [6.0, 12.0]
    """
    is_tuple, xs = _prepare(inputs, create_graph, "hvp")
    directions = _directions(v, xs, is_tuple, "hvp")
    out = _scalar(_call(fn, xs, "hvp"), "hvp")
    first = _first(out, xs)
    used = [(g, d) for g, d in zip(first, directions) if g is not None]
    second = [None] * len(xs)
    if used:
        second = list(grad([g for g, _ in used], xs, [d for _, d in used],
                           create_graph=create_graph, allow_unused=True))
    return _finish(out, create_graph), _shaped(_zeros_for_none(second, xs, create_graph), is_tuple)


def jacobian(fn, inputs, create_graph=False):
    """d fn / d inputs, of shape ``output.shape + input.shape`` (one reverse pass per output).

    >>> import nanodl as nd
    >>> jacobian(lambda x: x * x, nd.tensor([1.0, 3.0])).tolist()
    [[2.0, 0.0], [0.0, 6.0]]
    """
    is_tuple, xs = _prepare(inputs, create_graph, "jacobian")
    out = _call(fn, xs, "jacobian")
    return _shaped(_jacobian_rows(out, xs, create_graph), is_tuple)


def hessian(fn, inputs, create_graph=False):
    """Second derivatives of a scalar ``fn``: shape ``input.shape + input.shape``; for a
    tuple of inputs, a tuple of tuples ``H[i][j]``."""
    is_tuple, xs = _prepare(inputs, create_graph, "hessian")
    out = _scalar(_call(fn, xs, "hessian"), "hessian")
    first = _zeros_for_none(_first(out, xs), xs, True)
    blocks = tuple(tuple(_jacobian_rows(g, xs, create_graph)) for g in first)
    return blocks if is_tuple else blocks[0][0]


# ------------------------------------------------------------------ shared steps
def _prepare(inputs, create_graph, name):
    """``(was a tuple, fresh float leaves)``; with ``create_graph``, tensors that require
    grad stay themselves."""
    is_tuple = isinstance(inputs, (tuple, list))
    values = tuple(inputs) if is_tuple else (inputs,)
    if not values:
        raise ValueError(f"{name}: inputs is empty")
    prepared = []
    for index, value in enumerate(values):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: inputs[{index}] must be a Tensor, got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise TypeError(f"{name}: inputs[{index}] must be a float Tensor, got {value.dtype}")
        prepared.append(value if create_graph and value.requires_grad
                        else Tensor(value.data, requires_grad=True))
    return is_tuple, tuple(prepared)


def _call(fn, xs, name):
    with enable_grad():
        out = fn(*xs)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: fn must return a Tensor, got {type(out).__name__}")
    return out


def _scalar(out, name):
    if out.size != 1:
        raise ValueError(f"{name}: fn must return a one-element Tensor, got shape {out.shape}")
    return out


def _tensor_of(value, like, name):
    tensor = value if isinstance(value, Tensor) else Tensor(np.asarray(value, dtype=like.dtype))
    if tensor.shape != like.shape:
        raise ValueError(f"{name}: v has shape {tensor.shape}, expected {like.shape}")
    return tensor


def _directions(v, xs, is_tuple, name):
    values = tuple(v) if is_tuple else (v,)
    if len(values) != len(xs):
        raise ValueError(f"{name}: got {len(values)} vectors v for {len(xs)} inputs")
    return [_tensor_of(d, x, name) for d, x in zip(values, xs)]


def _first(out, xs):
    if not out.requires_grad:
        return [None] * len(xs)
    return list(grad(out, xs, create_graph=True, allow_unused=True))


def _jacobian_rows(out, xs, create_graph):
    """One Jacobian per input, from one vjp per output element."""
    xp = array_module(out.data)
    rows = [[] for _ in xs]
    for k in range(out.size):
        if out.requires_grad:
            basis = xp.zeros(out.size, dtype=out.dtype)
            basis[k] = 1
            grads = grad(out, xs, basis.reshape(out.shape), retain_graph=True,
                         create_graph=create_graph, allow_unused=True)
        else:
            grads = [None] * len(xs)
        for row, g in zip(rows, _zeros_for_none(list(grads), xs, create_graph)):
            row.append(g)
    jacobians = []
    for row, x in zip(rows, xs):
        if create_graph:
            stacked = ops.stack(row, axis=0) if row else Tensor(xp.zeros((0,) + x.shape, x.dtype))
            jacobians.append(stacked.reshape(out.shape + x.shape))
        else:
            data = xp.stack([g.data for g in row]) if row else xp.zeros((0,) + x.shape, x.dtype)
            jacobians.append(Tensor(data.reshape(out.shape + x.shape)))
    return jacobians


def _zeros_for_none(grads, xs, create_graph):
    return [Tensor(array_module(x.data).zeros(x.shape, dtype=x.dtype)) if g is None
            else (g if create_graph else g.detach()) for g, x in zip(grads, xs)]


def _finish(out, create_graph):
    return out if create_graph else out.detach()


def _shaped(results, is_tuple):
    return tuple(results) if is_tuple else results[0]
