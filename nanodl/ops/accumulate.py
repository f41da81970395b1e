"""Products, running sums and norms: prod, cumsum, norm (std is composed from norm).

prod' = the product of the others (running products from both sides: no 0/0 at a zero);
cumsum' = the running sum backwards; norm' = x / ||x||, 0 at x = 0.

>>> import nanodl as nd
>>> x = nd.tensor([2.0, 0.0, 3.0], requires_grad=True)
>>> x.prod().backward()
>>> x.grad.tolist()            # the product of the others, zero included
[0.0, 6.0, 0.0]
"""
import math

from ..autograd import Function
from ..backend import array_module
from .axes import normalize_axis
from .elementwise import Where, constant
from .reduce import _Reduction
from .shape import BroadcastTo


def _moved_last(ndim, axes):
    order = [i for i in range(ndim) if i not in axes] + list(axes)
    inverse = [order.index(i) for i in range(ndim)]
    return order, inverse


class Prod(_Reduction):
    """Product over an int or tuple ``axis`` (all axes by default)."""

    def forward(self, a, axis=None, keepdims=False):
        axes = self.setup(a, axis, keepdims)
        self.save_for_backward(a)
        return a.prod(axis=axes, keepdims=keepdims)

    def others(self, a):
        """Each element's product of the other elements of its slice (prefix times suffix)."""
        xp = array_module(a)
        order, inverse = _moved_last(a.ndim, self.axes)
        moved = a.transpose(order)
        count = math.prod(a.shape[axis] for axis in self.axes)
        rows = moved.reshape(a.size // count if count else 0, count)
        before = xp.ones_like(rows)
        after = xp.ones_like(rows)
        if count > 1:
            before[:, 1:] = xp.cumprod(rows[:, :-1], axis=1)
            after[:, :-1] = xp.cumprod(rows[:, :0:-1], axis=1)[:, ::-1]
        return (before * after).reshape(moved.shape).transpose(inverse)

    def backward(self, grad):
        (a,) = self.saved_tensors
        return self.expand(grad) * self.others(a)

    def vjp(self, grad, a):
        """A Prod of ``a`` with each element replaced by 1 in turn (n times the memory)."""
        order, inverse = _moved_last(a.ndim, self.axes)
        moved = a.transpose(*order) if order != list(range(a.ndim)) else a
        lead = moved.shape[:a.ndim - len(self.axes)]
        count = math.prod(a.shape[axis] for axis in self.axes)
        copies = BroadcastTo.apply(moved.reshape(lead + (1, count)), shape=lead + (count, count))
        one = constant(array_module(a.data).ones(()), a)
        eye = array_module(a.data).eye(count, dtype=bool)
        others = Prod.apply(Where.apply(one, copies, cond=eye), axis=-1)
        others = others.reshape(moved.shape)
        if order != list(range(a.ndim)):
            others = others.transpose(*inverse)
        return self.expand(grad) * others


def _running_sum(a, axis, reverse):
    xp = array_module(a)
    if not reverse:
        return xp.cumsum(a, axis=axis)
    return xp.flip(xp.cumsum(xp.flip(a, axis=axis), axis=axis), axis=axis)


class Cumsum(Function):
    """Running sum along ``axis`` (``reverse=True``: from the end, what its gradient needs)."""

    def forward(self, a, axis=0, reverse=False):
        self.axis = normalize_axis(axis, a.ndim, "cumsum")
        self.reverse = reverse
        return _running_sum(a, self.axis, reverse)

    def backward(self, grad):
        return _running_sum(grad, self.axis, not self.reverse)

    def vjp(self, grad, a):
        return Cumsum.apply(grad, axis=self.axis, reverse=not self.reverse)


class Norm(_Reduction):
    """The 2-norm sqrt(sum x^2) over an int or tuple ``axis`` (all axes by default)."""

    def forward(self, a, axis=None, keepdims=False):
        axes = self.setup(a, axis, keepdims)
        out = array_module(a).sqrt((a * a).sum(axis=axes, keepdims=True))
        self.save_for_backward(a, out)
        return out if keepdims else out.squeeze(axes)

    def backward(self, grad):
        a, out = self.saved_tensors
        safe = array_module(out).where(out > 0, out, 1)   # a slice of zeros: x / 1 = 0
        return self.expand(grad) * (a / safe)

    def vjp(self, grad, a):
        out = Norm.apply(a, axis=self.axes, keepdims=True)
        # Where, not a division by the norm and a mask after it: at a zero slice 1/0 would
        # be inf in the unused branch, and its gradient 0 * inf = NaN.
        safe = Where.apply(out, constant(array_module(a.data).ones(()), a), cond=out.data > 0)
        return self.expand(grad) * (a / safe)
