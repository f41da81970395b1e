"""Callbacks: hooks that ``Model.fit`` calls around epochs and batches, as in Keras.

``fit`` calls ``set_model(model)``, then ``on_train_begin(logs)``; for each epoch
``on_epoch_begin(epoch, logs)``, ``on_batch_begin/end(batch, logs)`` for every batch
and ``on_epoch_end(epoch, logs)``, whose ``logs`` hold ``'loss'``, the metrics, their
``'val_'`` versions and ``'lr'``; last ``on_train_end(logs)``. A callback that sets
``model.stop_training = True`` ends ``fit`` after the current epoch.

Built in: ``History``, ``ProgressBar`` (which ``fit`` adds itself for ``verbose=1``
or ``2``), ``LearningRateScheduler``, ``EarlyStopping``, ``ModelCheckpoint``,
``BackupAndRestore``, ``ReduceLROnPlateau``, ``CSVLogger`` and ``TerminateOnNaN``. ``CallbackList`` is how ``fit`` calls them.

>>> class PrintLoss(Callback):
...     def on_epoch_end(self, epoch, logs=None):
...         print(f"epoch {epoch}: loss {logs['loss']:.3f}")
>>> PrintLoss().on_epoch_end(0, {"loss": 0.25})
epoch 0: loss 0.250
"""
import csv
import inspect
import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

from . import archive
from .diagnostics import curves
from .random import generator
from .optim import lr_scheduler
from .optim.lr_scheduler import Plateau, integer_argument, real_argument

__all__ = ["Callback", "CallbackList", "History", "ProgressBar", "ProgbarLogger",
           "LearningRateScheduler", "EarlyStopping", "ModelCheckpoint", "BackupAndRestore",
           "ReduceLROnPlateau", "CSVLogger", "TerminateOnNaN"]


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


def _format_number(value):
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4e}"


def format_logs(logs):
    """``'loss: 0.1234 - accuracy: 0.9000'``: the logs as the progress bar shows them."""
    return " - ".join(f"{key}: {_format_number(value)}" for key, value in logs.items())


def format_step_time(seconds_per_step):
    """Time per step as Keras shows it, in the largest unit that reads at least 1.

    >>> format_step_time(0.000085), format_step_time(0.0123), format_step_time(2.4)
    ('85us/step', '12ms/step', '2s/step')
    >>> format_step_time(0.0009996)  # rounds to 1000us: shown as 1ms
    '1ms/step'
    """
    micro = round(seconds_per_step * 1e6)
    if micro < 1000:
        return f"{micro}us/step"
    milli = round(seconds_per_step * 1e3)
    if milli < 1000:
        return f"{milli}ms/step"
    return f"{seconds_per_step:.0f}s/step"


def in_notebook():
    """True inside a Jupyter (IPython kernel) process, where a bar can redraw live.

    Detected as Keras 3 does, from ``'ipykernel' in sys.modules``, and confirmed by a
    running IPython shell that has a kernel (a plain process that merely imported
    ipykernel has none). IPython is never imported here: when it is absent, this is
    not a notebook.
    """
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def resolve_verbose(verbose):
    """``fit``'s ``verbose``: 0, 1 or 2 as given; ``'auto'`` is 1 (the live bar) on a
    terminal or in a notebook, 2 (a line per epoch) when stderr goes to a file or pipe."""
    if verbose == "auto":
        return 1 if _is_terminal(sys.stderr) or in_notebook() else 2
    if isinstance(verbose, str) or verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


