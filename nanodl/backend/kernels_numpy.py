"""The NumPy kernel table: the readable reference twin of the compiled kernels.

Every function here has a namesake with the same signature in the native table
(``nanodl.backend.kernels_native``, built from ``csrc/``) and in the CuPy table.
Ops and optimizers call the table, never an ``if native:`` branch; the tests run
both tables on the same inputs and compare them.

Conventions
-----------
* Arrays are float32 or float64; every array argument of one call has the same dtype.
* ``linear_forward`` works on 2-D ``x``; the op reshapes anything else.
* Activation backward kernels take the forward *output* ``y`` for relu, sigmoid
  and tanh (their derivative is a function of the output, so the input need not
  be kept) and the forward *input* ``x`` for the others.
* Optimizer steps update ``param`` and their state arrays in place and return None.
  Their formulas are PyTorch's, option for option.
"""
import numpy as np

# Activations whose derivative is computed from the output (the rest use the input).
OUTPUT_GRAD_ACTIVATIONS = frozenset({"linear", "relu", "sigmoid", "tanh"})
LINEAR_ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus")

_GELU_C = 0.7978845608028654  # sqrt(2 / pi)
_GELU_K = 0.044715


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
    """GELU, tanh approximation: 0.5 x (1 + tanh(c (x + k x^3)))."""
    t = np.tanh(_GELU_C * (x + _GELU_K * x ** 3))
    return (0.5 * x * (1 + t)).astype(x.dtype, copy=False)


def gelu_backward(x, grad):
    t = np.tanh(_GELU_C * (x + _GELU_K * x ** 3))
    dt = _GELU_C * (1 + 3 * _GELU_K * x * x) * (1 - t * t)
    return (grad * (0.5 * (1 + t) + 0.5 * x * dt)).astype(x.dtype, copy=False)


def elu_forward(x, alpha):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def elu_backward(x, grad, alpha):
    return np.where(x > 0, grad, grad * x.dtype.type(alpha) * np.exp(np.minimum(x, 0)))


def softplus_forward(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow at |x| = 1e4.
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_backward(x, grad):
    return grad * sigmoid_forward(x)


def activation_forward(name, x, alpha=0.0):
    """Apply activation ``name`` (one of LINEAR_ACTIVATIONS)."""
    if name == "linear":
        return x
    if name in ("leaky_relu", "elu"):
        return ACTIVATION_FORWARD[name](x, alpha)
    return ACTIVATION_FORWARD[name](x)


def activation_backward(name, saved, grad, alpha=0.0):
    """Gradient through activation ``name``; ``saved`` is y or x as the module doc says."""
    if name == "linear":
        return grad
    if name in ("leaky_relu", "elu"):
        return ACTIVATION_BACKWARD[name](saved, grad, alpha)
    return ACTIVATION_BACKWARD[name](saved, grad)


ACTIVATION_FORWARD = {
    "relu": relu_forward, "leaky_relu": leaky_relu_forward, "sigmoid": sigmoid_forward,
    "tanh": tanh_forward, "gelu": gelu_forward, "elu": elu_forward, "softplus": softplus_forward,
}
ACTIVATION_BACKWARD = {
    "relu": relu_backward, "leaky_relu": leaky_relu_backward, "sigmoid": sigmoid_backward,
    "tanh": tanh_backward, "gelu": gelu_backward, "elu": elu_backward, "softplus": softplus_backward,
}


# ---------------------------------------------------------------- dense layer
def linear_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """``act(x @ kernel + bias)`` for 2-D ``x``.

    Returns ``(out, saved)``: ``saved`` is what ``linear_backward`` needs, the
    output for relu/sigmoid/tanh/linear and the pre-activation otherwise.
    """
    z = x @ kernel
    if bias is not None:
        z += bias
    if activation in OUTPUT_GRAD_ACTIVATIONS:
        out = activation_forward(activation, z, alpha)
        return out, out
    return activation_forward(activation, z, alpha), z


def linear_backward(x, kernel, saved, grad, activation="linear", alpha=0.0,
                    need_x=True, need_kernel=True, need_bias=True):
    """Gradients ``(dx, dkernel, dbias)`` of ``linear_forward``; unneeded ones are None."""
    dz = activation_backward(activation, saved, grad, alpha)
    dx = dz @ kernel.T if need_x else None
    dkernel = x.T @ dz if need_kernel else None
    dbias = dz.sum(axis=0) if need_bias else None
    return dx, dkernel, dbias


# ---------------------------------------------------------------- softmax cross-entropy
def softmax_xent_forward(logits, target):
    """Per-sample ``-sum(target * log_softmax(logits))`` for 2-D logits.

    ``target`` is an integer class array of shape (N,) (sparse) or an array of
    shape (N, C) of the logits' dtype (one-hot or probabilities).
    Returns ``(loss, probs)``; ``probs`` is kept for the backward.
    """
    if target.ndim == 1 and target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"softmax_xent_forward: target labels must be in [0, {logits.shape[1]}), "
                         f"got values in [{target.min()}, {target.max()}]")
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
def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening 0); ``momentum_buf`` starts at zeros, None when momentum == 0."""
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        momentum_buf *= momentum
        momentum_buf += grad
        grad = grad + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * grad


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
              eps, weight_decay=0.0, decoupled=False, amsgrad=False):
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


def adagrad_step(param, grad, state_sum, lr, eps, weight_decay=0.0):
    """torch.optim.Adagrad; ``lr`` is the already-decayed rate of this step."""
    if weight_decay:
        grad = grad + weight_decay * param
    state_sum += grad * grad
    param -= lr * grad / (np.sqrt(state_sum) + eps)


def rmsprop_step(param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
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


NAMES = (
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "gelu_forward", "gelu_backward", "elu_forward", "elu_backward",
    "softplus_forward", "softplus_backward",
    "linear_forward", "linear_backward", "softmax_xent_forward", "softmax_xent_backward",
    "sgd_step", "adam_step", "adagrad_step", "rmsprop_step",
)
