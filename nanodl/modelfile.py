"""The model file ``Model.save`` writes, and the registry of layers it may name.

Every layer must be registered and no config may hold a function: a file holds no code.
The layout is in docs/saving.md.

>>> import os, tempfile
>>> from nanodl import nn
>>> model = nn.Sequential([nn.Dense(2, input_dim=3)])
>>> model.compile(optimizer='sgd', loss='mse')
>>> save_model(model, os.path.join(tempfile.mkdtemp(), 'model.npz'))
"""
import json
import warnings

import numpy as np

from . import losses as losses_module
from . import nested
from . import optim
from .archive import (ARCHITECTURE_KEY, FORMAT_KEY, FORMAT_VERSION, OPTIMIZER_KEY, OPTIMIZER_PREFIX,
                      WEIGHTS_PREFIX, _checked_names, _host_array, write_npz)

__all__ = ["save_model", "unsaved_setting", "LAYERS", "register_layer"]

LAYERS = {}  # class name -> the layer classes a model file may name (``nn.layers`` re-exports it)


def register_layer(cls):
    """Class decorator: make a layer known to ``load_model`` by its class name."""
    LAYERS[cls.__name__] = cls
    return cls


def save_model(model, path, include_optimizer=True):
    """Write ``model`` to ``path``, with the optimizer's state if compiled by name."""
    compiled = getattr(model, "_compile_config", None)
    architecture = {"format": "nanodl.model", "version": FORMAT_VERSION,
                    "class_name": type(model).__name__, "layers": None, "compile": compiled,
                    "epochs_trained": int(getattr(model, "epochs_trained", 0))}
    layers = getattr(model, "layers", None)
    if type(model).__name__ == "Sequential" and layers is not None:
        specs = []
        for layer in layers:
            name = type(layer).__name__
            if LAYERS.get(name) is not type(layer):
                raise ValueError(f"save: layer {name} is not a registered built-in layer; decorate it "
                                 "with nn.layers.register_layer or save its state_dict with nanodl.save")
            config = layer.get_config()
            for key, value in config.items():
                if callable(value):  # Dense(activation=a function of the user's own)
                    raise ValueError(f"save: layer {len(specs)} ({name}) has {key}="
                                     f"{getattr(value, '__name__', value)!r}, a callable of your own, "
                                     "and a file holds no code; use a built-in activation (a name, or "
                                     "nd.tanh, F.relu, ...) or nanodl.save(model.state_dict(), path)")
            specs.append({"class_name": name, "config": config})
        architecture["layers"] = specs
    text = json.dumps(architecture, sort_keys=True)
    state = model.state_dict()
    _checked_names(state, "save")
    arrays = {FORMAT_KEY: np.array(f"nanodl.model/{FORMAT_VERSION}"),
              ARCHITECTURE_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    for name, value in state.items():
        arrays[WEIGHTS_PREFIX + name] = _host_array(name, value)
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer and not compiled and optimizer is not None:
        reason = unsaved_setting(optimizer, getattr(model, "loss", None),
                                 getattr(model, "_metric_specs", ()))
        warnings.warn(f"save: {reason}, and a file holds no code, so the file keeps the architecture and "
                      "weights but not the compile settings or the optimizer state: nanodl.load_model "
                      "returns the model uncompiled (compile it again to train on)", UserWarning,
                      stacklevel=3)
    if include_optimizer and compiled and optimizer is not None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a DistributedOptimizer's
        arrays[OPTIMIZER_KEY], leaves = nested.pack(optimizer.state_dict(), _host_array, OPTIMIZER_PREFIX)
        arrays.update(leaves)
    write_npz(path, arrays)


def unsaved_setting(optimizer, loss, specs):
    """Why compile settings cannot be written by name (a phrase naming the culprit), or None.

    >>> def f1(pred, target):
    ...     return pred
    >>> unsaved_setting(optim.Adam(), 'mse', [('f1', f1)])
    "the metric 'f1' is a function of your own"
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # a DistributedOptimizer wraps one
    if type(inner) not in optim.OPTIMIZERS.values():
        return f"the optimizer is a {type(inner).__name__}, a class of your own"
    if losses_module.describe(loss)[0] is None:
        name = getattr(loss, "__name__", type(loss).__name__)
        return f"the loss {name!r} is a function or class of your own"
    for label, metric in specs:
        if not isinstance(metric, str):
            return f"the metric {label!r} is a function of your own"
    return None
