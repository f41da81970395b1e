"""Callbacks that steer training (the plateau counter is ``optim.lr_scheduler``'s)."""

import inspect
import math
import numbers
from types import SimpleNamespace

from ..optim import lr_scheduler
from ..optim.lr_scheduler import Plateau, integer_argument, real_argument
from .base import Callback, _counted, _missing_key_warning, _optimizer_of, _plain, _resolve_mode, _say


def _takes_lr(schedule):
    try:
        parameters = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume (epoch, lr)
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


class LearningRateScheduler(Callback):
    """Sets the learning rate each epoch to ``schedule(epoch)`` or ``schedule(epoch, lr)``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, "
                            f"got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose
        self._with_lr = _takes_lr(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = _optimizer_of(self.model, "LearningRateScheduler")
        lr = _plain(self.schedule(epoch, float(optimizer.lr)) if self._with_lr else self.schedule(epoch))
        if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr):
            raise ValueError(f"LearningRateScheduler: the schedule must return a finite number, "
                             f"got {lr!r} at epoch {epoch}")
        optimizer.lr = float(lr)
        _say(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr):.6g}.",
             self.verbose > 0)


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    An improvement is a change of more than ``min_delta``; ``restore_best_weights`` puts the
    best epoch's weights back when training ends, whoever stopped it.
    """

    _state_attributes = ("wait", "stopped_epoch", "best_epoch", "best", "best_weights")
    best, wait = _counted("plateau", "best"), _counted("plateau", "num_bad_epochs")

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, mode="auto",
                 restore_best_weights=False, baseline=None, verbose=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(real_argument("EarlyStopping", "min_delta", min_delta, -math.inf))
        self.patience = integer_argument("EarlyStopping", "patience", patience, 0)
        self.mode = _resolve_mode(mode, monitor, "EarlyStopping")
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.verbose = verbose
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.plateau = Plateau(self.mode, self.min_delta, "abs")  # the one counter (optim)
        self.stopped_epoch = self.best_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            _missing_key_warning("EarlyStopping", self.monitor, logs)
            return
        current = float(current)
        waited = self.wait
        improved = self.plateau.record(current)
        if self.restore_best_weights and (improved or self.best_weights is None):
            self.best_weights = self.model.state_dict()  # the first epoch's, at least
        if improved:
            self.best_epoch = epoch
            if self.baseline is not None and not self.plateau.is_better(current, self.baseline):
                self.wait = waited + 1  # better than before, not yet better than the baseline
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        _say(f"Epoch {self.stopped_epoch + 1}: early stopping", self.stopped_epoch > 0 and self.verbose > 0)
        if self.restore_best_weights and self.best_weights is not None:
            _say(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.",
                 self.verbose > 0)
            self.model.load_state_dict(self.best_weights)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` after ``patience`` epochs without improvement.

    Adapts ``optim.lr_scheduler.ReduceLROnPlateau``, which counts one epoch earlier than Keras.
    """

    _state_attributes = ("best", "wait", "cooldown_counter")
    best, wait = _counted("scheduler", "best"), _counted("scheduler", "num_bad_epochs")
    cooldown_counter = _counted("scheduler", "cooldown_counter")

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0, min_delta=1e-4,
                 cooldown=0, mode="auto", verbose=0):
        super().__init__()
        real_argument("ReduceLROnPlateau", "factor", factor)
        integer_argument("ReduceLROnPlateau", "patience", patience, 0)
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.min_lr = min_lr
        self.min_delta = abs(min_delta)
        self.cooldown = cooldown
        self.mode = _resolve_mode(mode, monitor, "ReduceLROnPlateau")
        self.verbose = verbose
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        unbound = SimpleNamespace(lr=0.0)  # the model's optimizer is bound at each epoch's end
        self.scheduler = lr_scheduler.ReduceLROnPlateau(
            unbound, mode=self.mode, factor=self.factor, patience=max(self.patience - 1, 0),
            threshold=self.min_delta, threshold_mode="abs", cooldown=max(self.cooldown - 1, 0),
            min_lr=self.min_lr, eps=0.0)

    def in_cooldown(self):
        return self.scheduler.in_cooldown

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = _optimizer_of(self.model, "ReduceLROnPlateau")
        logs.setdefault("lr", float(optimizer.lr))
        current = logs.get(self.monitor)
        if current is None:
            _missing_key_warning("ReduceLROnPlateau", self.monitor, logs)
            return
        old_lr = float(optimizer.lr)
        self.scheduler.optimizer = optimizer
        self.scheduler.step(float(current))
        _say(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {float(optimizer.lr):.6g}.",
             self.verbose > 0 and float(optimizer.lr) != old_lr)


class TerminateOnNaN(Callback):
    """Stops training once a batch's loss is NaN or inf: ``fit`` ends after the current epoch."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and not self.model.stop_training:
            _say(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # summed over a data-parallel run's ranks: a NaN on one rank's batch stops all, here
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and not self.model.stop_training:
            _say(f"Epoch {epoch + 1}: Invalid loss, terminating training")
            self.model.stop_training = True
