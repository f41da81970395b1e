"""Activations. Elementwise ones run through the kernel table (compiled or NumPy twin)."""
from ..autograd import Function
from ..backend import array_module, kernels


class ReLU(Function):
    def forward(self, x):
        out = kernels(x).relu_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).relu_backward(out, grad)


class LeakyReLU(Function):
    def forward(self, x, alpha=0.01):
        self.alpha = alpha
        self.save_for_backward(x)
        return kernels(x).leaky_relu_forward(x, alpha)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).leaky_relu_backward(x, grad, self.alpha)


class Sigmoid(Function):
    def forward(self, x):
        out = kernels(x).sigmoid_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).sigmoid_backward(out, grad)


class Tanh(Function):
    def forward(self, x):
        out = kernels(x).tanh_forward(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return kernels(out).tanh_backward(out, grad)


class GELU(Function):
    """GELU, tanh approximation."""

    def forward(self, x):
        self.save_for_backward(x)
        return kernels(x).gelu_forward(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).gelu_backward(x, grad)


class ELU(Function):
    def forward(self, x, alpha=1.0):
        self.alpha = alpha
        self.save_for_backward(x)
        return kernels(x).elu_forward(x, alpha)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).elu_backward(x, grad, self.alpha)


class Softplus(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return kernels(x).softplus_forward(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return kernels(x).softplus_backward(x, grad)


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
        self.axis = axis
        out = softmax_array(x, axis)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return softmax_backward_array(out, grad, self.axis)


class LogSoftmax(Function):
    """x - logsumexp(x): one stable node instead of log(softmax(x))."""

    def forward(self, x, axis=-1):
        xp = array_module(x)
        self.axis = axis
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        xp = array_module(out)
        return grad - xp.exp(out) * grad.sum(axis=self.axis, keepdims=True)
