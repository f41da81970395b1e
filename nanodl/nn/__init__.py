"""Layers and models (``nanodl.nn``): ``Module``, ``Parameter``, built-in layers,
``Model`` (Keras' compile/fit/evaluate/predict) and ``Sequential``. See docs/training.md."""
from . import init
from .layers import (GELU, LAYERS, Activation, BatchNorm, Dense, Dropout, Embedding, Flatten, Layer,
                     LayerNorm, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, register_layer)
from .lr_finder import LRFinder
from .model import Model, Sequential
from .module import Module, ModuleList, Parameter

__all__ = ["Module", "ModuleList", "Parameter", "Layer", "Dense", "ReLU", "LeakyReLU", "Sigmoid",
           "Tanh", "Softmax", "GELU", "Activation", "Dropout", "Flatten", "BatchNorm", "LayerNorm",
           "Model", "Sequential", "init", "LAYERS", "register_layer", "Embedding", "LRFinder"]
