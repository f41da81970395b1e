"""Built-in ops as functions over Tensors (``Tensor`` methods, ``nd.*`` and ``F.*`` land here).
Python numbers are lifted to constants: a float32 tensor combined with one stays float32.
"""
import math
import sys

import numpy as np

from .. import tensor as _tensor
from ..autograd import BroadcastTo
from ..backend import device_of, is_device_array, to_device
from ..backend.activations import BY_NAME as _ACTIVATIONS
from ..tensor import Tensor, get_default_dtype
from . import elementwise
from .axes import normalize_axes
from .accumulate import Cumsum, Norm, Prod
from .activation import ELU, GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .einsum import Einsum
from .elementwise import Abs, Add, Clip, Div, Exp, Log, Maximum, Minimum, Mul, Neg, Pow, Sqrt, Sub, Where
from .linear import Linear
from .loss import SoftmaxCrossEntropy
from .reduce import LogSumExp, Max, Mean, Min, Sum, Var
from .shape import (AsType, Concatenate, ExpandDims, GetItem, MatMul, Reshape, Squeeze, Stack, ToDevice,
                    Transpose)
from .special import Cos, Erf, Expm1, Log1p, Sin


def lift(value, like):
    """``value`` as a Tensor on ``like``'s device, with ``like``'s float dtype for Python numbers."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float, bool)):
        dtype = like.dtype if like.dtype.kind == "f" else \
            (get_default_dtype() if isinstance(value, float) else None)
        array = np.asarray(value, dtype=dtype)
    else:
        array = value if is_device_array(value) else np.asarray(value)
        if array.dtype.kind == "f" and isinstance(value, (list, tuple)):
            array = array.astype(get_default_dtype())
    if like.device != "cpu" and isinstance(array, np.ndarray):
        array = to_device(array, like.device)
    return Tensor(array)


def _binary(op, a, b):
    if not isinstance(a, Tensor):
        a = lift(a, b)
    elif not isinstance(b, Tensor):
        b = lift(b, a)
    try:
        return op.apply(a, b)
    except ValueError as error:
        if a.shape == b.shape or "broadcast" not in str(error):
            raise
        raise ValueError(f"{op.__name__.lower()}: shapes {a.shape} and {b.shape} cannot be "
                         "broadcast together") from None


def add(a, b): return _binary(Add, a, b)
def sub(a, b): return _binary(Sub, a, b)
def mul(a, b): return _binary(Mul, a, b)
def div(a, b): return _binary(Div, a, b)
def power(a, b): return _binary(Pow, a, b)
def maximum(a, b): return _binary(Maximum, a, b)
def minimum(a, b): return _binary(Minimum, a, b)
def neg(a): return Neg.apply(a)


def matmul(a, b):
    if not isinstance(a, Tensor):
        a = lift(a, b)
    if not isinstance(b, Tensor):
        b = lift(b, a)
    return MatMul.apply(a, b)


def where(cond, a, b):
    """``a`` where ``cond`` holds, else ``b`` (``cond`` is not differentiated)."""
    cond_array = cond.data if isinstance(cond, Tensor) else cond
    if not is_device_array(cond_array):
        cond_array = np.asarray(cond_array)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
    a, b = (a, lift(b, a)) if isinstance(a, Tensor) else (lift(a, b), b)
    cond_array = cond_array.astype(bool, copy=False)
    if device_of(cond_array) != a.device:
        cond_array = to_device(cond_array, a.device)
    return Where.apply(a, b, cond=cond_array)


def getitem(a, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, list):
        index = np.asarray(index)
    if a.device != "cpu":  # index arrays go where the data is
        index = tuple(_index_on(i, a.device) for i in index) if isinstance(index, tuple) \
            else _index_on(index, a.device)
    return GetItem.apply(a, index=index)


def _index_on(part, device):
    if isinstance(part, list):
        part = np.asarray(part)
    return to_device(part, device) if isinstance(part, np.ndarray) else part


def sum(a, axis=None, keepdims=False): return Sum.apply(a, axis=axis, keepdims=keepdims)
def mean(a, axis=None, keepdims=False): return Mean.apply(a, axis=axis, keepdims=keepdims)
def var(a, axis=None, keepdims=False): return Var.apply(a, axis=axis, keepdims=keepdims)
def max(a, axis=None, keepdims=False): return Max.apply(a, axis=axis, keepdims=keepdims)
def min(a, axis=None, keepdims=False): return Min.apply(a, axis=axis, keepdims=keepdims)
def logsumexp(a, axis=None, keepdims=False): return LogSumExp.apply(a, axis=axis, keepdims=keepdims)
def broadcast_to(a, shape): return BroadcastTo.apply(a, shape=tuple(shape))


def reshape(a, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(a, shape=shape)


def transpose(a, *axes):
    if len(axes) == 1 and (isinstance(axes[0], (tuple, list)) or axes[0] is None):
        axes = axes[0]
    return Transpose.apply(a, axes=tuple(axes) if axes else None)


def squeeze(a, axis=None): return Squeeze.apply(a, axis=axis)
def expand_dims(a, axis): return ExpandDims.apply(a, axis=axis)


def concatenate(tensors, axis=0): return Concatenate.apply(*_as_tensors(tensors, "concatenate"), axis=axis)
def stack(tensors, axis=0): return Stack.apply(*_as_tensors(tensors, "stack"), axis=axis)


def _as_tensors(tensors, op):
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty sequence of tensors")
    return tensors


def exp(a): return Exp.apply(a)
def log(a): return Log.apply(a)
def sqrt(a): return Sqrt.apply(a)
def abs(a): return Abs.apply(a)


def clip(a, lo, hi):
    """Clamp to [lo, hi]; the bounds are constants (a Tensor bound gives its values)."""
    lo, hi = (bound.data if isinstance(bound, Tensor) else bound for bound in (lo, hi))
    return Clip.apply(a, lo=lo, hi=hi)


def tanh(a): return Tanh.apply(a)
def sigmoid(a): return Sigmoid.apply(a)
def relu(a): return ReLU.apply(a)
def leaky_relu(a, alpha=0.01): return LeakyReLU.apply(a, alpha=alpha)
def gelu(a): return GELU.apply(a)
def elu(a, alpha=1.0): return ELU.apply(a, alpha=alpha)
def softplus(a): return Softplus.apply(a)
def softmax(a, axis=-1): return Softmax.apply(a, axis=axis)
def log_softmax(a, axis=-1): return LogSoftmax.apply(a, axis=axis)


DEFAULT_ALPHA = {name: record.alpha for name, record in _ACTIVATIONS.items() if record.has_alpha}


def linear(x, kernel, bias=None, activation="linear", alpha=None):
    """The fused dense node; ``alpha`` defaults to the activation's own (leaky_relu 0.01, elu 1)."""
    alpha = DEFAULT_ALPHA.get(activation, 0.0) if alpha is None else alpha
    return Linear.apply(x, kernel, bias, activation=activation, alpha=alpha)


