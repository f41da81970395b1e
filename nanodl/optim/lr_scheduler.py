"""Learning-rate schedules with PyTorch's semantics, driving an optimizer's ``lr``.

Create it after the optimizer and call ``step()`` once per epoch, after the optimizer's
steps. The recursive forms match ``torch.optim.lr_scheduler`` to the last bit.

>>> import numpy as np
>>> from types import SimpleNamespace
>>> from nanodl import optim
>>> opt = optim.SGD([SimpleNamespace(data=np.zeros(1), grad=None)], lr=1.0)
>>> sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
>>> for epoch in range(5):
...     opt.step()
...     sched.step()
>>> sched.get_last_lr(), sched.last_epoch
([0.25], 5)
"""
import math
import numbers


def integer_argument(owner, name, value, minimum):
    """``value`` as an int >= ``minimum`` (an integral float such as 2.0 is fine)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or int(value) != value or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def real_argument(owner, name, value, minimum=0.0, below=None):
    """``value`` as a finite float >= ``minimum`` (and < ``below`` when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        bounds = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{owner}: {name} must be a finite number {bounds}, got {value!r}")
    return float(value)


class LRScheduler:
    """Base class: subclasses implement ``get_lr()`` (the new rates, as a list)."""

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an optimizer "
                            "(it has no lr attribute)")
        self.optimizer = optimizer
        # as PyTorch: a second scheduler on the optimizer starts from the first one's rate
        if getattr(optimizer, "initial_lr", None) is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lrs = [optimizer.initial_lr]
        self.last_epoch = -1
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def get_last_lr(self):
        """The rates set by the latest ``step()``, one per parameter group (a list)."""
        return list(self._last_lr)

    def step(self):
        """Advance one epoch and set the optimizer's rate."""
        self._step_count += 1
        self.last_epoch += 1
        (lr,) = self.get_lr()
        self.optimizer.lr = lr
        self._last_lr = [self.optimizer.lr]

    def state_dict(self):
        """The scheduler's counters and settings (numbers and lists; no optimizer, no lambdas)."""
        return {key: value for key, value in self.__dict__.items()
                if key != "optimizer" and not callable(value)}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr()})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = integer_argument("StepLR", "step_size", step_size, 1)
        self.gamma = real_argument("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.lr
        return [lr] if self.last_epoch == 0 or self.last_epoch % self.step_size else [lr * self.gamma]


class ExponentialLR(LRScheduler):
    """``lr = base_lr * gamma ** epoch``."""

    def __init__(self, optimizer, gamma):
        self.gamma = real_argument("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self):
        lr = self.optimizer.lr
        return [lr] if self._is_initial else [lr * self.gamma]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs (then back up).

    About ``eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2``, in PyTorch's
    recursive form."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = integer_argument("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = real_argument("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def get_lr(self):
        lr, epoch, T_max, eta_min = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        (base_lr,) = self.base_lrs
        if self._is_initial:
            return [lr]
        if self._step_count == 1 and epoch > 0:  # resumed mid-schedule: the closed form
            return [eta_min + (base_lr - eta_min) * (1 + math.cos(epoch * math.pi / T_max)) / 2]
        if (epoch - 1 - T_max) % (2 * T_max) == 0:  # the trough: the ratio below would be 0/0
            return [lr + (base_lr - eta_min) * (1 - math.cos(math.pi / T_max)) / 2]
        return [(1 + math.cos(math.pi * epoch / T_max))
                / (1 + math.cos(math.pi * (epoch - 1) / T_max))
                * (lr - eta_min) + eta_min]


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(epoch)`` for a function ``lr_lambda(epoch) -> factor``."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def get_lr(self):
        factor = self.lr_lambda(self.last_epoch)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor):
            raise TypeError(f"LambdaLR: lr_lambda({self.last_epoch}) returned {factor!r}; a finite "
                            "number (the factor for the base rate) was expected")
        return [base_lr * factor for base_lr in self.base_lrs]


class Plateau:
    """How long a monitored number has gone without improving (behind ``ReduceLROnPlateau``
    and ``callbacks.EarlyStopping``); ``threshold`` is relative (``'rel'``) or ``'abs'``.

    >>> plateau = Plateau("min", threshold=0.1, threshold_mode="abs")
    >>> [plateau.record(value) for value in (1.0, 0.95, 0.5)], plateau.best, plateau.num_bad_epochs
    ([True, False, True], 0.5, 0)
    """

    def __init__(self, mode="min", threshold=1e-4, threshold_mode="rel"):
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0

    def is_better(self, current, best):
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return current < best * (1.0 - self.threshold)
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (self.threshold + 1.0)
        return current > best + self.threshold

    def record(self, value):
        """Count one epoch's ``value``; returns whether it improved."""
        if self.is_better(value, self.best):
            self.best, self.num_bad_epochs = value, 0
            return True
        self.num_bad_epochs += 1
        return False


class ReduceLROnPlateau(Plateau):
    """Multiply the rate by ``factor`` when a metric stops improving, as PyTorch's.

    Call ``step(metric)`` once per epoch; after a cut, ``cooldown`` epochs are not counted.
    """

    MODES = ("min", "max")
    THRESHOLD_MODES = ("rel", "abs")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"ReduceLROnPlateau: {type(optimizer).__name__} is not an optimizer "
                            "(it has no lr attribute)")
        if mode not in self.MODES:
            raise ValueError(f"ReduceLROnPlateau: unknown mode {mode!r}; valid names: min, max")
        if threshold_mode not in self.THRESHOLD_MODES:
            raise ValueError(f"ReduceLROnPlateau: unknown threshold_mode {threshold_mode!r}; "
                             "valid names: rel, abs")
        owner = "ReduceLROnPlateau"
        super().__init__(mode, real_argument(owner, "threshold", threshold), threshold_mode)
        self.optimizer = optimizer
        self.factor = real_argument(owner, "factor", factor, 0.0, below=1.0)
        self.patience = integer_argument(owner, "patience", patience, 0)
        self.cooldown = integer_argument(owner, "cooldown", cooldown, 0)
        self.min_lr, self.eps = real_argument(owner, "min_lr", min_lr), real_argument(owner, "eps", eps)
        self.last_epoch = self.cooldown_counter = 0
        self._last_lr = [optimizer.lr]

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def step(self, metric):
        """Record this epoch's ``metric`` (e.g. the validation loss) and maybe lower the rate."""
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: metric must be a number, got {metric!r}") from None
        self.last_epoch += 1
        self.record(current)
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [self.optimizer.lr]

    get_last_lr = LRScheduler.get_last_lr
    state_dict = LRScheduler.state_dict  # (no callables here to leave out)
    load_state_dict = LRScheduler.load_state_dict

    def __repr__(self):
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, "
                f"patience={self.patience}, lr={self.get_last_lr()})")


__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR",
           "ReduceLROnPlateau", "Plateau"]
