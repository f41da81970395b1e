"""Reverse-mode autograd: ``Function``, the graph walk, ``no_grad``.

A graph is made of ``Function`` nodes. Calling ``SomeOp.apply(*tensors)`` runs
``forward`` on the raw arrays and returns a Tensor whose ``grad_fn`` is the node;
the node keeps its input tensors, so ownership flows one way: output -> node ->
inputs, and a dropped output frees its whole graph (no cycles).

``backward`` walks the graph iteratively (Kahn's algorithm: a node runs once all
of its consumers have, so a 10,000-node chain needs no recursion), and does the
shared work once for every op: it reduces each gradient back to its input's shape
(undoing broadcasting), checks its device, casts it to the input's dtype, names the
op in any error, accumulates into leaves and frees saved arrays. ``nd.grad`` and
gradients of gradients: ``autograd/higher.py``; Jacobians, Hessians: ``functional.py``.
"""
import weakref
from threading import get_ident

import numpy as np

from ..backend import device_of


from . import mode
from .mode import enable_grad, is_grad_enabled, no_grad  # noqa: F401  (the public names)

_grad_modes, _forward_hooks, _backward_hooks = mode.grad_modes, mode.forward_hooks, mode.backward_hooks
_tensor_class = None  # set by nanodl.tensor once Tensor is defined (it imports this module)


