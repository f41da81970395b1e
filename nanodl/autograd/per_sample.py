"""Per-sample gradients in one backward pass (SPEC §17). The backward of the summed losses
holds every sample's gradient until a *shared* tensor meets a batched one; there each op
has an exact rule that keeps the batch axis. See docs/per_sample_gradients.md.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn
>>> from nanodl.autograd.functional import per_sample_grad, per_sample_grad_norm
>>> layer = nn.Dense(2, input_dim=3)
>>> x = nd.tensor(np.arange(12.0).reshape(4, 3))
>>> losses = lambda x: layer(x).sum(axis=1)          # one loss per sample
>>> grads = per_sample_grad(losses, layer.parameters(), x)
>>> [g.shape for g in grads]
[(4, 3, 2), (4, 2)]
>>> flat = np.concatenate([g.reshape(4, -1) for g in grads], axis=1)
>>> np.allclose(per_sample_grad_norm(losses, layer.parameters(), x), np.sqrt((flat ** 2).sum(axis=1)))
True
"""
import numpy as np

from . import mode, unbroadcast
from .higher import grad as differentiate
from ..backend import array_module, kernels
from ..backend.activations import BY_NAME as ACTIVATIONS, ELEMENTWISE
from ..ops.activation import softmax_backward_array
from ..ops.axes import normalize_axes, normalize_axis
from ..ops.einsum import constant_operand, contract, gradient_spec
from ..ops.shape import scatter_add
from ..tensor import Tensor

__all__ = ["per_sample_grad", "per_sample_grad_norm"]

# Ops whose output row i depends only on input rows i (and shared tensors), and whose
# backward returns a shared input's gradient before broadcasting is undone.
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Maximum", "Minimum", "Where", "Neg", "Exp", "Log",
                   "Sqrt", "Abs", "Clip", "Sin", "Cos", "Log1p", "Expm1", "Erf", "AsType", "ToDevice",
                   "BroadcastTo", *(activation.op for activation in ELEMENTWISE)}
REDUCTIONS = {"Sum", "Mean", "Var", "Max", "Min", "LogSumExp", "Prod", "Norm"}   # over node.axes
ALONG_AXIS = {"Softmax", "LogSoftmax", "Cumsum", "Concatenate", "Stack"}        # along node.axis
_MEAN_HINT = ("BatchNorm in training mode does this: call model.eval() first; a mean over the "
              "batch inside fn does too: return the N per-sample losses instead")


class _Mixing(ValueError):
    pass


def _mixes(node, what, hint=""):
    return _Mixing(f"per_sample_grad: {node.name} {what} mixes samples: loss i would depend on "
                   f"other samples, so no single-sample gradient exists" + (f" ({hint})" if hint else ""))


# ------------------------------------------------------------------ which tensors carry the batch axis
def _batched_output(node, tensors, flags, kwargs, out, n):
    """Does ``node``'s output carry the batch axis first? Raise where it mixes samples."""
    name = node.name
    if name in ELEMENTWISE_OPS:
        for k, (tensor, batched) in enumerate(zip(tensors, flags)):
            if batched and (tensor.ndim != out.ndim or tensor.shape[0] != n):
                raise _mixes(node, f"broadcasts input {k} of shape {tensor.shape} (batch axis first) "
                                   f"to {out.shape}, moving the batch axis")
        return True
    if name in REDUCTIONS:
        if 0 in node.axes:
            hint = _MEAN_HINT if name in ("Mean", "Var", "Sum") else ""
            raise _mixes(node, "over axis 0 (the batch axis)", hint)
        return True
    if name in ALONG_AXIS:
        if node.axis == 0:
            raise _mixes(node, "along axis 0 (the batch axis)")
        return True
    rule = _RULES.get(name)
    if rule is None:
        raise ValueError(f"per_sample_grad: {name} has no per-sample rule, so per_sample_grad cannot "
                         "tell whether it mixes samples (write fn with built-in ops)")
    if not rule(node, tensors, flags, kwargs, out, n):
        shapes = ", ".join(str(t.shape) for t in tensors)
        raise _Mixing(f"per_sample_grad: {name} of inputs {shapes} (batch axis first) into {out.shape} "
                      "mixes samples or moves the batch axis off axis 0, so loss i would not be a "
                      "function of sample i alone")
    return True


