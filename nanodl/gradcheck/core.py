"""The numerical core of every check: ``Subject`` (float64 arrays in, an array out), the
screen, the elementwise check and the bisection (the method: the package docstring)."""
import numpy as np

from .. import autograd
from ..autograd import enable_grad, no_grad
from ..backend import device_of, to_device, to_host
from ..tensor import Tensor
from .results import GradcheckRow

MAX_COLUMNS = 4096        # inputs larger than this are bisected, not walked column by column
MAX_JACOBIAN = 2_000_000  # analytic Jacobians larger than this are compared through vᵀJ
MAX_ROWS = 1024           # ... and so are outputs with more elements than this


def host64(array):
    """A host NumPy float64 copy of a backend array."""
    return np.array(to_host(array), dtype=np.float64)


def _unit(vector):
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class Subject:
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
            out = checked_output(self.run())
        return host64(out.data)

    def vjps(self, arrays, weights):
        """``[Jᵀw for each leaf]`` for every ``w`` in ``weights`` (one graph, retained)."""
        self.load(arrays)
        with enable_grad():
            out = checked_output(self.run())
        weights = list(weights)
        results = []
        for k, weight in enumerate(weights):
            for leaf in self.leaves:
                leaf.grad = None
            if out.requires_grad:
                out.backward(weight, retain_graph=k < len(weights) - 1)
            results.append([host64(leaf.grad) if leaf.grad is not None else np.zeros(leaf.shape)
                            for leaf in self.leaves])
        return results

    def graph(self, arrays):
        """The nodes of the graph at ``arrays``, output first (for the kink walk)."""
        self.load(arrays)
        with enable_grad():
            out = self.run()
        return [] if out.grad_fn is None else autograd.topological_order(out.grad_fn)


def checked_output(out):
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype.kind != "f":
        raise TypeError(f"gradcheck: fn must return a float Tensor, got {out.dtype}")
    return out


def _directional(subject, x0, index, direction, weight, eps):
    """v·(f(x+εu) - f(x-εu)) / 2ε, with u = ``direction`` on input ``index`` only."""
    up, down = list(x0), list(x0)
    up[index], down[index] = x0[index] + eps * direction, x0[index] - eps * direction
    return float(np.sum(weight * (subject.value(up) - subject.value(down))) / (2 * eps))


def compare(numerical, analytic, atol, rtol):
    """(passed, max abs err, max rel err, flat index of the worst element, failing ones first)."""
    diff = np.abs(numerical - analytic)
    if diff.size == 0:
        return True, 0.0, 0.0, 0
    scale = np.maximum(np.abs(numerical), np.abs(analytic))
    rel = np.where(scale > atol, diff / np.where(scale > 0, scale, 1), 0.0)
    within = diff <= atol + rtol * np.abs(numerical)  # False for NaN too
    ranked = np.where(np.isnan(diff), np.inf, diff)
    worst = int(np.argmax(np.where(within, -1.0, ranked))) if not within.all() else int(np.argmax(ranked))
    return bool(within.all()), float(np.max(ranked)), float(np.nanmax(rel)), worst


def check_subject(subject, eps, atol, rtol, full, seed, max_columns=MAX_COLUMNS):
    rng = np.random.default_rng(seed)
    x0 = [host64(leaf.data) for leaf in subject.leaves]
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
        row.passed, row.max_abs_err, row.max_rel_err, _ = compare(
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
        numerical = np.array([_directional(subject, x0, i, _one_hot(j, x.shape), v, eps)])
        analytic = vjp_i.reshape(-1)[j:j + 1]
        row.passed, row.max_abs_err, row.max_rel_err, _ = compare(numerical, analytic, atol, rtol)
        row.method, row.worst_index = "bisection", unravel(j, x.shape)
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
        passed, abs_err, rel_err, worst = compare(columns, analytic, atol, rtol)
        k, j = np.unravel_index(worst, (m, n))
        row.method = "jacobian"
        row.worst_index = (unravel(k, out0.shape), unravel(j, x.shape))
        row.numerical, row.analytic = float(columns[k, j]), float(analytic[k, j])
    else:
        numerical, analytic = v.reshape(-1) @ columns, vjp_i.reshape(-1)
        passed, abs_err, rel_err, worst = compare(numerical, analytic, atol, rtol)
        row.method, row.worst_index = "vJ", unravel(worst, x.shape)
        row.numerical, row.analytic = float(numerical[worst]), float(analytic[worst])
    row.passed, row.max_abs_err, row.max_rel_err = passed, abs_err, rel_err


def _one_hot(k, shape):
    weight = np.zeros(shape)
    weight.reshape(-1)[k] = 1.0
    return weight


def unravel(flat, shape):
    """The multi-index of flat index ``flat`` in ``shape``, as plain ints."""
    return tuple(int(k) for k in np.unravel_index(flat, shape))


def _bisect(subject, x0, i, v, vjp_i, eps):
    """The flat index of input ``i``'s worst element in vᵀJ (errors add: follow the larger half)."""
    x = x0[i]
    candidates = np.arange(x.size)
    analytic = vjp_i.reshape(-1)

    def error(indices):
        direction = np.zeros(x.size)
        direction[indices] = 1.0
        return _directional(subject, x0, i, direction.reshape(x.shape), v, eps) - analytic[indices].sum()

    total = error(candidates)
    while candidates.size > 1:
        half, rest = candidates[: candidates.size // 2], candidates[candidates.size // 2:]
        first = error(half)
        candidates, total = (half, first) if abs(first) >= abs(total - first) else (rest, total - first)
    return int(candidates[0])
