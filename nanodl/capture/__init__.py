"""Captured training steps: run a step once through the engine, then replay it lean.

A ``CapturedStep`` runs the first step with a new key (shapes, dtypes, device, kernel
table, parameter list) eagerly, traces it into a program of stages (``stages``), then
replays that program, bit for bit the eager step, until something it depends on changes
(``signature``). ``fit(capture='auto')`` trains through one. See docs/capture.md.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn, optim
>>> from nanodl.capture import DenseStage
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(16, activation='relu', input_dim=4), nn.Dense(3)])
>>> opt = optim.SGD(model.parameters(), lr=0.1)
>>> step = nd.CapturedStep(model, nd.losses.SparseCategoricalCrossentropy(from_logits=True), opt)
>>> x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
>>> y = np.arange(8) % 3
>>> first = step(x, y)                # the capture: an eager step, then the program is built
>>> second = step(x, y)               # a replay
>>> second < first, all(isinstance(s, DenseStage) for s in step.stages), len(step.stages)
(True, True, 2)
"""
from .stages import (BufferedDenseStage, DenseStage, EngineLoss, EngineStage, FlatUpdate,
                     SoftmaxXentLoss)
from .step import KEPT_SIGNATURES, CapturedStep, signature

__all__ = ["CapturedStep", "KEPT_SIGNATURES", "signature", "DenseStage", "BufferedDenseStage",
           "EngineStage", "SoftmaxXentLoss", "EngineLoss", "FlatUpdate"]
