"""Reverse-mode autograd: ``Function``, the one graph walk, ``no_grad``.

A node keeps its input tensors, so ownership flows one way (output -> node -> inputs) and
a dropped output frees its whole graph. ``walk`` does the work every op shares
(unbroadcasting, checks, sums, ``retain_grad``, freeing). See docs/internals.md.
"""
import weakref
from threading import get_ident

import numpy as np

from ..backend import array_module, device_of, is_device_array
from . import mode
from .mode import enable_grad, is_grad_enabled, no_grad  # noqa: F401  (the public names)

_grad_modes, _forward_hooks, _backward_hooks = mode.grad_modes, mode.forward_hooks, mode.backward_hooks
_forward_pre_hooks, _backward_pre_hooks = mode.forward_pre_hooks, mode.backward_pre_hooks
_tensor_class = None  # set by nanodl.tensor once Tensor is defined (it imports this module)


def __getattr__(name):
    """``autograd.forward_hooks`` etc.: the calling thread's hook lists. A forward hook gets
    ``(node, args, kwargs, out)``, a backward hook ``(node, grad_output, grads)``, a pre-hook
    the same less the result."""
    if name in mode.HOOK_KINDS:
        return mode.thread_hooks(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Function:
    """A differentiable op. ``forward(self, *arrays, **options)`` returns one array;
    ``backward(self, grad)`` one gradient per tensor input (None for none; an input whose
    ``self.needs_input_grad[i]`` is False may be skipped). ``vjp(self, grad, *inputs)``, the
    same with Tensor ops, allows ``create_graph=True``; written with operators arrays share,
    it needs no ``backward``. See docs/internals.md.
    """
    __slots__ = ("inputs", "needs_input_grad", "saved_tensors", "_retained", "_freed", "__dict__",
                 "__weakref__")
    _fresh_grads = False  # True for nanodl's own ops, whose backward returns new arrays

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._fresh_grads = cls.__module__.startswith(("nanodl.ops.", __name__))

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
        arrays, tensors = [], []
        requires_grad, device_array = False, None
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
        if _forward_pre_hooks:
            for hook in _forward_pre_hooks.get(get_ident(), ()):
                hook(fn, args, kwargs)
        out = fn.forward(*arrays, **kwargs)
        if type(out) is not np.ndarray:
            if isinstance(out, np.generic):
                out = np.asarray(out)  # NumPy returns scalars from 0-d math; keep arrays
            elif not is_device_array(out):
                raise TypeError(f"{cls.__name__}.forward returned a {type(out).__name__}; "
                                "it must return one array (NumPy or CuPy)")
        if _forward_hooks:  # some thread has hooks: are they this one's?
            for hook in _forward_hooks.get(get_ident(), ()):
                hook(fn, args, kwargs, out)
        result = Tensor.__new__(Tensor)
        result.data, result.grad, result.name = out, None, None
        if requires_grad and (not _grad_modes or _grad_modes.get(get_ident(), True)):
            fn.inputs = tuple(tensors)
            fn.needs_input_grad = tuple(t.requires_grad for t in tensors)
            fn._retained, fn._freed = None, False
            result.requires_grad, result.grad_fn = True, fn
        else:
            result.requires_grad, result.grad_fn = False, None
        return result

    def forward(self, *arrays):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def backward(self, grad):
        if type(self).vjp is Function.vjp:
            raise NotImplementedError(f"{type(self).__name__}.backward is not implemented")
        return self.vjp(grad, *[tensor.data for tensor in self.inputs])

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
    """Sum ``grad`` down to ``shape``, the reverse of broadcasting (None if it cannot)."""
    if grad.shape == shape:
        return grad
    if not _broadcasts(shape, grad.shape):
        return None
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1)
    reduced = grad.sum(axis=axes, keepdims=True) if axes else grad
    return reduced.reshape(shape) if extra else reduced


def _broadcasts(shape, target):
    extra = len(target) - len(shape)
    return extra >= 0 and all(size in (1, target[extra + i]) for i, size in enumerate(shape))


