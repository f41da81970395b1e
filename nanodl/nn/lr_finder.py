"""``Model.find_lr``: a learning-rate sweep with the loss's sharpness beside it.

Smith's range test (as fastai and Keras) beside ``2 / lambda_max`` (docs/curvature.md).
Everything is put back bit for bit, and nanodl's global random stream does not advance.
"""
import copy
import inspect
import math

import numpy as np

from .. import random
from ..archive import atomic_write
from ..autograd.curvature import hessian_eigenvalues
from ..backend import is_device_array, to_device, to_host

__all__ = ["LRFinder", "find_lr"]

SMOOTHING = 0.98      # the moving average's weight on the past (fastai's; ~50 steps of memory)
DIVERGENCE = 4.0      # stop once the smoothed loss exceeds this multiple of its best
PLOT_HINT = ("LRFinder.plot needs matplotlib, which is not installed; get it with "
             "`pip install 'nanodl[plot]'` or `pip install matplotlib`")


class LRFinder:
    """What ``Model.find_lr`` found: ``lrs``, ``losses`` (smoothed), ``raw_losses``,
    ``suggestion`` (where the smoothed loss falls fastest), ``diverged``, and ``sharpness``:
    None, or the largest Hessian eigenvalue on a fixed batch at the ``'start'`` and ``'end'``,
    with ``'stable_lr'`` (``2 / start``)."""

    def __init__(self, lrs, losses, raw_losses, suggestion, sharpness, diverged):
        self.lrs, self.losses, self.raw_losses = lrs, losses, raw_losses
        self.suggestion, self.sharpness, self.diverged = suggestion, sharpness, diverged

    def __repr__(self):
        text = f"LRFinder({len(self.lrs)} rates, suggestion={self.suggestion:.3g}"
        if self.sharpness is not None:
            text += (f", sharpness start={self.sharpness['start']:.4g} "
                     f"end={self.sharpness['end']:.4g}, stable_lr={self.sharpness['stable_lr']:.3g}")
        return text + (", diverged)" if self.diverged else ")")

    def plot(self, path=None):
        """The smoothed loss against the rate, the suggestion and ``2 / lambda_max``: a
        matplotlib ``Figure``; with ``path``, saved there as a PNG without pyplot."""
        try:
            if path is None:
                import matplotlib.pyplot as plt
                figure = plt.figure(figsize=(6.4, 4.0))
            else:
                from matplotlib.figure import Figure
                figure = Figure(figsize=(6.4, 4.0))
        except ImportError:
            raise ImportError(PLOT_HINT) from None
        axis = figure.add_subplot()
        axis.plot(self.lrs, self.losses, label="smoothed loss")
        axis.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)")
        axis.axvline(self.suggestion, color="C1", linestyle="--",
                     label=f"steepest descent: {self.suggestion:.3g}")
        if self.sharpness is not None and math.isfinite(self.sharpness["stable_lr"]):
            axis.axvline(self.sharpness["stable_lr"], color="C2", linestyle=":",
                         label=f"2 / lambda_max at the start: {self.sharpness['stable_lr']:.3g}")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        if path is not None:
            atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
        return figure


def find_lr(model, x, y, start_lr, end_lr, steps, batch_size, sharpness):
    """The sweep behind ``Model.find_lr`` (which checks its arguments first)."""
    lrs = _rates(start_lr, end_lr, steps)
    if not isinstance(sharpness, (bool, np.bool_)):
        raise ValueError(f"find_lr: sharpness must be True or False, got {sharpness!r}")
    _check_first_order(model.optimizer)
    model._build_on(x)  # lazy layers get their weights now: those are what the sweep restores
    snapshot = _Snapshot(model, model.optimizer)
    try:
        with random.using(copy.deepcopy(random.generator())), model._mode(True):
            plan = model._plan(x, y)
            x, y = plan.inputs(x), plan.targets(y)
            batch_size = plan.fit_batch_size(batch_size, len(x))  # all samples for LBFGS, as fit
            batches = [to_device(batch, plan.device) for batch in _batches(len(x), batch_size, steps)]
            fixed = batches[0]
            start = _largest_eigenvalue(plan, x[fixed], y[fixed]) if sharpness else None
            raw, smoothed, diverged = _sweep(model, plan, x, y, batches, lrs)
            end = None
            if sharpness:
                finite = all(np.isfinite(to_host(p.data)).all() for p in plan.params)
                end = _largest_eigenvalue(plan, x[fixed], y[fixed]) if finite else math.nan
    finally:
        snapshot.restore()
    lrs = lrs[:len(smoothed)]
    found = None if start is None else {
        "start": start, "end": end, "stable_lr": 2.0 / start if start > 0 else math.inf}
    return LRFinder(lrs, np.array(smoothed), np.array(raw), _steepest(lrs, np.array(smoothed)),
                    found, diverged)


