"""Analytic FLOPs and bytes of every op and kernel-table kernel: the profiler divides
them by measured times, ``model.summary()`` adds them up per layer.

FLOPs count arithmetic and elementary functions; comparisons and selects are free, and
``(m, k) @ (k, n)`` is ``2 m k n``. Bytes are the least traffic: inputs read and output
written once (forward); the incoming gradient, saved arrays and fresh gradients (backward).

>>> import numpy as np
>>> from nanodl.ops.shape import MatMul, Transpose
>>> a, b = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
>>> forward_cost(MatMul(), (a, b), a @ b)          # 2*4*3*5 FLOPs, (12 + 15 + 20) * 4 bytes
(120, 188)
>>> forward_cost(Transpose(), (a,), a.T)           # a view: no arithmetic, no traffic
(0, 0)
"""
import math

from ..backend import array_module
from ..backend.activations import ELEMENTWISE
from ..backend.table import parameters

# activation name -> (forward, backward) FLOPs per element (the fused dense layer's too)
ACTIVATION_FLOPS = {
    "linear": (0, 0), "relu": (0, 0), "leaky_relu": (1, 1), "sigmoid": (3, 3), "tanh": (1, 3),
    "gelu": (10, 22), "elu": (2, 3), "softplus": (5, 4), "softmax": (4, 4),
}

# op (Function class name) -> (forward FLOPs, backward FLOPs) per element of the op's
# output ('out') or first input ('in')
PER_ELEMENT = {
    "Add": (1, 0, "out"), "Sub": (1, 1, "out"), "Mul": (1, 2, "out"), "Div": (1, 4, "out"),
    "Neg": (1, 1, "out"), "Pow": (1, 6, "out"), "Exp": (1, 1, "out"), "Log": (1, 1, "out"),
    "Sqrt": (1, 2, "out"), "Abs": (0, 1, "out"), "Clip": (0, 0, "out"), "Maximum": (0, 2, "out"),
    "Minimum": (0, 2, "out"), "Where": (0, 0, "out"), "Sin": (1, 2, "out"), "Cos": (1, 3, "out"),
    "Log1p": (1, 2, "out"), "Expm1": (1, 2, "out"), "Erf": (1, 5, "out"), "Cumsum": (1, 1, "out"),
    "Softmax": (*ACTIVATION_FLOPS["softmax"], "out"), "LogSoftmax": (4, 3, "out"),
    "Sum": (1, 0, "in"), "Mean": (1, 1, "in"), "Var": (4, 2, "in"), "Max": (0, 3, "in"),
    "Min": (0, 3, "in"), "LogSumExp": (3, 3, "in"), "Prod": (1, 4, "in"), "Norm": (2, 2, "in"),
    # moves and copies: no arithmetic, except the scatter-adds of indexing
    "Reshape": (0, 0, "out"), "Transpose": (0, 0, "out"), "Squeeze": (0, 0, "out"),
    "ExpandDims": (0, 0, "out"), "BroadcastTo": (0, 0, "out"), "Concatenate": (0, 0, "out"),
    "Stack": (0, 0, "out"), "AsType": (0, 0, "out"), "ToDevice": (0, 0, "out"),
    "GetItem": (0, 1, "out"), "ScatterAdd": (1, 0, "in"),
    **{record.op: (*ACTIVATION_FLOPS[record.name], "out") for record in ELEMENTWISE},
}
_XENT_FLOPS = (4, 2)  # per logit: the log-softmax (shift, exp, sum, log); its gradient


def _nbytes(arrays):
    return sum(getattr(a, "nbytes", 0) for a in arrays)


def _is_view(out, inputs):
    """Whether ``out`` may share memory with one of ``inputs`` (a bounds check: cheap)."""
    if getattr(out, "base", None) is None:
        return False
    xp = array_module(out)
    return any(hasattr(a, "nbytes") and xp.may_share_memory(out, a) for a in inputs)


def _dense_flops(rows, inputs, units, activation, bias_gradient, products, backward):
    """A fused dense layer: ``products`` GEMMs, the activation, the bias gradient's sums."""
    act = ACTIVATION_FLOPS[activation][1 if backward else 0]
    return products * 2 * rows * inputs * units + (act + bool(bias_gradient)) * rows * units


def _einsum_flops(node):
    """Each point of the contraction's index space: one multiply per extra operand, one add."""
    sizes = {}
    for term, shape in zip(node.terms, node.shapes):
        sizes.update(zip(term, shape))
    return len(node.terms) * math.prod(sizes.values())


