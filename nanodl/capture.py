"""Captured training steps: run a step once through the engine, then replay it lean.

An eager training step pays for flexibility on every batch: a ``Tensor`` and a
``Function`` node per op, the graph walk (consumer counts, pending gradients, shape
and dtype checks at every edge) and argument checks in every kernel call. For a
small network that bookkeeping costs more than the arithmetic. But batch after
batch the step is the *same*: same layers, shapes, dtypes and kernels. So a
``CapturedStep`` does that work once:

1. **Capture.** The first call with a new *key* (shapes, dtypes and device of the
   batch, the kernel table, the optimizer's parameter list) runs the one eager step
   (``nn.plan._Plan.step``, what ``fit`` runs), every check included, while it
   records what each layer received. From that trace it builds a *program*: one
   stage per layer, a loss stage (through the same ``_Plan.loss``), the optimizer.
2. **Replay.** Every later call with that key runs the program: the stages'
   forwards in order, the loss, the backwards in reverse order, the optimizer. No
   graph is built: each stage keeps what its backward needs and hands the gradient
   of its input to the stage before it.
3. **Never stale.** Before every replay the step compares a ``signature`` of all
   the program depends on (each module's attributes and hooks, each parameter's
   ``requires_grad``, shape and dtype, the optimizer's type and hyperparameters, the
   loss's reduction) with the one of its recording, and records again when it
   changed. One lock lets threads share a step; ``run`` returns arrays of its own.

The stages:

* ``DenseStage``: a ``Dense`` layer (2-D input of its kernel's dtype, any activation
  but softmax, no forward hooks) replayed from the kernel table's unchecked compute
  functions (``table.compute.linear_forward`` / ``linear_backward``, see
  ``nanodl.backend.table``): no node, no Tensor, no argument checks. Its gradients go
  to ``kernel.grad`` and ``bias.grad``, where the engine would leave them. On a
  table with buffered compute functions (``table.buffered``) it is a
  ``BufferedDenseStage``, which writes into arrays allocated once.
* ``EngineStage``: any other layer (Dropout, BatchNorm, an activation, a custom
  layer, or a whole model that is not a plain ``Sequential``) runs through the
  engine, on a leaf tensor holding its input. Its Python code runs every step, so
  its side effects (dropout's random masks, BatchNorm's moving averages) happen
  exactly as in the eager step, drawing the same random numbers in the same order.
* the loss: the fused softmax cross-entropy (a softmax head trained with a
  cross-entropy, ``nn.plan.fuse_logits``, or a sparse cross-entropy from logits)
  calls its op's own ``forward`` and ``backward`` without building a node (the op
  still checks the labels: they are new data every step); any other loss runs
  through the engine.
* the optimizer's update (its bookkeeping, learning rate and schedule are its own),
  with the unchecked compute functions in place of the checked table: one kernel
  call over all parameters laid end to end (``FlatUpdate``) where the compiled
  table's Dense stages write every gradient, else the optimizer's own ``step()``.

Every stage calls the same functions, in the same order, on the same arrays as the
eager step, so the results are identical bit for bit; the tests hold them to that
(every optimizer, dropout, BatchNorm, a last partial batch, a learning-rate
schedule, both CPU kernel tables). A new key is captured again; the last
``KEPT_SIGNATURES`` programs are kept, so a last partial batch does not recapture
every epoch. Weight penalties and a parameter shared by two layers are not captured
(their gradients meet in one sum whose order the stages would have to mimic): such
steps stay eager, and ``reason`` says why; so does every step while the thread has
autograd hooks (``detect_anomaly``). ``fit(capture='auto')``, the default, trains
through a captured step (see ``nn.plan.register_capture``, the seam this module plugs
into). ``docs/capture.md`` walks through it.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn, optim
>>> from nanodl.capture import DenseStage
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(16, activation='relu', input_dim=4), nn.Dense(3)])
>>> opt = optim.SGD(model.parameters(), lr=0.1)
>>> step = nd.CapturedStep(model, nd.losses.SparseCategoricalCrossentropy(from_logits=True), opt)
>>> x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
>>> y = np.arange(8) % 3
>>> first = step(x, y)                # the capture: an eager step, then the program is built
>>> second = step(x, y)               # a replay
>>> second < first, all(isinstance(s, DenseStage) for s in step.stages), len(step.stages)
(True, True, 2)
"""
import sys
import threading
import weakref
from threading import get_ident

