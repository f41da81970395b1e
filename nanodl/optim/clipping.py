"""Gradient clipping between ``backward()`` and ``step()``, as ``torch.nn.utils.clip_grad_norm_``."""
import math

from ..backend import array_module
from .optimizers import _is_parameter


def clip_grad_norm(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their total norm is at most ``max_norm``.

    Returns the total norm before clipping. Each gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))`` into a new array; ``norm_type`` is 2 or ``inf``.

    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> w = SimpleNamespace(data=np.zeros(2), grad=np.array([3.0, 4.0]))
    >>> clip_grad_norm([w], max_norm=1.0)
    5.0
    >>> np.round(w.grad, 6)
    array([0.6, 0.8])
    """
    if _is_parameter(params):
        params = [params]
    with_grad = [p for p in params if p.grad is not None]
    try:
        max_norm, norm_type = float(max_norm), float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"clip_grad_norm: max_norm and norm_type must be numbers, got {max_norm!r} "
                        f"and {norm_type!r}") from None
    if not max_norm >= 0.0:
        raise ValueError(f"clip_grad_norm: max_norm must be >= 0, got {max_norm!r}")
    if not with_grad:
        return 0.0
    if norm_type == math.inf:
        total = max(float(array_module(p.grad).abs(p.grad).max()) if p.grad.size else 0.0
                    for p in with_grad)
    elif norm_type == 2.0:
        total = math.sqrt(sum(float(array_module(p.grad).vdot(p.grad, p.grad)) for p in with_grad))
    else:
        raise ValueError(f"clip_grad_norm: norm_type must be 2 or inf, got {norm_type!r}")
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm: the total norm of the gradients is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for p in with_grad:
            p.grad = p.grad * coef
    return total