def __getattr__(name):
    """``autograd.forward_hooks`` / ``backward_hooks``: the calling thread's hook lists.

    Hooks are empty unless a tool installs one (``nd.detect_anomaly``, ``gradcheck.locate``):
    forward hooks get ``(node, args, kwargs, out)`` after each forward, backward hooks
    ``(node, grad_output, grads)`` after each backward.
    """
    if name in ("forward_hooks", "backward_hooks"):
        return mode.thread_hooks(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Function:
    """A differentiable op: ``forward`` and ``backward`` over backend arrays.

    Subclasses implement ``forward(self, *arrays, **options)`` returning one array
    and ``backward(self, grad)`` returning one gradient per tensor input (a tuple,
    or a single array when there is one input; ``None`` for "no gradient").
    ``self.needs_input_grad[i]`` says whether input ``i`` wants a gradient, so
    backward can skip work.

    To be differentiable twice (``nd.grad(..., create_graph=True)``) an op also
    defines ``vjp(self, grad, *inputs)``: the same derivative written with Tensor ops
    (``grad`` and the tensor inputs are Tensors), returning Tensors (or None).
    """
    __slots__ = ("inputs", "needs_input_grad", "saved_tensors", "_retained", "_freed", "__dict__",
                 "__weakref__")
    _fresh_grads = False  # True for nanodl's own ops, whose backward returns new arrays

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._fresh_grads = cls.__module__.startswith("nanodl.ops.")

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` for ``backward``; the engine frees them after it."""
        self.saved_tensors = arrays

    @property
    def name(self):
        return type(self).__name__

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run the op on Tensors (other arguments pass through to ``forward``)."""
        Tensor = _tensor_class
        fn = cls()
        arrays = []
        tensors = []
        requires_grad = False
        device_array = None
        for arg in args:
            if isinstance(arg, Tensor):
                data = arg.data
                if device_array is None:
                    device_array = data
                elif type(data) is not type(device_array) and \
                        device_of(data) != device_of(device_array):
                    raise RuntimeError(
                        f"{cls.__name__}: expected all tensors on one device, got "
                        f"{device_of(device_array)} and {device_of(data)}")
                arrays.append(data)
                tensors.append(arg)
                requires_grad = requires_grad or arg.requires_grad
            else:
                arrays.append(arg)
        out = fn.forward(*arrays, **kwargs)
        if type(out) is not np.ndarray and isinstance(out, np.generic):
            out = np.asarray(out)  # NumPy returns scalars from 0-d math; keep arrays
        if _forward_hooks:  # some thread has hooks: are they this one's?
            for hook in _forward_hooks.get(get_ident(), ()):
                hook(fn, args, kwargs, out)
        result = Tensor.__new__(Tensor)
        result.data = out
        result.grad = None
        result.name = None
        if requires_grad and (not _grad_modes or _grad_modes.get(get_ident(), True)):
            fn.inputs = tuple(tensors)
            fn.needs_input_grad = tuple(t.requires_grad for t in tensors)
            fn._retained = None
            fn._freed = False
            result.requires_grad = True
            result.grad_fn = fn
        else:
            result.requires_grad = False
            result.grad_fn = None
        return result

    def forward(self, *arrays):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def backward(self, grad):
        raise NotImplementedError(f"{type(self).__name__}.backward is not implemented")

    def vjp(self, grad, *inputs):
        raise RuntimeError(
            f"{type(self).__name__} has no vjp, so its gradient cannot be differentiated "
            "(create_graph=True); define vjp(self, grad, *inputs) with Tensor ops")

    def release(self):
        """Drop what forward kept for backward (called by the engine)."""
        self.saved_tensors = None
        self.__dict__.clear()
        self._freed = True

    def __repr__(self):
        return f"<{type(self).__name__}>"


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the reverse of NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        return None
    axes = tuple(range(extra)) + tuple(
        extra + i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1)
    reduced = grad.sum(axis=axes, keepdims=True) if axes else grad
    if extra:
        reduced = reduced.reshape(reduced.shape[extra:])
    return reduced if reduced.shape == shape else None


def _count_consumers(*roots):
    """For every node below ``roots``: how many input slots of the graph's nodes it feeds.

    A node may run its backward only once all of its consumers have run (Kahn's
    algorithm), so this count is all the ordering the walk needs.
    """
    consumers = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node._freed:
            raise _freed_error(node)
        for tensor in node.inputs:
            parent = tensor.grad_fn
            if parent is not None:
                if parent in consumers:
                    consumers[parent] += 1
                else:
                    consumers[parent] = 1
                    if parent not in roots:  # a root is on the stack already
                        stack.append(parent)
    return consumers


def topological_order(*roots, consumers=None):
    """The nodes reachable from ``roots``, each before every node it depends on (several
    roots, as ``nd.grad`` has, need their graph's ``consumers`` counts; left unchanged)."""
    remaining = _count_consumers(*roots) if consumers is None else dict(consumers)
    order, ready = [], [root for root in roots if remaining.get(root, 0) == 0]
    while ready:
        node = ready.pop()
        order.append(node)
        for tensor in node.inputs:
            parent = tensor.grad_fn
            if parent is not None:
                remaining[parent] -= 1
                if remaining[parent] == 0:
                    ready.append(parent)
    return order


def _freed_error(node):
    return RuntimeError(
        f"{node.name}: trying to backward through the graph a second time; its saved "
        "arrays were freed after the first backward. Pass retain_graph=True to the first "
        "backward() if you need to call it twice.")


def backward(tensor, grad, retain_graph=False):
    """Accumulate d(tensor)/d(leaf) * grad into every leaf that requires grad."""
    root = tensor.grad_fn
    if root is None:
        _accumulate_leaf(tensor, grad, owned=False)
        return
    consumers = _count_consumers(root)
    pending = {root: grad}  # node -> the summed gradient of its output
    ready = [root]
    while ready:
        node = ready.pop()
        grad_output = pending.pop(node, None)
        grads = None if grad_output is None else _run_backward(node, grad_output)
        inputs = node.inputs
        for index, tensor_in in enumerate(inputs):
            parent = tensor_in.grad_fn
            g = None if grads is None else grads[index]
            if g is not None and tensor_in.requires_grad:
                data = tensor_in.data
                if g.shape != data.shape or g.dtype != data.dtype or type(g) is not type(data):
                    g = _check_gradient(node, index, tensor_in, g)
                if parent is None:
                    _accumulate_leaf(tensor_in, g, owns_gradient(node, g, grad_output, grads))
                else:
                    previous = pending.get(parent)
                    pending[parent] = g if previous is None else previous + g
            if parent is not None:
                remaining = consumers[parent] - 1
                consumers[parent] = remaining
                if remaining == 0:
                    ready.append(parent)
        if not retain_graph:
            node.release()


def owns_gradient(node, g, grad_output, grads):
    """May a leaf keep ``g`` as its ``.grad`` uncopied? Only a built-in op's fresh array
    that no one else holds (not the incoming gradient, a view, an input's data, a saved
    array, nor returned twice). A custom Function's gradient is always copied."""
    if not node._fresh_grads or g is grad_output or g.base is not None:
        return False
    for tensor in node.inputs:
        if g is tensor.data:
            return False
    for saved in getattr(node, "saved_tensors", None) or ():
        if g is saved:
            return False
    return [other is g for other in grads].count(True) == 1


def _run_backward(node, grad_output):
    """Call ``node.backward`` and normalise its answer to one gradient per input."""
    if node._retained is not None:
        kept = node._retained()
        if kept is not None:
            kept.grad = grad_output.copy() if kept.grad is None else kept.grad + grad_output
    grads = node.backward(grad_output)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(node.inputs):
        raise RuntimeError(f"{node.name}.backward returned {len(grads)} gradients for "
                           f"{len(node.inputs)} tensor inputs")
    if _backward_hooks:
        for hook in _backward_hooks.get(get_ident(), ()):
            hook(node, grad_output, grads)
    return grads


def _check_gradient(node, index, tensor_in, g):
    data = tensor_in.data
    if isinstance(g, np.generic):
        g = np.asarray(g)
    if device_of(g) != device_of(data):
        raise RuntimeError(f"{node.name}.backward returned a {device_of(g)} gradient for input "
                           f"{index} on {device_of(data)}")
    if g.shape != data.shape:
        reduced = unbroadcast(g, data.shape)
        if reduced is None:
            raise RuntimeError(
                f"{node.name}.backward returned a gradient of shape {g.shape} for input {index} "
                f"of shape {data.shape}")
        g = reduced
    if g.dtype != data.dtype:
        g = g.astype(data.dtype)
    return g


def _accumulate_leaf(tensor, g, owned):
    if tensor.grad is None:
        tensor.grad = g if owned else g.copy()
    else:
        tensor.grad += g


def retain(tensor):
    """Make a non-leaf ``tensor`` keep its ``.grad`` (weakly held: no cycle)."""
    if tensor.grad_fn is not None:
        tensor.grad_fn._retained = weakref.ref(tensor)