def softmax_cross_entropy(logits, target, reduction="none"):
    """Cross-entropy of ``logits`` (N, C) against classes (N,) or a (N, C) distribution;
    ``reduction``: 'none' (per sample), 'mean' or 'sum'."""
    return SoftmaxCrossEntropy.apply(logits, target=target, reduction=reduction)


# ------------------------------------------------------------------ SPEC §17's ops for experiments
def sin(a): return Sin.apply(a)
def cos(a): return Cos.apply(a)


def log1p(a):
    """log(1 + a), exact for tiny ``a``."""
    return Log1p.apply(a)


def expm1(a):
    """exp(a) - 1, exact for tiny ``a``."""
    return Expm1.apply(a)


def erf(a):
    """The error function (computed by nanodl, to ~1e-15 relative; no SciPy needed)."""
    return Erf.apply(a)


def prod(a, axis=None, keepdims=False):
    """Product over ``axis``; its gradient is the product of the other factors (zeros are fine)."""
    return Prod.apply(a, axis=axis, keepdims=keepdims)


def cumsum(a, axis=None):
    """Running sum along ``axis``; ``axis=None`` runs over the flattened tensor (as NumPy)."""
    if axis is None:
        return Cumsum.apply(reshape(a, -1), axis=0)
    return Cumsum.apply(a, axis=axis)


def norm(a, axis=None, keepdims=False):
    """The 2-norm over ``axis`` (all axes by default); its gradient at 0 is 0."""
    return Norm.apply(a, axis=axis, keepdims=keepdims)


def std(a, axis=None, ddof=0, keepdims=False):
    """Standard deviation, dividing by N - ``ddof`` (NumPy's): the norm of ``a - mean`` over
    sqrt(N - ddof), so that its gradient at a constant slice is 0, not 0/0."""
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise TypeError(f"std: ddof must be a number, got {ddof!r}")
    axes = normalize_axes(axis, a.ndim, "std")
    count = math.prod(a.shape[ax] for ax in axes)
    if not count - ddof > 0:
        raise ValueError(f"std: ddof={ddof} leaves no degrees of freedom for {count} value(s) per "
                         f"slice of a tensor of shape {a.shape} (axis={axis!r})")
    centered = a - mean(a, axis=axes, keepdims=True)
    return norm(centered, axis=axes, keepdims=keepdims) / float(np.sqrt(count - ddof))


def einsum(subscripts, *operands):
    """NumPy's ``einsum`` (implicit or explicit ``->``, ``...``), differentiable to any order.

    >>> import nanodl as nd
    >>> nd.einsum('ij,jk->ik', nd.ones((2, 3)), nd.ones((3, 4))).shape
    (2, 4)
    """
    like = next((t for t in operands if isinstance(t, Tensor)), None)
    tensors = [t if isinstance(t, Tensor) else (lift(t, like) if like is not None else Tensor(t))
               for t in operands]
    return Einsum.apply(*tensors, subscripts=subscripts)


# Tensor's methods and the array-or-Tensor derivatives call these functions (handed over: no cycle)
_tensor._ops = elementwise.TENSOR_MATH = sys.modules[__name__]
