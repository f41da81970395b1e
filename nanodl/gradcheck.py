"""Gradient checking: compare every backward with central differences of its forward.

>>> import nanodl as nd
>>> from nanodl.gradcheck import gradcheck
>>> x = nd.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
>>> gradcheck(lambda t: (t * t).tanh().sum(axis=0), x)
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
rather than blaming it. A custom ``Function`` may define ``kink_distance(self, *arrays)``
to join in.
"""
import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from . import autograd
from .autograd import Function, enable_grad, no_grad
from .backend import device_of, to_device
from .tensor import Tensor

__all__ = ["gradcheck", "report", "check_model", "audit", "locate", "main", "GradcheckError",
           "GradcheckReport", "GradcheckRow", "GradcheckPrecisionWarning", "LocatedOp"]

MAX_COLUMNS = 4096        # inputs larger than this are bisected, not walked column by column
MAX_JACOBIAN = 2_000_000  # analytic Jacobians larger than this are compared through vᵀJ
MAX_ROWS = 1024           # ... and so are outputs with more elements than this
FLOAT32_TOL = 1e-4        # audit(dtype='float32'): allowed error relative to the result's scale


class GradcheckError(AssertionError):
    """A backward disagrees with central differences of its forward."""


class GradcheckPrecisionWarning(UserWarning):
    """Float32 inputs were checked on float64 copies (central differences need float64)."""


# ------------------------------------------------------------------ results
@dataclass
class GradcheckRow:
    """One checked input (or parameter, or op in an audit)."""
    name: str
    shape: Any
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    passed: bool = True
    method: str = "projection"   # 'projection' (screen), 'jacobian', 'vJ' or 'bisection'
    worst_index: Any = None      # (output index, input index) for 'jacobian', else input index
    numerical: Optional[float] = None
    analytic: Optional[float] = None
    note: str = ""               # non-differentiable point, error, ...
    extra: dict = field(default_factory=dict)

    @property
    def status(self):
        if self.passed:
            return "ok"
        if "non-differentiable" in self.note:
            return "non-diff"
        return "ERROR" if self.note.startswith("error") else "FAIL"

    def describe(self, atol=None, rtol=None):
        """A few lines saying what went wrong (empty when the row passed)."""
        if self.passed:
            return ""
        lines = [f"gradcheck failed for {self.name} (shape {self.shape}):"]
        if self.numerical is not None:
            where = _format_worst(self.method, self.worst_index)
            lines.append(f"  worst element {where}: numerical {self.numerical:.8g}, "
                         f"analytic {self.analytic:.8g}")
            tolerance = f" (atol {atol:g}, rtol {rtol:g})" if atol is not None else ""
            lines.append(f"  max abs error {self.max_abs_err:.3g}, max rel error "
                         f"{self.max_rel_err:.3g}{tolerance}")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def _format_worst(method, index):
    if method == "jacobian":
        return f"d out{list(index[0])} / d in{list(index[1])}"
    if method in ("vJ", "bisection"):
        return f"in{list(index)} of vᵀJ (v: a random output weighting)"
    return "(a random projection vᵀJu)"


_INPUT_COLUMNS = (("input", "name"), ("shape", "shape"), ("max abs err", "max_abs_err"),
                  ("max rel err", "max_rel_err"), ("check", "method"), ("passed", "status"))


