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
``GradcheckPrecisionWarning``), in two steps:

1. **A cheap screen.** One backward with a random unit output weight ``v`` gives
   ``g = Jᵀv``; per input, a random unit direction ``u`` gives the numerical
   ``vᵀJu = v·(f(x+εu) - f(x-εu)) / 2ε`` to compare with ``g·u``: four evaluations
   however many elements. It passes only within ``atol + rtol·|num|`` and within 10
   times the differencing noise (the gap between the estimates at ε and 2ε), strict
   enough to see one wrong element among a million; a failure only triggers step 2.
2. **The elementwise check**, which decides (every input with ``full=True``): the
   numerical Jacobian column by column against the analytic one row by row where it
   fits (``core.MAX_JACOBIAN``), else against ``vᵀJ``. An input too large to walk
   (``max_columns``) is bisected: the screen's error is additive over elements, so
   halving the perturbed set ~log2(n) times finds the worst one.

An element passes when ``|numerical - analytic| <= atol + rtol·|numerical|`` (as
``numpy.allclose``); the relative error reported is ``|num - ana| / max(|num|, |ana|)``
over elements larger than ``atol`` (relative noise around zero means nothing).

At a kink (relu at 0, a tie of max, clip at a bound, ...) central differences disagree
with any one-sided derivative: a failed check names every kinked op of the graph whose
input lies within ``kink_tol`` (``10·eps``) of its kink ("relu at 0 is not
differentiable: ..."); ``audit`` draws inputs away from kinks and ``locate`` skips a
node on one. Where each op kinks is kept in ``nanodl.ops.registry``; a custom
``Function`` may define ``kink_distance(self, *arrays)`` to join in.

Second derivatives: ``gradgradcheck``, ``audit(order=2)``, ``locate(order=2)`` (see
``second_order``). The module itself is callable: ``gradcheck(fn, x)`` is
``gradcheck.gradcheck(fn, x)``, whichever way it was imported.
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
    """The class of this module: calling it runs ``checks.gradcheck`` (SPEC §10)."""

    def __call__(self, fn, *inputs, **options):
        return checks.gradcheck(fn, *inputs, **options)

    __call__.__doc__ = checks.gradcheck.__doc__


sys.modules[__name__].__class__ = _CallableModule
gradcheck = sys.modules[__name__]  # ``from nanodl.gradcheck import gradcheck`` gets the module too
