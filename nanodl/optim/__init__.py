"""Optimizers, gradient clipping and learning-rate schedules (``nanodl.optim``).

``SGD``, ``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop`` and ``LBFGS`` follow ``torch.optim``
step for step; ``lr_scheduler`` holds ``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR``,
``LambdaLR`` and ``ReduceLROnPlateau``.
"""
from . import lr_scheduler
from .clipping import clip_grad_norm
from .lbfgs import LBFGS
from .optimizers import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "LBFGS", "clip_grad_norm",
           "lr_scheduler", "get", "OPTIMIZERS"]
