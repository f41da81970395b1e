"""``audit``: every op of ``nanodl.ops.registry``, every shape case, gradient-checked into one
table (``nanodl gradcheck`` prints it)."""
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..autograd import enable_grad
from ..ops.registry import REGISTRY, draw_inputs
from ..tensor import Tensor
from .checks import finish
from .core import Subject, check_subject, compare, host64, unravel
from .results import GradcheckReport, GradcheckRow
from .second_order import second_order_check

FLOAT32_TOL = 1e-4        # audit(dtype='float32'): allowed error relative to the result's scale


@dataclass
class _AuditCase:
    shapes: tuple
    rows: list
    second_rows: list = field(default_factory=list)   # order=2: the second-derivative check
    critical: bool = False                             # at one of the op's critical points
    forward_err: float = 0.0
    grad_err: float = 0.0
    error: str = ""


def _shapes_text(shapes):
    return " ".join(str(tuple(s)).replace(" ", "") for s in shapes)


def _float32_errors(spec, arrays, device, seed):
    """(forward error, gradient error) of the op in float32 vs float64, relative to scale."""
    rounded = [a.astype(np.float32).astype(np.float64) for a in arrays]

    def run(dtype):
        tensors = [Tensor(a.astype(dtype), requires_grad=True, device=device) for a in rounded]
        with enable_grad():
            out = spec.fn(*tensors)
        out.backward(np.random.default_rng(seed).standard_normal(out.shape))
        return host64(out.data), [host64(t.grad) if t.grad is not None else np.zeros(t.shape)
                                  for t in tensors], out.dtype
    (out32, grads32, out_dtype), (out64, grads64, _) = run(np.float32), run(np.float64)
    if out_dtype != np.float32:
        raise TypeError(f"{spec.name} returned {out_dtype} for float32 inputs")
    relative = lambda a, b: float(np.abs(a - b).max() / max(1.0, np.abs(b).max())) if b.size else 0.0
    return relative(out32, out64), max([relative(a, b) for a, b in zip(grads32, grads64)] + [0.0])


def _audit_op(spec, dtype, device, seed, eps, atol, rtol, margin, full, order):
    rng = np.random.default_rng(seed)
    cases = []
    for shapes in spec.cases:
        case = _AuditCase(shapes, [])
        cases.append(case)
        try:
            arrays = draw_inputs(spec, shapes, rng, np.float64, margin)
            leaves = [Tensor(a, requires_grad=True, device=device) for a in arrays]
            subject = Subject(leaves, lambda: spec.fn(*leaves), [f"input {i}" for i in range(len(leaves))])
            rows = check_subject(subject, eps, atol, rtol, full, seed)
            case.rows = finish(subject, rows, eps, atol, rtol, spec, None, spec.name).rows
            if order == 2:
                subject, rows = second_order_check(spec.fn, leaves, leaves, subject.labels, None, eps,
                                                   atol, rtol, full, seed)
                case.second_rows = finish(subject, rows, eps, atol, rtol, spec, None, spec.name).rows
            if dtype == "float32":
                case.forward_err, case.grad_err = _float32_errors(spec, arrays, device, seed)
        except Exception as error:  # an op that crashes is a failed row, not a crashed audit
            case.error = f"error: {type(error).__name__}: {error}"
    cases += [_critical_case(spec, point, device, atol, rtol) for point in spec.critical_points]
    return _audit_row(spec, cases, dtype)


def _critical_case(spec, point, device, atol, rtol):
    """The op's gradient at a critical point (pred == target, ...) against its ``derivative``."""
    case = _AuditCase(tuple(np.shape(a) for a in point), [], critical=True)
    try:
        leaves = [Tensor(np.array(a, dtype=np.float64), requires_grad=True, device=device) for a in point]
        with enable_grad():
            out = spec.fn(*leaves)
        out.backward(np.ones(out.shape))                 # d sum(fn) / d input
        expected = spec.derivative(*[np.array(a, dtype=np.float64) for a in point])
        for i, (leaf, reference) in enumerate(zip(leaves, expected)):
            got = host64(leaf.grad) if leaf.grad is not None else np.zeros(leaf.shape)
            row = GradcheckRow(f"input {i} at a critical point", leaf.shape, method="derivative")
            row.passed, row.max_abs_err, row.max_rel_err, worst = compare(reference, got, atol, rtol)
            row.worst_index = unravel(worst, leaf.shape)
            row.numerical = float(np.reshape(reference, -1)[worst]) if np.size(reference) else None
            row.analytic = float(got.reshape(-1)[worst]) if got.size else None
            case.rows.append(row)
    except Exception as error:  # an op that crashes is a failed row, not a crashed audit
        case.error = f"error: {type(error).__name__}: {error}"
    return case


