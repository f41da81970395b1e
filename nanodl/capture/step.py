"""``CapturedStep``: records a program, replays it while ``signature`` is unchanged, and plugs
into ``fit`` (``nn.plan.register_capture``)."""
import threading
from itertools import repeat
from operator import attrgetter, le
from threading import get_ident

import numpy as np

from .. import autograd
from ..backend import device_of, get_kernels, is_device_array, kernels
from ..nn.layers import Dense
from ..nn.model import Sequential
from ..nn.plan import _Plan, register_capture
from ..tensor import Tensor
from .stages import (BufferedDenseStage, DenseStage, EngineLoss, EngineStage, FlatUpdate,
                     SoftmaxXentLoss, _leaf, _Like, _Program)

__all__ = ["CapturedStep", "KEPT_SIGNATURES", "signature"]

KEPT_SIGNATURES = 4  # programs kept per step (full batches, the last partial batch, ...)


def _debug_hooks():
    """Whether this thread has autograd hooks (``detect_anomaly``): they must see every node."""
    ident = get_ident()
    return ident in autograd.mode.forward_hooks or ident in autograd.mode.backward_hooks


# ---------------------------------------------------------------- what a recording depends on
# An optimizer's running numbers, and what each program's key and FlatUpdate.intact check
_PER_STEP = frozenset({"_lr", "lr", "step_count", "_kernels", "_params", "_state"})
_CONTAINERS = ("_parameters", "_modules", "_forward_hooks")
_STATE = attrgetter("__dict__")
_PARAM = attrgetter("requires_grad", "data.shape", "data.dtype")


def _modules(model):
    """``model`` and every module below it, in the order ``signature`` reads them."""
    stack = [model]
    while stack:
        module = stack.pop()
        yield module
        stack += [sub for sub in module.__dict__.get("_modules", {}).values() if sub is not None]


def _owners(model, optimizer, loss):
    """``(object, attributes skipped)`` for each object whose ``__dict__`` the signature reads."""
    for module in _modules(model):
        skip = set(module.__dict__.get("_buffers") or ())
        yield module, skip | getattr(type(module), "_bookkeeping", frozenset())
    for opt in (optimizer, optimizer.__dict__.get("optimizer")):  # and a wrapper's inner one
        if opt is not None:
            yield opt, _PER_STEP
    if hasattr(loss, "__dict__"):
        yield loss, frozenset()


def signature(model, optimizer, loss):
    """A tuple that changes when anything a recorded step depends on changes (docs/capture.md,
    "A recording never goes stale"); parameter list and state layout: each program checks them."""
    parts = [type(optimizer)]
    for owner, skip in _owners(model, optimizer, loss):
        state = owner.__dict__
        parts.append(tuple(item for item in state.items() if item[0] not in skip))
        if state.get("_forward_hooks"):
            parts.append(tuple(state["_forward_hooks"].values()))
        parts += [_PARAM(p) for p in state.get("_parameters", {}).values() if p is not None]
    return tuple(parts)


def same(first, second):
    """Whether two signatures are equal (an ``==`` that gives no single bool counts as a change)."""
    try:
        return bool(first == second)
    except Exception:  # noqa: BLE001 - an elementwise == on a replaced array
        return False


class _Watch:
    """``signature``'s cheap twin: ``unchanged()`` True means all the signature reads is as it
    was; False means maybe changed (the signature decides). See docs/capture.md.
    """

    def __init__(self, model, optimizer, loss):
        self.whole, self.copies, self.partial, self.keysets, self.kept = [], [], [], [], []
        self.exact = True
        owners = list(_owners(model, optimizer, loss))
        for owner, skip in owners:
            state = owner.__dict__
            copy = {key: dict(value) if key in _CONTAINERS and type(value) is dict else value
                    for key, value in state.items() if key not in skip}
            if len(copy) == len(state):
                self.whole.append(owner)
                self.copies.append(copy)
            else:
                self.partial.append(owner)
                self.keysets.append(frozenset(state))
                self.kept.append(copy.items())
            self.exact &= type(owner).__eq__ is object.__eq__ and all(
                type(state.get(name, {})) is dict for name in _CONTAINERS + ("_buffers",))
        self.owners = [owner for owner, _ in owners]
        self.types = [type(owner) for owner in self.owners]
        self.kinds = [kind for kind in self.types if hasattr(kind, "_bookkeeping")]
        self.bookkeeping = [kind._bookkeeping for kind in self.kinds]
        self.buffered = [o for o in self.owners if o.__dict__.get("_buffers")]  # names only
        self.buffers = [frozenset(o.__dict__["_buffers"]) for o in self.buffered]
        self.ordered = [o for o in self.owners if max(map(len, _order(o))) > 1]  # walk, hook order
        self.orders = list(map(_order, self.ordered))
        self.params = [p for o in self.owners for p in o.__dict__.get("_parameters", {}).values()
                       if p is not None]
        self.attributes = list(map(_PARAM, self.params))
        self.exact &= all(p.data.size > 1 for p in self.params)

    def unchanged(self):
        try:
            return (self.exact and list(map(type, self.owners)) == self.types
                    and list(map(_STATE, self.whole)) == self.copies
                    and list(map(dict.keys, map(_STATE, self.partial))) == self.keysets
                    and all(map(le, self.kept, map(dict.items, map(_STATE, self.partial))))
                    and list(map(getattr, self.kinds, repeat("_bookkeeping"))) == self.bookkeeping
                    and (not self.buffered or list(map(_buffer_names, self.buffered)) == self.buffers)
                    and (not self.ordered or list(map(_order, self.ordered)) == self.orders)
                    and list(map(_PARAM, self.params)) == self.attributes)
        except Exception:  # noqa: BLE001 - a changed attribute whose == raises: maybe changed
            return False


