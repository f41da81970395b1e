"""The native kernel table: the compiled twins of ``kernels_numpy``.

Same names, same signatures, same results to float32 rounding; the loops live in
``csrc/*.pyx`` (built into ``nanodl.backend._activations``, ``_linear``, ``_xent`` and
``_optim``). This module is the guard in front of them: every check happens here,
before any C code runs, so the kernels can run with bounds checks off.

* dtype: float32 or float64, the same for every array of a call (``TypeError``);
* shapes agree (``ValueError`` naming the kernel and the shapes);
* inputs are made C-contiguous (a copy only when needed); arrays updated in place
  (optimizer ``param`` and state) must already be writeable and C-contiguous
  (``ValueError``), since a copy would silently drop the update;
* sparse class labels lie in [0, C) (``ValueError``); activation names are known.

If the extension modules are missing, importing this module raises ImportError and
``nanodl.backend`` falls back to the NumPy table.
"""
import threading

import numpy as np

from . import kernels_numpy as _numpy_table

try:
    from . import _activations, _linear, _optim, _xent
except ImportError as exc:  # not built: nanodl.backend falls back to kernels_numpy
    raise ImportError(f"nanodl native kernels are not built ({exc}); "
                      "build them with `pip install -e .`") from exc

NAMES = _numpy_table.NAMES
LINEAR_ACTIVATIONS = _numpy_table.LINEAR_ACTIVATIONS
OUTPUT_GRAD_ACTIVATIONS = _numpy_table.OUTPUT_GRAD_ACTIVATIONS
# The ACT_* codes of csrc/elementwise.pxd: the position in LINEAR_ACTIVATIONS.
ACTIVATION_CODES = {name: code for code, name in enumerate(LINEAR_ACTIVATIONS)}
_LINEAR = ACTIVATION_CODES["linear"]
_OUTPUT_GRAD_CODES = frozenset(ACTIVATION_CODES[name] for name in OUTPUT_GRAD_ACTIVATIONS)

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_INTP = np.dtype(np.intp)


def _by_dtype(fused):
    """The float and double specialisations of a fused Cython function, by dtype
    (calling a specialisation skips Cython's per-call dtype dispatch)."""
    return {_F32: fused["float"], _F64: fused["double"]}


_ACT_FORWARD = _by_dtype(_activations.forward)
_ACT_BACKWARD = _by_dtype(_activations.backward)
_BIAS_ACT = _by_dtype(_linear.bias_act)
_ACT_GRAD = _by_dtype(_linear.act_grad)
_XENT_FORWARD = _by_dtype(_xent.forward)
_XENT_BACKWARD = _by_dtype(_xent.backward)
_SGD = _by_dtype(_optim.sgd_step)
_ADAM = _by_dtype(_optim.adam_step)
_ADAGRAD = _by_dtype(_optim.adagrad_step)
_RMSPROP = _by_dtype(_optim.rmsprop_step)


# ---------------------------------------------------------------- checks
def _dtype_error(kernel, /, **arrays):
    got = ", ".join(f"{name} {getattr(a, 'dtype', type(a).__name__)}"
                    for name, a in arrays.items())
    return TypeError(f"{kernel}: arrays must all be float32 or all float64; got {got}")


def _shape_error(kernel, what, /, **arrays):
    got = " and ".join(f"{name} {a.shape}" for name, a in arrays.items())
    return ValueError(f"{kernel}: {got} {what}")


def _input(x):
    return x if type(x) is np.ndarray else np.asarray(x)


def _contiguous(x):
    """``x`` as a C-contiguous ndarray, copied only when it is not one (0-d stays 0-d)."""
    return np.asarray(x, order="C")


def _in_place(kernel, name, array, param=None):
    """Check an array the kernel updates in place; returns it flattened (a view)."""
    if type(array) is not np.ndarray:
        raise TypeError(f"{kernel}: {name} must be a numpy.ndarray updated in place, "
                        f"got {type(array).__name__}")
    if param is not None:
        if array.dtype != param.dtype:
            raise _dtype_error(kernel, param=param, **{name: array})
        if array.shape != param.shape:
            raise _shape_error(kernel, "differ in shape", param=param, **{name: array})
    flags = array.flags
    if not flags.writeable or not flags.c_contiguous:
        raise ValueError(f"{kernel}: {name} is updated in place, so it must be writeable "
                         f"and C-contiguous (got writeable={flags.writeable}, "
                         f"C-contiguous={flags.c_contiguous})")
    return array.ravel()


