"""Saving and loading: state dicts and whole Sequential models in one ``.npz`` file.

* ``nanodl.save(state_dict, path)`` / ``nanodl.load(path)`` -> dict name -> ndarray.
* ``model.save(path)`` / ``nanodl.load_model(path)``: the architecture as JSON (stored
  as a uint8 array), the compile settings when they were given by name, and the
  weights (parameters and buffers) under ``weights/<name>``.

No pickle anywhere: arrays are written with ``allow_pickle=False`` and read with
``np.load(path, allow_pickle=False)``, so loading a file never runs code. Writes
are atomic: the file is written to a temporary file in the same folder, flushed
and fsynced, then moved over the target with ``os.replace``; on any error the
temporary file is removed and an earlier file at ``path`` is left as it was.
A truncated, corrupt, non-npz or mismatched file raises ``ValueError``. Saved
arrays are host copies, so a model trained on the GPU loads on the CPU.

>>> import os, tempfile, numpy as np, nanodl as nd
>>> path = os.path.join(tempfile.mkdtemp(), 'weights.npz')
>>> nd.save({'w': np.arange(3.0)}, path)
>>> nd.load(path)['w']
array([0., 1., 2.])
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .tensor import Tensor

__all__ = ["save", "load", "load_model", "save_model"]

FORMAT_KEY = "__nanodl__"
ARCHITECTURE_KEY = "__architecture__"
WEIGHTS_PREFIX = "weights/"
FORMAT_VERSION = 1

# Everything a damaged or foreign file can make np.load / zipfile / json raise.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error,
                UnicodeDecodeError, RecursionError)


# ---------------------------------------------------------------- writing
def _host_array(name, value):
    value = value.data if isinstance(value, Tensor) else value
    array = value.get() if hasattr(value, "__cuda_array_interface__") else np.asarray(value)
    if array.dtype.hasobject:
        raise TypeError(f"save: {name!r} is an object array; only numeric and string arrays "
                        "can be saved (no pickle)")
    return array


def _write_npz(path, arrays):
    """Write ``arrays`` (name -> ndarray) as an uncompressed ``.npz``, atomically."""
    def write(handle):
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(path, write)


def atomic_write(path, write):
    """Call ``write(handle)`` on a temporary file next to ``path``, then move it over ``path``.

    The file is flushed and fsynced before ``os.replace``; on any error the temporary
    file is removed and an earlier file at ``path`` is left as it was. Every file
    nanodl writes for a user goes through here (``.npz`` saves, ONNX exports).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                     suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, _file_mode(path))
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.remove(temp_path)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _file_mode(path):
    """Keep an existing file's permissions; otherwise the usual 0666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder):
    """Make the rename itself durable (best effort: not every platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(state_dict, path):
    """Write a state dict (name -> array; or a Module, whose ``state_dict()`` is used)."""
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, dict):
        raise TypeError(f"save: expected a dict of name -> array, got {type(state_dict).__name__}")
    arrays = {FORMAT_KEY: np.array(f"nanodl.state_dict/{FORMAT_VERSION}")}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"save: state dict names must be non-empty strings not starting with "
                             f"'__', got {name!r}")
        arrays[name] = _host_array(name, value)
    _write_npz(path, arrays)


