"""The callback protocol, ``History``, ``should_write`` and the built-ins' shared helpers."""

import warnings

import numpy as np

from ..diagnostics import curves


class Callback:
    """Base class: every hook is a no-op; ``self.model`` is the model being trained."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        """Training parameters (epochs, steps, verbose), when ``fit`` passes them."""
        self.params = dict(params)

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


class CallbackList:
    """Calls every hook on each callback in turn; batch hooks only where overridden (free steps).

    >>> class Note(Callback):
    ...     def on_train_begin(self, logs):  # no default: the list passes logs=None itself
    ...         print("begin", logs)
    >>> CallbackList([Note(), History()], model=None).on_train_begin()
    begin None
    """

    def __init__(self, callbacks, model, params=None):
        # runs_last (a backup) saves after the others' changes, restores after their resets
        self.callbacks = sorted(callbacks, key=lambda c: bool(getattr(c, "runs_last", False)))
        for callback in self.callbacks:
            callback.set_model(model)
            if hasattr(callback, "set_params"):
                callback.set_params(params or {})
            if hasattr(callback, "set_callbacks"):
                callback.set_callbacks(self.callbacks)
        self._batch_begin = [c for c in self.callbacks if _overrides(c, "on_batch_begin")]
        self._batch_end = [c for c in self.callbacks if _overrides(c, "on_batch_end")]

    @property
    def wants_batch_logs(self):
        """True when some callback reads the logs of ``on_batch_end``."""
        return bool(self._batch_end)

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch, logs=None):
        for callback in self._batch_begin:
            callback.on_batch_begin(batch, logs)

    def on_batch_end(self, batch, logs=None):
        for callback in self._batch_end:
            callback.on_batch_end(batch, logs)


# ---------------------------------------------------------------- who prints and writes
_writer = [lambda: True]  # a wing that runs several processes replaces it (register_writer)


def should_write():
    """Whether this process prints and writes files (in ``nanodl.distributed``: rank 0 only)."""
    return _writer[0]()


def register_writer(function):
    """Make ``function()`` (no arguments, a bool) the answer of ``should_write``."""
    _writer[0] = function


def _say(text, when=True):
    """``print(text)`` if ``when`` and ``should_write()``."""
    if when and should_write():
        print(text)


def _overrides(callback, hook):
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


def _plain(value):
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


class History(Callback):
    """Records ``logs`` at each epoch's end (``fit`` returns it): key -> one value per epoch.

    >>> h = History()
    >>> h.on_train_begin()
    >>> h.on_epoch_end(0, {"loss": 0.5, "lr": 0.1})
    >>> h.on_epoch_end(1, {"loss": 0.25, "lr": 0.1})
    >>> h.history["loss"], h.epoch
    ([0.5, 0.25], [0, 1])
    """

    def __init__(self):
        super().__init__()
        self.history, self.epoch = {}, []

    def on_train_begin(self, logs=None):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(_plain(value))

    def diagnose(self):
        """The verdict on these curves, with the reason and the remedy (``diagnostics.curves``)."""
        return curves.diagnose(self)


def _optimizer_of(model, who):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "lr"):
        raise RuntimeError(f"{who}: the model has no optimizer with an 'lr' attribute; "
                           "call model.compile(...) first")
    return optimizer


def _resolve_mode(mode, monitor, who):
    """``'min'`` or ``'max'``; ``'auto'``: max for accuracies, min for the rest."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: unknown mode {mode!r}; valid modes: auto, min, max")
    return ("max" if "acc" in monitor else "min") if mode == "auto" else mode


def _missing_key_warning(who, monitor, logs):
    warnings.warn(f"{who}: the monitored quantity {monitor!r} is not in the logs "
                  f"(available: {', '.join(sorted(logs)) or 'none'}); "
                  "did you pass validation data to fit?", RuntimeWarning, stacklevel=3)


def _counted(counter, name):
    """A property for ``self.<counter>.<name>`` (an attribute ``BackupAndRestore`` can save)."""
    return property(lambda self: getattr(getattr(self, counter), name),
                    lambda self, value: setattr(getattr(self, counter), name, value))