def _keeps_rows(node, tensors, flags, kwargs, out, n):
    (tensor,) = tensors
    if node.name == "Reshape":
        return out.ndim >= 1 and out.shape[0] == n
    if node.name == "Transpose":
        return tensor.ndim <= 1 or (node.axes is not None and node.axes[0] % tensor.ndim == 0)
    if node.name == "Squeeze":
        axis = kwargs.get("axis")
        squeezed = [i for i, size in enumerate(tensor.shape) if size == 1] if axis is None else \
            normalize_axes(axis, tensor.ndim, "squeeze")
        return 0 not in squeezed
    return normalize_axis(kwargs.get("axis", 0), out.ndim, "expand_dims") != 0   # ExpandDims


def _get_item(node, tensors, flags, kwargs, out, n):
    index = node.index
    if not flags[0]:                       # a shared table at the batch's indices: an embedding
        return hasattr(index, "dtype") and index.dtype.kind in "iu" and index.ndim >= 1
    parts = index if isinstance(index, tuple) else (index,)
    arrays = [k for k, part in enumerate(parts) if hasattr(part, "shape") or isinstance(part, list)]
    together = arrays == list(range(arrays[0], arrays[0] + len(arrays))) if arrays else True
    first = parts[0] if parts else slice(None)
    if first is Ellipsis or isinstance(first, slice):   # axis 0 kept whole, and NumPy leaves
        whole = first == slice(None) or (first is Ellipsis and sum(   # adjacent index arrays
            part is not None and part is not Ellipsis for part in parts) < tensors[0].ndim)
        return whole and together                                     # where they are
    # x[arange(N), labels, ...]: advanced indices from position 0, the first one arange(N)
    xp = array_module(out)
    first = xp.asarray(parts[0])
    return (arrays == list(range(len(arrays))) and first.ndim == 1 and first.shape[0] == n
            and bool((first == xp.arange(n)).all())
            and all(xp.asarray(parts[k]).shape in ((n,), ()) for k in arrays))


def _matmul(node, tensors, flags, kwargs, out, n):
    (a, b), (batched_a, batched_b) = tensors, flags
    if batched_a and (a.ndim < 2 or b.ndim > a.ndim):    # (N, ..., k) @ (k, m) or (k,)
        return False
    return not batched_b or (b.ndim >= 3 and b.ndim >= a.ndim)   # (m, k) @ (N, k, p)


def _linear(node, tensors, flags, kwargs, out, n):
    return flags[0] and tensors[0].ndim >= 2 and not any(flags[1:])


def _softmax_xent(node, tensors, flags, kwargs, out, n):
    if kwargs.get("reduction", "none") != "none":
        raise _mixes(node, f"with reduction={kwargs['reduction']!r} (a reduction over the batch)",
                     "pass reduction='none'")
    return flags[0] and tensors[0].ndim == 2


def _einsum(node, tensors, flags, kwargs, out, n):
    letters = {node.terms[k][0] for k, batched in enumerate(flags) if batched}
    return len(letters) == 1 and node.output[:1] in letters and \
        all(node.terms[k].count(node.output[0]) == 1 for k, batched in enumerate(flags) if batched)


_RULES = {"Reshape": _keeps_rows, "Transpose": _keeps_rows, "Squeeze": _keeps_rows,
          "ExpandDims": _keeps_rows, "GetItem": _get_item, "MatMul": _matmul, "Linear": _linear,
          "SoftmaxCrossEntropy": _softmax_xent, "Einsum": _einsum}


# ------------------------------------------------------------------ per-sample gradients at the frontier
class _Rows:
    """A per-sample gradient held as its (N,) + shape array."""

    def __init__(self, array):
        self.value = array

    def array(self):
        return self.value

    def squared_norms(self):
        flat = self.value.reshape(self.value.shape[0], -1)
        return (flat * flat).sum(axis=1)


