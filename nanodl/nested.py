"""Nested state (dicts and lists of numbers, strings and arrays) as flat arrays plus a JSON tree.

How ``nanodl.save`` stores an optimizer's ``state_dict()`` in an ``.npz`` (no pickle:
nothing in the file names a type to construct). See docs/saving.md.

>>> import numpy as np
>>> tree, arrays = flatten({'lr': 0.5, 'state': {'m': [np.zeros(2)]}})
>>> sorted(arrays), tree['dict'][0]
(['state/m/0'], ['lr', 0.5])
>>> unflatten(tree, arrays)['state']['m'][0]
array([0., 0.])
"""
import json
import numbers

import numpy as np

__all__ = ["flatten", "unflatten", "is_nested", "pack", "unpack"]

_CONTAINERS = (dict, list, tuple)


def is_nested(state):
    """True when some value of the dict ``state`` is itself a dict, list or tuple."""
    return any(isinstance(value, _CONTAINERS) for value in state.values())


def flatten(state, to_array=None, prefix=""):
    """``(tree, arrays)``: a JSON-ready description of ``state`` and its arrays by path.

    ``to_array(name, value)`` makes each a host ndarray; any other leaf raises ``TypeError``.
    """
    arrays = {}
    to_array = to_array or (lambda name, value: np.asarray(value))

    def member_name(path):
        name = prefix + ("/".join(str(part) for part in path) or "value")
        base, count = name, 1
        while name in arrays or name.startswith("__"):
            name, count = f"{base}~{count}", count + 1
        return name

    def encode(value, path):
        scalar = isinstance(value, np.generic)  # before float: np.float64 is a float
        if not scalar and (value is None or isinstance(value, (bool, str, float))):
            return value
        if not scalar and isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError(f"save: {_where(path)} has the key {key!r}; keys must be "
                                    "strings or integers")
                items.append([key, encode(item, path + (key,))])
            return {"dict": items}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [encode(item, path + (index,)) for index, item in enumerate(value)]}
        if not scalar and not hasattr(value, "shape") and not hasattr(value, "data"):
            raise TypeError(f"save: {_where(path)} is a {type(value).__name__}; a state holds only "
                            "numbers, strings, None, arrays and dicts/lists of them")
        name = member_name(path)
        arrays[name] = to_array(name, value)
        return {"array": name, "scalar": True} if scalar else {"array": name}

    return encode(state, ()), arrays


def _where(path):
    return "the state" if not path else "entry " + "/".join(str(part) for part in path)


def unflatten(tree, arrays):
    """The structure ``flatten`` described, from ``arrays``; ValueError for any other tree."""
    used = set()

    def decode(node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ValueError(f"the state's description holds {node!r:.60}, not a state node")
        if "array" in node:
            name = node["array"]
            if not isinstance(name, str) or name not in arrays or name in used \
                    or set(node) - {"array", "scalar"}:
                raise ValueError(f"the state's description names the array {name!r:.60}, which "
                                 "is missing or named twice")
            used.add(name)
            array = arrays[name]
            if node.get("scalar"):
                if array.ndim != 0:
                    raise ValueError(f"the state's scalar {name!r} is stored with shape {array.shape}")
                return array[()]
            return array
        (kind, items), = node.items()
        if kind == "dict" and isinstance(items, list):
            result = {}
            for pair in items:
                if not isinstance(pair, list) or len(pair) != 2 or isinstance(pair[0], bool) \
                        or not isinstance(pair[0], (str, int)):
                    raise ValueError(f"the state's description holds the dict entry {pair!r:.60}")
                result[pair[0]] = decode(pair[1])
            return result
        if kind in ("list", "tuple") and isinstance(items, list):
            values = [decode(item) for item in items]
            return values if kind == "list" else tuple(values)
        raise ValueError(f"the state's description holds an unknown node {kind!r:.40}")

    try:
        state = decode(tree)
    except RecursionError:
        raise ValueError("the state's description is nested too deeply") from None
    left = sorted(set(arrays) - used)
    if left:
        raise ValueError(f"the file holds arrays the state's description does not name: {left[:5]}")
    return state


def pack(state, to_array=None, prefix=""):
    """``(description, arrays)``: ``flatten``'s tree as JSON in a uint8 array, and the arrays."""
    tree, arrays = flatten(state, to_array, prefix)
    text = json.dumps(tree, sort_keys=True)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8), arrays


def unpack(description, arrays):
    """The state ``pack`` wrote; ValueError for a description that is not one."""
    if description.dtype != np.uint8 or description.ndim != 1:
        raise ValueError(f"the state's description is {description.dtype} {description.shape}, "
                         "expected uint8 bytes")
    try:
        tree = json.loads(description.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"the state's description is not JSON ({type(error).__name__}: "
                         f"{error})") from None
    return unflatten(tree, arrays)
