"""``model.summary()``: each layer's output shape, parameters and FLOPs per sample.

One sample (zeros) runs through the model inside ``nd.profile()``: nothing is inferred, so
a built subclassed ``Model`` works too.

>>> from nanodl import nn
>>> model = nn.Sequential([nn.Dense(8, activation='relu', input_dim=4), nn.Dense(2)])
>>> text = model.summary()
Model: "Sequential"
___________________________________________________________
Layer (type)       Output Shape   Param #   FLOPs/sample
===========================================================
layers.0 (Dense)   (None, 8)      40        64
___________________________________________________________
layers.1 (Dense)   (None, 2)      18        32
===========================================================
Total params: 58
Trainable params: 58
Non-trainable params: 0
FLOPs per sample: 96 (forward; a training step costs about 3 times that)
___________________________________________________________
"""
import numpy as np

from ..autograd import no_grad
from ..backend import to_device
from ..tensor import Tensor
from .profiler import profile

HEADER = ("Layer (type)", "Output Shape", "Param #", "FLOPs/sample")


def _run(model, shape):
    """One sample through ``model``: ``({id(module): output shape}, the profile)``."""
    shapes, handles = {}, []
    for _, module in model.named_modules()[1:]:
        def record(module, inputs, output):
            shapes[id(module)] = (None,) + tuple(getattr(output, "shape", ())[1:])
        handles.append(module.register_forward_hook(record))
    zeros = np.zeros((1,) + tuple(shape), dtype=model._input_dtype(np.dtype(np.int64)))
    try:
        with model._mode(False), no_grad(), profile() as prof:
            model.forward(Tensor(to_device(zeros, model._device())))
    finally:
        for handle in handles:
            handle.remove()
    return shapes, prof


def _listed(prefix, module, shapes):
    """The rows under ``module``; a container that never ran is replaced by its children."""
    rows = []
    for name, child in module._modules.items():
        if child is None:
            continue
        path = f"{prefix}{name}"
        if id(child) not in shapes and child._modules and shapes:
            rows += _listed(path + ".", child, shapes)
        else:
            rows.append((path, child))
    return rows


def rows(model):
    """``[(name (type), output shape, parameters, FLOPs per sample)]`` and the total FLOPs
    (``'?'`` for shape and FLOPs while the model's input shape is unknown)."""
    shape = model.__dict__.get("_input_shape")
    features = getattr(model, "_input_features", None)
    if shape is None and features is not None:
        shape = features()
        if shape is None:
            raise ValueError("summary: the model is not built yet; call build(input_shape), fit, "
                             "or give the first layer input_dim")
    shapes, prof = _run(model, shape) if shape is not None else ({}, None)
    listed = []
    for name, module in _listed("", model, shapes):
        flops = "?" if prof is None else prof.flops_of(module)
        listed.append((f"{name} ({type(module).__name__})", shapes.get(id(module), "?"),
                       module.count_params(), flops))
    total = "?" if prof is None else sum(row["flops"] for row in prof._rows("op", None))
    return listed, total


def summary(model):
    """Print and return ``model``'s table of layers, shapes, parameters and FLOPs per sample."""
    listed, total_flops = rows(model)
    cells = [HEADER] + [(name, str(shape), f"{count:,}", f"{flops:,}" if flops != "?" else flops)
                        for name, shape, count, flops in listed]
    widths = [max(len(row[i]) for row in cells) + 3 for i in range(len(HEADER))]
    width = sum(widths)
    lines = [f'Model: "{type(model).__name__}"', "_" * width]
    for index, row in enumerate(cells):
        lines.append("".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.append("=" * width if index == 0 else "_" * width)
    trainable = model.count_params()
    frozen = sum(int(b.size) for b in model.buffers())
    lines[-1] = "=" * width
    flops = f"{total_flops:,} (forward; a training step costs about 3 times that)" \
        if total_flops != "?" else "? (build the model first: build(input_shape) or fit)"
    lines += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {frozen:,}", f"FLOPs per sample: {flops}", "_" * width]
    text = "\n".join(lines)
    print(text)
    return text
