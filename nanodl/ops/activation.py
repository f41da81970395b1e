"""Activations. Elementwise ones run through the kernel table (compiled or NumPy twin).

``backward`` calls the kernel table on arrays; ``vjp`` writes the same derivative
with Tensor ops (for ``create_graph=True``), recomputing what it needs from the
input so that the derivative itself can be differentiated.
"""
from ..autograd import Function
from ..backend import array_module, kernels
from .axes import normalize_axis
from .elementwise import Minimum, Where, constant

GELU_C, GELU_K = 0.7978845608028654, 0.044715  # sqrt(2/pi) and the cubic coefficient


class ReLU(Function):
    def forward(self, x):
        out = kernels(x).relu_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).relu_backward(out, grad)

    def vjp(self, grad, x):
        (out,) = self.saved_tensors
        return grad * constant(out > 0, grad)


class LeakyReLU(Function):
    def forward(self, x, alpha=0.01):
        self.alpha = alpha
        self.save_for_backward(x)
        return kernels(x).leaky_relu_forward(x, alpha)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).leaky_relu_backward(x, grad, self.alpha)

    def vjp(self, grad, x):
        (saved,) = self.saved_tensors
        return grad * constant(array_module(saved).where(saved > 0, 1.0, self.alpha), grad)


class Sigmoid(Function):
    def forward(self, x):
        out = kernels(x).sigmoid_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).sigmoid_backward(out, grad)

    def vjp(self, grad, x):
        out = Sigmoid.apply(x)
        return grad * out * (1 - out)


class Tanh(Function):
    def forward(self, x):
        out = kernels(x).tanh_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).tanh_backward(out, grad)

    def vjp(self, grad, x):
        out = Tanh.apply(x)
        return grad * (1 - out * out)


class GELU(Function):
    """GELU, tanh approximation."""

    def forward(self, x):
        self.save_for_backward(x)
        return kernels(x).gelu_forward(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).gelu_backward(x, grad)

    def vjp(self, grad, x):
        t = Tanh.apply(GELU_C * (x + GELU_K * x * x * x))
        dt = GELU_C * (1 + 3 * GELU_K * x * x) * (1 - t * t)
        return grad * (0.5 * (1 + t) + 0.5 * x * dt)


class ELU(Function):
    def forward(self, x, alpha=1.0):
        self.alpha = alpha
        self.save_for_backward(x)
        return kernels(x).elu_forward(x, alpha)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).elu_backward(x, grad, self.alpha)

    def vjp(self, grad, x):
        (saved,) = self.saved_tensors  # exp of min(x, 0) only: no inf in the unused branch
        negative = grad * self.alpha * Minimum.apply(x, constant(array_module(saved).zeros(()), x)).exp()
        return Where.apply(grad, negative, cond=saved > 0)


class Softplus(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return kernels(x).softplus_forward(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).softplus_backward(x, grad)

    def vjp(self, grad, x):
        return grad * Sigmoid.apply(x)


def softmax_array(x, axis):
    """Stable softmax of a raw array (shift by the max first)."""
    xp = array_module(x)
    exp = xp.exp(x - x.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def softmax_backward_array(out, grad, axis):
    """Vector-Jacobian product of softmax, from its output."""
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
        out = Softmax.apply(x, axis=self.axis)
        return out * (grad - (grad * out).sum(axis=self.axis, keepdims=True))


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
        xp = array_module(out)
        return grad - xp.exp(out) * grad.sum(axis=self.axis, keepdims=True)

    def vjp(self, grad, x):
        return grad - Softmax.apply(x, axis=self.axis) * grad.sum(axis=self.axis, keepdims=True)
