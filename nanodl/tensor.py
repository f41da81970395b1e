"""Tensor: a backend array (NumPy or CuPy), its gradient, and the node that made it. Its math
methods are one-line calls into ``nanodl/ops``, where the derivatives live."""
import numpy as np

from . import autograd
from .backend import _check_device, array_module, device_of, is_device_array, to_device, to_host

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_default_dtype = np.dtype(np.float32)


def set_default_dtype(dtype):
    """Set the dtype of tensors made from Python floats (``'float32'`` or ``'float64'``)."""
    global _default_dtype
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in _FLOAT_DTYPES:
        raise ValueError(f"set_default_dtype: unsupported dtype {dtype!r}; valid: float32, float64")
    _default_dtype = resolved


def get_default_dtype():
    """The dtype of tensors made from Python floats (``float32`` unless changed)."""
    return _default_dtype


def as_array(data, dtype=None, *, what="tensor", numeric=True):
    """User data as a backend array: arrays and NumPy scalars keep their dtype, Python floats get
    the default one. Ragged lists raise ValueError, non-numbers TypeError (``numeric=False``
    lets strings through)."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or is_device_array(data):
        array = data
    else:
        try:
            array = np.asarray(data)
        except ValueError:
            raise ValueError(f"{what}: cannot make an array from ragged nested lists: {data!r:.80}") \
                from None
        if array.dtype.kind == "f" and dtype is None and not isinstance(data, np.generic):
            array = array.astype(_default_dtype, copy=False)  # a NumPy scalar keeps its dtype
    if array.dtype.kind not in ("biufc" if numeric else "biufcSU"):
        raise TypeError(f"{what}: cannot make an array of dtype {array.dtype} from {type(data).__name__} "
                        f"{data!r:.60}; it must hold numbers{'' if numeric else ' or strings'}")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{what}: {dtype!r} is not a dtype (try 'float32' or 'float64')") from None
        array = array if array.dtype == dtype else array.astype(dtype)
    return array


class Tensor:
    """An n-dimensional array that records the ops applied to it for ``backward``.

    >>> import nanodl as nd
    >>> x = nd.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    array([2., 4., 6.], dtype=float32)

    An array passed in is shared (no copy, as ``from_numpy``) unless the tensor
    requires grad: a trainable tensor owns its data, so an optimizer's in-place
    update never writes into the caller's array.
    """
    __slots__ = ("data", "grad", "requires_grad", "grad_fn", "name", "__weakref__")
    __array_ufunc__ = None  # make NumPy defer to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        array = as_array(data, dtype)
        if device is not None:
            array = to_device(array, device)
        if requires_grad:
            if array.dtype.kind != "f":
                raise TypeError(f"tensor: requires_grad=True needs a float dtype, got {array.dtype}")
            if array is data or array is getattr(data, "data", None):
                array = array.copy()
        self.data = array
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.grad_fn = None
        self.name = None

    # ------------------------------------------------------------ attributes
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: device_of(self.data))
    is_leaf = property(lambda self: self.grad_fn is None)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extras = []
        if self.dtype not in (_default_dtype, np.dtype(np.int64), np.dtype(bool)):
            extras.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            extras.append(f"grad_fn={self.grad_fn.name}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __float__(self): return float(self.item())  # float(t), int(t): one element, as item()
    def __int__(self): return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data)

    __hash__ = object.__hash__

    # ------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph=False):
        """Accumulate the gradient of this tensor into every leaf it depends on; ``grad`` is
        d(loss)/d(self), omitted only for a scalar."""
        if not self.requires_grad:
            raise RuntimeError("backward: tensor does not require grad and has no grad_fn")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward: grad can be implicitly created only for scalar outputs, "
                                 f"got shape {self.shape}; pass grad=")
            grad = array_module(self.data).ones_like(self.data)
        else:
            grad = as_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad of shape {grad.shape} does not match tensor of "
                                 f"shape {self.shape}")
            if device_of(grad) != self.device:
                grad = to_device(grad, self.device)
        autograd.backward(self, grad, retain_graph)

    def detach(self):
        """A tensor sharing this data, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        autograd.retain(self)

    def zero_grad(self): self.grad = None

    # ------------------------------------------------------------ conversion
    def numpy(self):
        """A host NumPy copy of the data."""
        return to_host(self.data, copy=True)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors can be converted, got shape {self.shape}")
        return self.data.reshape(()).item() if device_of(self.data) == "cpu" else self.numpy().item()

    def tolist(self): return self.numpy().tolist()

    def to(self, device):
        """This tensor on ``device`` (``'cpu'`` or ``'cuda'``); differentiable."""
        device = _check_device(device)
        return self if device == self.device else _ops.ToDevice.apply(self, device=device)

    def cpu(self): return self.to("cpu")
    def cuda(self): return self.to("cuda")

    def astype(self, dtype):
        """A copy with another dtype; differentiable between float dtypes."""
        if np.dtype(dtype) == self.dtype:
            return self
        if np.dtype(dtype).kind != "f":
            return Tensor(self.data.astype(dtype))
        return _ops.AsType.apply(self, dtype=np.dtype(dtype))

    # ------------------------------------------------------------ operators (see nanodl.ops)
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __pow__(self, other): return _ops.power(self, other)
    def __rpow__(self, other): return _ops.power(other, self)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __neg__(self): return _ops.neg(self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    def _compare(self, other, compare):
        return Tensor(compare(self.data, other.data if isinstance(other, Tensor) else other))

    def __lt__(self, other): return self._compare(other, lambda a, b: a < b)
    def __le__(self, other): return self._compare(other, lambda a, b: a <= b)
    def __gt__(self, other): return self._compare(other, lambda a, b: a > b)
    def __ge__(self, other): return self._compare(other, lambda a, b: a >= b)
    def __eq__(self, other): return self._compare(other, lambda a, b: a == b)
    def __ne__(self, other): return self._compare(other, lambda a, b: a != b)

    # ------------------------------------------------------------ methods (see nanodl.ops)
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def var(self, axis=None, keepdims=False): return _ops.var(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return _ops.min(self, axis, keepdims)
    def logsumexp(self, axis=None, keepdims=False): return _ops.logsumexp(self, axis, keepdims)
    def reshape(self, *shape): return _ops.reshape(self, *shape)
    def transpose(self, *axes): return _ops.transpose(self, *axes)
    @property
    def T(self): return _ops.transpose(self)
    def flatten(self): return _ops.reshape(self, -1)
    def squeeze(self, axis=None): return _ops.squeeze(self, axis)
    def expand_dims(self, axis): return _ops.expand_dims(self, axis)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def abs(self): return _ops.abs(self)
    def clip(self, lo, hi): return _ops.clip(self, lo, hi)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def leaky_relu(self, alpha=0.01): return _ops.leaky_relu(self, alpha)
    def softmax(self, axis=-1): return _ops.softmax(self, axis)
    def log_softmax(self, axis=-1): return _ops.log_softmax(self, axis)
    def sin(self): return _ops.sin(self)
    def cos(self): return _ops.cos(self)
    def log1p(self): return _ops.log1p(self)
    def expm1(self): return _ops.expm1(self)
    def erf(self): return _ops.erf(self)
    def prod(self, axis=None, keepdims=False): return _ops.prod(self, axis, keepdims)
    def cumsum(self, axis=None): return _ops.cumsum(self, axis)
    def std(self, axis=None, ddof=0, keepdims=False): return _ops.std(self, axis, ddof, keepdims)
    def norm(self, axis=None, keepdims=False): return _ops.norm(self, axis, keepdims)


_ops = None  # nanodl.ops, where every method's op lives; it sets this on import (it imports us)
autograd._tensor_class = Tensor


def tensor(data, requires_grad=False, dtype=None, device=None):
    """Same as ``Tensor(...)``."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
