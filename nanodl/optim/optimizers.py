"""Optimizers: SGD, Adam, AdamW, Adagrad and RMSprop, step for step as ``torch.optim``.

A *parameter* is anything with a ``.data`` array (updated in place) and a ``.grad``
array of the same shape, or ``None`` (the parameter is then skipped, as in PyTorch).
Each optimizer keeps its per-parameter state by name (``state["exp_avg"]``) and hands
the update itself to the kernel table (``kernels(p.data).adam_step(p.data, grad,
exp_avg=..., lr=...)``, arguments by keyword), so the same code runs the NumPy
reference, the compiled kernels and CuPy on the GPU. An optimizer of your own can
instead write its update with ``xp = array_module(param)``: see ``docs/extending.md``.

>>> import numpy as np
>>> from types import SimpleNamespace
>>> from nanodl import optim
>>> w = SimpleNamespace(data=np.array([1.0, 2.0]), grad=np.array([0.5, -0.5]))
>>> opt = optim.SGD([w], lr=0.1)
>>> opt.step()
>>> w.data
array([0.95, 2.05])
>>> opt.zero_grad(); print(w.grad)
None
"""
import functools
import math

import numpy as np

from ..backend import array_module, kernels, to_host


def _is_parameter(obj):
    return hasattr(obj, "data") and hasattr(obj, "grad")


