"""What ``Model.fit`` does differently on several ranks, and the check that they run the same fit."""
import math

import numpy as np

from .. import __version__, backend, losses
from ..random import generator, manual_seed
from .world import _agree, allreduce, broadcast, rank, size


class DataParallelFit:
    """``fit``'s strategy when its optimizer is a ``DistributedOptimizer`` on several ranks: equal
    shards of rank 0's order, summed epoch totals, dropout reseeded per rank (docs/distributed.md)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.rank, self.size = rank(), size()

    def begin(self, model=None, plan=None, **fit):
        if model is not None:
            _agree(fit_items(model, plan, self.samples_per_epoch, **fit), "fit", "what they train")
        self.optimizer.broadcast_parameters()
        if self.rank != 0:
            manual_seed([int(generator().integers(2 ** 62)), self.rank])

    def epoch_order(self, n, shuffle):
        if shuffle:
            order = generator().permutation(n) if self.rank == 0 else np.empty(n, dtype=np.int64)
            order = broadcast(order.astype(np.int64, copy=False))
        else:
            order = np.arange(n)
        return order[:n - n % self.size][self.rank::self.size]

    def samples_per_epoch(self, n):
        if n < self.size:
            raise ValueError(f"fit: {n} training samples cannot be shared out among {self.size} "
                             "ranks (each rank needs at least one)")
        return (n - n % self.size) // self.size

    def reduce(self, totals):
        totals.values = allreduce(np.array(totals.values, dtype=np.float64)).tolist()
        return totals

    def validation_shard(self, *arrays):
        """Rank r's share (samples r, r+N, ...) of each of ``arrays``; None stays None."""
        return tuple(None if a is None else a[self.rank::self.size] for a in arrays)


def _described(value):
    """``value``'s repr, callables by qualified name (a repr's address differs between ranks)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_described(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_described(item) for item in value) + "]"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return repr(value)


def fit_items(model, plan, samples_per_epoch, x=None, y=None, weight=None, batch_size=None,
              epochs=None, shuffle=None, validation=None):
    """What must be the same on every rank of a data-parallel fit: ``(label, value)`` pairs,
    most telling first.

    >>> from nanodl import nn
    >>> model = nn.Sequential([nn.Dense(2, input_dim=3)])
    >>> model.compile(optimizer='sgd', loss='mse')
    >>> dict(fit_items(model, None, lambda n: n, batch_size=4, epochs=2))['optimizer']
    'SGD'
    """
    optimizer = getattr(model.optimizer, "optimizer", model.optimizer)  # the wrapped one
    items = [("nanodl", __version__), ("kernels", backend.get_kernels()),
             ("dtype", np.dtype(model._float_dtype()).name), ("model", type(model).__qualname__)]
    for name, module in model.named_modules():
        if module is not model:
            config = module.get_config() if hasattr(module, "get_config") else {}
            items.append((f"layer {name}", f"{type(module).__qualname__} {_described(config)}"))
    items += [(f"parameter {name}", f"{parameter.dtype} {tuple(parameter.shape)}")
              for name, parameter in model.named_parameters()]
    items.append(("optimizer", type(optimizer).__qualname__))
    items += [(f"optimizer {key}", _described(value))
              for key, value in sorted(optimizer.get_config().items())]
    loss_name, loss_config = losses.describe(model.loss)
    items.append(("loss", f"{loss_name} {_described(loss_config)}" if loss_name is not None
                  else _described(model.loss)))
    if plan is not None:
        items.append(("metrics", ", ".join(label for label, _ in plan.metrics)))
    for label, array in (("x", x), ("y", y)):
        if array is not None:
            items.append((label, f"{array.dtype} samples of shape {tuple(array.shape[1:])}"))
    if x is not None:
        items.append(("training samples", len(x)))
    items += [("sample weights", weight is not None), ("batch size", batch_size)]
    if x is not None and batch_size is not None:
        steps = math.ceil(samples_per_epoch(len(x)) / batch_size) if len(x) >= size() else 0
        items.append(("steps per epoch", steps))
    items += [("epochs", epochs), ("shuffle", shuffle),
              ("validation samples", None if validation is None else len(validation[0]))]
    return items