class ProgressBar(Callback):
    """Keras' progress display: ``verbose=1`` a live bar per epoch (steps done, ETA,
    running loss and metrics), ``verbose=2`` one line per epoch. ``fit`` adds one
    itself when ``verbose`` is 1 or 2.

    Where it draws decides how (``verbose=1``):

    * a terminal (stderr, or ``stream`` if given): the bar redraws in place with
      ``\\r`` at most every ``interval`` seconds;
    * a Jupyter notebook: one IPython display (``display(..., display_id=True)``)
      updated in place, holding one line per finished epoch and the live bar, so a
      saved or exported notebook keeps one line per epoch, not every redraw;
    * anything else (a log file, a pipe, CI): one line per epoch, written when the
      epoch ends.

    The time per step reads in s, ms or us. The keys ``'lr'``, ``'batch'`` and
    ``'size'`` of the logs are not shown.
    """

    width = 30
    hidden = ("lr", "batch", "size")

    def __init__(self, verbose=1, stream=None, interval=0.1):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"ProgressBar: verbose must be 1 or 2, got {verbose!r}")
        self.verbose = verbose
        self._stream = stream
        self.interval = interval

    def on_train_begin(self, logs=None):
        notebook = self._stream is None and in_notebook()
        self.stream = self._stream if self._stream is not None else \
            (sys.stdout if notebook else sys.stderr)
        self.dynamic = _is_terminal(self.stream)
        self.display = _NotebookDisplay() if notebook and self.verbose == 1 else None

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "stream"):  # used outside fit
            self.on_train_begin()
        self.epochs = self.params.get("epochs", epoch + 1)
        self.steps = max(int(self.params.get("steps", 1)), 1)
        self.title = f"Epoch {epoch + 1}/{self.epochs}"
        if self.verbose == 1 and self.dynamic:
            self._print(self.title)
        self.start = time.perf_counter()
        self.next_draw = self.start + self.interval
        self.drawn = 0

    def on_batch_end(self, batch, logs=None):
        if self.verbose != 1 or batch + 1 >= self.steps or not (self.dynamic or self.display):
            return
        now = time.perf_counter()
        if now < self.next_draw:
            return
        self.next_draw = now + self.interval
        done = batch + 1
        eta = (now - self.start) / done * (self.steps - done)
        line = f"{self._bar(done)} - ETA: {eta:.0f}s - {self._shown(logs)}"
        if self.display is not None:
            self._show(f"{self.title} - {line}", final=False)
        else:
            self._draw(line, end="")

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.start
        if self.verbose == 2:
            self._print(f"{self.title} - {elapsed:.2f}s - {self._shown(logs)}")
            return
        timing = f"{elapsed:.0f}s {format_step_time(elapsed / self.steps)}"
        line = f"{self._bar(self.steps)} - {timing} - {self._shown(logs)}"
        if self.display is not None:
            self._show(f"{self.title} - {line}", final=True)
        elif self.dynamic:
            self._draw(line, end="\n")
        else:
            self._print(f"{self.title} - {line}")

    def _shown(self, logs):
        return format_logs({k: v for k, v in (logs or {}).items() if k not in self.hidden})

    def _bar(self, done):
        filled = self.width * done // self.steps
        arrow = ">" if done < self.steps else ""
        digits = len(str(self.steps))
        body = "=" * max(filled - len(arrow), 0) + arrow
        return f"{done:>{digits}}/{self.steps} [{body:<{self.width}}]"

    def _print(self, line):
        if not should_write():  # a data-parallel run draws on rank 0 only
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def _draw(self, line, end):
        """Redraw the bar's line in place (``\\r``, padded over a longer previous line)."""
        if not should_write():
            return
        padding = " " * max(self.drawn - len(line), 0)
        self.stream.write("\r" + line + padding + end)
        self.stream.flush()
        self.drawn = 0 if end else len(line)

    def _show(self, line, final):
        if should_write():
            self.display.show(line, final)


class _NotebookDisplay:
    """One IPython display for a whole ``fit``: the finished epochs' lines and the live
    one, redrawn in place with ``DisplayHandle.update`` (IPython is imported only here,
    in a kernel)."""

    def __init__(self):
        from IPython.display import display
        self._display = display
        self.lines = []
        self.handle = None

    def show(self, line, final):
        bundle = {"text/plain": "\n".join(self.lines + [line])}
        if final:
            self.lines.append(line)
        if self.handle is None:
            self.handle = self._display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)


ProgbarLogger = ProgressBar  # Keras' name


def _optimizer_of(model, who):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "lr"):
        raise RuntimeError(f"{who}: the model has no optimizer with an 'lr' attribute; "
                           "call model.compile(...) first")
    return optimizer


