"""Optimizers: SGD, Adam, AdamW, Adagrad and RMSprop, step for step as ``torch.optim``.

A *parameter* is anything with a ``.data`` array (updated in place) and a ``.grad`` array
or ``None`` (skipped). Updates go through the kernel table, so one code runs NumPy, the
compiled kernels and CuPy. Writing your own: docs/extending.md.

>>> import numpy as np
>>> from types import SimpleNamespace
>>> from nanodl import optim
>>> w = SimpleNamespace(data=np.array([1.0, 2.0]), grad=np.array([0.5, -0.5]))
>>> opt = optim.SGD([w], lr=0.1)
>>> opt.step()
>>> w.data
array([0.95, 2.05])
>>> opt.zero_grad()
>>> print(w.grad)
None
"""
import functools
import math

import numpy as np

from ..backend import array_module, kernels, to_host


def _is_parameter(obj):
    return hasattr(obj, "data") and hasattr(obj, "grad")


def _zeros(data, *slots):
    """Fresh zero state arrays like ``data``, by slot name (falsy names skipped)."""
    xp = array_module(data)
    return {slot: xp.zeros_like(data) for slot in slots if slot}


class Optimizer:
    """Base class: holds the parameters, the learning rate and per-parameter state.

    ``params``: ``None`` (``set_params`` later), an iterable of parameters or a module.
    Subclasses set ``name`` and ``_config`` and implement ``_new_state(data)`` and the
    elementwise ``_update(data, grad, state)`` (or ``step()``); ``state["step"]`` counts
    each parameter's updates.
    """

    name = "optimizer"
    _config = ()  # the constructor's arguments after lr, stored under their own names
    # the checked kernel table; a captured step (nanodl.capture) swaps in unchecked ones
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

    @property
    def lr(self):
        """The learning rate; may be changed between steps (schedulers do)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = self._check_nonneg("learning rate", value)

    # Keras' name for the same attribute (through ``lr``, so a subclass's own ``lr`` counts)
    learning_rate = property(lambda self: self.lr, lambda self, value: setattr(self, "lr", value))

    @property
    def params(self):
        """The parameters being optimised (a list), or None before ``set_params``."""
        return self._params

    def set_params(self, params):
        """Give the optimizer its parameters: new ones drop the state, the same again keep it."""
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
        for p in params:
            if not _is_parameter(p):
                raise TypeError(f"{type(self).__name__}: {type(p).__name__} is not a parameter "
                                "(expected an object with .data and .grad)")
        unique = list({id(p): p for p in params}.values())  # a parameter listed twice is updated once
        if not unique:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if self._params is not None and list(map(id, unique)) == list(map(id, self._params)):
            return  # the same parameters again (a second fit()): keep the state
        self._params = unique
        self._state = None

    def _require_params(self):
        if self._params is None:
            raise RuntimeError(f"{type(self).__name__}: no parameters to optimise; pass them to "
                               "the constructor or call set_params(model.parameters()) "
                               "(Model.compile/fit does this)")
        return self._params

    def _fresh_state(self, data):
        return {"step": 0, **self._new_state(data)}

    def _new_state(self, data):
        """The per-parameter state arrays, by name (none by default)."""
        return {}

    def _updates(self):
        if self._state is None:  # created at the first step, on each parameter's device
            self._state = [self._fresh_state(p.data) for p in self._require_params()]
        self.step_count += 1
        for p, state in zip(self._params, self._state):
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
        """Update one parameter's ``data`` in place, elementwise (``capture.FlatUpdate`` relies on it)."""
        raise NotImplementedError(f"{type(self).__name__}: define _update(data, grad, state), "
                                  "one parameter's elementwise update, or step()")

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
        return {"lr": self._lr, **{key: getattr(self, key) for key in self._config}}

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def state_dict(self):
        """Hyper-parameters, step counts and per-parameter state (host copies; ``nanodl.save`` ready)."""
        sd = {"name": self.name}
        for key, value in self.get_config().items():
            sd[key] = list(value) if isinstance(value, tuple) else value
        sd["step_count"] = int(self.step_count)
        states = self._state
        if states is None:
            states = [self._fresh_state(p.data) for p in self._params or ()]
        sd["param_steps"] = np.array([state["step"] for state in states], dtype=np.int64)
        slots = [name for name in states[0] if name != "step"] if states else []
        sd["state"] = {slot: [to_host(state[slot], copy=True) for state in states] for slot in slots}
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``; ValueError (and no change at all) if it does not fit."""
        where = f"{type(self).__name__}.load_state_dict"
        sd = dict(state_dict)
        name = str(sd.get("name", self.name))
        if name != self.name:
            raise ValueError(f"{where}: the state belongs to a {name!r} optimizer, not {self.name!r}")
        config = {key: _like(value, sd[key]) for key, value in self.get_config().items() if key in sd}
        probe = type(self)(None, **config)  # validates the loaded hyper-parameters

        params = self._params
        steps = np.asarray(sd.get("param_steps", np.zeros(0, dtype=np.int64))).ravel()
        saved = sd.get("state", {}) or {}
        count = len(steps)
        if count == 0:  # saved before the optimizer had parameters: hyper-parameters only
            new_state = None
        elif params is None:
            raise RuntimeError(f"{where}: the state holds {count} parameters but this optimizer "
                               "has none yet; call set_params first")
        else:
            if count != len(params):
                raise ValueError(f"{where}: the state holds {count} parameters, this optimizer "
                                 f"has {len(params)}")
            new_state = [{"step": int(step)} for step in steps]
            for slot in probe._new_state(params[0].data):
                if slot not in saved:
                    raise ValueError(f"{where}: missing state {slot!r}")
                arrays = list(saved[slot])
                if len(arrays) != len(params):
                    raise ValueError(f"{where}: state {slot!r} has {len(arrays)} arrays for "
                                     f"{len(params)} parameters")
                for i, (p, array) in enumerate(zip(params, arrays)):
                    shape = tuple(np.shape(array))
                    if shape != p.data.shape:
                        raise ValueError(f"{where}: state {slot!r} of parameter {i} has shape "
                                         f"{shape}, the parameter has {p.data.shape}")
                    new_state[i][slot] = array_module(p.data).array(array, dtype=p.data.dtype)  # a copy
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
    """A loaded value (often a 0-d array) as the type of ``current``."""
    if isinstance(current, tuple):
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if isinstance(current, (bool, int, float)):
        return type(current)(np.asarray(value))
    return value


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum, Nesterov and L2 weight decay.

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` (the first
    buffer is ``g``) and ``g = buf`` (or ``g + momentum * buf`` for Nesterov);
    then ``p -= lr * g``. This is ``torch.optim.SGD`` with ``dampening=0``.
    """

    name = "sgd"
    _config = ("momentum", "nesterov", "weight_decay")

    def __init__(self, params=None, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.momentum = self._check_nonneg("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        if self.nesterov and self.momentum <= 0:
            raise ValueError(f"SGD: nesterov=True requires momentum > 0, got momentum={momentum!r}")
        super().__init__(params, lr)

    def _new_state(self, data):
        return _zeros(data, self.momentum and "momentum_buffer")

    def _update(self, data, grad, state):
        if self.momentum and "momentum_buffer" not in state:  # momentum turned on after a step
            state.update(self._new_state(data))
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
    _config = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False

    def __init__(self, params=None, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        self.betas = self._check_betas(betas)
        self.eps = self._check_nonneg("epsilon", eps)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        super().__init__(params, lr)

    def _new_state(self, data):
        return _zeros(data, "exp_avg", "exp_avg_sq", self.amsgrad and "max_exp_avg_sq")

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
    _config = ("eps", "initial_accumulator_value", "lr_decay", "weight_decay")

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

    def _update(self, data, grad, state):
        decayed_lr = self._lr / (1 + (state["step"] - 1) * self.lr_decay)
        self._kernels(data).adagrad_step(data, grad, state_sum=state["sum"], lr=decayed_lr,
                                         eps=self.eps, weight_decay=self.weight_decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton): ``v = alpha v + (1-alpha) g^2``, ``p -= lr * g / (sqrt(v) + eps)``;
    ``centered`` subtracts the squared running mean of ``g`` inside the root, ``momentum``
    accumulates ``g / (sqrt(v) + eps)`` in a buffer. As ``torch.optim.RMSprop``."""

    name = "rmsprop"
    _config = ("alpha", "eps", "momentum", "centered", "weight_decay")

    def __init__(self, params=None, lr=0.001, alpha=0.99, eps=1e-8, momentum=0.0, centered=False,
                 weight_decay=0.0):
        self.alpha = self._check_nonneg("alpha", alpha)
        self.eps = self._check_nonneg("epsilon", eps)
        self.momentum = self._check_nonneg("momentum", momentum)
        self.centered = bool(centered)
        self.weight_decay = self._check_nonneg("weight_decay", weight_decay)
        super().__init__(params, lr)

    def _new_state(self, data):
        return _zeros(data, "square_avg", self.momentum and "momentum_buffer",
                      self.centered and "grad_avg")

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
