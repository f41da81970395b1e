"""The fused dense-layer node: ``act(x @ kernel + bias)`` in one Function."""
from ..autograd import Function
from ..backend import kernels, threads
from .activation import activation_vjp, softmax_array, softmax_backward_array


class Linear(Function):
    """One node for a dense layer (GEMM, bias and activation fused); ``x``'s leading axes
    are the batch, ``bias`` may be None, ``'softmax'`` is over the last axis."""

    def forward(self, x, kernel, bias=None, activation="linear", alpha=0.0):
        if x.ndim == 0 or kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
            raise ValueError(f"linear: input {x.shape} and kernel {kernel.shape} are not aligned")
        if bias is not None and bias.shape != (kernel.shape[1],):
            raise ValueError(f"linear: bias {bias.shape} does not match kernel {kernel.shape}")
        self.lead_shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        table = kernels(x)
        with threads.gemm(x2.shape[0], kernel.shape[0], kernel.shape[1]):
            if activation == "softmax":
                z, _ = table.linear_forward(x2, kernel, bias, "linear", alpha)
                out = saved = softmax_array(z, -1)
            else:
                out, saved = table.linear_forward(x2, kernel, bias, activation, alpha)
        self.save_for_backward(x2, kernel, saved)
        self.activation, self.alpha, self.has_bias = activation, alpha, bias is not None
        return out.reshape(self.lead_shape + (kernel.shape[1],)) if x.ndim != 2 else out

    def backward(self, grad):
        x2, kernel, saved = self.saved_tensors
        needs = self.needs_input_grad
        grad2 = grad.reshape(-1, grad.shape[-1]) if grad.ndim != 2 else grad
        activation = self.activation
        if activation == "softmax":
            grad2 = softmax_backward_array(saved, grad2, -1)
            activation = "linear"
        with threads.gemm(x2.shape[0], kernel.shape[0], kernel.shape[1]):
            dx, dkernel, dbias = kernels(x2).linear_backward(
                x2, kernel, saved, grad2, activation, self.alpha,
                needs[0], needs[1], self.has_bias and needs[2])
        if dx is not None and len(self.lead_shape) != 1:
            dx = dx.reshape(self.lead_shape + (kernel.shape[0],))
        return (dx, dkernel, dbias) if self.has_bias else (dx, dkernel)

    def vjp(self, grad, x, kernel, bias=None):
        """The same derivative with Tensor ops: the activation's vjp, then the products."""
        z = x @ kernel if bias is None else x @ kernel + bias
        grad = activation_vjp(self.activation, grad, z, self.alpha)
        need_x, need_kernel = self.needs_input_grad[:2]
        flat = grad.reshape(-1, grad.shape[-1])
        return ((grad @ kernel.T if need_x else None),
                (x.reshape(-1, x.shape[-1]).T @ flat if need_kernel else None),
                *((grad,) if bias is not None else ()))  # the engine sums it to (units,)