class GradcheckReport:
    """Rows of a check, printing as a table; ``passed`` is True when every row passed."""

    def __init__(self, rows, columns=_INPUT_COLUMNS, title="gradcheck", atol=None, rtol=None,
                 footer=""):
        self.rows = list(rows)
        self.columns = tuple(columns)
        self.title = title
        self.atol, self.rtol = atol, rtol
        self.footer = footer

    passed = property(lambda self: all(row.passed for row in self.rows))
    failures = property(lambda self: [row for row in self.rows if not row.passed])

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    @property
    def headers(self):
        return [header for header, _ in self.columns]

    def table_rows(self):
        """The table's cells as strings, one list per row."""
        return [[_cell(getattr(row, attr) if isinstance(attr, str) else attr(row))
                 for _, attr in self.columns] for row in self.rows]

    def table(self):
        cells = self.table_rows()
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self.headers)]
        line = lambda parts: "  ".join(p.ljust(w) for p, w in zip(parts, widths)).rstrip()
        out = [line(self.headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
        return "\n".join(out + ([self.footer] if self.footer else []))

    def message(self):
        """The failure text: what went wrong per failing row, then the table."""
        details = [row.describe(self.atol, self.rtol) for row in self.failures]
        return "\n".join(details + ["", self.table()])

    def __str__(self):
        return self.table()

    __repr__ = __str__


def _cell(value):
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2e}" if np.isfinite(value) else str(value)
    if isinstance(value, tuple):
        return str(value)
    return "" if value is None else str(value)


# ------------------------------------------------------------------ the subject of a check
def _host64(array):
    """A host NumPy float64 copy of a backend array."""
    host = array if isinstance(array, (np.ndarray, np.generic)) else array.get()
    return np.array(host, dtype=np.float64)


def _unit(vector):
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class _Subject:
    """``run()`` (a Tensor computed from ``leaves``) seen as float64 arrays in, array out."""

    def __init__(self, leaves, run, labels):
        self.leaves, self.run, self.labels = leaves, run, labels
        self.devices = [device_of(leaf.data) for leaf in leaves]

    def load(self, arrays):
        for leaf, array, device in zip(self.leaves, arrays, self.devices):
            leaf.data = array if device == "cpu" else to_device(array, device)

    def value(self, arrays):
        self.load(arrays)
        with no_grad():
            out = _checked_output(self.run())
        return _host64(out.data)

    def vjps(self, arrays, weights):
        """``[Jᵀw for each leaf]`` for every ``w`` in ``weights`` (one graph, retained)."""
        self.load(arrays)
        for leaf in self.leaves:
            leaf.grad = None
        with enable_grad():
            out = _checked_output(self.run())
        weights = list(weights)
        results = []
        for k, weight in enumerate(weights):
            if out.requires_grad:
                for leaf in self.leaves:
                    leaf.grad = None
                out.backward(weight, retain_graph=k < len(weights) - 1)
            results.append([_host64(leaf.grad) if leaf.grad is not None else np.zeros(leaf.shape)
                            for leaf in self.leaves])
        return results

    def graph(self, arrays):
        """The nodes of the graph at ``arrays``, output first (for the kink walk)."""
        self.load(arrays)
        with enable_grad():
            out = self.run()
        return [] if out.grad_fn is None else autograd.topological_order(out.grad_fn)


def _checked_output(out):
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype.kind != "f":
        raise TypeError(f"gradcheck: fn must return a float Tensor, got {out.dtype}")
    return out


def _directional(subject, x0, index, direction, weight, eps):
    """v·(f(x+εu) - f(x-εu)) / 2ε, with u = ``direction`` on input ``index`` only."""
    up = [a if i != index else a + eps * direction for i, a in enumerate(x0)]
    down = [a if i != index else a - eps * direction for i, a in enumerate(x0)]
    return float(np.sum(weight * (subject.value(up) - subject.value(down))) / (2 * eps))


def _compare(numerical, analytic, atol, rtol):
    """(passed, max abs err, max rel err, flat index of the worst element).

    The worst element is the failing one with the largest absolute error.
    """
    diff = np.abs(numerical - analytic)
    if diff.size == 0:
        return True, 0.0, 0.0, 0
    scale = np.maximum(np.abs(numerical), np.abs(analytic))
    rel = np.where(scale > atol, diff / np.where(scale > 0, scale, 1), 0.0)
    within = diff <= atol + rtol * np.abs(numerical)  # False for NaN too
    ranked = np.where(np.isnan(diff), np.inf, diff)
    worst = int(np.argmax(np.where(within, -1.0, ranked))) if not within.all() else int(np.argmax(ranked))
    return bool(within.all()), float(np.max(ranked)), float(np.nanmax(rel)), worst


def _check_subject(subject, eps, atol, rtol, full, seed, max_columns=MAX_COLUMNS):
    rng = np.random.default_rng(seed)
    x0 = [_host64(leaf.data) for leaf in subject.leaves]
    out0 = subject.value(x0)
    v = _unit(rng.standard_normal(out0.shape))
    (vjp,) = subject.vjps(x0, [v])
    rows = []
    for i, (x, label) in enumerate(zip(x0, subject.labels)):
        row = GradcheckRow(label, tuple(x.shape))
        rows.append(row)
        if x.size == 0 or out0.size == 0:
            continue
        u = _unit(rng.standard_normal(x.shape))
        numerical = _directional(subject, x0, i, u, v, eps)
        analytic = float(np.sum(vjp[i] * u))
        row.passed, row.max_abs_err, row.max_rel_err, _ = _compare(
            np.array(numerical), np.array(analytic), atol, rtol)
        row.numerical, row.analytic = numerical, analytic
        if row.passed and not full:  # also hold the screen to its own noise level (module docstring)
            noise = abs(numerical - _directional(subject, x0, i, u, v, 2 * eps))
            row.passed = row.max_abs_err <= 10 * noise + 1e-9 * (1 + abs(numerical))
        if full or not row.passed:
            _elementwise(subject, x0, out0, i, v, vjp[i], eps, atol, rtol, row,
                         max_columns=None if full else max_columns)
    return rows


def _elementwise(subject, x0, out0, i, v, vjp_i, eps, atol, rtol, row, max_columns):
    """The exact check of input ``i``: fills ``row`` with the worst element."""
    x = x0[i]
    n, m = x.size, out0.size
    if max_columns is not None and n > max_columns:
        j = _bisect(subject, x0, i, v, vjp_i, eps)
        up, down = x.copy().reshape(-1), x.copy().reshape(-1)
        up[j] += eps
        down[j] -= eps
        column = (subject.value(_replace(x0, i, up.reshape(x.shape))) -
                  subject.value(_replace(x0, i, down.reshape(x.shape)))) / (2 * eps)
        numerical, analytic = np.array([np.sum(v * column)]), vjp_i.reshape(-1)[j:j + 1]
        row.passed, row.max_abs_err, row.max_rel_err, _ = _compare(numerical, analytic, atol, rtol)
        row.method, row.worst_index = "bisection", _plain_index(np.unravel_index(j, x.shape))
        row.numerical, row.analytic = float(numerical[0]), float(analytic[0])
        return
    columns = np.empty((m, n))
    flat = x.reshape(-1)
    for j in range(n):
        saved = flat[j]
        flat[j] = saved + eps
        up = subject.value(x0)
        flat[j] = saved - eps
        down = subject.value(x0)
        flat[j] = saved
        columns[:, j] = ((up - down) / (2 * eps)).reshape(-1)
    if m <= MAX_ROWS and m * n <= MAX_JACOBIAN:
        weights = (_one_hot(k, out0.shape) for k in range(m))
        analytic = np.stack([grads[i].reshape(-1) for grads in subject.vjps(x0, weights)])
        passed, abs_err, rel_err, worst = _compare(columns, analytic, atol, rtol)
        k, j = np.unravel_index(worst, (m, n))
        row.method = "jacobian"
        row.worst_index = (np.unravel_index(k, out0.shape), np.unravel_index(j, x.shape))
        row.numerical, row.analytic = float(columns[k, j]), float(analytic[k, j])
    else:
        numerical, analytic = v.reshape(-1) @ columns, vjp_i.reshape(-1)
        passed, abs_err, rel_err, worst = _compare(numerical, analytic, atol, rtol)
        row.method, row.worst_index = "vJ", np.unravel_index(worst, x.shape)
        row.numerical, row.analytic = float(numerical[worst]), float(analytic[worst])
    row.worst_index = _plain_index(row.worst_index)
    row.passed, row.max_abs_err, row.max_rel_err = passed, abs_err, rel_err


def _one_hot(k, shape):
    weight = np.zeros(shape)
    weight.reshape(-1)[k] = 1.0
    return weight


def _plain_index(index):
    if isinstance(index, tuple) and index and isinstance(index[0], tuple):
        return tuple(_plain_index(part) for part in index)
    return tuple(int(k) for k in index)


def _replace(arrays, i, array):
    return [array if k == i else a for k, a in enumerate(arrays)]


def _bisect(subject, x0, i, v, vjp_i, eps):
    """The flat index of input ``i``'s element with the largest error in vᵀJ.

    The screen's error with every element of a set S perturbed (u = 1 on S) is the sum
    of the per-element errors, so halving S and following the larger half finds the
    worst element in ~log2(n) pairs of evaluations.
    """
    x = x0[i]
    candidates = np.arange(x.size)
    analytic = vjp_i.reshape(-1)

    def error(indices):
        direction = np.zeros(x.size)
        direction[indices] = 1.0
        return _directional(subject, x0, i, direction.reshape(x.shape), v, eps) - analytic[indices].sum()

    total = error(candidates)
    while candidates.size > 1:
        half = candidates[: candidates.size // 2]
        first = error(half)
        second = total - first
        if abs(first) >= abs(second):
            candidates, total = half, first
        else:
            candidates, total = candidates[candidates.size // 2:], second
    return int(candidates[0])


# ------------------------------------------------------------------ non-differentiable points
def _extreme_gap(a, axes, largest):
    """Smallest gap between the two largest (or smallest) values over ``axes``."""
    if a.size < 2:
        return np.inf
    axes = tuple(range(a.ndim)) if axes is None else tuple(axes)
    kept = [k for k in range(a.ndim) if k not in axes]
    moved = np.transpose(a, kept + list(axes)).reshape(-1, int(np.prod([a.shape[k] for k in axes])))
    if moved.shape[1] < 2:
        return np.inf
    ordered = np.sort(moved, axis=1)
    gaps = ordered[:, -1] - ordered[:, -2] if largest else ordered[:, 1] - ordered[:, 0]
    return float(gaps.min())


def _min_abs(a, at=0.0):
    return float(np.abs(a - at).min()) if a.size else np.inf


def _clip_gap(node, a):
    bounds = [b for b in (node.__dict__.get("lo"), node.__dict__.get("hi")) if b is not None]
    return min([_min_abs(a, b) for b in bounds] or [np.inf])


def _linear_gap(node, xs):
    activation = node.__dict__.get("activation", "linear")
    if activation not in ("relu", "leaky_relu") and not (activation == "elu" and node.__dict__.get("alpha") != 1):
        return np.inf
    x, kernel = xs[0], xs[1]
    z = x.reshape(-1, x.shape[-1]) @ kernel + (xs[2] if len(xs) > 2 else 0)
    return _min_abs(z)


# op class name -> (what is not differentiable, where, distance of the inputs to it)
KINKS = {
    "ReLU": ("relu at 0", "0", lambda node, xs: _min_abs(xs[0])),
    "LeakyReLU": ("leaky_relu at 0", "0", lambda node, xs: _min_abs(xs[0])),
    "ELU": ("elu at 0 (alpha != 1)", "0",
            lambda node, xs: _min_abs(xs[0]) if node.__dict__.get("alpha", 1.0) != 1 else np.inf),
    "Abs": ("abs at 0", "0", lambda node, xs: _min_abs(xs[0])),
    "Clip": ("clip at its bounds", "a bound", lambda node, xs: _clip_gap(node, xs[0])),
    "Maximum": ("maximum at a tie", "each other", lambda node, xs: _min_abs(xs[0] - xs[1])),
    "Minimum": ("minimum at a tie", "each other", lambda node, xs: _min_abs(xs[0] - xs[1])),
    "Max": ("max at a tie", "a tie", lambda node, xs: _extreme_gap(xs[0], node.__dict__.get("axes"), True)),
    "Min": ("min at a tie", "a tie", lambda node, xs: _extreme_gap(xs[0], node.__dict__.get("axes"), False)),
    "Linear": ("linear's activation at 0", "0 (pre-activation)", _linear_gap),
    "Sqrt": ("sqrt at 0 (infinite slope)", "0", lambda node, xs: _min_abs(xs[0])),
    "Log": ("log at 0 (infinite slope)", "0", lambda node, xs: _min_abs(xs[0])),
}


def kink_note(node, kink_tol):
    """'relu at 0 is not differentiable: ...' when ``node``'s inputs sit on a kink, else ''."""
    xs = [_host64(t.data) for t in node.inputs]
    custom = getattr(node, "kink_distance", None)
    if callable(custom):
        what, point, distance = f"{node.name} at its kink", "it", float(custom(*xs))
    elif node.name in KINKS:
        what, point, rule = KINKS[node.name]
        try:
            distance = rule(node, xs)
        except Exception:  # an op used in a way the rule does not know: say nothing
            return ""
    else:
        return ""
    if distance > kink_tol:
        return ""
    return (f"non-differentiable point: {what} is not differentiable: {node.name}'s input has "
            f"values within {kink_tol:g} of {point} (closest: {distance:.3g})")


def _kink_notes(subject, x0, kink_tol):
    try:
        nodes = subject.graph(x0)
    except Exception:
        return []
    notes = []
    for node in reversed(nodes):  # forward order
        note = kink_note(node, kink_tol)
        if note and note not in notes:
            notes.append(note)
    return notes


# ------------------------------------------------------------------ public checks
def _as_leaves(inputs, who):
    """float64 leaf copies of the Tensor (or float ndarray) inputs; others pass through."""
    leaves, labels, call_args = [], [], []
    for index, value in enumerate(inputs):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value = Tensor(value, requires_grad=True)
        if not isinstance(value, Tensor):
            call_args.append(value)
            continue
        if value.requires_grad and value.dtype.kind == "f":
            if value.dtype != np.float64:
                warnings.warn(f"{who}: input {index} is {value.dtype}; checking it on a float64 copy "
                              "(central differences need float64)", GradcheckPrecisionWarning,
                              stacklevel=3)
            leaf = Tensor(value.data.astype(np.float64), requires_grad=True)
            leaf.name = value.name
            leaves.append(leaf)
            labels.append(f"input {index}" + (f" '{value.name}'" if value.name else ""))
            call_args.append(leaf)
        else:
            call_args.append(value)
    if not leaves:
        raise ValueError(f"{who}: no input requires grad; nothing to check")
    return leaves, labels, call_args


def _finish(subject, rows, eps, atol, rtol, spec, kink_tol, title):
    kink_tol = 10 * eps if kink_tol is None else kink_tol
    if any(not row.passed for row in rows):
        x0 = [_host64(leaf.data) for leaf in subject.leaves]
        notes = _kink_notes(subject, x0, kink_tol)
        if spec is not None and spec.kink_distance is not None:
            distance = spec.kink_distance(*x0)
            if distance <= kink_tol:
                notes.insert(0, f"non-differentiable point: {spec.name}'s inputs lie within "
                                f"{distance:.3g} of a kink")
        for row in rows:
            if not row.passed and notes:
                row.note = "; ".join(notes)
    return GradcheckReport(rows, title=title, atol=atol, rtol=rtol)


def _resolve_spec(spec):
    if isinstance(spec, str):
        from .ops.registry import BY_NAME
        if spec not in BY_NAME:
            raise ValueError(f"gradcheck: unknown op {spec!r}; valid names: {', '.join(BY_NAME)}")
        return BY_NAME[spec]
    return spec


def report(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, full=False, seed=0, spec=None,
           kink_tol=None):
    """A ``GradcheckReport`` for ``fn`` at ``inputs``: one row per input that requires grad.

    ``full=True`` skips the screen and checks every Jacobian element; ``spec`` (an
    ``OpSpec`` or a registry name) lets the report say when the inputs sit on that op's
    kink; ``kink_tol`` (default ``10*eps``) is how close counts as "on" a kink.
    """
    leaves, labels, call_args = _as_leaves(inputs, "gradcheck")
    subject = _Subject(leaves, lambda: fn(*call_args), labels)
    rows = _check_subject(subject, eps, atol, rtol, full, seed)
    return _finish(subject, rows, eps, atol, rtol, _resolve_spec(spec), kink_tol, "gradcheck")


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, full=False, seed=0,
              spec=None, kink_tol=None):
    """True when ``fn``'s analytic gradients match central differences for every input.

    ``fn`` maps Tensors to a Tensor; every input that requires grad is checked. On a
    mismatch raises ``GradcheckError`` (or returns False with ``raise_exception=False``)
    naming the input, the worst element, the numerical and analytic values and the max
    absolute and relative errors. See ``report`` for ``full``, ``spec`` and ``kink_tol``.
    """
    result = report(fn, *inputs, eps=eps, atol=atol, rtol=rtol, full=full, seed=seed, spec=spec,
                    kink_tol=kink_tol)
    if not result.passed and raise_exception:
        raise GradcheckError(result.message())
    return result.passed


def check_model(model, loss_fn, x, y, eps=1e-6, atol=1e-5, rtol=1e-3, full=False, seed=0,
                train=False):
    """Check ``loss_fn(model(x), y)``'s gradient w.r.t. every named parameter.

    Returns a ``GradcheckReport`` with one row per parameter (named as in
    ``model.named_parameters()``). The parameters are checked on float64 copies and
    restored afterwards (data and ``.grad``). The model runs in eval mode unless
    ``train=True`` (then its state, e.g. BatchNorm's running statistics, is restored).
    """
    as_tensor = lambda a: a if isinstance(a, Tensor) else Tensor(np.asarray(a))
    x, y = as_tensor(x), as_tensor(y)
    if x.dtype.kind == "f":
        x = Tensor(x.data.astype(np.float64))
    if y.dtype.kind == "f":
        y = Tensor(y.data.astype(np.float64))
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
            p.data = _host64(p.data) if device_of(p.data) == "cpu" else p.data.astype("float64")
        leaves = [p for _, p in named]
        subject = _Subject(leaves, lambda: loss_fn(model(x), y), [name for name, _ in named])
        rows = _check_subject(subject, eps, atol, rtol, full, seed)
        result = _finish(subject, rows, eps, atol, rtol, None, None, "check_model")
    finally:
        for (_, p), (data, grad) in zip(named, saved):
            p.data, p.grad = data, grad
        if state is not None:
            model.load_state_dict(state)
        switch(was_training)
    result.columns = (("parameter", "name"),) + result.columns[1:]
    return result


# ------------------------------------------------------------------ locate
@dataclass
class LocatedOp:
    """The first node (in forward order) whose backward disagrees with its forward."""
    name: str
    node: Function
    position: int          # 0-based, in forward order among the graph's nodes
    total: int             # nodes in the graph
    report: GradcheckReport
    skipped: list = field(default_factory=list)  # notes on nodes that could not be checked

    def __str__(self):
        return (f"{self.name} (op {self.position + 1} of {self.total} in forward order): its backward "
                f"disagrees with central differences of its forward\n{self.report.message()}")


class _Recorder:
    """A forward hook that keeps each node's raw arguments and creation order."""

    def __init__(self):
        self.count = 0

    def __call__(self, node, args, kwargs, out):
        node.__dict__.update(_gc_args=args, _gc_kwargs=kwargs, _gc_order=self.count)
        self.count += 1


def locate(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, kink_tol=None):
    """The first op (in forward order) whose backward is wrong, or None.

    Runs ``fn`` once, recording every node's arguments, then checks each node on its
    own: its class's ``apply`` is re-run on float64 copies of the inputs it saw (same
    non-tensor arguments) and gradient-checked. Returns a ``LocatedOp`` (``.name``,
    ``.node``, ``.report``). Nodes sitting on a kink, or whose forward is random, are
    skipped (listed in ``.skipped`` of the result).
    """
    kink_tol = 10 * eps if kink_tol is None else kink_tol
    leaves, _, call_args = _as_leaves(inputs, "locate")
    recorder = _Recorder()
    autograd.forward_hooks.append(recorder)
    try:
        with enable_grad():
            out = fn(*call_args)
    finally:
        autograd.forward_hooks.remove(recorder)
    if not isinstance(out, Tensor) or out.grad_fn is None:
        return None
    nodes = [n for n in autograd.topological_order(out.grad_fn) if "_gc_order" in n.__dict__]
    nodes.sort(key=lambda n: n.__dict__["_gc_order"])
    skipped = []
    for position, node in enumerate(nodes):
        located = _check_node(node, eps, atol, rtol, seed, kink_tol, skipped)
        if located is not None:
            return LocatedOp(node.name, node, position, len(nodes), located, skipped)
    return None


def _check_node(node, eps, atol, rtol, seed, kink_tol, skipped):
    """The node's failing report, or None when its backward is right (or uncheckable)."""
    if not any(node.needs_input_grad):
        return None
    note = kink_note(node, kink_tol)
    if note:
        skipped.append(f"{node.name}: {note}")
        return None
    leaves, labels, tensor_index = [], [], 0
    replay_args = []
    for arg in node.__dict__["_gc_args"]:
        if not isinstance(arg, Tensor):
            replay_args.append(arg)
            continue
        if node.needs_input_grad[tensor_index] and arg.dtype.kind == "f":
            data = _host64(arg.data)
            leaf = Tensor(data if device_of(arg.data) == "cpu" else to_device(data, "cuda"),
                          requires_grad=True)
            leaves.append(leaf)
            labels.append(f"{node.name} input {tensor_index}")
            replay_args.append(leaf)
        else:
            replay_args.append(arg)
        tensor_index += 1
    kwargs = node.__dict__["_gc_kwargs"]
    subject = _Subject(leaves, lambda: type(node).apply(*replay_args, **kwargs), labels)
    x0 = [_host64(leaf.data) for leaf in leaves]
    try:
        first, second = subject.value(x0), subject.value(x0)
    except Exception as error:
        skipped.append(f"{node.name}: could not re-run its forward ({error})")
        return None
    if not np.array_equal(first, second, equal_nan=True):
        skipped.append(f"{node.name}: its forward is random; not checked")
        return None
    with no_grad():
        out_dtype = subject.run().dtype
    if out_dtype != np.float64:  # e.g. a cast to float32: differences need a bigger step
        eps, atol, rtol = max(eps, 1e-3), max(atol, 1e-3), max(rtol, 1e-2)
    rows = _check_subject(subject, eps, atol, rtol, False, seed)
    if all(row.passed for row in rows):
        return None
    return GradcheckReport(rows, title=f"locate: {node.name}", atol=atol, rtol=rtol)


# ------------------------------------------------------------------ audit of the op registry
@dataclass
class _AuditCase:
    shapes: tuple
    rows: list
    forward_err: float = 0.0
    grad_err: float = 0.0
    error: str = ""


def _shapes_text(shapes):
    return " ".join(str(tuple(s)).replace(" ", "") for s in shapes)


def _float32_errors(spec, arrays, device, seed):
    """(forward error, gradient error) of the op run in float32 vs float64, relative to scale."""
    rounded = [a.astype(np.float32).astype(np.float64) for a in arrays]
    results = {}
    for dtype in (np.float32, np.float64):
        tensors = [Tensor(a.astype(dtype), requires_grad=True, device=device) for a in rounded]
        with enable_grad():
            out = spec.fn(*tensors)
        weight = np.random.default_rng(seed).standard_normal(out.shape)
        out.backward(weight)
        grads = [_host64(t.grad) if t.grad is not None else np.zeros(t.shape) for t in tensors]
        results[dtype] = (_host64(out.data), grads, out.dtype)
    out32, grads32, out_dtype = results[np.float32]
    out64, grads64, _ = results[np.float64]
    if out_dtype != np.float32:
        raise TypeError(f"{spec.name} returned {out_dtype} for float32 inputs")
    relative = lambda a, b: float(np.abs(a - b).max() / max(1.0, np.abs(b).max())) if b.size else 0.0
    return relative(out32, out64), max([relative(a, b) for a, b in zip(grads32, grads64)] + [0.0])


def _audit_op(spec, dtype, device, seed, eps, atol, rtol, margin, full):
    from .ops.registry import draw_inputs
    rng = np.random.default_rng(seed)
    cases = []
    for shapes in spec.cases:
        case = _AuditCase(shapes, [])
        cases.append(case)
        try:
            arrays = draw_inputs(spec, shapes, rng, np.float64, margin)
            leaves = [Tensor(a, requires_grad=True, device=device) for a in arrays]
            subject = _Subject(leaves, lambda: spec.fn(*leaves), [f"input {i}" for i in range(len(leaves))])
            rows = _check_subject(subject, eps, atol, rtol, full, seed)
            case.rows = _finish(subject, rows, eps, atol, rtol, spec, None, spec.name).rows
            if dtype == "float32":
                case.forward_err, case.grad_err = _float32_errors(spec, arrays, device, seed)
        except Exception as error:  # an op that crashes is a failed row, not a crashed audit
            case.error = f"error: {type(error).__name__}: {error}"
    return _audit_row(spec, cases, dtype)


def _audit_row(spec, cases, dtype):
    def badness(case):
        return (bool(case.error), not all(r.passed for r in case.rows),
                max([r.max_abs_err for r in case.rows] + [case.forward_err, case.grad_err]))
    worst = max(cases, key=badness)
    all_rows = [r for case in cases for r in case.rows]
    row = GradcheckRow(spec.name, _shapes_text(worst.shapes),
                       max_abs_err=max([r.max_abs_err for r in all_rows] + [0.0]),
                       max_rel_err=max([r.max_rel_err for r in all_rows] + [0.0]))
    row.passed = all(r.passed for r in all_rows) and not any(c.error for c in cases)
    row.extra = {"cases": len(cases), "forward_err": max(c.forward_err for c in cases),
                 "grad_err": max(c.grad_err for c in cases), "details": cases}
    if dtype == "float32" and max(row.extra["forward_err"], row.extra["grad_err"]) > FLOAT32_TOL:
        row.passed = False
        row.note = (f"float32 result off by {max(row.extra['forward_err'], row.extra['grad_err']):.2e} "
                    f"of its scale (allowed {FLOAT32_TOL:g})")
    failing = [r for case in cases for r in case.rows if not r.passed]
    if worst.error:
        row.note = worst.error
    elif failing:
        row.note = failing[0].describe() + (f" [shapes {_shapes_text(worst.shapes)}]")
        row.worst_index, row.numerical, row.analytic = (failing[0].worst_index, failing[0].numerical,
                                                        failing[0].analytic)
    return row


def audit(dtype="float64", device="cpu", kernels=None, seed=0, eps=1e-6, atol=1e-5, rtol=1e-3,
          margin=1e-3, ops=None, full=True):
    """Gradient-check every op in the registry (every shape case, broadcasting included).

    Returns a ``GradcheckReport`` with one row per registered op: its worst case's
    shapes, the max absolute and relative errors over all cases, and whether all
    passed. Inputs are drawn ``margin`` away from each op's kinks. The gradient check
    is always float64; ``dtype='float32'`` also runs each op in float32 and compares its
    output and gradient with the float64 ones (allowed error ``FLOAT32_TOL`` of the
    result's scale). ``kernels`` ('native'/'numpy') selects the CPU kernel table for
    the run; ``ops`` restricts the audit to some op names. The registry's shapes are
    small, so every Jacobian element is checked (``full=True``, ~0.1 s for the whole
    registry); ``full=False`` screens with one random projection per input instead.
    """
    from . import backend
    from .ops.registry import REGISTRY
    if dtype not in ("float64", "float32"):
        raise ValueError(f"audit: unknown dtype {dtype!r}; valid: float64, float32")
    if ops is not None:
        unknown = sorted(set(ops) - {s.name for s in REGISTRY})
        if unknown:
            raise ValueError(f"audit: unknown op name(s) {', '.join(unknown)}; valid names: "
                             f"{', '.join(s.name for s in REGISTRY)}")
    specs = [s for s in REGISTRY if ops is None or s.name in ops]
    previous = backend.get_kernels()
    if kernels is not None:
        backend.set_kernels(kernels)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows = [_audit_op(spec, dtype, device, seed, eps, atol, rtol, margin, full) for spec in specs]
        used = backend.get_kernels()
    finally:
        backend.set_kernels(previous)
    elapsed = time.perf_counter() - started
    columns = [("op", "name"), ("cases", lambda r: r.extra["cases"]), ("worst shapes", "shape"),
               ("max abs err", "max_abs_err"), ("max rel err", "max_rel_err")]
    if dtype == "float32":
        columns += [("f32 fwd err", lambda r: r.extra["forward_err"]),
                    ("f32 grad err", lambda r: r.extra["grad_err"])]
    columns.append(("pass", "status"))
    failed = sum(not r.passed for r in rows)
    footer = (f"\n{len(rows)} ops, {sum(r.extra['cases'] for r in rows)} cases, {failed} failed "
              f"({dtype}, kernels={used}, device={device}, {elapsed:.2f} s)")
    result = GradcheckReport(rows, columns, title="audit", atol=atol, rtol=rtol, footer=footer)
    result.elapsed = elapsed
    return result


# ------------------------------------------------------------------ command line
def main(argv=None):
    """``nanodl gradcheck``: print the op audit table; exit status 1 if any op fails."""
    parser = argparse.ArgumentParser(prog="nanodl gradcheck",
                                     description="Gradient-check every registered op against "
                                                 "central differences.")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="float32 also compares each op's float32 output and gradient with float64")
    parser.add_argument("--kernels", choices=("native", "numpy"), default=None,
                        help="CPU kernel table (default: the current one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", default=None, help="comma-separated op names (default: all)")
    parser.add_argument("--verbose", "-v", action="store_true", help="explain each failure")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    from . import backend
    if args.kernels == "native" and not backend.native_available():
        print("nanodl gradcheck: error: the native kernels are not built "
              "(run `pip install -e .`), use --kernels numpy", file=sys.stderr)
        return 2
    if args.device == "cuda" and not backend.cuda_available():
        from .backend.cuda import cuda_status
        print(f"nanodl gradcheck: error: device 'cuda' is not available: {cuda_status()}", file=sys.stderr)
        return 2
    ops = args.ops.split(",") if args.ops else None
    try:
        table = audit(dtype=args.dtype, device=args.device, kernels=args.kernels, seed=args.seed, ops=ops)
    except ValueError as error:
        print(f"nanodl gradcheck: error: {error}", file=sys.stderr)
        return 2
    print(table)
    if args.verbose or not table.passed:
        for row in table.failures:
            print(f"\n{row.name}: {row.note}")
    return 0 if table.passed else 1


# ``gradcheck.report(...)`` etc. also work when ``gradcheck`` names the function
# (``from nanodl.gradcheck import gradcheck``), not the module.
gradcheck.report, gradcheck.check_model, gradcheck.audit, gradcheck.locate = report, check_model, audit, locate
gradcheck.GradcheckError, gradcheck.GradcheckReport = GradcheckError, GradcheckReport