import numpy as np

from . import autograd
from .backend import array_module, device_of, get_kernels, is_device_array, kernels, threads
from .backend.activations import OUTPUT_GRAD_ACTIVATIONS
from .nn.plan import _Plan, register_capture
from .tensor import Tensor

__all__ = ["CapturedStep", "KEPT_SIGNATURES"]

KEPT_SIGNATURES = 4  # programs kept per step (full batches, the last partial batch, ...)


def _leaf(data, requires_grad=False):
    """A leaf Tensor around ``data`` itself: no copy, no checks (the data is ours)."""
    tensor = Tensor.__new__(Tensor)
    tensor.data, tensor.grad, tensor.grad_fn, tensor.name = data, None, None, None
    tensor.requires_grad = requires_grad
    return tensor


def _debug_hooks():
    """Whether this thread has autograd hooks (``detect_anomaly`` installs two): then
    every step is the eager one, whose nodes the hooks see."""
    ident = get_ident()
    return ident in autograd.mode.forward_hooks or ident in autograd.mode.backward_hooks


def _seed_gradient(loss):
    """d(loss)/d(loss): what ``Tensor.backward()`` starts from for a scalar loss."""
    return array_module(loss).ones_like(loss)


# ---------------------------------------------------------------- stages
class DenseStage:
    """A ``Dense`` layer from the kernel table's compute functions: no node, no checks."""

    def __init__(self, layer, activation, alpha, need_x, table):
        self.layer, self.kernel, self.bias = layer, layer.kernel, layer.bias
        self.activation, self.alpha, self.need_x = activation, alpha, need_x
        self.need_kernel = self.kernel.requires_grad
        self.need_bias = self.bias is not None and self.bias.requires_grad
        self.requires_grad = need_x or self.need_kernel or self.need_bias  # of the output
        self.forward_kernel = table.compute.linear_forward
        self.backward_kernel = table.compute.linear_backward
        self.x = self.saved = None

    def forward(self, x):
        kernel = self.kernel.data
        bias = None if self.bias is None else self.bias.data
        with threads.gemm(x.shape[0], kernel.shape[0], kernel.shape[1]):
            out, saved = self.forward_kernel(x, kernel, bias, self.activation, self.alpha)
        if self.requires_grad:
            self.x, self.saved = x, saved
        return out

    def backward(self, grad):
        kernel = self.kernel.data
        with threads.gemm(self.x.shape[0], kernel.shape[0], kernel.shape[1]):
            dx, dkernel, dbias = self.backward_kernel(
                self.x, kernel, self.saved, grad, self.activation, self.alpha,
                self.need_x, self.need_kernel, self.need_bias)
        if self.need_kernel:
            self.kernel.grad = dkernel
        if self.need_bias:
            self.bias.grad = dbias
        self.x = self.saved = None  # freed after backward, as the engine does
        return dx

    def unchanged(self):
        """Whether the layer still holds the parameters this stage was built with."""
        return self.layer.kernel is self.kernel and self.layer.bias is self.bias


