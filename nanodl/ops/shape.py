"""Shape ops (reshape, broadcast, transpose, indexing, joining, casts, device moves) and matmul."""
import numpy as np

from ..autograd import BroadcastTo, Function  # noqa: F401  (BroadcastTo: an op of this family)
from ..backend import array_module, threads, to_device
from .axes import normalize_axes, normalize_axis


class Reshape(Function):
    """A new shape for the same data; its gradient is reshaped back (Squeeze, ExpandDims too)."""

    def forward(self, a, shape=None):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {a.shape} "
                             f"({a.size} elements) into shape {tuple(shape)}") from None
        except TypeError:
            raise TypeError(f"reshape: a shape is integers, got {shape!r}") from None

    def vjp(self, grad, a):
        return grad.reshape(self.shape)


class Transpose(Function):
    def forward(self, a, axes=None):
        if axes is not None and sorted(ax % max(a.ndim, 1) for ax in axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the "
                             f"{a.ndim} axes of a tensor of shape {a.shape}")
        self.axes = axes
        return a.transpose(axes)

    def vjp(self, grad, a):  # the inverse permutation
        if self.axes is None:
            return grad.transpose()
        return grad.transpose(tuple(int(ax) for ax in np.argsort([ax % grad.ndim for ax in self.axes])))


class Squeeze(Reshape):
    def forward(self, a, axis=None):
        self.shape = a.shape
        if axis is not None:
            axis = normalize_axes(axis, a.ndim, "squeeze")
            for ax in axis:
                if a.shape[ax] != 1:
                    raise ValueError(f"squeeze: axis {ax} of shape {a.shape} is not of size 1")
        return a.squeeze(axis)


class ExpandDims(Reshape):
    def forward(self, a, axis=0):
        self.shape = a.shape
        return array_module(a).expand_dims(a, normalize_axis(axis, a.ndim + 1, "expand_dims"))


class GetItem(Function):
    """Basic slicing and integer-array indexing; backward scatter-adds."""

    def forward(self, a, index=None):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        try:
            return a[index]
        except IndexError as error:  # NumPy's message, with the op and the shape
            raise IndexError(f"getitem: index {index!r:.80} into a tensor of shape {a.shape}: "
                             f"{error}") from None

    def backward(self, grad):
        return scatter_add(grad, self.index, self.shape)

    def vjp(self, grad, a):
        return ScatterAdd.apply(grad, index=self.index, shape=self.shape)


class ScatterAdd(Function):
    """Zeros of ``shape`` with ``values`` added at ``index``: GetItem's backward as a node."""

    def forward(self, values, index=None, shape=None):
        self.index = index
        return scatter_add(values, index, shape)

    def backward(self, grad):
        return grad[self.index]

    def vjp(self, grad, values):
        return GetItem.apply(grad, index=self.index)


def scatter_add(values, index, shape):
    """``zeros(shape)`` with ``values`` added at ``index`` (repeated indices accumulate)."""
    xp = array_module(values)
    full = xp.zeros(shape, dtype=values.dtype)
    if _is_basic(index):
        full[index] = values
    else:  # repeated indices must accumulate, which `full[index] += values` would not
        add_at = xp.add.at if hasattr(xp.add, "at") else _cupy_scatter_add
        add_at(full, index, values)
    return full


def _is_basic(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, np.integer, slice, type(None), type(Ellipsis))) for p in parts)


def _cupy_scatter_add(target, index, values):  # pragma: no cover - GPU only
    import cupyx
    cupyx.scatter_add(target, index, values)


