"""Saving and loading state dicts (``save``/``load``) and Sequential models (``load_model``).

No pickle; ``load_model`` checks every weight's shape against the architecture before it
builds a layer; a bad file raises ``ValueError``. See docs/saving.md.

>>> import os, tempfile, numpy as np, nanodl as nd
>>> path = os.path.join(tempfile.mkdtemp(), 'weights.npz')
>>> nd.save({'w': np.arange(3.0)}, path)
>>> nd.load(path)['w']
array([0., 1., 2.])
"""
import json
import os

import numpy as np

from . import losses, nested, optim
from .archive import (ARCHITECTURE_KEY, OPTIMIZER_KEY, OPTIMIZER_PREFIX, WEIGHTS_PREFIX, Reader,
                      atomic_write, load, save)
from .modelfile import LAYERS, save_model
from .nn.model import Sequential

__all__ = ["save", "load", "load_model", "save_model", "atomic_write"]

# What a hostile architecture or compile config can make a layer or optimizer raise.
_CONFIG_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError)


def _architecture(reader, path):
    dtype, shape = reader.dtype(ARCHITECTURE_KEY), reader.shape(ARCHITECTURE_KEY)
    if dtype != np.uint8 or len(shape) != 1:
        raise ValueError(f"load_model: {path!r} has its architecture stored as {dtype} {shape}, "
                         "expected uint8 bytes")
    try:
        architecture = json.loads(reader.read(ARCHITECTURE_KEY).tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"load_model: {path!r} has no valid model architecture "
                         f"({type(error).__name__}: {error})") from None
    if not isinstance(architecture, dict) or architecture.get("format") != "nanodl.model":
        raise ValueError(f"load_model: {path!r} has no valid model architecture "
                         "(not a nanodl model description)")
    specs = architecture.get("layers")
    if architecture.get("class_name") != "Sequential" or not isinstance(specs, list):
        raise ValueError(f"load_model: {path!r} holds a {architecture.get('class_name')!r}; only "
                         "Sequential models can be rebuilt. Create the model in code and call "
                         "model.load_weights(path)")
    for index, spec in enumerate(specs):
        if (not isinstance(spec, dict) or not isinstance(spec.get("class_name"), str)
                or not isinstance(spec.get("config", {}), dict)):
            raise ValueError(f"load_model: {path!r}: layer {index} is described as {spec!r}, "
                             "expected {'class_name': str, 'config': dict}")
        if spec["class_name"] not in LAYERS:
            raise ValueError(f"load_model: {path!r}: unknown layer {spec['class_name']!r}; known "
                             f"layers: {', '.join(LAYERS)}")
    return architecture, specs


def _planned_state(specs, path):
    """``(name -> shape each config implies, indices of layers that must be built to know)``."""
    shapes, unknown = {}, set()
    for index, spec in enumerate(specs):
        try:
            declared = LAYERS[spec["class_name"]].state_shapes(dict(spec.get("config") or {}))
        except _CONFIG_ERRORS as error:
            raise ValueError(f"load_model: {path!r}: layer {index} ({spec['class_name']}) has a bad "
                             f"config ({type(error).__name__}: {error})") from None
        if declared is None:
            unknown.add(str(index))
            continue
        for attr, shape in declared.items():
            shapes[f"layers.{index}.{attr}"] = tuple(shape)
    return shapes, unknown


def _check_weights(reader, specs, path):
    """Every stored weight is one the architecture implies, with its shape and a float dtype."""
    expected, unknown = _planned_state(specs, path)
    stored = {name[len(WEIGHTS_PREFIX):]: name for name in reader.names if name.startswith(WEIGHTS_PREFIX)}
    dtypes = {}  # a model computes in one float dtype: a mixed file would load, then fail in predict
    for name, member in stored.items():
        dtype = reader.dtype(member)
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(f"load_model: {path!r}: weight {name!r} is {dtype}; a model's weights "
                             "are float32 or float64")
        dtypes.setdefault(dtype.newbyteorder("="), name)
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[1] in unknown:
            continue  # a layer that declares no shapes: checked once built
        if name not in expected:
            raise ValueError(f"load_model: {path!r}: weight {name!r} belongs to no layer of the architecture")
        if reader.shape(member) != expected[name]:
            raise ValueError(f"load_model: {path!r}: weight {name!r} has shape {reader.shape(member)}, "
                             f"the architecture implies {expected[name]}")
    missing = [name for name in expected if name not in stored]
    if missing:
        raise ValueError(f"load_model: {path!r}: the architecture implies weights that are missing: "
                         f"{missing}")
    if len(dtypes) > 1:
        (first, first_name), (other, other_name) = list(dtypes.items())[:2]
        raise ValueError(f"load_model: {path!r}: weight {other_name!r} is {other} but weight "
                         f"{first_name!r} is {first}; a model's weights share one float dtype")
    return stored


def load_model(path, compile=True):
    """Rebuild the ``Sequential`` saved by ``model.save(path)``, weights and buffers included.

    With ``compile`` it comes back compiled (optimizer state and ``epochs_trained``
    included), so ``fit(..., initial_epoch=k)`` continues the training.
    """
    path = os.fspath(path)
    with Reader(path, "load_model") as reader:
        if ARCHITECTURE_KEY not in reader.names:
            raise ValueError(f"load_model: {path!r} holds no model architecture (a state dict? "
                             "use nanodl.load and model.load_state_dict)")
        architecture, specs = _architecture(reader, path)
        stored = _check_weights(reader, specs, path)
        weights = {name: reader.read(member) for name, member in stored.items()}
        weights = {name: array.astype(array.dtype.newbyteorder("="), copy=False)  # big-endian: native
                   for name, array in weights.items()}
        optimizer_state = _optimizer_state(reader, path) if compile else None
    try:
        model = Sequential([LAYERS[spec["class_name"]].from_config(dict(spec.get("config") or {}))
                            for spec in specs])
        model._load_state(weights, strict=True, keep_dtype=True)
        model.epochs_trained = int(architecture.get("epochs_trained", 0))
        compiled = architecture.get("compile")
        if compiled and compile:
            optimizer_spec, loss_spec = compiled["optimizer"], compiled["loss"]
            optimizer_config = {key: tuple(value) if isinstance(value, list) else value
                                for key, value in optimizer_spec["config"].items()}
            optimizer = optim.OPTIMIZERS[optimizer_spec["name"]](**optimizer_config)
            loss = loss_spec["name"]
            if loss_spec.get("class"):
                loss = losses.LOSS_CLASSES[loss](**loss_spec["config"])
            model.compile(optimizer=optimizer, loss=loss, metrics=compiled["metrics"] or None)
            if optimizer_state is not None:
                optimizer.set_params(model.parameters())
                optimizer.load_state_dict(optimizer_state)
    except _CONFIG_ERRORS as error:
        raise ValueError(f"load_model: {path!r} does not describe a loadable model "
                         f"({type(error).__name__}: {error})") from None
    return model


def _optimizer_state(reader, path):
    """The optimizer state ``Model.save`` stored (``nanodl.nested``), or None."""
    if OPTIMIZER_KEY not in reader.names:
        return None
    names = [name for name in reader.names if name.startswith(OPTIMIZER_PREFIX)]
    try:
        return nested.unpack(reader.read(OPTIMIZER_KEY), reader.read_all(names))
    except ValueError as error:
        raise ValueError(f"load_model: {path!r}: its optimizer state is damaged: {error}") from None
