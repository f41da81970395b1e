"""Gradient checking: compare every backward with central differences of its forward.

>>> import numpy as np
>>> import nanodl as nd
>>> from nanodl import gradcheck
>>> x = nd.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
>>> gradcheck(lambda t: (t * t).tanh().sum(axis=0), x)
True
>>> gradcheck.report(lambda t: t.exp(), x).passed
True

Checks run in float64 (float32 inputs on float64 copies, with a
``GradcheckPrecisionWarning``). A cheap screen first: per input, one random projection
``vᵀJu`` by central differences against the backward's, held to the tolerance and to
10 times its own differencing noise. Only a failure (or ``full=True``) runs the
elementwise check, which decides: the whole Jacobian where it fits, else ``vᵀJ``; an
input too large to walk is bisected to its worst element. An element passes when
``|numerical - analytic| <= atol + rtol·|numerical|`` (as ``numpy.allclose``). A
failure names every op whose input lies within ``kink_tol`` (``10·eps``) of a kink.

Second derivatives: ``gradgradcheck``, ``audit(order=2)``, ``locate(order=2)``. The
module itself is callable: ``gradcheck(fn, x)`` is ``gradcheck.gradcheck(fn, x)``.
"""
import sys
import types

from . import checks
from .checks import check_model, report
from .locator import LocatedOp, locate
from .op_audit import audit
from .second_order import gradgrad_report, gradgradcheck
from .results import GradcheckError, GradcheckPrecisionWarning, GradcheckReport, GradcheckRow

__all__ = ["gradcheck", "report", "check_model", "audit", "locate", "gradgradcheck", "gradgrad_report",
           "GradcheckError", "GradcheckReport", "GradcheckRow", "GradcheckPrecisionWarning", "LocatedOp"]


class _CallableModule(types.ModuleType):
    """The class of this module: calling it runs ``checks.gradcheck``."""

    def __call__(self, fn, *inputs, **options):
        return checks.gradcheck(fn, *inputs, **options)

    __call__.__doc__ = checks.gradcheck.__doc__


sys.modules[__name__].__class__ = _CallableModule
gradcheck = sys.modules[__name__]  # ``from nanodl.gradcheck import gradcheck`` gets the module too
