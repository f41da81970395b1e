"""Reductions: sum, mean, var, max, min, logsumexp over an int or tuple ``axis``."""
import math

from ..autograd import Function
from ..backend import array_module
from .axes import normalize_axes
from .elementwise import constant, math_of


class _Reduction(Function):
    def setup(self, a, axis, keepdims):
        self.axes = normalize_axes(axis, a.ndim, type(self).__name__.lower())
        self.shape = a.shape
        self.keepdims = keepdims
        return self.axes

    def expand(self, grad):
        """Broadcast a reduced gradient (an array or a Tensor) back over the input's shape."""
        if not self.keepdims:  # put the reduced axes back, as size 1
            grad = grad.reshape(tuple(1 if i in self.axes else n for i, n in enumerate(self.shape)))
        return math_of(grad).broadcast_to(grad, self.shape)


class Sum(_Reduction):
    def forward(self, a, axis=None, keepdims=False):
        return a.sum(axis=self.setup(a, axis, keepdims), keepdims=keepdims)

    def vjp(self, grad, a):
        return self.expand(grad)


class Mean(_Reduction):
    def forward(self, a, axis=None, keepdims=False):
        axes = self.setup(a, axis, keepdims)
        self.count = max(1, math.prod(a.shape[i] for i in axes))
        return a.mean(axis=axes, keepdims=keepdims)

    def vjp(self, grad, a):
        return self.expand(grad / self.count)


class Var(_Reduction):
    """Population variance (divides by N, as NumPy's default)."""

    def forward(self, a, axis=None, keepdims=False):
        axes = self.setup(a, axis, keepdims)
        centered = a - a.mean(axis=axes, keepdims=True)
        self.save_for_backward(centered)
        self.count = max(1, math.prod(a.shape[i] for i in axes))
        return (centered * centered).mean(axis=axes, keepdims=keepdims)

    def backward(self, grad):
        (centered,) = self.saved_tensors
        return self.expand(grad) * centered * (2 / self.count)

    def vjp(self, grad, a):
        centered = a - a.mean(axis=self.axes, keepdims=True)
        return self.expand(grad) * centered * (2 / self.count)


class _Extreme(_Reduction):
    """max / min: the gradient is shared equally among tied extremes."""

    def forward(self, a, axis=None, keepdims=False):
        axes = self.setup(a, axis, keepdims)
        if a.size == 0:
            raise ValueError(f"{self.name.lower()}: cannot reduce an empty tensor of shape {a.shape}")
        out = self.reduce(a, axis=axes, keepdims=True)
        self.save_for_backward(a, out)
        return out if keepdims else out.squeeze(axes)

    def vjp(self, grad, a):
        saved, out = self.saved_tensors
        hits = saved == out  # each tied extreme gets an equal share
        return self.expand(grad) * constant(hits / hits.sum(axis=self.axes, keepdims=True), grad)


class Max(_Extreme):
    reduce = staticmethod(lambda a, **kw: a.max(**kw))


class Min(_Extreme):
    reduce = staticmethod(lambda a, **kw: a.min(**kw))


class LogSumExp(_Reduction):
    """log(sum(exp(a))), stable: the (detached) max is subtracted first."""

    def forward(self, a, axis=None, keepdims=False):
        xp = array_module(a)
        axes = self.setup(a, axis, keepdims)
        peak = a.max(axis=axes, keepdims=True)
        peak = xp.where(xp.isfinite(peak), peak, 0)
        out = xp.log(xp.exp(a - peak).sum(axis=axes, keepdims=True)) + peak
        self.save_for_backward(a, out)
        return out if keepdims else out.squeeze(axes)

    def backward(self, grad):
        a, out = self.saved_tensors
        return self.expand(grad) * array_module(a).exp(a - out)

    def vjp(self, grad, a):
        out = LogSumExp.apply(a, axis=self.axes, keepdims=True)
        return self.expand(grad) * (a - out).exp()
