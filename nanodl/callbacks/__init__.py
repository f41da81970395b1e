"""Callbacks: hooks that ``Model.fit`` calls around epochs and batches, as in Keras
(docs/callbacks.md): ``on_train_begin/end(logs)``, ``on_epoch_begin/end(epoch, logs)``
and ``on_batch_begin/end(batch, logs)``. A callback that sets ``model.stop_training =
True`` ends ``fit`` after the current epoch. ``base.py`` holds the protocol,
``progress.py`` the bar, ``training.py`` what steers training, ``files.py`` what writes.

>>> class PrintLoss(Callback):
...     def on_epoch_end(self, epoch, logs=None):
...         print(f"epoch {epoch}: loss {logs['loss']:.3f}")
>>> PrintLoss().on_epoch_end(0, {"loss": 0.25})
epoch 0: loss 0.250
"""
from .base import Callback, CallbackList, History, register_writer, should_write
from .files import BackupAndRestore, CSVLogger, ModelCheckpoint
from .progress import ProgbarLogger, ProgressBar, format_logs, format_step_time, in_notebook, \
    resolve_verbose
from .training import EarlyStopping, LearningRateScheduler, ReduceLROnPlateau, TerminateOnNaN

__all__ = ["Callback", "CallbackList", "History", "ProgressBar", "ProgbarLogger",
           "LearningRateScheduler", "EarlyStopping", "ModelCheckpoint", "BackupAndRestore",
           "ReduceLROnPlateau", "CSVLogger", "TerminateOnNaN", "should_write", "register_writer"]