class Optimizer:
    """Base class: holds the parameters, the learning rate and per-parameter state.

    ``params`` may be ``None`` (give them later with :meth:`set_params`, as
    ``Model.compile`` does), a list or any iterable of parameters (a generator is
    read once), or a module with a ``parameters()`` method.

    Subclasses set ``name``, implement ``_new_state(data)`` (a dict of the fresh
    per-parameter state arrays the chosen options use, by name) and ``_update(data,
    grad, state)`` (one parameter's elementwise update; ``step()`` calls it for each
    parameter with a gradient), and list their constructor arguments in ``get_config``.
    An update that is not elementwise overrides ``step()`` instead.

    Per-parameter state is a dict per parameter: ``state["step"]``, the number of
    updates that parameter has received (a parameter without a gradient is not
    counted, as in PyTorch), and the arrays of ``_new_state`` under their names. It is
    created at the first ``step()`` (or ``load_state_dict``), on the parameter's device.
    """

    name = "optimizer"
    # The kernel table for a parameter's array: the checked one. A captured step
    # (nanodl.capture), which validated its calls once, swaps in the unchecked
    # compute functions for the duration of its update.
    _kernels = staticmethod(kernels)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # Keras' spelling: SGD(learning_rate=0.1) is SGD(lr=0.1)
            cls.__init__ = _taking_learning_rate(cls.__dict__["__init__"])

    def __init__(self, params=None, lr=0.01):
        self._params = None
        self._state = None
        self.step_count = 0  # number of step() calls
        self.lr = lr
        if params is not None:
            self.set_params(params)

    # ------------------------------------------------------------ parameters
    @property
    def lr(self):
        """The learning rate; may be changed between steps (schedulers do)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = self._check_nonneg("learning rate", value)

    @property
    def learning_rate(self):
        """Keras' name for ``lr`` (the same attribute)."""
        return self.lr

    @learning_rate.setter
    def learning_rate(self, value):
        self.lr = value

    @property
    def params(self):
        """The parameters being optimised (a list), or None before ``set_params``."""
        return self._params

    def set_params(self, params):
        """Give the optimizer its parameters.

        Different parameters replace the earlier ones and drop their state; the same
        parameters again (``Model.fit`` called twice) keep it.
        """
        if _is_parameter(params):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of parameters, "
                            f"got a single {type(params).__name__}; wrap it in a list")
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: params must be an iterable of parameters, "
                            f"got {type(params).__name__}") from None
        unique, seen = [], set()
        for p in params:
            if not _is_parameter(p):
                raise TypeError(f"{type(self).__name__}: {type(p).__name__} is not a parameter "
                                "(expected an object with .data and .grad)")
            if id(p) not in seen:  # a parameter listed twice is updated once
                seen.add(id(p))
                unique.append(p)
        if not unique:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if self._params is not None and len(unique) == len(self._params) and all(
                new is old for new, old in zip(unique, self._params)):
            return  # the same parameters again (a second fit()): keep the state
        self._params = unique
        self._state = None

    def _require_params(self):
        if self._params is None:
            raise RuntimeError(f"{type(self).__name__}: no parameters to optimise; pass them to "
                               "the constructor or call set_params(model.parameters()) "
                               "(Model.compile/fit does this)")
        return self._params

    def _create_state(self):
        """The per-parameter state lists, created on first use on each parameter's device."""
        self._state = [self._fresh_state(p.data) for p in self._require_params()]
        return self._state

    def _fresh_state(self, data):
        return {"step": 0, **self._new_state(data)}

    def _new_state(self, data):
        """The per-parameter state arrays, by name (none by default)."""
        return {}

    def _updates(self):
        """``(data, grad, state)`` for each parameter with a gradient, counting the step.

        ``state["step"]`` is that parameter's own step count (it drives bias corrections
        and decays, and does not advance while the parameter has no gradient, as in torch).
        """
        states = self._state or self._create_state()
        self.step_count += 1
        for p, state in zip(self._params, states):
            grad = p.grad
            if grad is not None:
                state["step"] += 1
                yield p.data, grad, state

    def zero_grad(self, set_to_none=True):
        """Forget the gradients: ``None`` (PyTorch's default) or fresh zero arrays."""
        for p in self._require_params():
            if set_to_none:
                p.grad = None
            else:  # a new array, never in place: two parameters may share one grad array
                p.grad = array_module(p.data).zeros_like(p.data)

    def step(self):
        """Update every parameter that has a gradient (``_update`` on each)."""
        for data, grad, state in self._updates():
            self._update(data, grad, state)

    def _update(self, data, grad, state):  # pragma: no cover - every subclass defines it
        """Update one parameter's ``data`` in place from ``grad`` and its ``state``.

        Elementwise, so one call over several parameters laid end to end in one array
        (state arrays likewise, one step count) does what one call each would, bit for
        bit: the captured step relies on it (``nanodl.capture.FlatUpdate``).
        """
        raise NotImplementedError(f"{type(self).__name__}: define _update(data, grad, state), "
                                  "one parameter's elementwise update, or step()")

    # ------------------------------------------------------------ hyper-parameters
    def _check_nonneg(self, what, value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}: {what} must be a number, got {value!r}") from None
        if not 0.0 <= number < math.inf:  # also catches NaN
            raise ValueError(f"{type(self).__name__}: invalid {what} {value!r} (must be finite and >= 0)")
        return number

    def _check_betas(self, betas):
        try:
            beta1, beta2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: betas must be two numbers, got {betas!r}") from None
        for index, beta in enumerate((beta1, beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{type(self).__name__}: invalid beta parameter at index {index}: "
                                 f"{beta!r} (must be in [0, 1))")
        return beta1, beta2

    def get_config(self):
        """The constructor's hyper-parameters, e.g. ``{'lr': 0.001, 'betas': (0.9, 0.999), ...}``."""
        return {"lr": self._lr}

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------ checkpoints
    def state_dict(self):
        """Hyper-parameters (the current ``lr`` included), step counts and per-parameter
        state, as host NumPy copies.

        A dict of numbers, strings, bools and arrays, plus ``'state'``: a dict of slot
        name -> list of arrays (one per parameter, in parameter order). No objects, so
        ``nanodl.save(opt.state_dict(), path)`` writes it without pickle and
        ``opt.load_state_dict(nanodl.load(path))`` restores it exactly.
        """
        sd = {"name": self.name}
        for key, value in self.get_config().items():
            sd[key] = list(value) if isinstance(value, tuple) else value
        sd["step_count"] = int(self.step_count)
        states = self._state
        if states is None and self._params is not None:
            states = [self._fresh_state(p.data) for p in self._params]
        states = states or []
        sd["param_steps"] = np.array([state["step"] for state in states], dtype=np.int64)
        slots = [name for name in states[0] if name != "step"] if states else []
        sd["state"] = {slot: [to_host(state[slot], copy=True) for state in states] for slot in slots}
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``; ValueError (and no change at all) if it does not fit."""
        cls = type(self).__name__
        sd = dict(state_dict)
        name = str(sd.get("name", self.name))
        if name != self.name:
            raise ValueError(f"{cls}.load_state_dict: the state belongs to a {name!r} optimizer, "
                             f"not {self.name!r}")
        # Build (and so validate) the loaded hyper-parameters on a scratch optimizer.
        config = {}
        for key, current in self.get_config().items():
            if key in sd:
                config[key] = _like(current, sd[key])
        probe = type(self)(None, **config)

        params = self._params
        steps = np.asarray(sd.get("param_steps", np.zeros(0, dtype=np.int64))).ravel()
        saved = sd.get("state", {}) or {}
        count = len(steps)
        if count == 0:  # saved before the optimizer had parameters: hyper-parameters only
            new_state = None
        elif params is None:
            raise RuntimeError(f"{cls}.load_state_dict: the state holds {count} parameters but "
                               "this optimizer has none yet; call set_params first")
        else:
            if count != len(params):
                raise ValueError(f"{cls}.load_state_dict: the state holds {count} parameters, "
                                 f"this optimizer has {len(params)}")
            new_state = [{"step": int(step)} for step in steps]
            for slot in probe._new_state(params[0].data):
                if slot not in saved:
                    raise ValueError(f"{cls}.load_state_dict: missing state {slot!r}")
                arrays = list(saved[slot])
                if len(arrays) != len(params):
                    raise ValueError(f"{cls}.load_state_dict: state {slot!r} has {len(arrays)} "
                                     f"arrays for {len(params)} parameters")
                for i, (p, array) in enumerate(zip(params, arrays)):
                    shape = tuple(np.shape(array))
                    if shape != tuple(p.data.shape):
                        raise ValueError(f"{cls}.load_state_dict: state {slot!r} of parameter {i} "
                                         f"has shape {shape}, the parameter has {tuple(p.data.shape)}")
                    xp = array_module(p.data)
                    new_state[i][slot] = xp.array(array, dtype=p.data.dtype)  # a copy, never a view
        # Everything checked: commit.
        for key, value in probe.__dict__.items():
            if key not in ("_params", "_state", "step_count"):
                setattr(self, key, value)
        self.step_count = int(sd.get("step_count", 0))
        self._state = new_state


_UNSET = object()


def _taking_learning_rate(init):
    """``init`` that also takes Keras' ``learning_rate=`` for ``lr=`` (not both)."""
    @functools.wraps(init)
    def __init__(self, *args, learning_rate=_UNSET, **kwargs):
        if learning_rate is not _UNSET:
            if "lr" in kwargs or len(args) >= 2:
                raise TypeError(f"{type(self).__name__}: got both lr and learning_rate (the same "
                                "setting); pass one")
            kwargs["lr"] = learning_rate
        init(self, *args, **kwargs)
    return __init__


def _like(current, value):
    """Convert a loaded value (often a 0-d array after np.load) to the type of ``current``."""
    if isinstance(current, bool):
        return bool(np.asarray(value))
    if isinstance(current, tuple):
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if isinstance(current, int):
        return int(np.asarray(value))
    if isinstance(current, float):
        return float(np.asarray(value))
    return value


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum, Nesterov and L2 weight decay.

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` (the first
    buffer is ``g``) and ``g = buf`` (or ``g + momentum * buf`` for Nesterov);
    then ``p -= lr * g``. This is ``torch.optim.SGD`` with ``dampening=0``.
    """

    name = "sgd"

    def __init__(self, params=None, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.momentum = self._check_nonneg("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        if self.nesterov and self.momentum <= 0:
            raise ValueError(f"SGD: nesterov=True requires momentum > 0, got momentum={momentum!r}")
        super().__init__(params, lr)

    def _new_state(self, data):
        return {"momentum_buffer": array_module(data).zeros_like(data)} if self.momentum else {}

    def get_config(self):
        return {"lr": self._lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def _update(self, data, grad, state):
        if self.momentum and "momentum_buffer" not in state:  # momentum turned on after a step
            state["momentum_buffer"] = array_module(data).zeros_like(data)
        self._kernels(data).sgd_step(data, grad, momentum_buf=state.get("momentum_buffer"),
                                     lr=self._lr, momentum=self.momentum, nesterov=self.nesterov,
                                     weight_decay=self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba), optionally AMSGrad and L2 weight decay added to the gradient.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2`` (``v_max = max(v_max, v)`` with
    AMSGrad), then ``p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``, as
    ``torch.optim.Adam``.
    """

    name = "adam"
    _decoupled = False

    def __init__(self, params=None, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        self.betas = self._check_betas(betas)
        self.eps = self._check_nonneg("epsilon", eps)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        super().__init__(params, lr)

    def _new_state(self, data):
        xp = array_module(data)
        state = {"exp_avg": xp.zeros_like(data), "exp_avg_sq": xp.zeros_like(data)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = xp.zeros_like(data)
        return state

    def get_config(self):
        return {"lr": self._lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def _update(self, data, grad, state):
        beta1, beta2 = self.betas
        self._kernels(data).adam_step(data, grad, exp_avg=state["exp_avg"],
                                      exp_avg_sq=state["exp_avg_sq"],
                                      max_exp_avg_sq=state.get("max_exp_avg_sq"),
                                      step=state["step"], lr=self._lr, beta1=beta1, beta2=beta2,
                                      eps=self.eps, weight_decay=self.weight_decay,
                                      decoupled=self._decoupled, amsgrad=self.amsgrad)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam update, as ``torch.optim.AdamW``."""

    name = "adamw"
    _decoupled = True

    def __init__(self, params=None, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Adagrad(Optimizer):
    """Adagrad: ``sum += g^2``, ``p -= clr * g / (sqrt(sum) + eps)`` with the decayed rate
    ``clr = lr / (1 + (t-1) * lr_decay)``, as ``torch.optim.Adagrad``."""

    name = "adagrad"

    def __init__(self, params=None, lr=0.01, eps=1e-10, initial_accumulator_value=0.0,
                 lr_decay=0.0, weight_decay=0.0):
        self.eps = self._check_nonneg("epsilon", eps)
        self.initial_accumulator_value = self._check_nonneg("initial_accumulator_value",
                                                            initial_accumulator_value)
        self.lr_decay = self._check_nonneg("lr_decay", lr_decay)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        super().__init__(params, lr)

    def _new_state(self, data):
        return {"sum": array_module(data).full_like(data, self.initial_accumulator_value)}

    def get_config(self):
        return {"lr": self._lr, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value,
                "lr_decay": self.lr_decay, "weight_decay": self.weight_decay}

    def _update(self, data, grad, state):
        decayed_lr = self._lr / (1 + (state["step"] - 1) * self.lr_decay)
        self._kernels(data).adagrad_step(data, grad, state_sum=state["sum"], lr=decayed_lr,
                                         eps=self.eps, weight_decay=self.weight_decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton): ``v = alpha v + (1-alpha) g^2``, ``p -= lr * g / (sqrt(v) + eps)``;
    ``centered`` subtracts the squared running mean of ``g`` inside the root, ``momentum``
    accumulates ``g / (sqrt(v) + eps)`` in a buffer. As ``torch.optim.RMSprop``."""

    name = "rmsprop"

    def __init__(self, params=None, lr=0.001, alpha=0.99, eps=1e-8, momentum=0.0, centered=False,
                 weight_decay=0.0):
        self.alpha = self._check_nonneg("alpha", alpha)
        self.eps = self._check_nonneg("epsilon", eps)
        self.momentum = self._check_nonneg("momentum", momentum)
        self.centered = bool(centered)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        super().__init__(params, lr)

    def _new_state(self, data):
        xp = array_module(data)
        state = {"square_avg": xp.zeros_like(data)}
        if self.momentum:
            state["momentum_buffer"] = xp.zeros_like(data)
        if self.centered:
            state["grad_avg"] = xp.zeros_like(data)
        return state

    def get_config(self):
        return {"lr": self._lr, "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered, "weight_decay": self.weight_decay}

    def _update(self, data, grad, state):
        self._kernels(data).rmsprop_step(data, grad, square_avg=state["square_avg"],
                                         momentum_buf=state.get("momentum_buffer"),
                                         grad_avg=state.get("grad_avg"), lr=self._lr,
                                         alpha=self.alpha, eps=self.eps,
                                         weight_decay=self.weight_decay, momentum=self.momentum,
                                         centered=self.centered)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW, Adagrad, RMSprop)}


def get(identifier):
    """An optimizer from a name (``'sgd'``, ``'adam'``, ...; defaults) or an Optimizer (itself).

    >>> get('adam')
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False)
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = OPTIMIZERS.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; valid names: {', '.join(OPTIMIZERS)}")
        return cls()
    raise TypeError(f"optimizer must be a name or an Optimizer, got {type(identifier).__name__}")
