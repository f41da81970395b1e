"""Gradient checking: compare every backward with central differences of its forward.

>>> import numpy as np
>>> import nanodl as nd
>>> from nanodl import gradcheck
>>> x = nd.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
>>> gradcheck(lambda t: (t * t).tanh().sum(axis=0), x)
True
>>> gradcheck.report(lambda t: t.exp(), x).passed
True

A check runs in float64 (float32 inputs are checked on float64 copies, with a
``GradcheckPrecisionWarning``), in two steps:

1. **A cheap screen.** One backward with a random unit output weight ``v`` gives
   ``g = Jᵀv`` for every input; a random unit direction ``u`` per input gives the
   numerical ``vᵀJu = v·(f(x+εu) - f(x-εu)) / 2ε`` to compare with ``g·u``: four
   evaluations for a million weights as for a scalar. The screen is deliberately strict
   (within ``atol + rtol·|num|`` and within 10 times the differencing noise, the gap
   between the estimates at steps ε and 2ε), which lets one projection see a single
   wrong element among a million; a failure only triggers step 2, which decides.
2. **The elementwise check**, for an input whose screen failed (every input with
   ``full=True``): the numerical Jacobian column by column, against the analytic one
   row by row when it fits (``core.MAX_JACOBIAN`` elements), else against ``vᵀJ``. An
   input too large to walk (``max_columns``) is bisected instead: the screen's error is
   additive over elements, so halving the perturbed set ~log2(n) times finds the worst.

An element passes when ``|numerical - analytic| <= atol + rtol·|numerical|`` (as
``numpy.allclose``). The relative error reported is ``|num - ana| / max(|num|, |ana|)``
over elements larger than ``atol`` (a relative error of noise around zero means nothing).

At a non-differentiable point (relu at 0, a tie of max, clip at a bound, ...) central
differences disagree with any one-sided derivative: when a check fails, every kinked op
of the graph whose input lies within ``kink_tol`` (``10·eps``) of its kink is named in
the report ("relu at 0 is not differentiable: ..."); ``audit`` draws its inputs away from
kinks, and ``locate`` skips a node sitting on one. Where each op kinks is kept in the
registry (``nanodl.ops.registry``); a custom ``Function`` may define
``kink_distance(self, *arrays)`` to join in.

Second derivatives: ``gradgradcheck``, ``audit(order=2)``, ``locate(order=2)`` (see
``second_order``). The module itself is callable: ``gradcheck(fn, x)`` is
``gradcheck.gradcheck(fn, x)``, whichever way it was imported.
"""
import sys
import types

from . import checks
from .checks import check_model, report
from .kinks import kink_note
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
