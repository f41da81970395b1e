"""``nd.grad``: gradients returned instead of accumulated, and gradients of gradients.

``grad(outputs, inputs)`` walks the same graph as ``backward`` (Kahn's order, from
every output at once) but hands back d(outputs)/d(inputs) and never touches any
``.grad``. It runs in one of two tiers:

* ``create_graph=False``: the raw-array tier. Each node's ``backward`` runs on
  arrays, exactly as in ``Tensor.backward``; the results are constants.
* ``create_graph=True``: the Tensor tier. Each node's ``vjp(grad, *inputs)`` runs
  on Tensors with grad mode on, so the gradient is itself built from ordinary
  nanodl nodes (Mul, Sum, ...) that point into the original graph. A later
  ``nd.grad`` or ``backward()`` differentiates it again, to any order.

An op with a kink (relu, abs, max, clip) uses its mask as a constant in ``vjp``:
the mask has derivative 0, so a second derivative there is 0, never NaN.

>>> import nanodl as nd
>>> x = nd.tensor(3.0, requires_grad=True)
>>> (dx,) = nd.grad(x ** 3, x, create_graph=True)   # 3 x^2 = 27, with a graph
>>> (dxx,) = nd.grad(dx, x)                          # 6 x = 18
>>> float(dx.item()), float(dxx.item()), x.grad is None
(27.0, 18.0, True)
"""
import numpy as np

from . import (_check_gradient, _count_consumers, _run_backward, mode, owns_gradient,
               topological_order)
from ..backend import array_module, device_of, is_device_array, to_device


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """d(outputs)/d(inputs) as a tuple, one entry per input (PyTorch's semantics).

    ``grad_outputs`` (one Tensor or array per output) weights each output; it may be
    omitted only for one-element outputs. ``retain_graph`` defaults to
    ``create_graph``. An input the outputs do not depend on raises ``RuntimeError``
    unless ``allow_unused=True`` (its entry is then None).
    """
    from ..tensor import Tensor
    outputs = _as_tuple(outputs, "outputs", Tensor)
    inputs = _as_tuple(inputs, "inputs", Tensor)
    retain_graph = create_graph if retain_graph is None else retain_graph
    for index, tensor in enumerate(inputs):
        if not tensor.requires_grad:
            raise RuntimeError(f"grad: input {index} (shape {tensor.shape}) does not require grad")
    seeds = _seeds(outputs, grad_outputs, create_graph, Tensor)
    with mode.enable_grad() if create_graph else mode.no_grad():  # vjp records only when asked
        results = _walk(outputs, seeds, inputs, retain_graph, create_graph)
    for index, (tensor, result) in enumerate(zip(inputs, results)):
        if result is None and not allow_unused:
            name = f" {tensor.name!r}" if tensor.name else ""
            raise RuntimeError(
                f"grad: input {index}{name} (shape {tensor.shape}) is not used by the outputs' "
                "graph; pass allow_unused=True to get None for it")
    if create_graph:
        results = [_attached(r, x) for r, x in zip(results, inputs)]
    else:
        results = [None if r is None else _wrap(r, Tensor) for r in results]
    return tuple(results)


def _as_tuple(value, what, Tensor):
    values = (value,) if isinstance(value, Tensor) else tuple(value)
    if not values:
        raise ValueError(f"grad: {what} is empty")
    for index, item in enumerate(values):
        if not isinstance(item, Tensor):
            raise TypeError(f"grad: {what}[{index}] must be a Tensor, got {type(item).__name__}")
    return values


def _seeds(outputs, grad_outputs, create_graph, Tensor):
    """One starting gradient per output: an array, or a Tensor under ``create_graph``."""
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


def _walk(outputs, seeds, inputs, retain_graph, create_graph):
    """The summed gradient of every input (None where unused), arrays or Tensors."""
    results = [None] * len(inputs)
    leaf_slots, node_slots = {}, {}
    for index, tensor in enumerate(inputs):
        if tensor.grad_fn is None:
            leaf_slots.setdefault(id(tensor), []).append(index)
        else:
            node_slots.setdefault(tensor.grad_fn, []).append(index)
    pending = {}
    for out, seed in zip(outputs, seeds):
        if out.grad_fn is None:  # a leaf output is its own gradient
            for index in leaf_slots.get(id(out), ()):
                results[index] = _add(results[index], seed if create_graph else seed.copy())
        else:
            pending[out.grad_fn] = _add(pending.get(out.grad_fn), seed)
    consumers, useful = _plan(list(pending), leaf_slots, node_slots)
    ready = [node for node in pending if consumers.get(node, 0) == 0]
    while ready:
        node = ready.pop()
        grad_output = pending.pop(node, None)
        for index in node_slots.get(node, ()):  # an input that is not a leaf: its gradient is here
            captured = grad_output if create_graph or grad_output is None else grad_output.copy()
            results[index] = _add(results[index], captured)
        grads = None
        if grad_output is not None and node in useful:
            grads = _run_vjp(node, grad_output) if create_graph else _run_backward(node, grad_output)
            if not retain_graph:
                node.release()
        for index, tensor_in in enumerate(node.inputs):
            parent = tensor_in.grad_fn
            g = None if grads is None else grads[index]
            if g is not None and tensor_in.requires_grad:
                g = _checked(node, index, tensor_in, g, create_graph)
                if parent is None:
                    for slot in leaf_slots.get(id(tensor_in), ()):
                        if results[slot] is None and not create_graph and \
                                not owns_gradient(node, g, grad_output, grads):
                            g = g.copy()  # a returned gradient aliases nothing
                        results[slot] = _add(results[slot], g)
                elif parent in useful or parent in node_slots:
                    pending[parent] = _add(pending.get(parent), g)
            if parent is not None:
                consumers[parent] -= 1
                if consumers[parent] == 0:
                    ready.append(parent)
    return results