def _buffer_names(module):
    return module.__dict__["_buffers"].keys()


def _order(module):
    state = module.__dict__
    return tuple(state.get("_modules") or ()), tuple(state.get("_forward_hooks") or ())


# ---------------------------------------------------------------- the captured step
class CapturedStep:
    """One training step of ``model``: forward, ``loss``, backward, ``optimizer.step()``,
    captured on first use and replayed after (see the module docstring).

    ``loss`` is a loss name, a ``nanodl.losses`` function or ``Loss``, or a callable
    ``loss(pred, target)`` returning a scalar Tensor. ``step(x, y)`` trains on one batch
    and returns its loss as a float, exactly as ``fit``'s eager step would.
    ``stages`` and ``loss_stage`` show the last program; ``reason`` says why a step is
    not captured (then every call is eager). Threads may share a step (it holds a lock).
    """

    def __init__(self, model, loss, optimizer):
        self._setup(model, optimizer, loss, None)
        self._labels_checked = False  # a user's labels: scanned every step

    @classmethod
    def for_plan(cls, plan):
        """The captured twin of ``_Plan.step`` for one ``fit``'s ``_Plan``."""
        step = cls.__new__(cls)
        step._setup(plan.model, plan.optimizer, plan.loss_spec, plan)
        step._labels_checked = True  # fit checked every label of the data once
        return step

    def _setup(self, model, optimizer, loss, plan):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self._plan, self._own_plan = plan, plan is None  # a plan of its own is rebuilt
        self._programs, self._recorded, self._watch = {}, None, None
        self._flat = None  # the FlatUpdate the programs share, if one applies
        self._lock = threading.Lock()
        self.stages, self.loss_stage = (), None
        self.reason = self._refusal()

    def _refusal(self):
        """Why the plan's step cannot be captured, or None."""
        plan = self._plan
        if plan is not None and plan.full_batch:  # optim.LBFGS calls its closure repeatedly
            return "a full-batch optimizer (its step takes a closure)"
        if plan is not None and plan.penalty is not None:
            return "weight penalties"
        return None

    def signature(self):
        """What the recorded programs depend on (``nanodl.capture.signature``)."""
        return signature(self.model, self.optimizer, self.loss)

    # ------------------------------------------------------------ running
    def __call__(self, x, y, weight=None):
        x = x.data if isinstance(x, Tensor) else x if is_device_array(x) else np.asarray(x)
        y = y.data if isinstance(y, Tensor) else y
        loss, _ = self._run(x, y if is_device_array(y) else np.asarray(y),
                            None if weight is None else np.asarray(weight))
        return float(loss)

    def run(self, x, target, weight=None):
        """Train on one batch of prepared arrays; ``(loss, out)``, copies (a replay reuses its buffers)."""
        loss, out = self._run(x, target, weight)
        return loss.copy(), out.copy()

    def _run(self, x, target, weight):
        """``run`` without the copies (``fit`` reads ``out`` before the next step)."""
        with self._lock:
            if _debug_hooks():  # detect_anomaly or a user's hook must see every node
                return self._eager(x, target, weight)
            if self._stale():
                self._forget()
            elif self.reason is not None:
                return self._eager(x, target, weight)
            key = (x.shape, x.dtype, target.shape, target.dtype, weight is None,
                   device_of(x), get_kernels(), id(self.optimizer._params))
            program = self._programs.get(key)
            if program is not None and program.intact():
                return program.run(x, target, weight)
            return self._capture(key, x, target, weight)

    def _stale(self):
        """Whether something the programs depend on changed (the watch, else the signature)."""
        watch = self._watch
        if watch is not None and watch.unchanged():
            return False
        if not same(self.signature(), self._recorded):
            return True
        if watch is None or watch.exact:  # one that can never vouch stays: rebuilding it is waste
            self._watch = _Watch(self.model, self.optimizer, self.loss)
        return False

    def _forget(self):
        self._programs.clear()
        self._flat = None
        self.stages, self.loss_stage = (), None
        if self._own_plan:
            self._plan = None
        self.reason = self._refusal()

    def _eager(self, x, target, weight):
        """The one eager step, ``_Plan.step``; ``(loss, out)`` as arrays."""
        plan = self._plan_now()
        loss, out = plan.step(x, target, weight)
        if self._own_plan and self._model_params != [id(p) for p in self.model.parameters()]:
            self._plan = None  # the step built a lazy layer: plan again with its parameters
            self._plan_now()
        return loss.data, out.data

    def _plan_now(self):
        """``fit``'s plan, or one made from the model as it is now; its ``params`` include the
        optimizer's, so a parameter the model no longer holds keeps no stale gradient."""
        if self._plan is None:
            plan = _Plan(self.model, None, None, self.optimizer, self.loss)
            self._model_params = [id(p) for p in plan.params]
            owned = set(self._model_params)
            plan.params += [p for p in self.optimizer.params or () if id(p) not in owned]
            self._plan = plan
        return self._plan

    # ------------------------------------------------------------ capturing
    def _capture(self, key, x, target, weight):
        """The eager step, traced (what each layer received and returned), then compiled."""
        self._plan_now()
        layers = self._layers()
        seen = {}

        def record(module, args, out):  # returns None: the output stays as it is
            seen.setdefault(id(module), (args[0], out))
        handles = [layer.register_forward_hook(record)
                   for layer, _, _ in layers if hasattr(layer, "register_forward_hook")]
        try:
            loss, out = self._eager(x, target, weight)
        finally:
            for handle in handles:
                handle.remove()
        if self.reason is None:
            program = self._compile(x, target, weight, out, layers, seen)
            if program is not None:
                if len(self._programs) >= KEPT_SIGNATURES:
                    self._programs.pop(next(iter(self._programs)))
                self._programs[key] = program
                self.stages, self.loss_stage = tuple(program.stages), program.loss
        self._recorded = self.signature()  # after the step: what it built (a lazy layer) counts
        self._watch = _Watch(self.model, self.optimizer, self.loss)
        return loss, out

    @property
    def _kind(self):
        """``'softmax'``/``'sigmoid'`` (fused head), ``'from_logits'``, or None (engine loss)."""
        plan = self._plan
        if plan.logits is None and plan.loss_name == "sparse_categorical_crossentropy" and \
                (plan.loss_config or {}).get("from_logits") and plan.loss_reduction == "mean":
            return "from_logits"
        return plan.logits

    def _layers(self):
        """``(layer, activation or None, alpha)`` in call order; not a plain Sequential: one layer."""
        model = self.model
        if not isinstance(model, Sequential) or type(model).forward is not Sequential.forward:
            return [(self._plan.forward, None, None)]
        layers = list(model.layers)
        result = []
        for index, layer in enumerate(layers):
            if index == len(layers) - 1 and self._kind in ("softmax", "sigmoid"):
                result.append((layer, "linear", 0.0))  # fused head: pre_activation (logits)
            elif isinstance(layer, Dense) and isinstance(layer.activation, str):
                result.append((layer, layer.activation, layer.alpha))
            else:
                result.append((layer, None, None))
        return result

    def _compile(self, x, target, weight, out, layers, seen):
        """The program for batches like this one, or None (and ``reason``)."""
        params = list(self._plan.params)
        if len({id(p) for p in params}) != len(params) or \
                len({id(layer) for layer, _, _ in layers}) != len(layers):
            self.reason = "a parameter is used by two layers"
            return None
        self.reason = self._refusal()
        if self.reason is not None:
            return None
        table = kernels(x)
        stages, need_x = [], False
        layer_input = x  # what the next layer receives (a Tensor or, first, the batch)
        for layer, activation, alpha in layers:
            received, returned = seen.get(id(layer), (layer_input, None))
            if isinstance(layer, Dense) and activation not in (None, "softmax") \
                    and not layer.__dict__.get("_forward_hooks") \
                    and received.ndim == 2 and received.dtype == layer.kernel.dtype:
                if table.buffered is not None:
                    stage = BufferedDenseStage(layer, activation, alpha, need_x, table,
                                               received.shape[0])
                else:
                    stage = DenseStage(layer, activation, alpha, need_x, table)
                need_x = stage.requires_grad
            else:
                head = activation == "linear" and isinstance(layer, Dense)
                stage = EngineStage(layer.pre_activation if head else layer, need_x)
                need_x = True  # whether the output needs a gradient is the engine's business
            stages.append(stage)
            layer_input = returned if returned is not None else _Like(received, layer)
        if self._kind in ("softmax", "from_logits") and weight is None and out.ndim == 2 \
                and (target.ndim == 2 or target.dtype.kind in "iu"):
            loss = SoftmaxXentLoss(table, out, self._labels_checked)
        else:
            loss = EngineLoss(self._plan.loss)
        flat = self._flat  # shared by the programs whose stages fill all its gradients
        if flat is None or not flat.intact():
            flat = self._flat = FlatUpdate.build(self.optimizer, stages)
        elif not flat.covers(flat.params, stages):
            flat = None  # this program (another table, a BatchNorm...) updates per parameter
        if flat is not None:
            flat.adopt(stages)
        return _Program(stages, loss, params, self.optimizer, table.compute, flat)


def _fit_step(plan):
    """``fit``'s captured step for its ``_Plan`` (registered with ``nn.plan``)."""
    captured = CapturedStep.for_plan(plan)

    def train_step(plan, x, target, weight=None):
        loss, out = captured._run(x, target, weight)
        return _leaf(loss), _leaf(out)
    train_step.captured = captured
    return train_step


register_capture(_fit_step)
