"""``gradcheck`` and ``report`` for any function of Tensors, ``check_model`` for a model."""
import warnings

import numpy as np

from ..autograd import no_grad
from ..backend import device_of
from ..ops.registry import BY_NAME
from ..tensor import Tensor
from .core import Subject, check_subject, host64
from .kinks import kink_notes
from .results import GradcheckError, GradcheckPrecisionWarning, GradcheckReport


def as_leaves(inputs, who):
    """float64 leaf copies of the Tensor (or float ndarray) inputs; others pass through."""
    leaves, labels, call_args = [], [], []
    for index, value in enumerate(inputs):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value = Tensor(value, requires_grad=True)
        if isinstance(value, Tensor) and value.requires_grad and value.dtype.kind == "f":
            if value.dtype != np.float64:
                warnings.warn(f"{who}: input {index} is {value.dtype}; checking it on a float64 copy "
                              "(central differences need float64)", GradcheckPrecisionWarning,
                              stacklevel=3)
            leaf = Tensor(value.data.astype(np.float64), requires_grad=True)
            leaf.name = value.name
            leaves.append(leaf)
            labels.append(f"input {index}" + (f" '{value.name}'" if value.name else ""))
            value = leaf
        call_args.append(value)
    if not leaves:
        raise ValueError(f"{who}: no input requires grad; nothing to check")
    return leaves, labels, call_args


def finish(subject, rows, eps, atol, rtol, spec, kink_tol, title):
    kink_tol = 10 * eps if kink_tol is None else kink_tol
    if any(not row.passed for row in rows):
        x0 = [host64(leaf.data) for leaf in subject.leaves]
        notes = kink_notes(subject.graph(x0), kink_tol)
        if spec is not None and spec.kink_distance is not None:
            distance = spec.kink_distance(*x0)
            if distance <= kink_tol:
                notes.insert(0, f"non-differentiable point: {spec.name}'s inputs lie within "
                                f"{distance:.3g} of a kink")
        for row in rows:
            if not row.passed and notes:
                row.note = "; ".join(notes)
    return GradcheckReport(rows, title=title, atol=atol, rtol=rtol)


def report(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, full=False, seed=0, spec=None,
           kink_tol=None):
    """A ``GradcheckReport`` for ``fn`` at ``inputs``: one row per input that requires grad.

    ``full=True`` skips the screen and checks every Jacobian element; ``spec`` (an
    ``OpSpec`` or a registry name) lets the report say when the inputs sit on that op's
    kink; ``kink_tol`` (default ``10*eps``) is how close counts as "on" a kink.
    """
    leaves, labels, call_args = as_leaves(inputs, "gradcheck")
    subject = Subject(leaves, lambda: fn(*call_args), labels)
    rows = check_subject(subject, eps, atol, rtol, full, seed)
    if isinstance(spec, str):
        if spec not in BY_NAME:
            raise ValueError(f"gradcheck: unknown op {spec!r}; valid names: {', '.join(BY_NAME)}")
        spec = BY_NAME[spec]
    return finish(subject, rows, eps, atol, rtol, spec, kink_tol, "gradcheck")


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, full=False, seed=0,
              spec=None, kink_tol=None):
    """True when ``fn``'s analytic gradients match central differences for every input.

    ``fn`` maps Tensors to a Tensor; every input that requires grad is checked. A mismatch
    raises ``GradcheckError`` naming the input, the worst element and the errors (or returns
    False with ``raise_exception=False``). ``full``, ``spec``, ``kink_tol``: see ``report``.
    """
    result = report(fn, *inputs, eps=eps, atol=atol, rtol=rtol, full=full, seed=seed, spec=spec,
                    kink_tol=kink_tol)
    if not result.passed and raise_exception:
        raise GradcheckError(result.message())
    return result.passed


def check_model(model, loss_fn, x, y, eps=1e-6, atol=1e-5, rtol=1e-3, full=False, seed=0,
                train=False):
    """A ``GradcheckReport`` of ``loss_fn(model(x), y)``'s gradient, one row per named parameter.

    Checked on float64 copies; data and ``.grad`` are restored after. The model runs in
    eval mode unless ``train=True`` (then its state, e.g. BatchNorm's statistics, is restored).
    """
    def as64(a):
        a = a if isinstance(a, Tensor) else Tensor(np.asarray(a))
        return Tensor(a.data.astype(np.float64)) if a.dtype.kind == "f" else a
    x, y = as64(x), as64(y)
    was_training = getattr(model, "training", False)
    switch = getattr(model, "train", lambda mode: None)
    switch(False)
    with no_grad():
        model(x)  # builds lazily-shaped layers (in eval mode: no statistics move)
    switch(train)
    state = model.state_dict() if train and hasattr(model, "state_dict") else None
    named = list(model.named_parameters())
    saved = [(p.data, p.grad) for _, p in named]
    if any(p.dtype != np.float64 for _, p in named):
        warnings.warn("check_model: parameters are checked on float64 copies (central differences "
                      "need float64)", GradcheckPrecisionWarning, stacklevel=2)
    try:
        for _, p in named:
            p.data = host64(p.data) if device_of(p.data) == "cpu" else p.data.astype("float64")
        leaves = [p for _, p in named]
        subject = Subject(leaves, lambda: loss_fn(model(x), y), [name for name, _ in named])
        rows = check_subject(subject, eps, atol, rtol, full, seed)
        result = finish(subject, rows, eps, atol, rtol, None, None, "check_model")
    finally:
        for (_, p), (data, grad) in zip(named, saved):
            p.data, p.grad = data, grad
        if state is not None:
            model.load_state_dict(state)
        switch(was_training)
    result.columns = (("parameter", "name"),) + result.columns[1:]
    return result
