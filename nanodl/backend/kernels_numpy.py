"""The NumPy kernel table: the readable reference twin of the compiled kernels (the checks,
``nanodl.backend.table``'s, run before these)."""
import numpy as np

from .activations import BY_NAME, OUTPUT_GRAD_ACTIVATIONS, gelu, gelu_derivative
from .table import CPU, KernelTable

# ---------------------------------------------------------------- activations
def relu_forward(x):
    return np.maximum(x, 0)


def relu_backward(y, grad):
    return grad * (y > 0)


def leaky_relu_forward(x, alpha):
    return np.where(x > 0, x, x * x.dtype.type(alpha))


def leaky_relu_backward(x, grad, alpha):
    return np.where(x > 0, grad, grad * x.dtype.type(alpha))


def sigmoid_forward(x):
    # exp of a non-positive number only, so |x| = 1e4 gives 0 or 1, never inf/inf.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(y, grad):
    return grad * y * (1 - y)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(y, grad):
    return grad * (1 - y * y)


def gelu_forward(x):
    return gelu(x).astype(x.dtype, copy=False)


def gelu_backward(x, grad):
    return (grad * gelu_derivative(x)).astype(x.dtype, copy=False)


def elu_forward(x, alpha):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def elu_backward(x, grad, alpha):
    return np.where(x > 0, grad, grad * x.dtype.type(alpha) * np.exp(np.minimum(x, 0)))


def softplus_forward(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow at |x| = 1e4.
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_backward(x, grad):
    return grad * sigmoid_forward(x)


def activation_forward(name, x, alpha):
    """Apply activation ``name`` (one of ``activations.LINEAR_ACTIVATIONS``)."""
    if name == "linear":
        return x
    forward = _FORWARD[name]
    return forward(x, alpha) if BY_NAME[name].has_alpha else forward(x)


def activation_backward(name, saved, grad, alpha):
    """Gradient through activation ``name``; ``saved`` is y or x as its record says."""
    if name == "linear":
        return grad
    backward = _BACKWARD[name]
    return backward(saved, grad, alpha) if BY_NAME[name].has_alpha else backward(saved, grad)


# ---------------------------------------------------------------- dense layer
def linear_forward(x, kernel, bias, activation, alpha):
    """``(act(x @ kernel + bias), saved)``: ``saved`` is the output or the pre-activation."""
    z = x @ kernel
    if bias is not None:
        z += bias
    out = activation_forward(activation, z, alpha)
    return out, out if activation in OUTPUT_GRAD_ACTIVATIONS else z


def linear_backward(x, kernel, saved, grad, activation, alpha, need_x, need_kernel, need_bias):
    """Gradients ``(dx, dkernel, dbias)`` of ``linear_forward``; unneeded ones are None."""
    dz = activation_backward(activation, saved, grad, alpha)
    dx = dz @ kernel.T if need_x else None
    dkernel = x.T @ dz if need_kernel else None
    dbias = dz.sum(axis=0) if need_bias else None
    return dx, dkernel, dbias


# ---------------------------------------------------------------- softmax cross-entropy
def softmax_xent_forward(logits, target):
    """``(per-sample -sum(target * log_softmax(logits)), probs)``; target (N,) labels or (N, C)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(total)
    if target.ndim == 1:
        loss = -log_probs[np.arange(len(target)), target]
    else:
        loss = -(target * log_probs).sum(axis=1)
    return loss, exp / total


def softmax_xent_backward(probs, target, grad):
    """Gradient w.r.t. the logits, given the per-sample upstream ``grad`` (N,)."""
    if target.ndim == 1:
        dlogits = probs.copy()
        dlogits[np.arange(len(target)), target] -= 1
    else:
        dlogits = probs * target.sum(axis=1, keepdims=True) - target
    dlogits *= grad[:, None]
    return dlogits


# ---------------------------------------------------------------- optimizer updates
def sgd_step(param, grad, momentum_buf, lr, momentum, nesterov, weight_decay):
    """torch.optim.SGD (dampening 0); ``momentum_buf`` starts at zeros, None when momentum == 0."""
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        momentum_buf *= momentum
        momentum_buf += grad
        grad = grad + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * grad


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
              weight_decay, decoupled, amsgrad):
    """torch.optim.Adam (``decoupled=False``) and AdamW (``True``); ``step`` counts from 1."""
    if weight_decay:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            grad = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second) / bias_correction2_sqrt + eps
    param -= (lr / bias_correction1) * exp_avg / denom


def adagrad_step(param, grad, state_sum, lr, eps, weight_decay):
    """torch.optim.Adagrad; ``lr`` is the already-decayed rate of this step."""
    if weight_decay:
        grad = grad + weight_decay * param
    state_sum += grad * grad
    param -= lr * grad / (np.sqrt(state_sum) + eps)


def rmsprop_step(param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
                 momentum, centered):
    """torch.optim.RMSprop; ``momentum_buf``/``grad_avg`` are None when unused."""
    if weight_decay:
        grad = grad + weight_decay * param
    square_avg *= alpha
    square_avg += (1 - alpha) * grad * grad
    if centered:
        grad_avg *= alpha
        grad_avg += (1 - alpha) * grad
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum:
        momentum_buf *= momentum
        momentum_buf += grad / avg
        param -= lr * momentum_buf
    else:
        param -= lr * grad / avg


_FORWARD = {a.name: globals()[a.forward_kernel] for a in BY_NAME.values() if a.kernels}
_BACKWARD = {a.name: globals()[a.backward_kernel] for a in BY_NAME.values() if a.kernels}

TABLE = KernelTable("numpy", globals(), CPU)
