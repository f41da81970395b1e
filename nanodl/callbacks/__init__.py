"""Callbacks: hooks that ``Model.fit`` calls around epochs and batches, as in Keras.

Setting ``model.stop_training = True`` ends ``fit`` after the epoch. See docs/callbacks.md.

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
