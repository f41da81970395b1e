"""Elementwise arithmetic and math ops: forward and derivative side by side.

Most ops write their derivative once, as a ``vjp`` that runs on arrays and Tensors alike
(``math_of`` for functions); the engine unbroadcasts. Masks at kinks are constants.
"""
from ..autograd import Function
from ..backend import array_module
from ..tensor import Tensor

TENSOR_MATH = None  # nanodl.ops, set by it once its functions exist (it imports this module)


def math_of(x):
    """Where a derivative finds ``log``, ``where``...: ``nanodl.ops`` for a Tensor, else NumPy/CuPy."""
    return TENSOR_MATH if isinstance(x, Tensor) else array_module(x)


def constant(array, like):
    """A mask in ``like``'s dtype, as a graph-less Tensor when ``like`` is one."""
    array = array.astype(like.dtype, copy=False)
    return Tensor(array) if isinstance(like, Tensor) else array


class Add(Function):
    def forward(self, a, b):
        return a + b

    def vjp(self, grad, a, b):
        return grad, grad


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def vjp(self, grad, a, b):
        return grad, (-grad if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        return a * b

    def vjp(self, grad, a, b):
        need_a, need_b = self.needs_input_grad
        return (grad * b if need_a else None), (grad * a if need_b else None)


class Div(Function):
    def forward(self, a, b):
        return a / b

    def vjp(self, grad, a, b):
        need_a, need_b = self.needs_input_grad
        return (grad / b if need_a else None), (-grad * a / (b * b) if need_b else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def vjp(self, grad, a):
        return -grad


class Pow(Function):
    """``a ** b``; d/da = b a^(b-1), d/db = a^b log(a), correct at a = 0 to any order.

    Where b == 0, d/da is 0, formed with exponent 0 instead of -1: no 0 * inf, here or in
    a later derivative. d/db takes log(a) as 0 where a == 0 (as PyTorch and JAX).
    """

    def forward(self, a, b):
        return a ** b

    def vjp(self, grad, a, b):
        xp = math_of(grad)
        need_a, need_b = self.needs_input_grad
        grad_a = grad_b = None
        if need_a:
            zero = b == 0
            grad_a = grad * xp.where(zero, 0, b) * a ** (xp.where(zero, 1, b) - 1)
        if need_b:
            grad_b = grad * a ** b * xp.log(xp.where(a == 0, 1, a))
        return grad_a, grad_b


class Exp(Function):
    def forward(self, a):
        out = array_module(a).exp(a)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return grad * out

    def vjp(self, grad, a):
        return grad * a.exp()


class Log(Function):
    def forward(self, a):
        return array_module(a).log(a)

    def vjp(self, grad, a):
        return grad / a


class Sqrt(Function):
    def forward(self, a):
        out = array_module(a).sqrt(a)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return grad / (2 * out)

    def vjp(self, grad, a):
        return grad / (2 * a.sqrt())


class Abs(Function):
    """|a|; the gradient at 0 is 0 (the subgradient PyTorch picks)."""

    def forward(self, a):
        self.save_for_backward(a)
        return array_module(a).abs(a)

    def vjp(self, grad, a):
        (saved,) = self.saved_tensors
        return grad * constant(array_module(saved).sign(saved), grad)


class Clip(Function):
    """Clamp to [lo, hi] (either may be None); gradient 1 inside, edges included."""

    def forward(self, a, lo=None, hi=None):
        xp = array_module(a)
        for name, bound in (("lo", lo), ("hi", hi)):
            if bound is not None and xp.asarray(bound).dtype.kind not in "biuf":
                raise TypeError(f"clip: {name} must be a real number, an array of them or None, "
                                f"got {type(bound).__name__} {bound!r:.40}")
        self.save_for_backward(a)
        self.lo, self.hi = lo, hi
        return xp.clip(a, lo, hi)

    def vjp(self, grad, a):
        (saved,) = self.saved_tensors
        inside = array_module(saved).ones(saved.shape, dtype=bool)
        if self.lo is not None:
            inside &= saved >= self.lo
        if self.hi is not None:
            inside &= saved <= self.hi
        return grad * constant(inside, grad)


class _Pick(Function):
    """Elementwise max or min; a tie sends half the gradient to each side."""

    def forward(self, a, b):
        self.save_for_backward(a, b)
        return self.pick(array_module(a), a, b)

    def vjp(self, grad, a, b):
        saved_a, saved_b = self.saved_tensors
        share_a = self.wins(saved_a, saved_b) + 0.5 * (saved_a == saved_b)
        need_a, need_b = self.needs_input_grad
        return (grad * constant(share_a, grad) if need_a else None), \
            (grad * constant(1 - share_a, grad) if need_b else None)


class Maximum(_Pick):
    pick, wins = staticmethod(lambda xp, a, b: xp.maximum(a, b)), staticmethod(lambda a, b: a > b)


class Minimum(_Pick):
    pick, wins = staticmethod(lambda xp, a, b: xp.minimum(a, b)), staticmethod(lambda a, b: a < b)


class Where(Function):
    """``cond ? a : b``; ``cond`` is a plain boolean array, not differentiated."""

    def forward(self, a, b, cond=None):
        self.cond = cond
        try:
            return array_module(a).where(cond, a, b)
        except ValueError:
            raise ValueError(f"where: cond {cond.shape}, a {a.shape} and b {b.shape} do not "
                             "broadcast to one shape") from None

    def vjp(self, grad, a, b):
        xp = math_of(grad)
        need_a, need_b = self.needs_input_grad
        return (xp.where(self.cond, grad, 0) if need_a else None,
                xp.where(self.cond, 0, grad) if need_b else None)
