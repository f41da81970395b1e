"""One record per activation: every list of activations in nanodl (kernels, ``F``, the CLI,
the op registry, the kink notes) is derived from here. How to add one: docs/extending.md.

>>> from nanodl.backend.activations import BY_NAME
>>> relu = BY_NAME["relu"]
>>> relu.code, relu.saves, relu.kink_points()
(1, 'output', (0.0,))
>>> BY_NAME["elu"].kink_points(alpha=1.0)   # elu with alpha 1 has a continuous slope
()
>>> [a.name for a in ELEMENTWISE][:3]
['relu', 'leaky_relu', 'sigmoid']
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

GELU_C = 0.7978845608028654  # sqrt(2 / pi)
GELU_K = 0.044715


@dataclass(frozen=True)
class Activation:
    """One activation function; ``code`` is its C enum ``ACT_*`` (``csrc/elementwise.pxd``).

    ``saves``: what its backward kernel takes besides ``grad``, ``'output'`` or ``'input'``.
    ``kinks``: where it is not differentiable, unless ``alpha == smooth_alpha``.
    ``reference`` / ``derivative``: ``(x, alpha) -> array`` in float64 NumPy (the tests'
    oracle). ``cuda_forward`` / ``cuda_backward``: bodies of CUDA device functions of
    ``(T x, T alpha)`` and ``(T s, T g, T alpha)``. ``check_alpha``: not ``smooth_alpha``.
    """
    name: str
    code: int
    op: str
    saves: str
    reference: Callable
    derivative: Callable
    cuda_forward: str
    cuda_backward: str
    doc: str
    alpha: Optional[float] = None
    kinks: Tuple[float, ...] = ()
    smooth_alpha: Optional[float] = None
    check_alpha: Optional[float] = None
    kernels: bool = True

    @property
    def forward_kernel(self):
        return f"{self.name}_forward"

    @property
    def backward_kernel(self):
        return f"{self.name}_backward"

    @property
    def has_alpha(self):
        return self.alpha is not None

    def kink_points(self, alpha=None):
        """Where it is not differentiable for this ``alpha`` (default: its own)."""
        alpha = self.alpha if alpha is None else alpha
        if self.smooth_alpha is not None and alpha == self.smooth_alpha:
            return ()
        return self.kinks

    @property
    def smooth(self):
        """True when it is differentiable everywhere for every alpha."""
        return not self.kinks


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # both branches without cancellation or overflow
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_pair(v):
    """``(sigmoid(v), sigmoid(-v))`` from one ``exp(-|v|)``: no cancellation, no overflow."""
    e = np.exp(-np.abs(v))
    r = 1 / (1 + e)
    positive = v >= 0
    return np.where(positive, r, e * r), np.where(positive, e * r, r)


def gelu(x, pair=sigmoid_pair):
    """GELU (tanh approximation) ``x sigmoid(2u)``, ``u = c (x + k x^3)``; ``pair``: arrays or Tensors."""
    return x * pair((2 * GELU_C) * (x + GELU_K * (x * x * x)))[0]


def gelu_derivative(x, pair=sigmoid_pair):
    """d gelu / dx = s + x (2u)' s (1 - s), ``s = sigmoid(2u)``, ``(2u)' = 2c (1 + 3k x^2)``."""
    s, s_rest = pair((2 * GELU_C) * (x + GELU_K * (x * x * x)))
    return s + (2 * GELU_C) * (1 + (3 * GELU_K) * (x * x)) * x * s * s_rest


ACTIVATIONS = (
    Activation(
        "linear", 0, "", "output", lambda x, a: x, lambda x, a: np.ones_like(x),
        "return x;", "return g;", "linear(x) = x;  d/dx = 1", kernels=False),
    Activation(
        "relu", 1, "ReLU", "output", lambda x, a: np.maximum(x, 0), lambda x, a: (x > 0) * 1.0,
        "return (x > T(0) || x != x) ? x : T(0);  /* NaN propagates, as np.maximum */",
        "return g * (s > T(0) ? T(1) : T(0));",
        "relu(x) = max(x, 0);  d/dx = 1 if x > 0 else 0 (y > 0 from the output)",
        kinks=(0.0,)),
    Activation(
        "leaky_relu", 2, "LeakyReLU", "input", lambda x, a: np.where(x > 0, x, a * x),
        lambda x, a: np.where(x > 0, 1.0, a),
        "return x > T(0) ? x : x * alpha;", "return s > T(0) ? g : g * alpha;",
        "leaky_relu(x) = x if x > 0 else alpha x;  d/dx = 1 if x > 0 else alpha",
        alpha=0.01, kinks=(0.0,), smooth_alpha=1.0, check_alpha=0.1),
    Activation(
        "sigmoid", 3, "Sigmoid", "output", lambda x, a: _sigmoid(x),
        lambda x, a: _sigmoid(x) * _sigmoid(-x),
        "return nanodl_stable_sigmoid(x);", "return g * s * (T(1) - s);",
        "sigmoid(x) = 1 / (1 + e^-x);  d/dx = y (1 - y)"),
    Activation(
        "tanh", 4, "Tanh", "output", lambda x, a: np.tanh(x), lambda x, a: 1 - np.tanh(x) ** 2,
        "return tanh(x);", "return g * (T(1) - s * s);",
        "tanh(x);  d/dx = 1 - y^2"),
    Activation(
        "gelu", 5, "GELU", "input", lambda x, a: gelu(x), lambda x, a: gelu_derivative(x),
        "return x * nanodl_stable_sigmoid(T(2) * nanodl_gelu_u(x));",
        "const T s2 = nanodl_stable_sigmoid(T(2) * nanodl_gelu_u(s));\n"
        "    const T rest = nanodl_stable_sigmoid(T(-2) * nanodl_gelu_u(s));\n"
        f"    const T du = T({2 * GELU_C!r}) * (T(1) + T({3 * GELU_K!r}) * s * s);\n"
        "    return g * (s2 + du * s * s2 * rest);",
        "gelu(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = c (x + k x^3) (tanh approximation, "
        "c = sqrt(2/pi), k = 0.044715);  d/dx = sigmoid(2u) + x u' 2 sigmoid(2u) sigmoid(-2u), "
        "u' = c (1 + 3 k x^2)"),
    Activation(
        "elu", 6, "ELU", "input", lambda x, a: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))),
        lambda x, a: np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0))),
        "return x > T(0) ? x : alpha * expm1(x < T(0) ? x : T(0));",
        "return s > T(0) ? g : g * alpha * exp(s < T(0) ? s : T(0));",
        "elu(x) = x if x > 0 else alpha (e^x - 1);  d/dx = 1 if x > 0 else alpha e^x",
        alpha=1.0, kinks=(0.0,), smooth_alpha=1.0, check_alpha=1.5),
    Activation(
        "softplus", 7, "Softplus", "input", lambda x, a: np.logaddexp(x, 0), lambda x, a: _sigmoid(x),
        "return (x > T(0) ? x : T(0)) + log1p(exp(-fabs(x)));  /* no overflow at |x| = 1e4 */",
        "return g * nanodl_stable_sigmoid(s);",
        "softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|);  d/dx = sigmoid(x)"),
)

BY_NAME = {activation.name: activation for activation in ACTIVATIONS}
# The activations with kernels of their own (all but the identity), in C-enum order.
ELEMENTWISE = tuple(a for a in ACTIVATIONS if a.kernels)
LINEAR_ACTIVATIONS = tuple(a.name for a in ACTIVATIONS)
OUTPUT_GRAD_ACTIVATIONS = frozenset(a.name for a in ACTIVATIONS if a.saves == "output")
CODES = {a.name: a.code for a in ACTIVATIONS}


def define_table_functions(namespace, key, forward, backward):
    """Define every activation's ``<name>_forward`` / ``<name>_backward`` in ``namespace``
    over the table's ``forward(which, x, alpha)`` / ``backward(which, saved, grad, alpha)``;
    ``which`` is the record's ``key`` field (``'code'`` or ``'name'``).

    >>> table = {}
    >>> define_table_functions(table, "name", lambda w, x, a: x, lambda w, s, g, a: g)
    >>> table["tanh_forward"].__name__, table["tanh_backward"].__code__.co_varnames[:2]
    ('tanh_forward', ('y', 'grad'))
    """
    for activation in ELEMENTWISE:
        for function in _table_functions(activation, getattr(activation, key), forward, backward):
            namespace[function.__name__] = function


def _table_functions(activation, which, forward, backward):
    if activation.has_alpha:
        def forward_kernel(x, alpha):
            return forward(which, x, alpha)

        def backward_kernel(x, grad, alpha):
            return backward(which, x, grad, alpha)
    else:
        def forward_kernel(x):
            return forward(which, x, 0.0)
        if activation.saves == "output":
            def backward_kernel(y, grad):
                return backward(which, y, grad, 0.0)
        else:
            def backward_kernel(x, grad):
                return backward(which, x, grad, 0.0)
    forward_kernel.__name__ = forward_kernel.__qualname__ = activation.forward_kernel
    backward_kernel.__name__ = backward_kernel.__qualname__ = activation.backward_kernel
    return forward_kernel, backward_kernel