class Concatenate(Function):
    def forward(self, *arrays, axis=0):
        axis = normalize_axis(axis, arrays[0].ndim, "concatenate")
        try:
            out = array_module(arrays[0]).concatenate(arrays, axis=axis)
        except ValueError:
            raise ValueError(f"concatenate: shapes {[a.shape for a in arrays]} cannot be joined "
                             f"along axis {axis}") from None
        self.axis = axis % out.ndim
        self.bounds = np.cumsum([a.shape[self.axis] for a in arrays])[:-1]
        return out

    def vjp(self, grad, *arrays):  # slices of an array or a Tensor alike
        edges = [0] + [int(b) for b in self.bounds] + [grad.shape[self.axis]]
        lead = (slice(None),) * self.axis
        return tuple(grad[lead + (slice(lo, hi),)] for lo, hi in zip(edges[:-1], edges[1:]))


class Stack(Function):
    def forward(self, *arrays, axis=0):
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"stack: all tensors must have one shape, got {[a.shape for a in arrays]}")
        out = array_module(arrays[0]).stack(arrays, axis=normalize_axis(axis, arrays[0].ndim + 1, "stack"))
        self.axis = axis % out.ndim
        return out

    def vjp(self, grad, *arrays):
        lead = (slice(None),) * self.axis
        return tuple(grad[lead + (i,)] for i in range(grad.shape[self.axis]))


def _gemm_threads(a, b):
    """The thread-policy scope of ``a @ b`` (batched products count every batch)."""
    rows = a.size // a.shape[-1] if a.ndim > 1 else 1
    return threads.gemm(rows, b.shape[0] if b.ndim == 1 else b.shape[-2],
                        b.shape[-1] if b.ndim > 1 else 1)


class MatMul(Function):
    """``a @ b`` with NumPy's rules (1-D operands, batched leading axes)."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned")
        self.save_for_backward(a, b)
        with _gemm_threads(a, b):
            return a @ b

    def backward(self, grad):
        a, b = self.saved_tensors
        need_a, need_b = self.needs_input_grad
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if a.ndim == 1:
            grad = grad[..., None, :]
        if b.ndim == 1:
            grad = grad[..., None]
        with _gemm_threads(a2, b2):
            grad_a = grad @ b2.swapaxes(-1, -2) if need_a else None
            grad_b = a2.swapaxes(-1, -2) @ grad if need_b else None
        if need_a and a.ndim == 1:
            grad_a = grad_a.reshape(grad_a.shape[:-2] + grad_a.shape[-1:])
            grad_a = grad_a.reshape(-1, a.shape[0]).sum(axis=0)
        if need_b and b.ndim == 1:
            grad_b = grad_b[..., 0].reshape(-1, b.shape[0]).sum(axis=0)
        return grad_a, grad_b

    def vjp(self, grad, a, b):
        """The same products with Tensor ops; the engine sums broadcast batch axes back."""
        need_a, need_b = self.needs_input_grad
        a2 = a.expand_dims(0) if a.ndim == 1 else a
        b2 = b.expand_dims(1) if b.ndim == 1 else b
        if a.ndim == 1:
            grad = grad.expand_dims(-2 if grad.ndim else 0)
        if b.ndim == 1:
            grad = grad.expand_dims(-1)
        grad_a = grad @ _swap_last(b2) if need_a else None
        grad_b = _swap_last(a2) @ grad if need_b else None
        if need_a and a.ndim == 1:
            grad_a = grad_a.reshape(grad_a.shape[:-2] + grad_a.shape[-1:])
        if need_b and b.ndim == 1:
            grad_b = grad_b.reshape(grad_b.shape[:-1])
        return grad_a, grad_b


def _swap_last(t):
    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return Transpose.apply(t, axes=axes)


class AsType(Function):
    def forward(self, a, dtype=None):
        self.dtype = a.dtype
        return a.astype(dtype)

    def vjp(self, grad, a):
        return grad.astype(self.dtype)


class ToDevice(Function):
    def forward(self, a, device="cpu"):
        self.source = "cpu" if isinstance(a, np.ndarray) else "cuda"
        return to_device(a, device)

    def backward(self, grad):
        return to_device(grad, self.source)

    def vjp(self, grad, a):
        return grad.to(self.source)
