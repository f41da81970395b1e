"""Naming the kink a failing check sits on: central differences straddle it, so that failure
is no bug. Kinks are ``nanodl.ops.registry.NODE_KINKS``'s; a custom ``Function`` joins in by
defining ``kink_distance(self, *arrays)``.
"""
from ..ops.registry import NODE_KINKS
from .core import host64


def kink_note(node, kink_tol):
    """'relu at 0 is not differentiable: ...' when ``node``'s inputs sit on a kink, else ''."""
    xs = [host64(t.data) for t in node.inputs]
    custom = getattr(node, "kink_distance", None)
    if callable(custom):
        what, point, distance = f"{node.name} at its kink", "it", float(custom(*xs))
    elif node.name in NODE_KINKS:
        kink = NODE_KINKS[node.name]
        what, point, distance = kink.what, kink.point, kink.distance(node, xs)
    else:
        return ""
    if distance > kink_tol:
        return ""
    return (f"non-differentiable point: {what} is not differentiable: {node.name}'s input has "
            f"values within {kink_tol:g} of {point} (closest: {distance:.3g})")


def kink_notes(nodes, kink_tol):
    """The distinct kink notes of ``nodes`` (given output first), in forward order."""
    notes = []
    for node in reversed(nodes):
        note = kink_note(node, kink_tol)
        if note and note not in notes:
            notes.append(note)
    return notes