class SumTo(Function):
    """``unbroadcast`` as a node: the create-graph tier's reduction of a gradient."""

    def forward(self, grad, shape=None):
        self.shape = grad.shape
        return unbroadcast(grad, shape)

    def backward(self, grad):
        return array_module(grad).broadcast_to(grad, self.shape)

    def vjp(self, grad, summed):
        return BroadcastTo.apply(grad, shape=self.shape)


class BroadcastTo(Function):
    """``a`` repeated over ``shape`` (NumPy broadcasting); the engine sums the gradient back."""

    def forward(self, a, shape=None):
        return array_module(a).ascontiguousarray(array_module(a).broadcast_to(a, shape))

    def vjp(self, grad, a):
        return grad


def _count_consumers(*roots):
    """For every node below ``roots``: how many input slots it feeds (Kahn's algorithm)."""
    consumers = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node._freed:
            raise RuntimeError(f"{node.name}: trying to backward through the graph a second time; its "
                               "saved arrays were freed after the first backward. Pass retain_graph=True "
                               "to the first backward() if you need to call it twice.")
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
    """The nodes reachable from ``roots``, each before every node it depends on."""
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


def backward(tensor, grad, retain_graph=False):
    """Accumulate d(tensor)/d(leaf) * grad into every leaf that requires grad."""
    if tensor.grad_fn is None:
        _accumulate_leaf(tensor, grad, owned=False)
    else:
        walk({tensor.grad_fn: grad}, retain_graph)


def walk(pending, retain_graph=False, create_graph=False, wanted=None):
    """The one graph walk: from ``pending`` (root node -> its output's gradient) down.

    ``wanted=None`` accumulates into leaves' ``.grad``; ``nd.grad`` passes ``(leaf_slots,
    node_slots, results)``: only nodes leading to a wanted tensor run, summing into
    ``results[slot]``. Under ``create_graph`` gradients are Tensors and ``vjp`` runs.
    """
    roots = list(pending)
    consumers = _count_consumers(*roots)
    if wanted is None:
        useful = leaf_slots = node_slots = None
    else:
        leaf_slots, node_slots, results = wanted
        useful = _useful(roots, consumers, leaf_slots, node_slots)
    step, check = (_run_vjp, _check_tensor) if create_graph else (_run_backward, _check_gradient)
    ready = [node for node in roots if consumers.get(node, 0) == 0]
    while ready:
        node = ready.pop()
        grad_output = pending.pop(node, None)
        grads = None
        runs = useful is None or node in useful
        if grad_output is not None:
            if node._retained is not None:
                _fill_retained(node, grad_output)
            if node_slots and node in node_slots:  # a wanted non-leaf: its gradient is here
                for slot in node_slots[node]:
                    own = grad_output if create_graph else grad_output.copy()
                    results[slot] = own if results[slot] is None else results[slot] + own
            if runs:
                grads = step(node, grad_output)
        for index, tensor_in in enumerate(node.inputs):
            parent = tensor_in.grad_fn
            g = None if grads is None else grads[index]
            if g is not None and tensor_in.requires_grad:
                data = tensor_in.data
                if create_graph or type(g) is not type(data) or g.shape != data.shape or \
                        g.dtype != data.dtype:
                    g = check(node, index, tensor_in, g)
                if parent is not None:
                    if useful is None or parent in useful or parent in node_slots:
                        previous = pending.get(parent)
                        pending[parent] = g if previous is None else previous + g
                elif useful is None:
                    _accumulate_leaf(tensor_in, g, owns_gradient(node, g, grad_output, grads))
                else:
                    for slot in leaf_slots.get(id(tensor_in), ()):
                        if results[slot] is None and not create_graph and \
                                not owns_gradient(node, g, grad_output, grads):
                            g = g.copy()  # a returned gradient aliases nothing
                        results[slot] = g if results[slot] is None else results[slot] + g
            if parent is not None:
                remaining = consumers[parent] - 1
                consumers[parent] = remaining
                if remaining == 0:
                    ready.append(parent)
        if runs and not retain_graph:
            node.release()
    return None if wanted is None else results