def _activation_code(kernel, activation):
    code = ACTIVATION_CODES.get(activation)
    if code is None:
        raise ValueError(f"{kernel}: unknown activation {activation!r}; valid names: "
                         f"{', '.join(LINEAR_ACTIVATIONS)}")
    return code


def _sparse_labels(kernel, target, rows, classes):
    """Integer labels (N,) as contiguous intp, checked to lie in [0, classes)."""
    if target.dtype.kind not in "iu":
        raise TypeError(f"{kernel}: sparse target must hold integer class labels, "
                        f"got {target.dtype}")
    if target.shape[0] != rows:
        raise ValueError(f"{kernel}: target {target.shape} does not match {rows} rows of logits")
    labels = target if target.dtype == _INTP else target.astype(_INTP)
    labels = _contiguous(labels)
    bad = _xent.labels_out_of_range(labels, classes)
    if bad >= 0:
        raise ValueError(f"{kernel}: target label {target[bad]} at index {bad} is out of "
                         f"range [0, {classes})")
    return labels


def _xent_target(kernel, target, scores):
    """(sparse, dense) for the kernel: one of them None."""
    target = _input(target)
    if target.ndim == 1:
        return _sparse_labels(kernel, target, scores.shape[0], scores.shape[1]), None
    if target.dtype != scores.dtype:
        raise _dtype_error(kernel, logits=scores, target=target)
    if target.shape != scores.shape:
        raise _shape_error(kernel, "differ in shape", logits=scores, target=target)
    return None, _contiguous(target)


# ---------------------------------------------------------------- activations
# The hot path: np.asarray(order="C") is a no-op for a contiguous ndarray, and
# ravel() of a contiguous array is a view (cheaper than reshape(-1)).
def _forward(kernel, code, x, alpha):
    x = np.asarray(x, order="C")
    fn = _ACT_FORWARD.get(x.dtype)
    if fn is None:
        raise _dtype_error(kernel, x=x)
    out = np.empty_like(x)
    if x.size:
        fn(code, x.ravel(), out.ravel(), alpha)
    return out


def _backward(kernel, code, saved_name, saved, grad, alpha):
    saved = np.asarray(saved, order="C")
    grad = np.asarray(grad, order="C")
    fn = _ACT_BACKWARD.get(saved.dtype)
    if fn is None or grad.dtype != saved.dtype:
        raise _dtype_error(kernel, **{saved_name: saved, "grad": grad})
    if grad.shape != saved.shape:
        raise _shape_error(kernel, "differ in shape", **{saved_name: saved, "grad": grad})
    out = np.empty_like(grad)
    if grad.size:
        fn(code, saved.ravel(), grad.ravel(), out.ravel(), alpha)
    return out


