"""L-BFGS: a quasi-Newton optimizer driven by a closure, iterate for iterate as ``torch.optim.LBFGS``.

The state is global (the parameters as one flat vector), not per parameter. See docs/lbfgs.md.

>>> import numpy as np
>>> from nanodl import nn, optim
>>> w = nn.Parameter(np.array([3.0, -2.0]))
>>> target = np.array([1.0, 0.5])
>>> def closure():                      # f(w) = ||w - target||^2
...     w.grad = 2 * (w.data - target)
...     return float(((w.data - target) ** 2).sum())
>>> opt = optim.LBFGS([w], line_search_fn='strong_wolfe')
>>> first_loss = opt.step(closure)
>>> np.allclose(w.data, target), first_loss
(True, 10.25)
"""
import math
from collections import namedtuple

import numpy as np

from ..autograd import enable_grad
from ..backend import array_module, to_host
from .optimizers import OPTIMIZERS, Optimizer

__all__ = ["LBFGS"]


def _loss_value(loss):
    return float(loss.item()) if hasattr(loss, "item") else float(loss)


class LBFGS(Optimizer):
    """Limited-memory BFGS with PyTorch's algorithm, names and defaults.

    ``step(closure)`` runs up to ``max_iter`` iterations and ``max_eval`` closure calls
    (zero the gradients, recompute the loss, ``backward()``, return it) and returns the
    first loss. With ``compile(optimizer='lbfgs')``, ``fit`` is full-batch.
    """

    name = "lbfgs"
    _config = ("max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
               "line_search_fn")
    full_batch = True  # Model.fit: one step(closure) per epoch, over every training sample

    def __init__(self, params=None, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        self.max_iter = self._check_count("max_iter", max_iter)
        self.max_eval = self._check_count("max_eval", max_iter * 5 // 4 if max_eval is None
                                          else max_eval)
        self.tolerance_grad = self._check_nonneg("tolerance_grad", tolerance_grad)
        self.tolerance_change = self._check_nonneg("tolerance_change", tolerance_change)
        self.history_size = self._check_count("history_size", history_size)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: line_search_fn must be None or 'strong_wolfe', got "
                             f"{line_search_fn!r}")
        self.line_search_fn = line_search_fn
        self._memory = {"func_evals": 0, "n_iter": 0}
        super().__init__(params, lr)

    def _check_count(self, what, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{type(self).__name__}: {what} must be an integer >= 1, got {value!r}")
        return int(value)

    def set_params(self, params):
        before = self._params
        super().set_params(params)
        if self._params is not before:  # new parameters: the history described the old ones
            self._memory = {"func_evals": 0, "n_iter": 0}

    @property
    def state(self):
        """The global state, by PyTorch's names (``func_evals``, ``n_iter``, ``d``, ``old_dirs``...)."""
        return self._memory

    def _flat_grad(self):
        params = self._params
        xp = array_module(params[0].data)
        return xp.concatenate([xp.zeros(p.data.size, p.data.dtype) if p.grad is None
                               else xp.asarray(p.grad, dtype=p.data.dtype).ravel() for p in params])

    def _move(self, t, direction):
        offset = 0
        for p in self._params:
            size = p.data.size
            p.data += t * direction[offset:offset + size].reshape(p.data.shape)
            offset += size

    def _evaluate(self, closure):
        with enable_grad():
            loss = closure()
        return loss, _loss_value(loss), self._flat_grad()

    def step(self, closure=None):
        """Up to ``max_iter`` L-BFGS iterations on the loss ``closure()`` recomputes."""
        if closure is None:
            raise TypeError("LBFGS.step needs a closure: a function that zeroes the gradients, "
                            "recomputes the loss, calls backward() and returns the loss")
        self._require_params()
        self.step_count += 1
        memory = self._memory
        lr, max_iter, max_eval = self._lr, self.max_iter, self.max_eval
        tolerance_grad, tolerance_change = self.tolerance_grad, self.tolerance_change

        first_loss, loss, grad = self._evaluate(closure)
        evals = 1
        memory["func_evals"] += 1
        xp = array_module(grad)
        if float(xp.abs(grad).max()) <= tolerance_grad:
            return first_loss  # already optimal

        direction, t = memory.get("d"), memory.get("t")
        steps_taken, grad_changes = memory.get("old_stps"), memory.get("old_dirs")
        rho, h_diag = memory.get("ro"), memory.get("H_diag")
        prev_grad, prev_loss = memory.get("prev_flat_grad"), memory.get("prev_loss")

        for iteration in range(1, max_iter + 1):
            memory["n_iter"] += 1

            # The direction: steepest descent the first time, else the two-loop recursion.
            if memory["n_iter"] == 1:
                direction = -grad
                steps_taken, grad_changes, rho, h_diag = [], [], [], 1.0
            else:
                change = grad - prev_grad
                step_vector = direction * t
                curvature = float(xp.dot(change, step_vector))
                if curvature > 1e-10:  # a pair that keeps the approximation positive definite
                    if len(grad_changes) == self.history_size:
                        del grad_changes[0], steps_taken[0], rho[0]
                    grad_changes.append(change)
                    steps_taken.append(step_vector)
                    rho.append(1.0 / curvature)
                    h_diag = curvature / float(xp.dot(change, change))
                direction = _two_loop(-grad, steps_taken, grad_changes, rho, h_diag)

            prev_grad, prev_loss = grad.copy(), loss
            t = min(1.0, 1.0 / float(xp.abs(grad).sum())) * lr if memory["n_iter"] == 1 else lr
            slope = float(xp.dot(grad, direction))
            if slope > -tolerance_change:
                break  # not a descent direction any more

            if self.line_search_fn == "strong_wolfe":
                start = [p.data.copy() for p in self._params]

                def loss_and_grad(x, step_length, d):
                    self._move(step_length, d)
                    _, value, gradient = self._evaluate(closure)
                    for p, value_before in zip(self._params, x):
                        p.data[...] = value_before
                    return value, gradient

                loss, grad, t, used = _strong_wolfe(loss_and_grad, start, t, direction, loss, grad,
                                                    slope, max_ls=max_eval - evals)
                self._move(t, direction)
            else:
                self._move(t, direction)
                used = int(iteration != max_iter)  # the last iteration's point is not evaluated (torch)
                if used:
                    _, loss, grad = self._evaluate(closure)
            evals += used
            memory["func_evals"] += used
            optimal = used and float(xp.abs(grad).max()) <= tolerance_grad

            if iteration == max_iter or evals >= max_eval or optimal:
                break
            if float(xp.abs(direction * t).max()) <= tolerance_change or \
                    abs(loss - prev_loss) < tolerance_change:
                break  # the step no longer moves the parameters, or the loss

        memory.update(d=direction, t=t, old_dirs=grad_changes, old_stps=steps_taken, ro=rho,
                      H_diag=h_diag, prev_flat_grad=prev_grad, prev_loss=prev_loss)
        return first_loss

    def state_dict(self):
        """Hyper-parameters and the global state, the history stacked (``old_dirs``: ``(k, n)``)."""
        # line_search_fn=None (the default) is left out: no None saved
        sd = {"name": self.name, **{k: v for k, v in self.get_config().items() if v is not None}}
        memory = self._memory
        sd.update(step_count=int(self.step_count), func_evals=int(memory["func_evals"]),
                  n_iter=int(memory["n_iter"]))
        if "d" in memory:
            n, dtype = int(memory["d"].size), memory["d"].dtype
            sd.update(d=to_host(memory["d"], copy=True), t=float(memory["t"]),
                      old_dirs=_stack(memory["old_dirs"], n, dtype),
                      old_stps=_stack(memory["old_stps"], n, dtype),
                      ro=np.array(memory["ro"], dtype=np.float64), H_diag=float(memory["H_diag"]),
                      prev_flat_grad=to_host(memory["prev_flat_grad"], copy=True),
                      prev_loss=float(memory["prev_loss"]))
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``; ValueError (and no change at all) if it does not fit."""
        sd = dict(state_dict)
        name = str(np.asarray(sd.get("name", self.name)))
        if name != self.name:
            raise ValueError(f"LBFGS.load_state_dict: the state belongs to a {name!r} optimizer, "
                             f"not 'lbfgs'")
        # numbers come back from a file as 0-d arrays
        config = {key: np.asarray(sd[key]).item() for key in self.get_config() if key in sd}
        if "line_search_fn" in config:
            config["line_search_fn"] = str(config["line_search_fn"])
        probe = LBFGS(None, **config)  # validates the hyper-parameters
        memory = {"func_evals": int(np.asarray(sd.get("func_evals", 0))),
                  "n_iter": int(np.asarray(sd.get("n_iter", 0)))}
        if "d" in sd:
            memory.update(self._loaded_history(sd))
        for key in ("_lr", *self._config):
            setattr(self, key, getattr(probe, key))
        self.step_count = int(np.asarray(sd.get("step_count", 0)))
        self._memory = memory

    def _loaded_history(self, saved):
        params = self._params
        if params is None:
            raise RuntimeError("LBFGS.load_state_dict: the state holds a history but this optimizer "
                               "has no parameters yet; call set_params first")
        n = sum(int(p.data.size) for p in params)
        dtype = params[0].data.dtype
        xp = array_module(params[0].data)

        def vector(key):
            value = np.asarray(saved[key])
            if value.shape != (n,):
                raise ValueError(f"LBFGS.load_state_dict: {key!r} has shape {value.shape}, the "
                                 f"parameters hold {n} numbers")
            return xp.array(value, dtype=dtype)

        def rows(key):
            value = np.asarray(saved.get(key, np.zeros((0, n))))
            if value.ndim != 2 or value.shape[1] != n:
                raise ValueError(f"LBFGS.load_state_dict: {key!r} has shape {value.shape}, "
                                 f"expected (pairs, {n})")
            return [xp.array(row, dtype=dtype) for row in value]

        history = {"d": vector("d"), "prev_flat_grad": vector("prev_flat_grad"),
                   "old_dirs": rows("old_dirs"), "old_stps": rows("old_stps"),
                   "ro": [float(r) for r in np.asarray(saved.get("ro", [])).ravel()],
                   **{key: float(np.asarray(saved[key])) for key in ("t", "H_diag", "prev_loss")}}
        if not len(history["old_dirs"]) == len(history["old_stps"]) == len(history["ro"]):
            raise ValueError("LBFGS.load_state_dict: old_dirs, old_stps and ro hold different "
                             "numbers of pairs")
        return history


def _stack(vectors, n, dtype):
    return np.stack([to_host(v) for v in vectors]) if vectors else np.zeros((0, n), dtype=dtype)


def _two_loop(q, steps_taken, grad_changes, rho, h_diag):
    """The two-loop recursion: ``H q`` for the inverse-Hessian approximation (``q`` is consumed)."""
    xp = array_module(q)
    alphas = [0.0] * len(steps_taken)
    for i in range(len(steps_taken) - 1, -1, -1):  # newest pair first
        alphas[i] = float(xp.dot(steps_taken[i], q)) * rho[i]
        q -= alphas[i] * grad_changes[i]
    r = q * h_diag
    for i in range(len(steps_taken)):  # oldest pair first
        beta = float(xp.dot(grad_changes[i], r)) * rho[i]
        r += (alphas[i] - beta) * steps_taken[i]
    return r


# ---------------------------------------------------------------- the strong Wolfe line search
# One trial of the line search: step length, loss, gradient and slope along the direction.
_Point = namedtuple("_Point", "t f g gtd")


def _cubic_minimum(a, b, bounds=None):
    """The minimiser of the cubic through two trials, clipped to ``bounds`` (else the midpoint)."""
    (x1, f1, _, g1), (x2, f2, _, g2) = a, b
    low, high = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    try:
        d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
        discriminant = d1 * d1 - g1 * g2
        if not discriminant >= 0:
            return (low + high) / 2.0
        d2 = math.sqrt(discriminant)
        if x1 <= x2:
            minimum = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            minimum = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    except ZeroDivisionError:  # coinciding points or a degenerate cubic
        return (low + high) / 2.0
    return min(max(minimum, low), high)


def _strong_wolfe(loss_and_grad, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                  max_ls=25):
    """A step length along ``d`` meeting the strong Wolfe conditions: bracket, then zoom.

    ``loss_and_grad(x, t, d)`` evaluates at ``x + t d``. Returns ``(f, g, t, evaluations)``."""
    xp = array_module(d)
    d_scale = float(xp.abs(d).max())
    start = _Point(0, f, g.copy(), gtd)

    def trial(step_length):
        f_new, g_new = loss_and_grad(x, step_length, d)
        return _Point(step_length, f_new, g_new, float(xp.dot(g_new, d)))

    def too_high(point):  # the sufficient-decrease (Armijo) condition fails
        return point.f > f + c1 * point.t * gtd

    new = trial(t)
    iterations = 0  # evaluations: one more
    previous, bracket, done = start, None, False
    # Bracketing: grow t until a point brackets the Wolfe region or satisfies it.
    while iterations < max_ls:
        if too_high(new) or (iterations > 1 and new.f >= previous.f):
            bracket = [previous, new]
            break
        if abs(new.gtd) <= -c2 * gtd:
            bracket, done = [new], True
            break
        if new.gtd >= 0:
            bracket = [previous, new]
            break
        t_next = _cubic_minimum(previous, new, (new.t + 0.01 * (new.t - previous.t), new.t * 10))
        previous = new
        new = trial(t_next)
        iterations += 1
    if iterations == max_ls:
        bracket = [start, new]  # out of evaluations: the best of the start and the last trial

    # Zoom: shrink the bracket around the Wolfe region.
    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    stalled = False
    while not done and iterations < max_ls:
        left, right = min(bracket[0].t, bracket[1].t), max(bracket[0].t, bracket[1].t)
        if (right - left) * d_scale < tolerance_change:
            break  # the bracket is too small to matter
        t = _cubic_minimum(*bracket)
        margin = 0.1 * (right - left)
        near_end = min(right - t, t - left) < margin  # too close to an end of the bracket
        if near_end and (stalled or t >= right or t <= left):
            t = right - margin if abs(t - right) < abs(t - left) else left + margin
            stalled = False
        else:
            stalled = near_end
        new = trial(t)
        iterations += 1
        if too_high(new) or new.f >= bracket[low].f:
            bracket[high] = new  # not lower than the low end: the new high end
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if abs(new.gtd) <= -c2 * gtd:
                done = True
            elif new.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]  # the minimum lies on the other side
            bracket[low] = new
    best = bracket[low]
    return best.f, best.g, best.t, iterations + 1


OPTIMIZERS[LBFGS.name] = LBFGS