class _DenseKernel:
    """x_i^T delta_i for a Dense kernel, formed only if asked (T rows per sample)."""

    def __init__(self, x, delta, n):
        self.x = x.reshape(n, -1, x.shape[-1])
        self.delta = delta.reshape(n, -1, delta.shape[-1])

    def array(self):
        if self.x.shape[1] == 1:   # outer products (einsum writes them ~20% faster than broadcasting)
            return array_module(self.x).einsum("ni,nu->niu", self.x[:, 0], self.delta[:, 0])
        return self.x.transpose(0, 2, 1) @ self.delta

    def squared_norms(self):
        x, delta = self.x, self.delta
        rows, inputs, units = x.shape[1], x.shape[2], delta.shape[2]
        if rows == 1:
            return (x * x).sum(axis=(1, 2)) * (delta * delta).sum(axis=(1, 2))
        if rows * (inputs + units) > inputs * units:   # the Gram form would cost more
            return _Rows(self.array()).squared_norms()
        return ((x @ x.transpose(0, 2, 1)) * (delta @ delta.transpose(0, 2, 1))).sum(axis=(1, 2))


class _EmbeddingRows:
    """Sample i's gradient of a table looked up at ``index[i]``: G_i scatter-added."""

    def __init__(self, index, grad, shape):
        self.index, self.grad, self.shape = index, grad, shape

    def array(self):
        xp, n = array_module(self.grad), self.index.shape[0]
        samples = xp.arange(n).reshape((n,) + (1,) * (self.index.ndim - 1))
        return scatter_add(self.grad, (samples, self.index), (n,) + self.shape)

    def squared_norms(self):
        n = self.index.shape[0]
        index = self.index.reshape(n, -1)
        grad = self.grad.reshape(n, index.shape[1], -1)
        if index.shape[1] == 1:
            return (grad * grad).sum(axis=(1, 2))
        same = index[:, :, None] == index[:, None, :]
        return ((grad @ grad.transpose(0, 2, 1)) * same).sum(axis=(1, 2))