_RELU, _LEAKY, _SIGMOID, _TANH, _GELU, _ELU, _SOFTPLUS = (
    ACTIVATION_CODES[name] for name in
    ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus"))


def relu_forward(x):
    return _forward("relu_forward", _RELU, x, 0.0)


def relu_backward(y, grad):
    return _backward("relu_backward", _RELU, "y", y, grad, 0.0)


def leaky_relu_forward(x, alpha):
    return _forward("leaky_relu_forward", _LEAKY, x, alpha)


def leaky_relu_backward(x, grad, alpha):
    return _backward("leaky_relu_backward", _LEAKY, "x", x, grad, alpha)


def sigmoid_forward(x):
    return _forward("sigmoid_forward", _SIGMOID, x, 0.0)


def sigmoid_backward(y, grad):
    return _backward("sigmoid_backward", _SIGMOID, "y", y, grad, 0.0)


def tanh_forward(x):
    return _forward("tanh_forward", _TANH, x, 0.0)


def tanh_backward(y, grad):
    return _backward("tanh_backward", _TANH, "y", y, grad, 0.0)


def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(c (x + k x^3)))."""
    return _forward("gelu_forward", _GELU, x, 0.0)


def gelu_backward(x, grad):
    return _backward("gelu_backward", _GELU, "x", x, grad, 0.0)


def elu_forward(x, alpha):
    return _forward("elu_forward", _ELU, x, alpha)


def elu_backward(x, grad, alpha):
    return _backward("elu_backward", _ELU, "x", x, grad, alpha)


def softplus_forward(x):
    return _forward("softplus_forward", _SOFTPLUS, x, 0.0)


def softplus_backward(x, grad):
    return _backward("softplus_backward", _SOFTPLUS, "x", x, grad, 0.0)


# ---------------------------------------------------------------- dense layer
def linear_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """``act(x @ kernel + bias)`` for 2-D ``x``; returns ``(out, saved)`` like kernels_numpy.

    The GEMM is ``np.matmul`` (see csrc/linear.pyx for why); the bias add and the
    activation are one fused pass over its output.
    """
    name = "linear_forward"
    code = _activation_code(name, activation)
    x = _input(x)
    kernel = _input(kernel)
    fn = _BIAS_ACT.get(x.dtype)
    if fn is None or kernel.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise _dtype_error(name, x=x, kernel=kernel, **({} if bias is None else {"bias": bias}))
    if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise _shape_error(name, "are not aligned", x=x, kernel=kernel)
    if bias is not None:
        bias = _input(bias)
        if bias.shape != (kernel.shape[1],):
            raise _shape_error(name, "do not match (bias must be (units,))",
                               kernel=kernel, bias=bias)
        bias = _contiguous(bias)
    z = _contiguous(np.matmul(x, kernel))  # fresh, C order; why not sgemm: csrc/linear.pyx
    if code in _OUTPUT_GRAD_CODES:
        if z.size and (bias is not None or code != _LINEAR):
            fn(code, z, bias, z, alpha)
        return z, z
    out = np.empty_like(z)
    if z.size:
        fn(code, z, bias, out, alpha)
    return out, z


_scratch = threading.local()


def _scratch_buffer(shape, dtype):
    """A per-thread work array reused across calls with the same shape and dtype."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    key = (shape, dtype)
    buf = buffers.get(key)
    if buf is None:
        if len(buffers) >= 8:
            buffers.clear()
        buf = buffers[key] = np.empty(shape, dtype)
    return buf


def linear_backward(x, kernel, saved, grad, activation="linear", alpha=0.0,
                    need_x=True, need_kernel=True, need_bias=True):
    """Gradients ``(dx, dkernel, dbias)`` of ``linear_forward``; unneeded ones are None.

    ``dz = grad * act'(saved)`` is one fused pass into a reused scratch buffer; the
    returned arrays are always fresh.
    """
    name = "linear_backward"
    code = _activation_code(name, activation)
    x = _input(x)
    kernel = _input(kernel)
    grad = _input(grad)
    fn = _ACT_GRAD.get(grad.dtype)
    if fn is None or x.dtype != grad.dtype or kernel.dtype != grad.dtype:
        raise _dtype_error(name, x=x, kernel=kernel, grad=grad)
    if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise _shape_error(name, "are not aligned", x=x, kernel=kernel)
    if grad.shape != (x.shape[0], kernel.shape[1]):
        raise _shape_error(name, "do not match x @ kernel", x=x, kernel=kernel, grad=grad)
    if code == _LINEAR:
        dz = grad
    else:
        saved = _input(saved)
        if saved.dtype != grad.dtype:
            raise _dtype_error(name, saved=saved, grad=grad)
        if saved.shape != grad.shape:
            raise _shape_error(name, "differ in shape", saved=saved, grad=grad)
        dz = _scratch_buffer(grad.shape, grad.dtype)
        if dz.size:
            fn(code, _contiguous(saved).ravel(), _contiguous(grad).ravel(), dz.ravel(), alpha)
    dx = np.matmul(dz, kernel.T) if need_x else None
    dkernel = np.matmul(x.T, dz) if need_kernel else None
    dbias = dz.sum(axis=0) if need_bias else None
    return dx, dkernel, dbias


# ---------------------------------------------------------------- softmax cross-entropy
def softmax_xent_forward(logits, target):
    """Per-sample ``-sum(target * log_softmax(logits))``; returns ``(loss, probs)``.

    ``target``: integer labels (N,) of any integer dtype, or (N, C) of the logits' dtype.
    """
    name = "softmax_xent_forward"
    logits = _input(logits)
    fn = _XENT_FORWARD.get(logits.dtype)
    if fn is None:
        raise _dtype_error(name, logits=logits)
    if logits.ndim != 2:
        raise ValueError(f"{name}: logits must be 2-D (N, C), got shape {logits.shape}")
    rows, classes = logits.shape
    sparse, dense = _xent_target(name, target, logits)
    loss = np.empty(rows, logits.dtype)
    probs = np.empty_like(logits)
    if rows:
        if classes == 0:
            raise ValueError(f"{name}: logits {logits.shape} have no classes")
        fn(_contiguous(logits), sparse, dense, loss, probs)
    return loss, probs


