"""``nd.grad``: gradients returned instead of accumulated, and gradients of gradients.
A kink (relu, abs, max, clip) has second derivative 0, never NaN. See docs/higher_order.md.

>>> import nanodl as nd
>>> x = nd.tensor(3.0, requires_grad=True)
>>> (dx,) = nd.grad(x ** 3, x, create_graph=True)   # 3 x^2 = 27, with a graph
>>> (dxx,) = nd.grad(dx, x)                          # 6 x = 18
>>> float(dx.item()), float(dxx.item()), x.grad is None
(27.0, 18.0, True)
"""
import numpy as np

from . import mode, walk
from ..backend import array_module, device_of, is_device_array, to_device
from ..ops import Where
from ..tensor import Tensor


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """d(outputs)/d(inputs) as a tuple, one entry per input, no ``.grad`` touched (PyTorch's
    semantics). ``grad_outputs`` weights each output (omit it only for one-element outputs);
    an unused input raises ``RuntimeError`` unless ``allow_unused=True`` (then None)."""
    outputs, inputs = _as_tuple(outputs, "outputs"), _as_tuple(inputs, "inputs")
    retain_graph = create_graph if retain_graph is None else retain_graph
    leaf_slots, node_slots = {}, {}
    for index, tensor in enumerate(inputs):
        if not tensor.requires_grad:
            raise RuntimeError(f"grad: input {index} (shape {tensor.shape}) does not require grad")
        if tensor.grad_fn is None:
            leaf_slots.setdefault(id(tensor), []).append(index)
        else:
            node_slots.setdefault(tensor.grad_fn, []).append(index)
    seeds = _seeds(outputs, grad_outputs, create_graph)
    results = [None] * len(inputs)
    pending = {}
    for out, seed in zip(outputs, seeds):
        if out.grad_fn is None:  # a leaf output is its own gradient
            for index in leaf_slots.get(id(out), ()):
                own = seed if create_graph else seed.copy()
                results[index] = own if results[index] is None else results[index] + own
        else:
            previous = pending.get(out.grad_fn)
            pending[out.grad_fn] = seed if previous is None else previous + seed
    if pending:
        with mode.enable_grad() if create_graph else mode.no_grad():  # vjp records only when asked
            walk(pending, retain_graph, create_graph, (leaf_slots, node_slots, results))
    for index, (tensor, result) in enumerate(zip(inputs, results)):
        if result is None and not allow_unused:
            name = f" {tensor.name!r}" if tensor.name else ""
            raise RuntimeError(
                f"grad: input {index}{name} (shape {tensor.shape}) is not used by the outputs' "
                "graph; pass allow_unused=True to get None for it")
    if create_graph:
        return tuple(_attached(r, x) for r, x in zip(results, inputs))
    return tuple(None if r is None else Tensor(r) for r in results)


def _as_tuple(value, what):
    values = (value,) if isinstance(value, Tensor) else tuple(value)
    if not values:
        raise ValueError(f"grad: {what} is empty")
    for index, item in enumerate(values):
        if not isinstance(item, Tensor):
            raise TypeError(f"grad: {what}[{index}] must be a Tensor, got {type(item).__name__}")
    return values


def _seeds(outputs, grad_outputs, create_graph):
    if grad_outputs is None or isinstance(grad_outputs, Tensor) or hasattr(grad_outputs, "shape"):
        grad_outputs = (grad_outputs,) * len(outputs) if grad_outputs is None else (grad_outputs,)
    grad_outputs = tuple(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: got {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    seeds = []
    for index, (out, seed) in enumerate(zip(outputs, grad_outputs)):
        if not out.requires_grad:
            raise RuntimeError(f"grad: output {index} does not require grad and has no grad_fn")
        if seed is None:
            if out.size != 1:
                raise ValueError(f"grad: grad_outputs is required for output {index} of shape "
                                 f"{out.shape} (only one-element outputs have an implied 1)")
            seed = array_module(out.data).ones_like(out.data)
        elif isinstance(seed, Tensor):
            seed = seed if create_graph else seed.data
        if not isinstance(seed, Tensor):
            seed = seed if is_device_array(seed) else np.asarray(seed)
            if device_of(seed) != out.device:
                seed = to_device(seed, out.device)
            seed = seed.astype(out.dtype, copy=False)
            if create_graph:
                seed = Tensor(seed)
        if tuple(seed.shape) != out.shape:
            raise ValueError(f"grad: grad_outputs[{index}] has shape {tuple(seed.shape)}, "
                             f"output {index} has shape {out.shape}")
        seeds.append(seed)
    return seeds


def _attached(gradient, tensor):
    """A constant gradient (d(2x)/dx = 2) still requires grad under ``create_graph`` (SPEC):
    a ``where`` that always picks it gives ``tensor`` a zero gradient, finite even at inf."""
    if gradient is None or gradient.requires_grad or not tensor.requires_grad:
        return gradient
    take_gradient = array_module(tensor.data).ones((), dtype=bool)
    return Where.apply(gradient, tensor, cond=take_gradient)