class BufferedDenseStage(DenseStage):
    """A ``DenseStage`` on a table with buffered compute functions (``table.buffered``:
    the compiled table's ``linear_forward_into`` / ``linear_backward_into``): each step
    writes the same arrays, allocated here once, so a replay allocates nothing. The
    kernel and bias gradients are these buffers too: like PyTorch's ``.grad``, each
    step overwrites them.
    """

    def __init__(self, layer, activation, alpha, need_x, table, rows):
        super().__init__(layer, activation, alpha, need_x, table)
        self.forward_kernel = table.buffered.linear_forward_into
        self.backward_kernel = table.buffered.linear_backward_into
        kernel = self.kernel.data
        dtype, (inputs, units) = kernel.dtype, kernel.shape
        self.z = np.empty((rows, units), dtype)
        in_place = activation in OUTPUT_GRAD_ACTIVATIONS  # out is z itself, as the table's
        self.out = self.z if in_place else np.empty((rows, units), dtype)
        self.dz = None if activation == "linear" else np.empty((rows, units), dtype)
        self.dx = np.empty((rows, inputs), dtype) if need_x else None
        self.dkernel = np.empty((inputs, units), dtype) if self.need_kernel else None
        self.dbias = np.empty(units, dtype) if self.need_bias else None
        serial = rows * inputs * units <= threads.GEMM_SERIAL_ANYWAY  # no scope needed
        self.scope = (lambda: threads.UNCHANGED) if serial else \
            (lambda: threads.gemm(rows, inputs, units))

    def forward(self, x):
        bias = None if self.bias is None else self.bias.data
        with self.scope():
            self.forward_kernel(x, self.kernel.data, bias, self.activation, self.alpha,
                                self.z, self.out)
        if self.requires_grad:
            self.x = x
        return self.out

    def backward(self, grad):
        with self.scope():
            self.backward_kernel(self.x, self.kernel.data, self.z, grad, self.activation,
                                 self.alpha, self.dz, self.dx, self.dkernel, self.dbias)
        if self.need_kernel:
            self.kernel.grad = self.dkernel
        if self.need_bias:
            self.bias.grad = self.dbias
        self.x = None
        return self.dx


class EngineStage:
    """Any function of one Tensor (a layer, a model's forward) through the engine."""

    def __init__(self, function, need_x):
        self.function, self.need_x = function, need_x
        self.x = self.out = None

    def forward(self, x):
        self.x = _leaf(x, self.need_x)
        self.out = self.function(self.x)
        return self.out.data

    def backward(self, grad):
        x, out = self.x, self.out
        self.x = self.out = None
        if out is x:  # the layer handed its input back (Flatten of a 2-D batch)
            return grad
        if out.grad_fn is not None:
            autograd.backward(out, grad)
        return x.grad

    def unchanged(self):
        return True


class SoftmaxXentLoss:
    """The fused softmax cross-entropy, mean over the batch, from the compute functions:
    the arithmetic of ``ops.loss.SoftmaxCrossEntropy`` without its node and checks.

    Only the label *values* are new each step: unless the caller vouches for them
    (``fit`` checked every label once), they are scanned (one pass) and a bad one is
    handed to the checked kernel, which raises its usual error.
    """

    def __init__(self, table, logits, labels_checked):
        self.table = table
        self.forward_kernel = table.compute.softmax_xent_forward
        self.backward_kernel = table.compute.softmax_xent_backward
        self.scan_labels = None if labels_checked else table.device.scan_labels
        xp, rows = array_module(logits), len(logits)
        self.rows = max(rows, 1)
        # d(mean)/d(loss_i) from the seed d(loss)/d(loss) = 1, as the op's backward
        # computes it every step (it is the same every step).
        self.row_grad = xp.empty(rows, dtype=logits.dtype)
        self.row_grad[...] = xp.ones((), dtype=logits.dtype) / self.rows

    def __call__(self, logits, target, weight):
        if self.scan_labels is not None and target.ndim == 1:
            target, bad = self.scan_labels(target, logits.shape[1])
            if bad >= 0:
                self.table.softmax_xent_forward(logits, target)  # raises the table's error
        losses, probs = self.forward_kernel(logits, target)
        loss = losses.sum() / self.rows  # as the op computes it: a 0-d array on the GPU
        if type(loss) is not type(losses):
            loss = np.asarray(loss)  # NumPy gives a scalar: the 0-d array run() returns
        return loss, self.backward_kernel(probs, target, self.row_grad)


