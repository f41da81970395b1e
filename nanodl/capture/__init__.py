"""Captured training steps: run a step once through the engine, then replay it lean.

An eager step pays for flexibility on every batch (a ``Tensor`` and a node per op,
the graph walk, argument checks in every kernel), and for a small network that
costs more than the arithmetic. Batch after batch the step is the same, so a
``CapturedStep`` does that work once:

1. **Capture.** The first call with a new key (the batch's shapes, dtypes and
   device, the kernel table, the optimizer's parameter list) runs the one eager
   step (``nn.plan._Plan.step``, what ``fit`` runs), every check included, while it
   records what each layer received; from that trace it builds a *program*: one
   stage per layer (``stages``), a loss stage, the optimizer's update.
2. **Replay.** Later calls with that key run the program: the stages' forwards,
   the loss, the backwards in reverse order, the update. No graph is built.
3. **Never stale.** Before a replay the step checks that nothing the program
   depends on changed (``signature``) and records again when it did.

Every stage calls the same functions in the same order on the same arrays as the
eager step, so the results are identical bit for bit. Weight penalties and a
parameter shared by two layers stay eager (``reason`` says why), and so does every
step while the thread has autograd hooks (``detect_anomaly``). ``fit(capture='auto')``,
the default, trains through a captured step (the seam: ``nn.plan.register_capture``).
``docs/capture.md`` walks through it.

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