def _critical_status(cases):
    if not cases:
        return "-"
    passed = all(not case.error and all(row.passed for row in case.rows) for case in cases)
    return f"{len(cases)} {'ok' if passed else 'FAIL'}"


def _audit_row(spec, cases, dtype):
    def badness(case):
        return (bool(case.error), not all(r.passed for r in case.rows + case.second_rows),
                max([r.max_abs_err for r in case.rows] + [case.forward_err, case.grad_err]))
    worst = max(cases, key=badness)
    all_rows = [r for case in cases for r in case.rows]
    row = GradcheckRow(spec.name, _shapes_text(worst.shapes),
                       max_abs_err=max([r.max_abs_err for r in all_rows] + [0.0]),
                       max_rel_err=max([r.max_rel_err for r in all_rows] + [0.0]))
    second = [r for case in cases for r in case.second_rows]
    row.passed = all(r.passed for r in all_rows + second) and not any(c.error for c in cases)
    critical = [c for c in cases if c.critical]
    row.extra = {"cases": len(cases) - len(critical), "forward_err": max(c.forward_err for c in cases),
                 "grad_err": max(c.grad_err for c in cases), "details": cases,
                 "second_abs_err": max([r.max_abs_err for r in second] + [0.0]),
                 "second_status": "ok" if all(r.passed for r in second) else "FAIL",
                 "critical": _critical_status(critical)}
    if dtype == "float32" and max(row.extra["forward_err"], row.extra["grad_err"]) > FLOAT32_TOL:
        row.passed = False
        row.note = (f"float32 result off by {max(row.extra['forward_err'], row.extra['grad_err']):.2e} "
                    f"of its scale (allowed {FLOAT32_TOL:g})")
    failing = [(r, "gradcheck") for case in cases for r in case.rows if not r.passed]
    failing += [(r, "gradgradcheck") for case in cases for r in case.second_rows if not r.passed]
    if worst.error:
        row.note = worst.error
    elif failing:
        first, check = failing[0]
        row.note = first.describe(check=check) + (f" [shapes {_shapes_text(worst.shapes)}]")
        row.worst_index, row.numerical, row.analytic = first.worst_index, first.numerical, first.analytic
    return row


def audit(dtype="float64", device="cpu", kernels=None, seed=0, eps=1e-6, atol=1e-5, rtol=1e-3,
          margin=1e-3, ops=None, full=True, order=1):
    """Gradient-check every op in the registry (every shape case, broadcasting included).

    A ``GradcheckReport``, one row per op (worst case's shapes, max errors, pass), inputs
    drawn ``margin`` away from kinks. ``dtype='float32'`` also compares each op's float32
    output and gradient with the float64 ones (allowed: ``FLOAT32_TOL`` of their scale).
    ``kernels`` ('native'/'numpy') picks the CPU table; ``ops`` restricts the op names;
    ``full=False`` screens instead of checking every Jacobian element; ``order=2`` adds
    a second-derivative column (``gradgradcheck``).
    """
    if order not in (1, 2):
        raise ValueError(f"audit: order must be 1 or 2, got {order!r}")
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
            rows = [_audit_op(spec, dtype, device, seed, eps, atol, rtol, margin, full, order)
                    for spec in specs]
        used = backend.get_kernels()
    finally:
        backend.set_kernels(previous)
    elapsed = time.perf_counter() - started
    columns = [("op", "name"), ("cases", lambda r: r.extra["cases"]), ("worst shapes", "shape"),
               ("max abs err", "max_abs_err"), ("max rel err", "max_rel_err")]
    if dtype == "float32":
        columns += [("f32 fwd err", lambda r: r.extra["forward_err"]),
                    ("f32 grad err", lambda r: r.extra["grad_err"])]
    if any(spec.critical_points for spec in specs):
        columns.append(("kink pts", lambda r: r.extra["critical"]))
    if order == 2:
        columns += [("2nd-order abs err", lambda r: r.extra["second_abs_err"]),
                    ("2nd order", lambda r: r.extra["second_status"])]
    columns.append(("pass", "status"))
    failed = sum(not r.passed for r in rows)
    footer = (f"\n{len(rows)} ops, {sum(r.extra['cases'] for r in rows)} cases, {failed} failed "
              f"({dtype}, order {order}, kernels={used}, device={device}, {elapsed:.2f} s)")
    result = GradcheckReport(rows, columns, title="audit", atol=atol, rtol=rtol, footer=footer)
    result.elapsed = elapsed
    return result