class EngineLoss:
    """Any loss ``loss_fn(out, target, weight) -> scalar Tensor``, through the engine."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def __call__(self, out, target, weight):
        leaf = _leaf(out, True)
        loss = self.loss_fn(leaf, target, weight)
        if loss.grad_fn is not None:
            autograd.backward(loss, _seed_gradient(loss.data))
        return loss.data, leaf.grad


class FlatUpdate:
    """The optimizer's update as *one* kernel call over every parameter.

    An eager step calls the update kernel once per parameter, and for a small network
    those calls cost more than the arithmetic. The built-in updates are elementwise
    (``Optimizer._update``), so one call over all parameters laid end to end does the
    same arithmetic, bit for bit. At capture the parameters' values, their optimizer
    state and the Dense stages' gradient buffers are moved into one array each; every
    ``.data``, state array and ``.grad`` becomes a view of its segment (the values are
    unchanged, and the views are what ``model.parameters()`` and the optimizer's
    ``state_dict()`` read). A replay counts the step as ``Optimizer.step`` does and
    calls ``_update`` once.

    It applies when buffered Dense stages (``table.buffered``) own every parameter
    the optimizer updates (a BatchNorm's gamma comes from the engine: then the step
    updates per parameter), all of one dtype with one step count, and the optimizer
    uses ``Optimizer.step``, and when no one else holds a parameter's or a state's
    array (a reference kept by the user, ``w = layer.kernel.data``, must stay the
    array that is trained). If anything rebinds a view (``load_state_dict``, a
    parameter given a new array) the program is captured again.
    """

    def __init__(self, optimizer, params):
        self.optimizer, self.params, self.states = optimizer, params, optimizer._state
        ends = np.cumsum([p.data.size for p in params])
        self.segments = list(zip(ends - [p.data.size for p in params], ends))
        dtype = params[0].data.dtype
        self.data, self.grad = np.empty(ends[-1], dtype), np.empty(ends[-1], dtype)
        slots = [name for name in self.states[0] if name != "step"]
        self.state = {"step": self.states[0]["step"]}
        for name in slots:
            self.state[name] = np.empty(ends[-1], dtype)
        self.views = []  # (holder, key, weakref to the view): what must still be in place
        for param, state, segment in zip(params, self.states, self.segments):
            self._move(param, "data", self.data, segment)
            for name in slots:
                self._move(state, name, self.state[name], segment)

    def _move(self, holder, key, flat, segment):
        value = holder[key] if type(holder) is dict else getattr(holder, key)
        view = flat[segment[0]:segment[1]].reshape(value.shape)
        view[...] = value
        if type(holder) is dict:
            holder[key] = view
        else:
            setattr(holder, key, view)
        self.views.append((holder, key, weakref.ref(view)))  # weak: see build()

    @staticmethod
    def covers(params, stages):
        """Whether the stages write the gradients of exactly ``params``, into buffers."""
        owned = set()
        for stage in stages:
            if isinstance(stage, BufferedDenseStage):
                owned.update(id(p) for p, needed in ((stage.kernel, stage.need_kernel),
                                                     (stage.bias, stage.need_bias)) if needed)
        return len(owned) == len(params) and all(id(p) in owned for p in params)

    @classmethod
    def build(cls, optimizer, stages):
        """A FlatUpdate for these stages, or None where it does not apply (see above)."""
        from .optim.optimizers import Optimizer
        params, states = optimizer._params, optimizer._state
        if type(optimizer).step is not Optimizer.step or "step" in vars(optimizer) or \
                "_update" in vars(optimizer) or not states or \
                len(states) != len(params) or not cls.covers(params, stages) or \
                len({state["step"] for state in states}) != 1 or \
                len({p.data.dtype for p in params}) != 1:
            return None
        arrays = [p.data for p in params]
        arrays += [value for state in states for value in state.values()
                   if isinstance(value, np.ndarray)]
        # Held only by its parameter or state dict (+ ``arrays``, the loop variable and
        # getrefcount's argument)? Then nobody can notice the move. An array the user
        # keeps (``w = layer.kernel.data``, or a view of it) must stay the trained one.
        if any(sys.getrefcount(array) > 4 for array in arrays):
            return None
        del arrays
        return cls(optimizer, params)

    def adopt(self, stages):
        """Point the stages' gradient buffers at their segments of the flat gradient."""
        where = {id(param): segment for param, segment in zip(self.params, self.segments)}
        for stage in stages:
            if isinstance(stage, BufferedDenseStage):
                if stage.need_kernel:
                    stage.dkernel = self._segment(where[id(stage.kernel)], stage.dkernel.shape)
                if stage.need_bias:
                    stage.dbias = self._segment(where[id(stage.bias)], stage.dbias.shape)

    def _segment(self, segment, shape):
        return self.grad[segment[0]:segment[1]].reshape(shape)

    def intact(self):
        """Whether every parameter, state array and state list is still the flat one."""
        if self.optimizer._state is not self.states or self.optimizer._params is not self.params:
            return False
        for holder, key, view in self.views:
            if (holder[key] if type(holder) is dict else getattr(holder, key)) is not view():
                return False
        return True

    def step(self):
        """``optimizer.step()`` for a program whose stages filled every gradient."""
        optimizer = self.optimizer
        optimizer.step_count += 1
        for state in self.states:
            state["step"] += 1
        self.state["step"] = self.states[0]["step"]
        optimizer._update(self.data, self.grad, self.state)


