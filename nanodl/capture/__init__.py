"""Captured training steps: run a step once through the engine, then replay it lean.

An eager training step pays for flexibility on every batch: a ``Tensor`` and a
``Function`` node per op, the graph walk (consumer counts, pending gradients, shape
and dtype checks at every edge) and argument checks in every kernel call. For a
small network that bookkeeping costs more than the arithmetic. But batch after
batch the step is the *same*: same layers, shapes, dtypes and kernels. So a
``CapturedStep`` does that work once:

1. **Capture.** The first call with a new *key* (shapes, dtypes and device of the
   batch, the kernel table, the optimizer's parameter list) runs the one eager step
   (``nn.plan._Plan.step``, what ``fit`` runs), every check included, while it
   records what each layer received. From that trace it builds a *program*: one
   stage per layer, a loss stage (through the same ``_Plan.loss``), the optimizer.
2. **Replay.** Every later call with that key runs the program: the stages'
   forwards in order, the loss, the backwards in reverse order, the optimizer. No
   graph is built: each stage keeps what its backward needs and hands the gradient
   of its input to the stage before it.
3. **Never stale.** Before every replay the step compares a ``signature`` of all
   the program depends on (each module's attributes and hooks, each parameter's
   ``requires_grad``, shape and dtype, the optimizer's type and hyperparameters, the
   loss's reduction) with the one of its recording, and records again when it
   changed. One lock lets threads share a step; ``run`` returns arrays of its own.

The stages:

* ``DenseStage``: a ``Dense`` layer (2-D input of its kernel's dtype, any activation
  but softmax, no forward hooks) replayed from the kernel table's unchecked compute
  functions (``table.compute.linear_forward`` / ``linear_backward``, see
  ``nanodl.backend.table``): no node, no Tensor, no argument checks. Its gradients go
  to ``kernel.grad`` and ``bias.grad``, where the engine would leave them. On a
  table with buffered compute functions (``table.buffered``) it is a
  ``BufferedDenseStage``, which writes into arrays allocated once.
* ``EngineStage``: any other layer (Dropout, BatchNorm, an activation, a custom
  layer, or a whole model that is not a plain ``Sequential``) runs through the
  engine, on a leaf tensor holding its input. Its Python code runs every step, so
  its side effects (dropout's random masks, BatchNorm's moving averages) happen
  exactly as in the eager step, drawing the same random numbers in the same order.
* the loss: the fused softmax cross-entropy (a softmax head trained with a
  cross-entropy, ``nn.plan.fuse_logits``, or a sparse cross-entropy from logits)
  calls its op's own ``forward`` and ``backward`` without building a node (the op
  still checks the labels: they are new data every step); any other loss runs
  through the engine.
* the optimizer's update (its bookkeeping, learning rate and schedule are its own),
  with the unchecked compute functions in place of the checked table: one kernel
  call over all parameters laid end to end (``FlatUpdate``) where the compiled
  table's Dense stages write every gradient, else the optimizer's own ``step()``.

Every stage calls the same functions, in the same order, on the same arrays as the
eager step, so the results are identical bit for bit; the tests hold them to that
(every optimizer, dropout, BatchNorm, a last partial batch, a learning-rate
schedule, both CPU kernel tables). A new key is captured again; the last
``KEPT_SIGNATURES`` programs are kept, so a last partial batch does not recapture
every epoch. Weight penalties and a parameter shared by two layers are not captured
(their gradients meet in one sum whose order the stages would have to mimic): such
steps stay eager, and ``reason`` says why; so does every step while the thread has
autograd hooks (``detect_anomaly``). ``fit(capture='auto')``, the default, trains
through a captured step (see ``nn.plan.register_capture``, the seam this module plugs
into). ``docs/capture.md`` walks through it.

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