# ------------------------------------------------------------------ the sweep
def _rates(start_lr, end_lr, steps):
    """``steps`` rates from ``start_lr`` to ``end_lr``, evenly spaced on a log scale."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not 0 < value < math.inf:
            raise ValueError(f"find_lr: {name} must be a positive finite number, got {value!r}")
    if not end_lr > start_lr:
        raise ValueError(f"find_lr: end_lr must be larger than start_lr, got start_lr={start_lr!r} "
                         f"and end_lr={end_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"find_lr: steps must be an integer >= 2, got {steps!r}")
    return float(start_lr) * (float(end_lr) / float(start_lr)) ** (np.arange(steps) / (steps - 1))


def _check_first_order(optimizer):
    """ValueError for an optimizer whose ``step`` needs an argument (LBFGS's closure excepted)."""
    if getattr(optimizer, "full_batch", False):
        return
    needed = [name for name, parameter in inspect.signature(optimizer.step).parameters.items()
              if parameter.default is parameter.empty
              and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]
    if needed:
        raise ValueError(f"find_lr: the sweep calls step() once per batch, but "
                         f"{type(optimizer).__name__}.step needs {', '.join(needed)} (and the "
                         "optimizer has no full_batch flag); compile with 'sgd', 'adam', ... to "
                         "sweep its rate")


def _batches(n, batch_size, steps):
    """``steps`` batches of indices, from passes over fresh permutations (as ``fit``)."""
    batches = []
    while len(batches) < steps:
        order = random.generator().permutation(n)
        batches += [order[start:start + batch_size] for start in range(0, n, batch_size)]
    return batches[:steps]


def _sweep(model, plan, x, y, batches, lrs):
    """One ``_train_step`` per rate; ``(raw losses, smoothed losses, diverged)``."""
    raw, smoothed, average, best = [], [], 0.0, math.inf
    for step, (batch, lr) in enumerate(zip(batches, lrs)):
        plan.optimizer.lr = float(lr)
        loss, _ = model._train_step(plan, x[batch], y[batch])
        value = float(loss.data)
        if not math.isfinite(value):
            return raw, smoothed, True
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        raw.append(value)
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        if smoothed[-1] > DIVERGENCE * best:
            return raw, smoothed, True
        best = min(best, smoothed[-1])
    return raw, smoothed, False


def _steepest(lrs, smoothed):
    """The rate where ``smoothed`` falls fastest against log(lr), up to its minimum."""
    stop = int(np.argmin(smoothed)) + 1 if len(smoothed) else 0
    if stop < 2:
        return float(lrs[0])
    slopes = np.gradient(smoothed[:stop], np.log(lrs[:stop]))
    return float(lrs[int(np.argmin(slopes))])


def _largest_eigenvalue(plan, x, y):
    """The largest Hessian eigenvalue of the training objective on ``(x, y)``."""
    params = [p for p in plan.params if p.requires_grad]
    values, _ = hessian_eigenvalues(lambda: plan.objective(x, y)[0], params, k=1, tol=1e-6, seed=0)
    return float(values[0])


# ------------------------------------------------------------------ putting it back
class _Snapshot:
    """Copies of what a sweep changes, written back into their own arrays (a captured step views them)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        params = model.parameters()
        self.params = [(p, p.data, copy.copy(p.data), p.grad, copy.copy(p.grad)) for p in params]
        self.buffers = [(module, name, array, copy.copy(array)) for module in model.modules()
                        for name, array in module._buffers.items() if array is not None]
        self.model_dict = {key: model.__dict__[key] for key in ("_plan_cache",) if key in model.__dict__}
        keep = {id(p): p for p in params}
        keep.update({id(p.data): p.data for p in params})
        try:
            self.optimizer_dict = copy.deepcopy(vars(optimizer), keep)
        except Exception as error:  # an optimizer holding something that cannot be copied
            raise TypeError(f"find_lr: cannot copy the state of {type(optimizer).__name__} to "
                            f"restore it after the sweep: {error}") from None

    def restore(self):
        for p, data, saved, grad, saved_grad in self.params:
            p.data = _write_back(data, saved)
            p.grad = grad if grad is None else _write_back(grad, saved_grad)
        for module, name, array, saved in self.buffers:
            _write_back(array, saved)
            if module._buffers.get(name) is not array:
                module.register_buffer(name, array)
        _write_back(vars(self.optimizer), self.optimizer_dict)
        self.model.__dict__.pop("_plan_cache", None)
        self.model.__dict__.update(self.model_dict)


def _write_back(live, saved):
    """``saved``'s value, kept in ``live``'s own containers and arrays where they match."""
    if live is saved:
        return live
    if type(live) is type(saved) and (isinstance(saved, np.ndarray) or is_device_array(saved)) \
            and live.shape == saved.shape and live.dtype == saved.dtype:
        live[...] = saved
        return live
    if type(saved) is dict and type(live) is dict:
        restored = {key: _write_back(live[key], value) if key in live else value
                    for key, value in saved.items()}
        live.clear()
        live.update(restored)
        return live
    if type(saved) is list and type(live) is list and len(saved) == len(live):
        live[:] = [_write_back(a, b) for a, b in zip(live, saved)]
        return live
    if type(live) is type(saved) and hasattr(saved, "__dict__") and not isinstance(saved, type):
        _write_back(vars(live), vars(saved))  # an object the optimizer holds (a wrapped optimizer)
        return live
    return saved
