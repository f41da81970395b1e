"""More Tensor methods: SPEC §17's ops (sin, cos, log1p, expm1, erf, prod, cumsum, std, norm),
and ``float(t)``/``int(t)``.

``Tensor`` inherits them, so that ``tensor.py`` keeps its line budget; each is a
one-line wrapper over ``nanodl.ops``, as the methods written in ``tensor.py`` are.

>>> import nanodl as nd
>>> nd.tensor([1.0, 2.0, 3.0]).cumsum(0).tolist()
[1.0, 3.0, 6.0]
"""


def _ops():
    from . import ops  # ops import tensor, which imports this module: bind at call time
    return ops


class MoreMethods:
    __slots__ = ()

    def __float__(self):  # float(t) and int(t) for a one-element tensor, as item()
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def sin(self):
        return _ops().sin(self)

    def cos(self):
        return _ops().cos(self)

    def log1p(self):
        return _ops().log1p(self)

    def expm1(self):
        return _ops().expm1(self)

    def erf(self):
        return _ops().erf(self)

    def prod(self, axis=None, keepdims=False):
        return _ops().prod(self, axis, keepdims)

    def cumsum(self, axis=None):
        return _ops().cumsum(self, axis)

    def std(self, axis=None, ddof=0, keepdims=False):
        return _ops().std(self, axis, ddof, keepdims)

    def norm(self, axis=None, keepdims=False):
        return _ops().norm(self, axis, keepdims)