def softmax_xent_backward(probs, target, grad):
    """Gradient w.r.t. the logits, given the per-sample upstream ``grad`` (N,)."""
    name = "softmax_xent_backward"
    probs = _input(probs)
    grad = _input(grad)
    fn = _XENT_BACKWARD.get(probs.dtype)
    if fn is None or grad.dtype != probs.dtype:
        raise _dtype_error(name, probs=probs, grad=grad)
    if probs.ndim != 2 or grad.shape != probs.shape[:1]:
        raise _shape_error(name, "do not match (probs (N, C), grad (N,))", probs=probs, grad=grad)
    sparse, dense = _xent_target(name, target, probs)
    out = np.empty_like(probs)
    if out.size:
        fn(_contiguous(probs), sparse, dense, _contiguous(grad), out)
    return out


# ---------------------------------------------------------------- optimizer updates
def _optimizer_operands(kernel, table, param, grad):
    """(specialised kernel, flat param, flat contiguous grad) after the common checks."""
    if type(param) is not np.ndarray:
        raise TypeError(f"{kernel}: param must be a numpy.ndarray updated in place, "
                        f"got {type(param).__name__}")
    grad = _input(grad)
    fn = table.get(param.dtype)
    if fn is None or grad.dtype != param.dtype:
        raise _dtype_error(kernel, param=param, grad=grad)
    if grad.shape != param.shape:
        raise _shape_error(kernel, "differ in shape", param=param, grad=grad)
    return fn, _in_place(kernel, "param", param), _contiguous(grad).ravel()


def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening 0); ``momentum_buf`` starts at zeros, None when momentum == 0."""
    name = "sgd_step"
    fn, flat, grad = _optimizer_operands(name, _SGD, param, grad)
    buf = _in_place(name, "momentum_buf", momentum_buf, param) if momentum else flat
    if flat.size:
        fn(flat, grad, buf, lr, momentum, bool(nesterov), weight_decay)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
              eps, weight_decay=0.0, decoupled=False, amsgrad=False):
    """torch.optim.Adam (``decoupled=False``) and AdamW (``True``); ``step`` counts from 1."""
    name = "adam_step"
    fn, flat, grad = _optimizer_operands(name, _ADAM, param, grad)
    avg = _in_place(name, "exp_avg", exp_avg, param)
    avg_sq = _in_place(name, "exp_avg_sq", exp_avg_sq, param)
    max_sq = _in_place(name, "max_exp_avg_sq", max_exp_avg_sq, param) if amsgrad else flat
    if flat.size:
        fn(flat, grad, avg, avg_sq, max_sq, lr / (1 - beta1 ** step),
           (1 - beta2 ** step) ** 0.5, beta1, beta2, eps, weight_decay,
           1 - lr * weight_decay, bool(decoupled), bool(amsgrad))


def adagrad_step(param, grad, state_sum, lr, eps, weight_decay=0.0):
    """torch.optim.Adagrad; ``lr`` is the already-decayed rate of this step."""
    name = "adagrad_step"
    fn, flat, grad = _optimizer_operands(name, _ADAGRAD, param, grad)
    state = _in_place(name, "state_sum", state_sum, param)
    if flat.size:
        fn(flat, grad, state, lr, eps, weight_decay)


def rmsprop_step(param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop; ``momentum_buf``/``grad_avg`` are None when unused."""
    name = "rmsprop_step"
    fn, flat, grad = _optimizer_operands(name, _RMSPROP, param, grad)
    square = _in_place(name, "square_avg", square_avg, param)
    buf = _in_place(name, "momentum_buf", momentum_buf, param) if momentum else flat
    average = _in_place(name, "grad_avg", grad_avg, param) if centered else flat
    if flat.size:
        fn(flat, grad, square, buf, average, lr, alpha, eps, weight_decay, momentum,
           bool(centered))