def save_model(model, path):
    """Write ``model``'s architecture (JSON), compile settings and weights to ``path``."""
    from .nn.layers import LAYERS
    architecture = {"format": "nanodl.model", "version": FORMAT_VERSION,
                    "class_name": type(model).__name__, "layers": None,
                    "compile": getattr(model, "_compile_config", None)}
    layers = getattr(model, "layers", None)
    if type(model).__name__ == "Sequential" and layers is not None:
        specs = []
        for layer in layers:
            name = type(layer).__name__
            if LAYERS.get(name) is not type(layer):
                raise ValueError(f"save: layer {name} is not a registered built-in layer; "
                                 "decorate it with nn.layers.register_layer or save its "
                                 "state_dict with nanodl.save")
            specs.append({"class_name": name, "config": layer.get_config()})
        architecture["layers"] = specs
    text = json.dumps(architecture, sort_keys=True)
    arrays = {FORMAT_KEY: np.array(f"nanodl.model/{FORMAT_VERSION}"),
              ARCHITECTURE_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    for name, value in model.state_dict().items():
        arrays[WEIGHTS_PREFIX + name] = _host_array(name, value)
    _write_npz(path, arrays)


# ---------------------------------------------------------------- reading
def _read_npz(path):
    """Every array of the ``.npz`` at ``path`` (read eagerly, no pickle); ValueError if damaged."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {name: archive[name] for name in archive.files}
    except _READ_ERRORS as error:
        raise ValueError(f"load: {path!r} is not a valid nanodl .npz file "
                         f"({type(error).__name__}: {error})") from None


def load(path):
    """The state dict saved at ``path``: a dict name -> ndarray.

    Works on files from ``nanodl.save``, ``Model.save`` (its weights) and plain
    ``np.savez`` archives of numeric arrays.
    """
    arrays = _read_npz(path)
    if ARCHITECTURE_KEY in arrays:
        return {name[len(WEIGHTS_PREFIX):]: array for name, array in arrays.items()
                if name.startswith(WEIGHTS_PREFIX)}
    arrays.pop(FORMAT_KEY, None)
    return arrays


def _architecture(arrays, path):
    try:
        raw = arrays[ARCHITECTURE_KEY]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"architecture stored as {raw.dtype} {raw.shape}, expected uint8 bytes")
        architecture = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(architecture, dict) or architecture.get("format") != "nanodl.model":
            raise ValueError("not a nanodl model description")
        return architecture
    except _READ_ERRORS as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"load_model: {path!r} has no valid model architecture "
                         f"({type(error).__name__}: {error})") from None


def load_model(path):
    """Rebuild the ``Sequential`` saved by ``model.save(path)``, weights and buffers included.

    The model is compiled again when it was compiled with named optimizer, loss
    and metrics (the optimizer starts fresh: its moments are not saved).
    """
    from . import losses, optim
    from .nn.layers import LAYERS
    from .nn.model import Sequential
    path = os.fspath(path)
    arrays = _read_npz(path)
    if ARCHITECTURE_KEY not in arrays:
        raise ValueError(f"load_model: {path!r} holds no model architecture (a state dict? "
                         "use nanodl.load and model.load_state_dict)")
    architecture = _architecture(arrays, path)
    specs = architecture.get("layers")
    if architecture.get("class_name") != "Sequential" or not isinstance(specs, list):
        raise ValueError(f"load_model: {path!r} holds a {architecture.get('class_name')!r}; only "
                         "Sequential models can be rebuilt. Create the model in code and call "
                         "model.load_weights(path)")
    try:
        layers = []
        for spec in specs:
            cls = LAYERS.get(spec.get("class_name"))
            if cls is None:
                raise ValueError(f"unknown layer {spec.get('class_name')!r}; known layers: "
                                 f"{', '.join(LAYERS)}")
            layers.append(cls.from_config(dict(spec.get("config") or {})))
        model = Sequential(layers)
        weights = {name[len(WEIGHTS_PREFIX):]: array for name, array in arrays.items()
                   if name.startswith(WEIGHTS_PREFIX)}
        model._load_state(weights, strict=True, keep_dtype=True)
        compiled = architecture.get("compile")
        if compiled:
            optimizer_spec, loss_spec = compiled["optimizer"], compiled["loss"]
            optimizer_config = {key: tuple(value) if isinstance(value, list) else value
                                for key, value in optimizer_spec["config"].items()}
            optimizer = optim.OPTIMIZERS[optimizer_spec["name"]](**optimizer_config)
            loss = loss_spec["name"]
            if loss_spec.get("class"):
                loss = losses.LOSS_CLASSES[loss](**loss_spec["config"])
            model.compile(optimizer=optimizer, loss=loss, metrics=compiled["metrics"] or None)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"load_model: {path!r} does not describe a loadable model "
                         f"({type(error).__name__}: {error})") from None
    return model