def _unbroadcast_rows(g, shape, n):
    """A gradient in the output's shape -> (N,) + ``shape``, unbroadcast per sample."""
    xp = array_module(g)
    full = (1,) * (g.ndim - len(shape)) + tuple(shape)
    axes = tuple(j for j in range(1, g.ndim) if full[j] == 1 and g.shape[j] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if full[0] == 1:
        return g.reshape((n,) + tuple(shape))
    rows = xp.zeros((n,) + tuple(shape), dtype=g.dtype)   # a shared tensor with N rows:
    rows[xp.arange(n), xp.arange(n)] = g                  # sample i touches its own row only
    return rows


def _linear_delta(node, grad):
    """The gradient of the fused node's pre-activation (what its backward computes first)."""
    x2, kernel, saved = node.saved_tensors
    grad2 = grad.reshape(-1, grad.shape[-1])
    if node.activation == "softmax":
        return softmax_backward_array(saved, grad2, -1)
    if node.activation == "linear":
        return grad2
    backward = getattr(kernels(x2), node.activation + "_backward")
    return backward(saved, grad2, node.alpha) if ACTIVATIONS[node.activation].has_alpha \
        else backward(saved, grad2)


def _special(node, grad, k, n, cache):
    """Per-sample gradient of shared input ``k`` of a node whose backward sums it over samples."""
    name, tensors = node.name, node.inputs
    if name == "Linear":
        if "delta" not in cache:
            cache["delta"] = _linear_delta(node, grad)
        delta = cache["delta"]
        if k == 1:
            return _DenseKernel(node.saved_tensors[0], delta, n)
        return _Rows(delta.reshape(n, -1, delta.shape[-1]).sum(axis=1))
    if name == "GetItem":
        return _EmbeddingRows(node.index, grad, tensors[0].shape)
    if name == "MatMul":
        a, b = (t.data for t in tensors)
        if k == 1:
            if b.ndim == 1:
                return _Rows((a * grad[..., None]).reshape(n, -1, a.shape[-1]).sum(axis=1))
            g = a[:, :, None] * grad[:, None, :] if a.ndim == 2 else a.swapaxes(-1, -2) @ grad
        else:
            g = (b @ grad[..., None])[..., 0] if a.ndim == 1 else grad @ b.swapaxes(-1, -2)
        return _Rows(_unbroadcast_rows(g, tensors[k].shape, n))
    if name == "Einsum":
        batch_letter = node.output[0]
        if batch_letter in node.terms[k]:
            return None
        spec, constants = gradient_spec(node.terms, node.output, k, node.shapes, keep=batch_letter)
        others = [t.data for j, t in enumerate(tensors) if j != k]
        extra = [constant_operand(kind, size, grad) for kind, size in constants]
        return _Rows(contract(spec, [grad] + others + extra))
    return None


# ------------------------------------------------------------------ the passes
def _record_forward(fn, batch):
    records = []

    def record(node, args, kwargs, out):
        records.append((node, args, kwargs, out))
    hooks = mode.thread_hooks("forward_hooks")
    hooks.append(record)
    try:
        with mode.enable_grad():
            out = fn(*batch)
    finally:
        hooks.remove(record)
    return out, records


def _label(records, batch, n):
    """The ids of every array that carries the batch axis first (batch arrays kept alive)."""
    batched = {id(t.data): t.data for t in batch}
    for node, args, kwargs, out in records:
        tensors = [a for a in args if isinstance(a, Tensor)]
        flags = [id(t.data) in batched for t in tensors]
        constant_rows = any(id(v) in batched for v in kwargs.values() if hasattr(v, "shape"))
        if (any(flags) or constant_rows) and _batched_output(node, tensors, flags, kwargs, out, n):
            batched[id(out)] = out
    return batched


def _frontier(records, out, batched, n):
    """Backward through the batched part of the graph; the per-sample gradients of the shared
    tensors it meets: {id(tensor): (tensor, [contributions])}."""
    pending = {out.grad_fn: array_module(out.data).ones_like(out.data)}
    found = {}
    for node, _, _, result in reversed(records):
        grad = pending.pop(node, None)
        if grad is None or id(result) not in batched:
            continue
        inputs = node.inputs
        shared = [k for k, t in enumerate(inputs) if t.requires_grad and id(t.data) not in batched]
        needs = node.needs_input_grad
        generic = node.name in ELEMENTWISE_OPS or node.name in ALONG_AXIS
        if shared and not generic:
            node.needs_input_grad = tuple(need and k not in shared for k, need in enumerate(needs))
        try:
            grads = node.backward(grad) if any(node.needs_input_grad) else (None,) * len(inputs)
        finally:
            node.needs_input_grad = needs
        grads = grads if isinstance(grads, tuple) else (grads,)
        cache = {}
        for k in shared:
            part = _Rows(_unbroadcast_rows(grads[k], inputs[k].shape, n)) if generic else \
                _special(node, grad, k, n, cache)
            if part is None:
                raise ValueError(f"per_sample_grad: no per-sample rule for input {k} (shape "
                                 f"{inputs[k].shape}) of {node.name}")
            found.setdefault(id(inputs[k]), (inputs[k], []))[1].append(part)
        for k, tensor in enumerate(inputs):
            g = grads[k]
            if k in shared or g is None or tensor.grad_fn is None or not tensor.requires_grad:
                continue
            if g.shape != tensor.shape:
                reduced = unbroadcast(g, tensor.shape)
                if reduced is None:
                    raise RuntimeError(f"per_sample_grad: a gradient of shape {g.shape} for a tensor "
                                       f"of shape {tensor.shape}")
                g = reduced
            previous = pending.get(tensor.grad_fn)
            pending[tensor.grad_fn] = g if previous is None else previous + g
    return found


def _prepare(params, batch, name):
    params = [params] if isinstance(params, Tensor) else list(params)
    for k, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: params[{k}] must be a Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{name}: params[{k}] (shape {p.shape}) does not require grad")
    if not batch:
        raise ValueError(f"{name}: no batch given (call {name}(fn, params, *batch))")
    batch = [b if isinstance(b, Tensor) else Tensor(b) for b in batch]
    if any(b.ndim == 0 for b in batch) or len({b.shape[0] for b in batch}) != 1:
        raise ValueError(f"{name}: every batch tensor needs the same first axis N, got shapes "
                         f"{[b.shape for b in batch]}")
    return params, batch, batch[0].shape[0]


def _per_sample(fn, params, batch, name):
    params, batch, n = _prepare(params, batch, name)
    if n == 0:  # no samples, no rows: empty results (fn is not run on an empty batch)
        return params, 0, [[] for _ in params]
    out, records = _record_forward(fn, batch)
    if not hasattr(out, "grad_fn") or out.ndim == 0 or out.shape[0] != n or out.size != n:
        raise ValueError(f"{name}: fn must return a Tensor of the {n} per-sample losses, shape ({n},) "
                         f"(or ({n}, 1)), got {getattr(out, 'shape', type(out).__name__)}")
    try:
        batched = _label(records, batch, n)
    except _Mixing as error:
        raise ValueError(str(error).replace("per_sample_grad", name)) from None
    if out.grad_fn is None:
        return params, n, [[] for _ in params]
    if id(out.data) not in batched:
        raise ValueError(f"{name}: fn's losses do not depend on the batch (or not row by row)")
    found = _frontier(records, out, batched, n)
    by_param = {id(p): k for k, p in enumerate(params)}
    parts = [[] for _ in params]  # each parameter's per-sample contributions
    for key, (tensor, contributions) in found.items():
        if key in by_param:
            parts[by_param[key]] = contributions
    passing = [(tensor, contributions) for key, (tensor, contributions) in found.items()
               if key not in by_param and tensor.grad_fn is not None]
    for k, rows in _through_shared(passing, params, n).items():
        parts[k].append(_Rows(rows))
    return params, n, parts


def _through_shared(passing, params, n):
    """Per-sample gradients of shared non-parameters, carried to the parameters (one vjp per
    sample)."""
    if not passing:
        return {}
    tensors = [tensor for tensor, _ in passing]
    arrays = [sum_parts(parts) for _, parts in passing]
    rows = {}
    for i in range(n):
        grads = differentiate(tensors, params, [a[i] for a in arrays], retain_graph=True, allow_unused=True)
        for k, g in enumerate(grads):
            if g is not None:
                rows.setdefault(k, [None] * n)[i] = g.data
    xp = array_module(arrays[0])
    return {k: xp.stack([r if r is not None else xp.zeros(params[k].shape, params[k].dtype) for r in row])
            for k, row in rows.items()}


def sum_parts(parts):
    return sum((part.array() for part in parts[1:]), parts[0].array())


def per_sample_grad(fn, params, *batch):
    """The gradient of each of ``fn(*batch)``'s N losses: one array (N,) + p.shape per
    parameter, row i as a backward on sample i alone. An op that mixes samples raises
    ValueError naming it."""
    params, n, parts = _per_sample(fn, params, batch, "per_sample_grad")
    xp = array_module(params[0].data) if params else np
    return [(sum_parts(own) if own else xp.zeros((n,) + p.shape, dtype=p.dtype)).astype(p.dtype, copy=False)
            for p, own in zip(params, parts)]


def per_sample_grad_norm(fn, params, *batch):
    """The (N,) norms of the per-sample gradients over all ``params`` together (Dense
    kernels and embeddings without forming their (N,) + p.shape arrays)."""
    params, n, parts = _per_sample(fn, params, batch, "per_sample_grad_norm")
    xp = array_module(params[0].data) if params else np
    squares = xp.zeros(n, dtype=np.float64 if not params else params[0].dtype)
    for own in parts:
        if own:
            squares = squares + (own[0] if len(own) == 1 else _Rows(sum_parts(own))).squared_norms()
    return xp.sqrt(squares)