def _layout(states):
    """The optimizer state's layout: how many slots each parameter's state holds."""
    return None if states is None else [len(state) for state in states]


class _Program:
    """What one signature replays: stages, loss, parameters, optimizer."""

    def __init__(self, stages, loss, params, optimizer, compute, flat=None):
        self.stages, self.loss, self.params = stages, loss, params
        self.optimizer, self.compute, self.flat = optimizer, compute, flat
        self.states = optimizer._state
        self.layout = _layout(self.states)

    def intact(self):
        """Whether the layers, the optimizer's state (its lists and their slots) and the
        flat layout are still those of the capture."""
        for stage in self.stages:
            if not stage.unchanged():
                return False
        states = self.optimizer._state
        if states is not self.states or _layout(states) != self.layout:
            return False
        return self.flat is None or self.flat.intact()


    def run(self, x, target, weight):
        for param in self.params:
            param.grad = None
        out = x
        for stage in self.stages:                     # 1. forward
            out = stage.forward(out)
        loss, grad = self.loss(out, target, weight)   # 2. loss, and d(loss)/d(out)
        for stage in reversed(self.stages):           # 3. backward
            if grad is None:
                break
            grad = stage.backward(grad)
        optimizer = self.optimizer                    # 4. optimizer step, unchecked kernels
        optimizer._kernels = self._compute_table
        try:
            if self.flat is not None:
                self.flat.step()
            else:
                optimizer.step()
        finally:
            del optimizer._kernels
        return loss, out

    def _compute_table(self, data):
        return self.compute


# ---------------------------------------------------------------- what a recording depends on
# An optimizer's running numbers, and what each program's key and FlatUpdate.intact check
_PER_STEP = frozenset({"_lr", "lr", "step_count", "_kernels", "_params", "_state"})


def signature(model, optimizer, loss):
    """A tuple that changes when anything a recorded step depends on changes.

    Every module of ``model`` (its attributes: layers, activations, configuration,
    ``training``, forward hooks; not its buffers, which the layer's own code updates
    each step, nor what its class declares ``_bookkeeping``, as ``Model``'s history), each parameter's ``requires_grad``, shape and dtype, the optimizer's
    attributes but its learning rate and step count (its type and hyperparameters)
    and the loss's attributes (its reduction). The optimizer's parameter list and
    state layout are each program's to check (its key, ``_Program.intact``). The
    tuple holds the objects themselves, so a recording's are never freed and
    compare by identity first (``same``); the whole check costs a few microseconds.
    """
    parts = [type(optimizer)]
    stack = [model]
    while stack:
        module = stack.pop()
        state = module.__dict__
        skip = state.get("_buffers") or ()
        bookkeeping = getattr(type(module), "_bookkeeping", ())
        if bookkeeping:
            skip = set(skip) | bookkeeping
        parts.append(tuple(state.items()) if not skip else
                     tuple(item for item in state.items() if item[0] not in skip))
        hooks = state.get("_forward_hooks")
        if hooks:
            parts.append(tuple(hooks.values()))
        for param in state.get("_parameters", {}).values():
            if param is not None:
                parts.append((param.requires_grad, param.data.shape, param.data.dtype))
        stack += [sub for sub in state.get("_modules", {}).values() if sub is not None]
    for opt in (optimizer, optimizer.__dict__.get("optimizer")):  # and a wrapper's inner one
        if opt is not None:
            parts.append(tuple(item for item in vars(opt).items() if item[0] not in _PER_STEP))
    parts.append(tuple(getattr(loss, "__dict__", {}).items()))
    return tuple(parts)


