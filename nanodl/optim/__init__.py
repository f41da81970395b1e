"""Optimizers, gradient clipping and learning-rate schedules, step for step as ``torch.optim``."""
from . import lr_scheduler
from .clipping import clip_grad_norm
from .lbfgs import LBFGS
from .optimizers import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "LBFGS", "clip_grad_norm",
           "lr_scheduler", "get", "OPTIMIZERS"]