def forward_cost(node, inputs, out):
    """``(flops, bytes)`` of one forward of ``node`` on the arrays ``inputs`` giving ``out``.
    A custom ``Function`` may define ``cost(self, inputs, out) -> (flops, bytes)``."""
    name = type(node).__name__
    traffic = _nbytes(inputs) + getattr(out, "nbytes", 0)
    if name in PER_ELEMENT:
        if _is_view(out, inputs):
            return 0, 0
        flops, _, basis = PER_ELEMENT[name]
        return flops * (out.size if basis == "out" or not inputs else inputs[0].size), traffic
    if name == "MatMul":
        return 2 * out.size * inputs[0].shape[-1], traffic
    if name == "Einsum":
        return _einsum_flops(node), traffic
    if name == "Linear":
        fan_in, units = inputs[1].shape
        return _dense_flops(out.size // units, fan_in, units, node.activation, False, 1, False), traffic
    if name == "SoftmaxCrossEntropy":
        return _XENT_FLOPS[0] * inputs[0].size, traffic + node.saved_tensors[1].nbytes
    custom = getattr(node, "cost", None)
    return custom(inputs, out) if custom is not None else (0, traffic)


def backward_cost(node, grad_output, grads):
    """``(flops, bytes)`` of one backward of ``node`` (``grads``: what it returned)."""
    name = type(node).__name__
    saved = [a for a in (getattr(node, "saved_tensors", None) or ()) if hasattr(a, "nbytes")]
    fresh = [g for g in grads if g is not None and g is not grad_output and
             not _is_view(g, [grad_output, *saved])]
    traffic = (grad_output.nbytes + _nbytes(saved) + _nbytes(fresh)) if fresh else 0
    inputs = node.inputs
    if name in PER_ELEMENT:
        _, flops, basis = PER_ELEMENT[name]
        count = grad_output.size if basis == "out" else inputs[0].data.size
        return flops * count, traffic
    if name == "MatMul":
        products = sum(g is not None for g in grads)
        return products * 2 * grad_output.size * inputs[0].shape[-1], traffic
    if name == "Einsum":  # one contraction of the same letters per gradient
        return sum(g is not None for g in grads) * _einsum_flops(node), traffic
    if name == "Linear":
        fan_in, units = inputs[1].shape
        products = (grads[0] is not None) + (grads[1] is not None)
        has_bias = len(grads) > 2 and grads[2] is not None
        return _dense_flops(grad_output.size // units, fan_in, units, node.activation, has_bias,
                            products, True), traffic
    if name == "SoftmaxCrossEntropy":
        return _XENT_FLOPS[1] * inputs[0].data.size, traffic
    custom = getattr(node, "backward_cost", None)
    return custom(grad_output, grads) if custom is not None else (0, traffic)


# ---------------------------------------------------------------- kernel-table calls
# Kernel calls no op makes: name -> (FLOPs per element, param-sized arrays moved) of the options.
def _sgd(o):
    momentum = bool(o.get("momentum"))
    return (2 + 2 * bool(o.get("weight_decay")) + 2 * momentum + 2 * bool(o.get("nesterov")),
            3 + 2 * momentum)


def _adam(o):
    return 13 + 2 * bool(o.get("weight_decay")) + bool(o.get("amsgrad")), 7 + 2 * bool(o.get("amsgrad"))


def _adagrad(o):
    return 6 + 2 * bool(o.get("weight_decay")), 5


def _rmsprop(o):
    momentum, centered = bool(o.get("momentum")), bool(o.get("centered"))
    return (8 + 2 * bool(o.get("weight_decay")) + 2 * momentum + 3 * centered,
            5 + 2 * momentum + 2 * centered)


UPDATES = {"sgd_step": _sgd, "adam_step": _adam, "adagrad_step": _adagrad, "rmsprop_step": _rmsprop}


def kernel_cost(kernel, args, kwargs, result):
    """``(flops, bytes)`` of one call of the kernel-table kernel named ``kernel``."""
    call = dict(zip(parameters(kernel), args), **kwargs)
    if kernel in UPDATES:
        param = call["param"]
        flops, arrays = UPDATES[kernel](call)
        return flops * param.size, arrays * param.nbytes
    results = result if isinstance(result, tuple) else (result,)
    traffic = _nbytes(call.values()) + _nbytes(results)
    if kernel in ("linear_forward", "linear_backward"):
        x, w, backward = call["x"], call["kernel"], kernel == "linear_backward"
        products = call.get("need_x", True) + call.get("need_kernel", True) if backward else 1
        return _dense_flops(x.shape[0], w.shape[0], w.shape[1], call.get("activation", "linear"),
                            backward and call.get("need_bias", True), products, backward), traffic
    first = next(iter(call.values()))
    if kernel.startswith("softmax_xent_"):
        return _XENT_FLOPS[kernel.endswith("backward")] * first.size, traffic
    activation, _, direction = kernel.rpartition("_")
    return ACTIVATION_FLOPS[activation][direction == "backward"] * first.size, traffic