def same(first, second):
    """Whether two signatures are equal (an attribute whose ``==`` does not give one
    bool, a replaced Tensor or array, counts as a change)."""
    try:
        return bool(first == second)
    except Exception:  # noqa: BLE001 - an elementwise == on a replaced array
        return False


# ---------------------------------------------------------------- the captured step
class CapturedStep:
    """One training step of ``model``: forward, ``loss``, backward, ``optimizer.step()``,
    captured on first use and replayed after (see the module docstring).

    ``loss`` is a loss name, a ``nanodl.losses`` function or ``Loss`` instance, or a
    callable ``loss(pred, target)`` returning a scalar Tensor; ``optimizer`` updates
    the model's parameters. ``step(x, y)`` trains on one batch and returns its loss
    as a float, exactly as ``fit``'s step (``nn.plan._Plan.step``, the one eager step)
    would::

        out = model(nd.Tensor(x)); loss = loss_fn(out, y)
        for p in model.parameters(): p.grad = None
        loss.backward(); optimizer.step()

    ``step.run(x, y, weight=None)`` takes prepared arrays and returns ``(loss, out)``
    as arrays the caller owns. ``stages`` and ``loss_stage`` show the last program;
    ``reason`` says why a step is not captured (then every call is the eager step).
    Before every replay the step compares a signature of what the program depends
    on (``signature``) and records again when it changed; one lock makes it safe to
    share between threads.
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
        self._programs, self._recorded = {}, None
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
        """Train on one batch of prepared arrays; returns ``(loss, out)``, arrays of the
        caller's (a replay's output buffer is reused by the next step: this is a copy)."""
        loss, out = self._run(x, target, weight)
        return loss.copy(), out.copy()

    def _run(self, x, target, weight):
        """``run`` without the copies (``fit`` reads ``out`` before the next step)."""
        with self._lock:
            if _debug_hooks():  # detect_anomaly or a user's hook must see every node
                return self._eager(x, target, weight)
            if not same(self.signature(), self._recorded):
                self._forget()
            elif self.reason is not None:
                return self._eager(x, target, weight)
            key = (x.shape, x.dtype, target.shape, target.dtype, weight is None,
                   device_of(x), get_kernels(), id(self.optimizer._params))
            program = self._programs.get(key)
            if program is not None and program.intact():
                return program.run(x, target, weight)
            return self._capture(key, x, target, weight)

    def _forget(self):
        """Drop every program: something they depend on changed (``signature``)."""
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
        """The plan of the step: ``fit``'s, or (a step of its own) one made from the
        model as it is now; its ``params`` include the optimizer's, so a parameter the
        model no longer holds keeps no stale gradient."""
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
        return loss, out

    @property
    def _kind(self):
        """How the program may compute the loss: ``'softmax'``/``'sigmoid'`` (a fused
        head, ``fuse_logits``), ``'from_logits'`` (a sparse cross-entropy on logits,
        mean), or None (through the engine)."""
        plan = self._plan
        if plan.logits is None and plan.loss_name == "sparse_categorical_crossentropy" and \
                (plan.loss_config or {}).get("from_logits") and plan.loss_reduction == "mean":
            return "from_logits"
        return plan.logits

    def _layers(self):
        """``(layer, activation, alpha)`` in the order the forward calls them; activation
        None means the layer's own call. A model that is not a plain Sequential is one
        opaque layer (its forward)."""
        from .nn.layers import Dense
        from .nn.model import Sequential
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
        from .nn.layers import Dense
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


class _Like:
    """The shape and dtype a Dense layer returned when no hook saw it (the fused head
    is called as ``pre_activation``, which runs no hooks; nothing follows it)."""

    def __init__(self, received, layer):
        kernel = getattr(layer, "kernel", None)
        self.ndim = getattr(received, "ndim", None)
        self.dtype = kernel.dtype if kernel is not None else getattr(received, "dtype", None)


def _fit_step(plan):
    """``fit``'s captured step for its ``_Plan`` (registered with ``nn.plan``)."""
    captured = CapturedStep.for_plan(plan)

    def train_step(plan, x, target, weight=None):
        loss, out = captured._run(x, target, weight)
        return _leaf(loss), _leaf(out)
    train_step.captured = captured
    return train_step


register_capture(_fit_step)