def _useful(roots, consumers, leaf_slots, node_slots):
    """The nodes worth running: those with an input that is wanted or leads to one."""
    reaches, useful = set(node_slots), set()
    for node in reversed(topological_order(*roots, consumers=consumers)):
        for tensor in node.inputs:
            parent = tensor.grad_fn
            if (parent is None and id(tensor) in leaf_slots) or (parent is not None and parent in reaches):
                useful.add(node)
                reaches.add(node)
                break
    return useful


def owns_gradient(node, g, grad_output, grads):
    """May a leaf keep ``g`` uncopied? Only a built-in op's fresh array that nothing else
    holds."""
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
    if _backward_pre_hooks:
        for hook in _backward_pre_hooks.get(get_ident(), ()):
            hook(node, grad_output)
    grads = _normalised(node, node.backward(grad_output), "backward")
    if _backward_hooks:
        for hook in _backward_hooks.get(get_ident(), ()):
            hook(node, grad_output, grads)
    return grads


def _run_vjp(node, grad_output):
    """``node.vjp`` on Tensors (the caller turned grad mode on), normalised likewise."""
    if _backward_pre_hooks:
        for hook in _backward_pre_hooks.get(get_ident(), ()):
            hook(node, grad_output.data)
    grads = _normalised(node, node.vjp(grad_output, *node.inputs), "vjp")
    if _backward_hooks:
        arrays = tuple(g.data if isinstance(g, _tensor_class) else g for g in grads)
        for hook in _backward_hooks.get(get_ident(), ()):
            hook(node, grad_output.data, arrays)
    return grads


def _normalised(node, grads, method):
    if not isinstance(grads, tuple):
        grads = tuple(grads) if isinstance(grads, list) else (grads,)
    if len(grads) != len(node.inputs):
        raise RuntimeError(f"{node.name}.{method} returned {len(grads)} gradients for "
                           f"{len(node.inputs)} tensor inputs")
    return grads


def _check_gradient(node, index, tensor_in, g):
    data = tensor_in.data
    if isinstance(g, np.generic):
        g = np.asarray(g)
    elif not (isinstance(g, np.ndarray) or is_device_array(g)):
        raise TypeError(f"{node.name}.backward returned a {type(g).__name__} for input {index}; "
                        "a gradient is an array (NumPy or CuPy) or None")
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


def _check_tensor(node, index, tensor_in, g):
    data = tensor_in.data
    if not isinstance(g, _tensor_class):
        raise RuntimeError(f"{node.name}.vjp returned a {type(g).__name__} for input {index}; "
                           "vjp must return Tensors (an array would be a detached gradient)")
    if g.device != device_of(data):
        raise RuntimeError(f"{node.name}.vjp returned a {g.device} gradient for input {index} "
                           f"on {device_of(data)}")
    if g.shape != data.shape:
        if not _broadcasts(data.shape, g.shape):
            raise RuntimeError(f"{node.name}.vjp returned a gradient of shape {g.shape} for "
                               f"input {index} of shape {data.shape}")
        g = SumTo.apply(g, shape=data.shape)
    return g if g.dtype == data.dtype else g.astype(data.dtype)


def _fill_retained(node, grad_output):
    kept = node._retained()
    if kept is not None:
        g = grad_output.data if isinstance(grad_output, _tensor_class) else grad_output
        kept.grad = g.copy() if kept.grad is None else kept.grad + g


def _accumulate_leaf(tensor, g, owned):
    if tensor.grad is None:
        tensor.grad = g if owned else g.copy()
    else:
        tensor.grad += g


def retain(tensor):
    """Make a non-leaf ``tensor`` keep its ``.grad`` (weakly held: no cycle)."""
    if tensor.grad_fn is not None:
        tensor.grad_fn._retained = weakref.ref(tensor)
