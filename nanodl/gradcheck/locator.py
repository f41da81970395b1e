"""``locate``: when a graph's gradient is wrong, name the first op whose derivative is."""
import itertools
from dataclasses import dataclass, field

import numpy as np

from .. import autograd
from ..autograd import Function, enable_grad, no_grad
from ..backend import device_of, to_device
from ..tensor import Tensor
from .checks import as_leaves
from .core import Subject, check_subject, host64
from .kinks import kink_note
from .results import GradcheckReport
from .second_order import second_order_check


@dataclass
class LocatedOp:
    """The first node (in forward order) whose backward (or vjp) disagrees with its forward."""
    name: str
    node: Function
    position: int          # 0-based, in forward order among the graph's nodes
    total: int             # nodes in the graph
    report: GradcheckReport
    skipped: list = field(default_factory=list)  # notes on nodes that could not be checked
    derivative: str = "backward"                 # which was wrong: 'backward' or 'vjp'

    def __str__(self):
        against = ("central differences of its forward" if self.derivative == "backward" else
                   "its backward or central differences of its first derivatives")
        return (f"{self.name} (op {self.position + 1} of {self.total} in forward order): its "
                f"{self.derivative} disagrees with {against}\n{self.report.message()}")


def locate(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, kink_tol=None, order=1):
    """The first op (in forward order) whose backward is wrong, as a ``LocatedOp``, or None.

    Runs ``fn`` once, then gradient-checks each node's ``apply`` alone on float64 copies
    of the inputs it saw; ``order=2`` also checks each ``vjp`` (``.derivative == 'vjp'``).
    Nodes on a kink, with a random forward or (``order=2``) no ``vjp`` are ``.skipped``.
    """
    if order not in (1, 2):
        raise ValueError(f"locate: order must be 1 or 2, got {order!r}")
    kink_tol = 10 * eps if kink_tol is None else kink_tol
    leaves, _, call_args = as_leaves(inputs, "locate")
    order_of = itertools.count()

    def recorder(node, args, kwargs, out):  # a forward hook: each node's arguments and order
        node.__dict__.update(_gc_args=args, _gc_kwargs=kwargs, _gc_order=next(order_of))
    autograd.forward_hooks.append(recorder)
    try:
        with enable_grad():
            out = fn(*call_args)
    finally:
        autograd.forward_hooks.remove(recorder)
    if not isinstance(out, Tensor) or out.grad_fn is None:
        return None
    nodes = sorted((n for n in autograd.topological_order(out.grad_fn) if "_gc_order" in n.__dict__),
                   key=lambda n: n.__dict__["_gc_order"])
    skipped = []
    for position, node in enumerate(nodes):
        located = _check_node(node, eps, atol, rtol, seed, kink_tol, skipped, order)
        if located is not None:
            report, derivative = located
            return LocatedOp(node.name, node, position, len(nodes), report, skipped, derivative)
    return None


def _check_node(node, eps, atol, rtol, seed, kink_tol, skipped, order):
    """``(failing report, 'backward' or 'vjp')``, or None."""
    if not any(node.needs_input_grad):
        return None
    note = kink_note(node, kink_tol)
    if note:
        skipped.append(f"{node.name}: {note}")
        return None
    leaves, labels, replay_args, tensor_index = [], [], [], 0
    for arg in node.__dict__["_gc_args"]:
        if isinstance(arg, Tensor):
            if node.needs_input_grad[tensor_index] and arg.dtype.kind == "f":
                arg = Tensor(to_device(host64(arg.data), device_of(arg.data)), requires_grad=True)
                leaves.append(arg)
                labels.append(f"{node.name} input {tensor_index}")
            tensor_index += 1
        replay_args.append(arg)
    kwargs = node.__dict__["_gc_kwargs"]
    replay = lambda *args: type(node).apply(*args, **kwargs)
    subject = Subject(leaves, lambda: replay(*replay_args), labels)
    x0 = [host64(leaf.data) for leaf in leaves]
    try:
        first, second = subject.value(x0), subject.value(x0)
    except Exception as error:
        skipped.append(f"{node.name}: could not re-run its forward ({error})")
        return None
    if not np.array_equal(first, second, equal_nan=True):
        skipped.append(f"{node.name}: its forward is random; not checked")
        return None
    with no_grad():
        out_dtype = subject.run().dtype
    if out_dtype != np.float64:  # e.g. a cast to float32: differences need a bigger step
        eps, atol, rtol = max(eps, 1e-3), max(atol, 1e-3), max(rtol, 1e-2)
    rows = check_subject(subject, eps, atol, rtol, False, seed)
    if not all(row.passed for row in rows):
        return GradcheckReport(rows, title=f"locate: {node.name}", atol=atol, rtol=rtol), "backward"
    if order == 1:
        return None
    if type(node).vjp is Function.vjp:
        skipped.append(f"{node.name}: it has no vjp; its second derivatives are not checked")
        return None
    _, rows = second_order_check(replay, replay_args, leaves, labels, None, eps, atol, rtol, False, seed)
    if all(row.passed for row in rows):
        return None
    return GradcheckReport(rows, title=f"locate: {node.name}'s vjp", atol=atol, rtol=rtol,
                           check="gradgradcheck"), "vjp"
