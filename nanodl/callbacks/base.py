"""The callback protocol (``Callback``, ``CallbackList``), ``History``, who prints and
writes (``should_write``: the seam a multi-process wing fills), and the helpers the
built-in callbacks share."""

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
    """Calls every hook on each callback in turn, as ``fit`` does.

    The batch hooks go only to callbacks that override them, so a callback that
    ignores batches costs nothing per step.

    >>> calls = []
    >>> class Note(Callback):
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         calls.append((epoch, logs["loss"]))
    >>> callbacks = CallbackList([Note(), History()], model=None)
    >>> callbacks.on_epoch_end(0, {"loss": 0.5})
    >>> calls
    [(0, 0.5)]
    """

    def __init__(self, callbacks, model, params=None):
        callbacks = list(callbacks)
        # A backup is taken after every other callback has had its say (a lowered lr, a
        # counter) and restored after they have all reset themselves.
        self.callbacks = [c for c in callbacks if not getattr(c, "runs_last", False)] + \
            [c for c in callbacks if getattr(c, "runs_last", False)]
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
    """Whether this process prints progress and writes files (``ProgressBar``,
    ``ModelCheckpoint``, ``CSVLogger``, ``Model.save``): always, unless a wing that
    runs several processes registered its own answer (``nanodl.distributed``: rank 0).

    >>> should_write()
    True
    """
    return _writer[0]()


def register_writer(function):
    """Make ``function()`` (no arguments, a bool) the answer of ``should_write``."""
    _writer[0] = function


def _say(*args, **kwargs):
    """``print``, where ``should_write``: in a data-parallel run the other ranks stay quiet."""
    if should_write():
        print(*args, **kwargs)


def _overrides(callback, hook):
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


def _plain(value):
    """A NumPy scalar or 0-d array as a Python number; anything else unchanged."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


class History(Callback):
    """Records every value of ``logs`` at each epoch's end; ``fit`` returns it.

    ``history`` maps each key (``'loss'``, ``'accuracy'``, ``'val_loss'``, ``'lr'``...)
    to a list with one value per epoch; ``epoch`` lists the epoch indices.

    >>> h = History()
    >>> h.on_train_begin()
    >>> h.on_epoch_end(0, {"loss": 0.5, "lr": 0.1})
    >>> h.on_epoch_end(1, {"loss": 0.25, "lr": 0.1})
    >>> h.history["loss"], h.epoch
    ([0.5, 0.25], [0, 1])
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(_plain(value))

    def diagnose(self):
        """The verdict on these curves: ``'underfitting'``, ``'overfitting'``, ``'diverging'``
        or ``'ok'``, with the reason and the remedy (``nanodl.diagnostics.curves``)."""
        return curves.diagnose(self)


def _optimizer_of(model, who):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "lr"):
        raise RuntimeError(f"{who}: the model has no optimizer with an 'lr' attribute; "
                           "call model.compile(...) first")
    return optimizer


def _resolve_mode(mode, monitor, who):
    """``'min'`` or ``'max'``; ``'auto'`` means max for accuracies, min for the rest."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: unknown mode {mode!r}; valid modes: auto, min, max")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _missing_key_warning(who, monitor, logs):
    warnings.warn(f"{who}: the monitored quantity {monitor!r} is not in the logs "
                  f"(available: {', '.join(sorted(logs)) or 'none'}); "
                  "did you pass validation data to fit?", RuntimeWarning, stacklevel=3)


def _counted(counter, name):
    """A property that reads and writes ``self.<counter>.<name>`` (so ``best`` and
    ``wait`` stay attributes a ``BackupAndRestore`` can save and restore)."""
    return property(lambda self: getattr(getattr(self, counter), name),
                    lambda self, value: setattr(getattr(self, counter), name, value))


def _copy_state(model):
    """A copy of the model's state dict (``state_dict`` copies already; copy again to be safe)."""
    return {name: array.copy() for name, array in model.state_dict().items()}
