"""Layers and models (``nanodl.nn``): ``Module``, ``Parameter``, built-in layers,
``Model`` (Keras' compile/fit/evaluate/predict) and ``Sequential``.

>>> import nanodl as nd
>>> from nanodl import nn
>>> model = nn.Sequential([nn.Dense(16, activation='relu', input_dim=4), nn.Dense(3, input_dim=16)])
>>> [name for name, _ in model.named_parameters()]
['layers.0.kernel', 'layers.0.bias', 'layers.1.kernel', 'layers.1.bias']
"""
from . import init
from .layers import (GELU, LAYERS, Activation, BatchNorm, Dense, Dropout, Embedding, Flatten, Layer,
                     LayerNorm, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, register_layer)
from .lr_finder import LRFinder
from .model import Model, Sequential
from .module import Module, ModuleList, Parameter

__all__ = ["Module", "ModuleList", "Parameter", "Layer", "Dense", "ReLU", "LeakyReLU", "Sigmoid",
           "Tanh", "Softmax", "GELU", "Activation", "Dropout", "Flatten", "BatchNorm", "LayerNorm",
           "Model", "Sequential", "init", "LAYERS", "register_layer", "Embedding", "LRFinder"]
