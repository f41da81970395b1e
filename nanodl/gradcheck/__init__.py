"""Gradient checking: compare every backward with central differences of its forward.

>>> import numpy as np
>>> import nanodl as nd
>>> from nanodl import gradcheck
>>> x = nd.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
>>> gradcheck(lambda t: (t * t).tanh().sum(axis=0), x)
True
>>> gradcheck.report(lambda t: t.exp(), x).passed
True

How a check runs (float64 throughout; float32 inputs are checked on float64 copies,
with a ``GradcheckPrecisionWarning``):

1. **A cheap screen.** One forward at ``x``, one backward with a random unit output
   weight ``v`` gives ``g = Jᵀv`` for every input. For each input a random unit
   direction ``u`` gives the numerical ``vᵀJu = v·(f(x+εu) - f(x-εu)) / 2ε`` from two
   evaluations, to compare with the analytic ``g·u``. A layer of a million weights costs
   the same four evaluations as a scalar. The screen is deliberately strict
   (``|num - ana| <= atol + rtol·|num|`` on one number, and within 10 times the
   difference between the estimates at steps ε and 2ε, a measure of the
   differencing noise): a failure only triggers step 2, which decides. Holding the
   screen to the noise level, not to ``atol``, is what lets one projection see a
   single wrong element among a million (its share of ``vᵀJu`` is ~1/1000 of it).
2. **The elementwise check**, only for an input whose screen failed (or every input
   with ``full=True``): the numerical Jacobian column by column (two evaluations per
   input element), compared with the analytic Jacobian row by row (one backward per
   output element) when it fits (``max_jacobian`` elements), else with ``vᵀJ``. An
   input too large to walk column by column (``max_columns``) is bisected instead:
   the screen's error is additive over elements, so halving the set of perturbed
   elements ~log2(n) times finds the worst one.

An element passes when ``|numerical - analytic| <= atol + rtol·|numerical|`` (as
``numpy.allclose``). The relative error reported is ``|num - ana| / max(|num|, |ana|)``
over elements larger than ``atol`` (a relative error of noise around zero means nothing).

Non-differentiable points (relu at 0, ties of max, clip at its bounds, ...): central
differences straddle the kink and disagree with any one-sided derivative. When a check
fails, the graph is walked and every kinked op whose input lies within ``kink_tol``
(``10·eps``) of its kink is named in the report ("relu at 0 is not differentiable: ...");
``audit`` draws its inputs away from kinks, and ``locate`` skips a node that sits on one
rather than blaming it. Where each op kinks is kept with the ops, in the registry
(``nanodl.ops.registry``); a custom ``Function`` may define ``kink_distance(self, *arrays)``
to join in.

Second derivatives (``gradgradcheck``, ``audit(order=2)``, ``locate(order=2)``): the
first derivatives taken with ``nd.grad(..., create_graph=True)`` go through the same
check, as a function of the inputs and the output weights, and are compared with the
plain first-order walk (an op writes its derivative twice: ``backward`` and ``vjp``).

The parts, by job: ``results`` (rows, report table, errors), ``core`` (the numerical
check), ``checks`` (``gradcheck``, ``report``, ``check_model``), ``kinks``,
``second_order`` (``gradgradcheck``), ``locator`` (``locate``) and ``op_audit``
(``audit``). The module itself is callable:
``from nanodl import gradcheck; gradcheck(fn, x)`` is ``gradcheck.gradcheck(fn, x)``.
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
           "GradcheckError",
           "GradcheckReport", "GradcheckRow", "GradcheckPrecisionWarning", "LocatedOp"]


class _CallableModule(types.ModuleType):
    """The class of this module: calling it runs ``checks.gradcheck`` (SPEC §10)."""

    def __call__(self, fn, *inputs, **options):
        return checks.gradcheck(fn, *inputs, **options)

    __call__.__doc__ = checks.gradcheck.__doc__


sys.modules[__name__].__class__ = _CallableModule
# One object for both spellings: ``from nanodl import gradcheck`` and
# ``from nanodl.gradcheck import gradcheck`` give this callable module, so
# ``gradcheck(fn, x)`` and ``gradcheck.report(fn, x)`` work whichever was imported.
gradcheck = sys.modules[__name__]
