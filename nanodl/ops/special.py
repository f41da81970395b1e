"""Elementwise special functions: sin, cos, log1p, expm1, erf.

Each derivative is one ``vjp`` on arrays and Tensors, so any order: sin' = cos, cos' = -sin,
log1p' = 1 / (1 + x), expm1' = exp(x), erf' = 2 / sqrt(pi) exp(-x^2). No SciPy.

>>> import nanodl as nd
>>> x = nd.tensor([0.0, 0.5], dtype='float64', requires_grad=True)
>>> nd.erf(x).sum().backward()
>>> [round(v, 12) for v in x.grad.tolist()]   # 2/sqrt(pi) exp(-x^2)
[1.128379167096, 0.878782578935]
"""
import math

from ..autograd import Function
from ..backend import array_module
from .elementwise import math_of

TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)
_SPLIT = 134217729.0          # 2**27 + 1: Veltkamp's constant, splits a double into two halves
_SERIES_BELOW = 2.0           # |x| < 2: the series; 2 <= |x| < 6: the continued fraction
_FRACTION_DEPTH = 60          # enough for 0.5 ulp from |x| = 2 on (measured against mpmath)
_ONE_FROM = 6.0               # erfc(6) = 2e-17 < half an ulp of 1: erf is +-1 to the last bit


def _exp_minus_square(x):
    """exp(-x*x) without the rounding error of x*x (which exp would magnify by x*x): x = hi + lo
    with hi the top 26 bits, so hi*hi is exact and x*x = hi*hi + lo*(x + hi)."""
    scaled = _SPLIT * x
    hi = scaled - (scaled - x)
    return array_module(x).exp(-hi * hi) * array_module(x).exp(-(x - hi) * (x + hi))


def _series_terms(largest):
    """How many terms of the series reach full precision for |x| <= ``largest``."""
    two_x2, term, total, n = 2 * largest * largest, 1.0, 1.0, 0
    while term > 1e-17 * total:
        n += 1
        term *= two_x2 / (2 * n + 1)
        total += term
    return n + 2


def erf_array(x):
    """erf of a float array to within ~5 ulp of the exact value, on any backend (float32 via
    float64). |x| < 2: 2/sqrt(pi) x exp(-x^2) sum_n (2x^2)^n / (1*3*...*(2n+1)), positive terms
    by Horner's rule; 2 <= |x| < 6: 1 - erfc(x) by Laplace's continued fraction from depth 60;
    |x| >= 6: +-1 (erfc(6) is below half an ulp of 1)."""
    xp = array_module(x)
    dtype = x.dtype
    values = x.astype(xp.float64)
    size = abs(values)
    out = xp.where(size >= _ONE_FROM, xp.sign(values), values)  # NaN passes through
    near = size < _SERIES_BELOW
    if bool(near.any()):
        v = values[near]
        two_x2 = 2 * v * v
        total = xp.ones_like(v)
        for n in range(_series_terms(float(abs(v).max())), 0, -1):
            total *= two_x2
            total /= 2 * n + 1
            total += 1
        out[near] = v * (TWO_OVER_SQRT_PI * _exp_minus_square(v) * total)
    far = (size >= _SERIES_BELOW) & (size < _ONE_FROM)
    if bool(far.any()):
        v = abs(values[far])
        fraction = v.copy()
        for n in range(_FRACTION_DEPTH, 0, -1):
            fraction = v + (n / 2) / fraction
        erfc = _exp_minus_square(v) / (math.sqrt(math.pi) * fraction)
        out[far] = xp.sign(values[far]) * (1 - erfc)
    return out.astype(dtype, copy=False)


class Sin(Function):
    def forward(self, a):
        return array_module(a).sin(a)

    def vjp(self, grad, a):
        return grad * math_of(a).cos(a)


class Cos(Function):
    def forward(self, a):
        return array_module(a).cos(a)

    def vjp(self, grad, a):
        return -grad * math_of(a).sin(a)


class Log1p(Function):
    """log(1 + x), accurate for tiny x (where 1 + x would round away x's digits)."""

    def forward(self, a):
        return array_module(a).log1p(a)

    def vjp(self, grad, a):
        return grad / (1 + a)


class Expm1(Function):
    """exp(x) - 1, accurate for tiny x."""

    def forward(self, a):
        out = array_module(a).expm1(a)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved_tensors
        return grad * (out + 1)

    def vjp(self, grad, a):
        return grad * a.exp()


class Erf(Function):
    """The error function, 2/sqrt(pi) times the integral of exp(-t^2) from 0 to x."""

    def forward(self, a):
        return erf_array(a)

    def vjp(self, grad, a):
        return grad * (TWO_OVER_SQRT_PI * math_of(a).exp(-(a * a)))
