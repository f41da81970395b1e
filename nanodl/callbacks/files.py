"""Callbacks that write files: ``ModelCheckpoint``, ``BackupAndRestore``, ``CSVLogger``
(only where ``should_write``; each file written atomically)."""

import contextlib
import csv
import math
import os

import numpy as np

from .. import archive
from ..random import generator
from .base import (Callback, _missing_key_warning, _optimizer_of, _plain, _resolve_mode, _say,
                   should_write)


class ModelCheckpoint(Callback):
    """Saves the model (``model.save``, or its state dict) after each epoch, or when ``monitor``
    improves with ``save_best_only``. ``filepath`` may name ``{epoch}`` (from 1) and log keys.
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

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: _plain(value) for key, value in (logs or {}).items()}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} names {error} which is not "
                           f"in the logs (available: epoch, {', '.join(sorted(logs))})") from None
        verbose = self.verbose > 0
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                _missing_key_warning("ModelCheckpoint", self.monitor, logs)
                return
            if not (current < self.best if self.mode == "min" else current > self.best):
                _say(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}", verbose)
                return
            _say(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                 f"saving model to {path}", verbose)
            self.best = float(current)
        else:
            _say(f"\nEpoch {epoch + 1}: saving model to {path}", verbose)
        if not should_write():  # a data-parallel run saves on rank 0 only
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if self.save_weights_only:
            archive.save(self.model.state_dict(), path)
        else:
            self.model.save(path)


class BackupAndRestore(Callback):
    """Lets an interrupted ``fit`` continue where it stopped (Keras' ``BackupAndRestore``).

    Each epoch writes ``backup_dir/backup.npz`` (weights, optimizer, epoch, random
    generator, other callbacks' state), deleted when the fit finishes. See docs/callbacks.md.
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
        for callback, entry in zip(self._others, backup["callbacks"]):
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
        with contextlib.suppress(OSError):
            os.remove(self.path)
            os.rmdir(self.backup_dir)  # only when nothing else is in it


class CSVLogger(Callback):
    """Writes one CSV row per epoch (``epoch`` and the sorted log keys); ``append`` continues."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = append
        self.keys = self._file = self._writer = None

    def on_train_begin(self, logs=None):
        self.keys = self._writer = None
        if not should_write():  # a data-parallel run writes on rank 0 only
            return
        self._write_header = not (self.append and os.path.exists(self.filename)
                                  and os.path.getsize(self.filename) > 0)
        self._file = open(self.filename, "a" if self.append else "w", newline="")

    @staticmethod
    def _format(value):
        value = _plain(value)
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
        row = {key: self._format(logs[key]) if key in logs else "NA" for key in self.keys}
        self._writer.writerow({"epoch": epoch, **row})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file, self._writer = None, None
