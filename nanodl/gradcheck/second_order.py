"""Second derivatives: the first-order check applied to ``g(x, v) = vᵀ ∂f/∂x`` (taken with
``create_graph=True``), over the inputs and the output weights ``v``, as
``torch.autograd.gradgradcheck``; ``g`` is also compared with the plain backward, so a
``vjp`` whose value is off fails too. See docs/higher_order.md, section 6.
"""
import numpy as np

from .. import ops
from ..autograd import enable_grad, no_grad
from ..autograd.higher import grad
from ..tensor import Tensor
from .checks import as_leaves, finish
from .core import Subject, check_subject, checked_output, compare, host64
from .results import GradcheckError, GradcheckRow

TIERS_ROW = "first derivatives: vjp vs backward"


def first_derivatives(fn, call_args, leaves, grad_outputs):
    """``first(create_graph=True)``: ``vᵀ ∂f/∂x`` for every input, flattened into one Tensor."""
    def first(create_graph=True):
        with enable_grad():
            out = checked_output(fn(*call_args))
            grads = (grad(out, leaves, grad_outputs=grad_outputs, create_graph=create_graph,
                          allow_unused=True) if out.requires_grad else (None,) * len(leaves))
        parts = [ops.reshape(g, -1) if g is not None else Tensor(np.zeros(leaf.size, leaf.dtype))
                 for g, leaf in zip(grads, leaves)]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts)
    return first


def weight_leaves(grad_outputs, out, seed):
    """``grad_outputs`` as one float64 leaf (random normal when None), checked like an input."""
    if grad_outputs is None:
        weight = np.random.default_rng(seed + 1).standard_normal(out.shape)
    else:
        if isinstance(grad_outputs, (tuple, list)):
            if len(grad_outputs) != 1:
                raise ValueError(f"gradgradcheck: fn has one output, got {len(grad_outputs)} grad_outputs")
            (grad_outputs,) = grad_outputs
        weight = host64(grad_outputs.data if isinstance(grad_outputs, Tensor) else np.asarray(grad_outputs))
        if weight.shape != out.shape:
            raise ValueError(f"gradgradcheck: grad_outputs has shape {weight.shape}, fn's output "
                             f"has shape {out.shape}")
    return [Tensor(weight, requires_grad=True)]


def second_order_check(fn, call_args, leaves, labels, grad_outputs, eps, atol, rtol, full, seed):
    """``(subject, rows)``: one row per input and output weight, then the tiers' agreement."""
    with no_grad():
        out = checked_output(fn(*call_args))
    weights = weight_leaves(grad_outputs, out, seed)
    first = first_derivatives(fn, call_args, leaves, weights)
    subject = Subject(leaves + weights, first, list(labels) + ["grad_output"])
    rows = check_subject(subject, eps, atol, rtol, full, seed)
    rows.append(_tiers_row(first, atol, rtol))
    return subject, rows


def _tiers_row(first, atol, rtol):
    """The create_graph first derivatives (vjp) against the plain ones (backward)."""
    with_graph, plain = host64(first(True).data), host64(first(False).data)
    row = GradcheckRow(TIERS_ROW, with_graph.shape, method="vjp vs backward")
    row.passed, row.max_abs_err, row.max_rel_err, worst = compare(plain, with_graph, atol, rtol)
    if not row.passed:
        row.numerical, row.analytic = float(plain.reshape(-1)[worst]), float(with_graph.reshape(-1)[worst])
        row.worst_index = (worst,)
    return row


def gradgrad_report(fn, *inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, full=False,
                    seed=0, kink_tol=None):
    """A ``GradcheckReport`` of ``fn``'s second derivatives (rows: inputs, grad_output, tiers)."""
    leaves, labels, call_args = as_leaves(inputs, "gradgradcheck")
    subject, rows = second_order_check(fn, call_args, leaves, labels, grad_outputs, eps, atol, rtol,
                                       full, seed)
    result = finish(subject, [r for r in rows if r.name != TIERS_ROW], eps, atol, rtol, None, kink_tol,
                    "gradgradcheck")
    result.rows.append(rows[-1])
    result.check = "gradgradcheck"
    return result


def gradgradcheck(fn, *inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True,
                  full=False, seed=0, kink_tol=None):
    """True when ``fn``'s second derivatives match central differences of its first ones.

    Checks ``vᵀ ∂fn/∂x`` (``v``: ``grad_outputs``, random when None) with respect to every
    input that requires grad and to ``v``; failures are reported as in ``gradcheck``.

    >>> import numpy as np, nanodl as nd
    >>> from nanodl import gradcheck
    >>> x = nd.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    >>> gradcheck.gradgradcheck(lambda t: (t * t).tanh().sum(axis=0), x)
    True
    """
    result = gradgrad_report(fn, *inputs, grad_outputs=grad_outputs, eps=eps, atol=atol, rtol=rtol,
                             full=full, seed=seed, kink_tol=kink_tol)
    if not result.passed and raise_exception:
        raise GradcheckError(result.message())
    return result.passed