def _takes_lr(schedule):
    """True when ``schedule`` accepts two positional arguments ``(epoch, lr)``."""
    try:
        parameters = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume (epoch, lr)
        return True
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    return len(positional) >= 2


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of each epoch to ``schedule(epoch)`` or
    ``schedule(epoch, lr)`` (``lr`` is the current rate), as Keras does.

    >>> def halve_every_10(epoch, lr):
    ...     return lr * 0.5 if epoch and epoch % 10 == 0 else lr
    >>> scheduler = LearningRateScheduler(halve_every_10)
    """

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
        if self._with_lr:
            lr = self.schedule(epoch, float(optimizer.lr))
        else:
            lr = self.schedule(epoch)
        lr = _plain(lr)
        if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr):
            raise ValueError(f"LearningRateScheduler: the schedule must return a finite number, "
                             f"got {lr!r} at epoch {epoch}")
        optimizer.lr = float(lr)
        if self.verbose > 0:
            _say(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr):.6g}.")


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


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    An improvement is a change of more than ``min_delta`` in the right direction
    (``mode='auto'``: up for names containing ``'acc'``, else down). With
    ``restore_best_weights=True`` the weights of the best epoch are put back when
    training ends, whether this callback stopped it or not. ``stopped_epoch`` and
    ``best_epoch`` say what happened.
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
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            _missing_key_warning("EarlyStopping", self.monitor, logs)
            return
        current = float(current)
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = _copy_state(self.model)  # so there is something to restore
        waited = self.wait
        if self.plateau.record(current):
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = _copy_state(self.model)
            if self.baseline is not None and not self.plateau.is_better(current, self.baseline):
                self.wait = waited + 1  # better than before, not yet better than the baseline
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _say(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _say(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Saves the model after each epoch with ``model.save`` (or only its state dict).

    ``filepath`` may hold format fields: ``{epoch}`` (numbered from 1, as Keras) and any
    key of the logs, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``. With
    ``save_best_only=True`` a file is written only when ``monitor`` improves
    (``mode='auto'``: up for accuracies, else down). A full checkpoint holds what
    ``nanodl.load_model`` needs to continue training (compile settings, optimizer
    state, epochs trained); ``save_weights_only=True`` writes ``model.state_dict()``
    with ``nanodl.save`` instead.
    """

    _state_attributes = ("best",)

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, save_weights_only=False,
                 mode="auto", verbose=0):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = _resolve_mode(mode, monitor, "ModelCheckpoint")
        self.save_weights_only = save_weights_only
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf

    def _path_for(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} names {error} which is not "
                           f"in the logs (available: epoch, {', '.join(sorted(logs))})") from None

    def _save(self, path):
        if not should_write():  # a data-parallel run saves on rank 0 only
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            archive.save(self.model.state_dict(), path)
        else:
            self.model.save(path)

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: _plain(value) for key, value in (logs or {}).items()}
        path = self._path_for(epoch, logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                _missing_key_warning("ModelCheckpoint", self.monitor, logs)
                return
            improved = current < self.best if self.mode == "min" else current > self.best
            if not improved:
                if self.verbose > 0:
                    _say(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose > 0:
                _say(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = float(current)
        elif self.verbose > 0:
            _say(f"\nEpoch {epoch + 1}: saving model to {path}")
        self._save(path)


class BackupAndRestore(Callback):
    """Lets an interrupted ``fit`` continue where it stopped (Keras' ``BackupAndRestore``).

    After every epoch it writes ``backup_dir/backup.npz`` (atomically): the weights,
    the optimizer's whole state, the epoch, nanodl's random generator and the state
    of the other callbacks (a plateau's counter, early stopping's best). When a fit
    is interrupted (an exception, a kill), running the same ``fit`` again with this
    callback restores all of it and continues from the epoch after the last one
    completed, ending with the weights an uninterrupted run would have. A fit that
    finishes deletes the backup (unless ``delete_checkpoint=False``).

    >>> import os, tempfile, numpy as np
    >>> from nanodl import nn
    >>> model = nn.Sequential([nn.Dense(1, input_dim=2)])
    >>> model.compile(optimizer='sgd', loss='mse')
    >>> folder = os.path.join(tempfile.mkdtemp(), 'backup')
    >>> x, y = np.ones((8, 2), np.float32), np.zeros(8, np.float32)
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(folder)])
    >>> os.path.exists(folder)  # the fit finished: the backup is gone
    False
    """

    runs_last = True
    FORMAT = "nanodl.backup/1"

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__()
        self.backup_dir = os.fspath(backup_dir)
        self.path = os.path.join(self.backup_dir, "backup.npz")
        self.delete_checkpoint = delete_checkpoint
        self._others = []

    def set_callbacks(self, callbacks):
        self._others = [c for c in callbacks if c is not self and getattr(c, "_state_attributes", ())]

    def on_train_begin(self, logs=None):
        if not os.path.exists(self.path):
            return
        backup = archive.load(self.path)
        if not isinstance(backup, dict) or backup.get("format") != self.FORMAT:
            raise ValueError(f"BackupAndRestore: {self.path!r} is not a backup this callback wrote")
        optimizer = _optimizer_of(self.model, "BackupAndRestore")
        self.model.load_state_dict(backup["weights"])
        optimizer.load_state_dict(backup["optimizer"])
        generator().bit_generator.state = backup["random"]
        saved = backup["callbacks"]
        for callback, entry in zip(self._others, saved):
            if entry["class"] == type(callback).__name__:
                for name, value in entry["state"].items():
                    setattr(callback, name, value)
        self.model._resume_epoch = int(backup["epoch"]) + 1

    def on_epoch_end(self, epoch, logs=None):
        if not should_write():  # a data-parallel run writes on rank 0 only
            return
        optimizer = _optimizer_of(self.model, "BackupAndRestore")
        others = [{"class": type(c).__name__,
                   "state": {name: getattr(c, name) for name in c._state_attributes}}
                  for c in self._others]
        os.makedirs(self.backup_dir, exist_ok=True)
        archive.save({"format": self.FORMAT, "epoch": int(epoch), "weights": self.model.state_dict(),
                      "optimizer": optimizer.state_dict(), "random": generator().bit_generator.state,
                      "callbacks": others}, self.path)

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint or not should_write():
            return
        try:
            os.remove(self.path)
            os.rmdir(self.backup_dir)  # only when nothing else is in it
        except OSError:
            pass


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has stopped improving
    for ``patience`` epochs (Keras semantics).

    An improvement is a change of more than ``min_delta``; after a reduction,
    ``cooldown`` epochs pass before counting again; the rate never goes below
    ``min_lr``. An adapter of the one plateau scheduler,
    ``optim.lr_scheduler.ReduceLROnPlateau`` (``self.scheduler``): Keras counts
    ``patience`` and ``cooldown`` one epoch later than PyTorch, so the scheduler gets
    one less of each (at least 0), and ``min_delta`` as an absolute threshold.
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
        unbound = _Rate()  # the model's optimizer is bound at each epoch's end
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
        if self.verbose > 0 and float(optimizer.lr) != old_lr:
            _say(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                 f"to {float(optimizer.lr):.6g}.")


class _Rate:
    """Stands for the optimizer until the callback has a model: a rate and nothing else."""
    lr = 0.0


class CSVLogger(Callback):
    """Writes one CSV row per epoch: a header ``epoch`` + the sorted log keys, then the values.

    The file is flushed after every epoch, so it can be watched while training runs;
    ``append=True`` continues an existing file (without repeating its header).
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = append
        self.keys = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self.keys = None
        self._writer = None
        if not should_write():  # a data-parallel run writes on rank 0 only
            return
        self._write_header = True
        if self.append and os.path.exists(self.filename):
            self._write_header = os.path.getsize(self.filename) == 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")

    @staticmethod
    def _format(value):
        value = _plain(value)
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple, np.ndarray)):
            return "[" + ", ".join(str(_plain(v)) for v in np.ravel(value)) + "]"
        return value

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not should_write():
            return
        if self._file is None:  # used outside fit: open lazily
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self.keys],
                                          delimiter=self.separator, extrasaction="ignore")
            if self._write_header:
                self._writer.writeheader()
        row = {"epoch": epoch}
        row.update({key: self._format(logs[key]) if key in logs else "NA" for key in self.keys})
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None


class TerminateOnNaN(Callback):
    """Stops training as soon as a batch's loss is NaN or inf (Keras semantics).

    ``fit`` ends after that batch (the rest of the epoch is skipped; ``on_epoch_end``
    and ``on_train_end`` still run, so ``History`` records the NaN). In a data-parallel
    run every rank stops at the end of that epoch, whose summed loss is NaN on all.

    >>> from nanodl import nn
    >>> import numpy as np
    >>> model = nn.Sequential([nn.Dense(1)])
    >>> model.compile(optimizer='sgd', loss='mse')
    >>> x = np.ones((8, 1), dtype=np.float32)
    >>> y = np.full(8, np.nan, dtype=np.float32)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     history = model.fit(x, y, batch_size=2, epochs=5, verbose=0,
    ...                         callbacks=[TerminateOnNaN()])
    Batch 0: Invalid loss, terminating training
    >>> history.epoch
    [0]
    """

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            _say(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # The epoch's loss is summed over every process of a data-parallel run, so a NaN
        # seen by one rank's batch stops every rank here, together.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and not self.model.stop_training:
            _say(f"Epoch {epoch + 1}: Invalid loss, terminating training")
            self.model.stop_training = True