def _plan(roots, leaf_slots, node_slots):
    """How many consumers each node has, and which nodes lead to an input (worth running)."""
    consumers = _count_consumers(*roots)
    # A node is worth running when one of its inputs is an input asked for, or leads to one.
    reaches = set(node_slots)
    useful = set()
    for node in reversed(topological_order(*roots, consumers=consumers)):
        for tensor in node.inputs:
            parent = tensor.grad_fn
            if (parent is None and id(tensor) in leaf_slots) or (parent is not None and parent in reaches):
                useful.add(node)
                reaches.add(node)
                break
    return consumers, useful


def _add(total, g):
    return g if total is None else total + g


def _run_vjp(node, grad_output):
    """``node.vjp`` on Tensors, normalised to one gradient (or None) per input."""
    grads = node.vjp(grad_output, *node.inputs)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(node.inputs):
        raise RuntimeError(f"{node.name}.vjp returned {len(grads)} gradients for "
                           f"{len(node.inputs)} tensor inputs")
    hooks = mode.backward_hooks.get(mode.get_ident())
    if hooks:
        arrays = tuple(None if g is None else getattr(g, "data", g) for g in grads)
        for hook in hooks:
            hook(node, grad_output.data, arrays)
    return grads


def _checked(node, index, tensor_in, g, create_graph):
    """The engine's shared checks: shape (undo broadcasting), dtype, device, type."""
    data = tensor_in.data
    if not create_graph:
        if g.shape != data.shape or g.dtype != data.dtype or type(g) is not type(data):
            g = _check_gradient(node, index, tensor_in, g)
        return g
    if not hasattr(g, "grad_fn"):
        raise RuntimeError(f"{node.name}.vjp returned a {type(g).__name__} for input {index}; "
                           "vjp must return Tensors (an array would be a detached gradient)")
    if g.device != device_of(data):
        raise RuntimeError(f"{node.name}.vjp returned a {g.device} gradient for input {index} "
                           f"on {device_of(data)}")
    if g.shape != data.shape:
        reduced = unbroadcast_tensor(g, data.shape)
        if reduced is None:
            raise RuntimeError(f"{node.name}.vjp returned a gradient of shape {g.shape} for "
                               f"input {index} of shape {data.shape}")
        g = reduced
    if g.dtype != data.dtype:
        g = g.astype(data.dtype)
    return g


def unbroadcast_tensor(g, shape):
    """``autograd.unbroadcast`` for Tensors, made of differentiable ops (Sum, Reshape)."""
    from .. import ops
    extra = g.ndim - len(shape)
    if extra < 0:
        return None
    axes = tuple(range(extra)) + tuple(
        extra + i for i, size in enumerate(shape) if size == 1 and g.shape[extra + i] != 1)
    if axes:
        g = ops.sum(g, axis=axes, keepdims=True)
    if g.shape != tuple(shape):
        g = ops.reshape(g, tuple(shape)) if g.size == int(np.prod(shape)) else None
    return g


def _wrap(array, Tensor):
    result = Tensor.__new__(Tensor)
    result.data, result.grad, result.requires_grad, result.grad_fn, result.name = \
        array, None, False, None, None
    return result


def _attached(gradient, tensor):
    """Under ``create_graph``, a gradient that came out constant still hangs off ``tensor``.

    d(2x)/dx = 2 does not depend on x, but it does require grad (as the SPEC says), so
    differentiating it again gives 0 instead of an error: a ``where`` that always picks
    ``gradient`` and sends ``tensor`` a zero gradient, finite even where x is inf.
    """
    if gradient is None or gradient.requires_grad or not tensor.requires_grad:
        return gradient
    from ..ops import Where
    take_gradient = array_module(tensor.data).ones((), dtype=bool)
    return Where.apply(gradient, tensor, cond=take_gradient)
