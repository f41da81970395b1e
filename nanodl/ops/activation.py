"""Activations: ``backward`` calls the kernel table (compiled or NumPy twin) on arrays;
``vjp`` writes the same derivative with Tensor ops, differentiable again.
"""
from ..autograd import Function
from ..backend import array_module, kernels
from ..backend.activations import BY_NAME, gelu_derivative
from .axes import normalize_axis
from .elementwise import Minimum, Where, constant


class _Activation(Function):
    """An elementwise activation run by its kernel record; each op writes only its ``vjp``."""
    record = None

    def forward(self, x, alpha=None):
        record, table = self.record, kernels(x)
        if record.has_alpha:
            self.alpha = record.alpha if alpha is None else alpha
            out = getattr(table, record.forward_kernel)(x, self.alpha)
        else:
            out = getattr(table, record.forward_kernel)(x)
        self.save_for_backward(out if record.saves == "output" else x)
        return out

    def backward(self, grad):
        (saved,) = self.saved_tensors
        backward = getattr(kernels(saved), self.record.backward_kernel)
        return backward(saved, grad, self.alpha) if self.record.has_alpha else backward(saved, grad)


class ReLU(_Activation):
    record = BY_NAME["relu"]

    def vjp(self, grad, x):
        (out,) = self.saved_tensors
        return grad * constant(out > 0, grad)


class LeakyReLU(_Activation):
    record = BY_NAME["leaky_relu"]

    def vjp(self, grad, x):
        (saved,) = self.saved_tensors
        return grad * constant(array_module(saved).where(saved > 0, 1.0, self.alpha), grad)


class Sigmoid(_Activation):
    record = BY_NAME["sigmoid"]

    def vjp(self, grad, x):
        out = Sigmoid.apply(x)
        return grad * out * (1 - out)


class Tanh(_Activation):
    record = BY_NAME["tanh"]

    def vjp(self, grad, x):
        out = Tanh.apply(x)
        return grad * (1 - out * out)


class GELU(_Activation):
    """GELU, tanh approximation."""
    record = BY_NAME["gelu"]

    def vjp(self, grad, x):  # the kernels' own derivative (backend.activations), on Tensors
        return grad * gelu_derivative(x, lambda v: (Sigmoid.apply(v), Sigmoid.apply(-v)))


class ELU(_Activation):
    record = BY_NAME["elu"]

    def vjp(self, grad, x):
        (saved,) = self.saved_tensors  # exp of min(x, 0) only: no inf in the unused branch
        negative = grad * self.alpha * Minimum.apply(x, constant(array_module(saved).zeros(()), x)).exp()
        return Where.apply(grad, negative, cond=saved > 0)


class Softplus(_Activation):
    record = BY_NAME["softplus"]

    def vjp(self, grad, x):
        return grad * Sigmoid.apply(x)


def softmax_array(x, axis):
    """Stable softmax of a raw array (shift by the max first)."""
    exp = array_module(x).exp(x - x.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def softmax_backward_array(out, grad, axis):
    """Vector-Jacobian product of softmax, from its output (arrays or Tensors)."""
    return out * (grad - (grad * out).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis = normalize_axis(axis, x.ndim, "softmax")
        out = softmax_array(x, axis)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return softmax_backward_array(out, grad, self.axis)

    def vjp(self, grad, x):
        return softmax_backward_array(Softmax.apply(x, axis=self.axis), grad, self.axis)


class LogSoftmax(Function):
    """x - logsumexp(x): one stable node instead of log(softmax(x))."""

    def forward(self, x, axis=-1):
        xp = array_module(x)
        self.axis = axis = normalize_axis(axis, x.ndim, "log_softmax")
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return grad - array_module(out).exp(out) * grad.sum(axis=self.axis, keepdims=True)

    def vjp(self, grad, x):
        return grad - Softmax.apply(x, axis=self.axis) * grad.sum(axis=self.axis, keepdims=True)


def activation_vjp(name, grad, z, alpha):
    """``grad`` through activation ``name`` at ``z`` with Tensor ops (for the fused dense node)."""
    if name == "linear":
        return grad
    op = ACTIVATION_OPS[name]()
    op.forward(z.data) if name == "softmax" else op.forward(z.data, alpha)
    op.needs_input_grad = (True,)
    return op.vjp(grad, z)


ACTIVATION_OPS = {op.record.name: op for op in _Activation.__subclasses__()}
ACTIVATION_OPS["softmax"] = Softmax
