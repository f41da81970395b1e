"""The one place an ``axis`` argument is checked and made non-negative: ``ValueError`` out of
range or duplicated, ``TypeError`` not an integer (bools included).
"""
import operator


def _index(axis, op):
    if isinstance(axis, bool):
        raise TypeError(f"{op}: axis must be an integer, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: axis must be an integer or a tuple of integers, got "
                        f"{axis!r} ({type(axis).__name__})") from None


def normalize_axis(axis, ndim, op):
    """One ``axis`` of a tensor with ``ndim`` dimensions, as an int in ``[0, ndim)``."""
    index = _index(axis, op)
    if not -ndim <= index < ndim:
        raise ValueError(f"{op}: axis {axis!r} is out of range for a tensor of {ndim} "
                         f"dimension{'s' if ndim != 1 else ''} (valid: {-ndim} to {ndim - 1})"
                         if ndim else f"{op}: axis {axis!r} is out of range for a 0-d tensor")
    return index % ndim


def normalize_axes(axis, ndim, op):
    """``axis`` (None, an integer, or a tuple/list of them) as a sorted tuple of axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = [_index(ax, op) for ax in axis]
    else:
        axes = [_index(axis, op)]
    if ndim == 0:  # as NumPy: a 0-d tensor "reduces" over axis 0 or -1 to itself
        if any(ax not in (0, -1) for ax in axes):
            raise ValueError(f"{op}: axis {axis!r} is out of range for a 0-d tensor")
        return ()
    result = [normalize_axis(ax, ndim, op) for ax in axes]
    if len(set(result)) != len(result):
        raise ValueError(f"{op}: duplicate value in axis {axis!r}")
    return tuple(sorted(result))
