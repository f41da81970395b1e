"""``Module`` and ``Parameter``: the bookkeeping every layer and model shares.

Assigning a ``Parameter``, a ``Module`` or a list of Modules registers it;
``register_buffer`` keeps state that is saved but not trained. Order is definition order.

>>> import nanodl as nd
>>> from nanodl import nn
>>> class TwoLayer(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.hidden = nn.Dense(8, activation='relu', input_dim=4)
...         self.out = nn.Dense(2, input_dim=8)
...     def forward(self, x):
...         return self.out(self.hidden(x))
>>> [name for name, _ in TwoLayer().named_parameters()]
['hidden.kernel', 'hidden.bias', 'out.kernel', 'out.bias']
"""
import itertools
import weakref
from collections import namedtuple

import numpy as np

from ..backend import array_module, device_of, is_device_array, to_device, to_host
from ..tensor import Tensor, as_array, get_default_dtype

__all__ = ["Module", "Parameter", "ModuleList"]

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A trainable Tensor (``requires_grad=True``) holding its own float copy of ``data``
    (lists and integer data become the default dtype)."""
    __slots__ = ()

    def __init__(self, data, dtype=None):
        source = data.data if isinstance(data, Tensor) else data
        array = as_array(source, dtype)
        if array.dtype.kind != "f":
            array = array.astype(get_default_dtype())
        elif array is source:
            array = array.copy()  # never share storage with the caller's array
        super().__init__(array, requires_grad=True)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models: ``__call__`` runs ``forward`` (or Keras' ``call``).
    A forgotten ``super().__init__()`` is made on the first attribute assignment."""

    def __init__(self):
        if "_parameters" not in self.__dict__:
            # _order: every registered name, in definition order (an ordered set)
            self.__dict__.update(_parameters={}, _modules={}, _buffers={}, _order={}, training=True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        state = self.__dict__
        if "_parameters" not in state:
            Module.__init__(self)
        params, modules, buffers = state["_parameters"], state["_modules"], state["_buffers"]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
            value = ModuleList(value)
        if isinstance(value, Parameter):
            self._register(params, name, value)
        elif isinstance(value, Module):
            self._register(modules, name, value)
        elif name in buffers:
            if value is not None and not hasattr(value, "shape"):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                                "(an array or None expected)")
            buffers[name] = value
        elif name in params or name in modules:
            if value is not None:
                what, expected = ("parameter", "Parameter") if name in params else ("sub-module", "Module")
                raise TypeError(f"cannot assign {type(value).__name__} as {what} {name!r} "
                                f"(nn.{expected} or None expected)")
            self._forget(name)
        state[name] = value  # plain attribute lookup stays as fast as Python's

    def __delattr__(self, name):
        self._forget(name)
        object.__delattr__(self, name)

    def _register(self, registry, name, value):
        """Put ``name`` in ``registry``; a name re-assigned with the same kind keeps its place."""
        if name not in registry:
            self._forget(name)
        registry[name] = value
        self._order.setdefault(name, None)

    def _forget(self, name):
        for registry in (self._parameters, self._modules, self._buffers, self._order):
            registry.pop(name, None)

    def register_buffer(self, name, array):
        """Keep ``array`` as state: saved in ``state_dict``, moved by ``to``, not trained."""
        self._register(self._buffers, name, array)
        self.__dict__[name] = array

    # ------------------------------------------------------------ running
    _builds_itself = False  # True: it builds in forward, on the input's device (Dense, norms)

    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], (np.ndarray, list)):
            args = (Tensor(args[0]),) + args[1:]
        if "_build_done" not in self.__dict__:
            self._build_once(args)
        output = self.forward(*args, **kwargs)
        hooks = self.__dict__.get("_forward_hooks")
        if hooks:
            for hook in list(hooks.values()):
                replaced = hook(self, args, output)
                if replaced is not None:
                    output = replaced
        return output

    def _build_once(self, args):
        """Keras: ``build(input_shape)`` (batch axis included) runs once, unless ``built``."""
        build = getattr(self, "build", None)
        if callable(build) and not self._builds_itself and not getattr(self, "built", False):
            shape = getattr(args[0], "shape", None) if args else None
            build(None if shape is None else tuple(shape))
            if not isinstance(getattr(type(self), "built", None), property):
                self.__dict__["built"] = True
        self.__dict__["_build_done"] = True

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward; a return other than None
        replaces the output. The handle's ``remove()`` detaches it (docs/embeddings_and_hooks.md)."""
        if not callable(hook):
            raise TypeError(f"register_forward_hook: expected a callable hook(module, inputs, output), "
                            f"got {type(hook).__name__}")
        handle = HookHandle(self)
        self.__dict__.setdefault("_forward_hooks", {})[handle.id] = hook
        return handle

    def forward(self, *args, **kwargs):
        call = getattr(type(self), "call", None)  # Keras users write call()
        if call is not None:
            return call(self, *args, **kwargs)
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    # ------------------------------------------------------------ traversal
    def children(self):
        return list(self._modules.values())

    def named_modules(self, prefix=""):
        """``(dotted name, module)`` for this module and every sub-module, depth first."""
        result, seen = [], set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            result.append((name, module))
            children = [(f"{name}.{child}" if name else child, sub)
                        for child, sub in module._modules.items() if sub is not None]
            stack.extend(reversed(children))
        return result

    def modules(self):
        return [module for _, module in self.named_modules()]

    def _walk(self, prefix="", seen=None):
        """``(dotted name, owner, attribute, is_parameter)`` per parameter and buffer, depth first."""
        result, seen = [], {id(self)} if seen is None else seen
        for name in list(self._order):
            dotted = f"{prefix}.{name}" if prefix else name
            if name in self._parameters or name in self._buffers:
                result.append((dotted, self, name, name in self._parameters))
            else:
                sub = self._modules.get(name)
                if sub is not None and id(sub) not in seen:
                    seen.add(id(sub))
                    result += sub._walk(dotted, seen)
        return result

    def named_parameters(self, prefix=""):
        """``(dotted name, parameter)`` in definition order, each shared parameter once."""
        return [(name, module._parameters[attr])
                for name, module, attr, is_param in self._state_entries(prefix) if is_param]

    def parameters(self):
        """The parameters, a list in definition order."""
        return [param for _, param in self.named_parameters()]

    def named_buffers(self, prefix=""):
        return [(dotted, module._buffers[attr]) for dotted, module, attr, is_param in self._walk(prefix)
                if not is_param and module._buffers[attr] is not None]

    def buffers(self):
        return [array for _, array in self.named_buffers()]

    def count_params(self):
        """The number of trainable scalars."""
        return sum(int(p.size) for p in self.parameters())

    # ------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        """Training mode (dropout active, batch statistics) for this module and its sub-modules."""
        for module in self.modules():
            module.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        """Inference mode: ``train(False)``."""
        return self.train(False)

    def zero_grad(self):
        """Forget every parameter's gradient (set it to None)."""
        for param in self.parameters():
            param.grad = None

    def regularization_losses(self):
        """The weight penalties of every layer (scalar Tensors), Keras' ``model.losses``."""
        return [penalty for module in self.modules() for penalty in module.penalties()]

    def regularization_loss(self):
        """The sum of ``regularization_losses()``, or None when no layer has a regularizer."""
        penalties = self.regularization_losses()
        return sum(penalties[1:], penalties[0]) if penalties else None

    def penalties(self):
        """This module's own weight penalties (layers with regularizers override it)."""
        return []

    # ------------------------------------------------------------ state
    def _state_entries(self, prefix=""):
        """``_walk``'s entries that are saved: each shared parameter once, no None buffers."""
        entries, seen = [], set()
        for dotted, module, attr, is_param in self._walk(prefix):
            if is_param:
                if id(module._parameters[attr]) not in seen:
                    seen.add(id(module._parameters[attr]))
                    entries.append((dotted, module, attr, True))
            elif module._buffers[attr] is not None:
                entries.append((dotted, module, attr, False))
        return entries

    def state_dict(self):
        """name -> host NumPy copy, parameters and buffers (``layers.0.kernel``, ...)."""
        return {name: to_host(module._parameters[attr].data if is_param else module._buffers[attr], copy=True)
                for name, module, attr, is_param in self._state_entries()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict``'s arrays in (each entry's dtype and device), all checked first:
        ``strict``: missing or unexpected names raise ``KeyError``; a wrong shape always raises
        ``ValueError``. Returns ``(missing_keys, unexpected_keys)``."""
        return self._load_state(state_dict, strict=strict, keep_dtype=False)

    def _load_state(self, state_dict, strict=True, keep_dtype=False):
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict: expected a dict of name -> array, got "
                            f"{type(state_dict).__name__}")
        entries = self._state_entries()
        known = {name for name, *_ in entries}
        missing = [name for name, *_ in entries if name not in state_dict]
        unexpected = [name for name in state_dict if name not in known]
        if strict and (missing or unexpected):
            parts = [f"{kind} keys {names}" for kind, names in
                     (("missing", missing), ("unexpected", unexpected)) if names]
            hint = ""
            if unexpected and any(getattr(m, "built", True) is False for m in self.modules()):
                hint = " (some layers are not built yet: call the model on a batch first)"
            raise KeyError(f"load_state_dict: {' and '.join(parts)}{hint}")
        updates = []
        for name, module, attr, is_param in entries:
            if name not in state_dict:
                continue
            current = module._parameters[attr].data if is_param else module._buffers[attr]
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if not is_device_array(value):
                value = np.asarray(value)
            if value.dtype.kind not in "fiub":
                raise ValueError(f"load_state_dict: {name!r} has dtype {value.dtype}, "
                                 "a numeric array was expected")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"load_state_dict: {name!r} has shape {tuple(value.shape)}, "
                                 f"the module's is {tuple(current.shape)}")
            dtype = value.dtype if keep_dtype and value.dtype.kind == "f" else current.dtype
            moved = to_device(value, device_of(current))
            updates.append((module, attr, is_param, array_module(moved).array(moved, dtype=dtype)))
        for module, attr, is_param, array in updates:  # everything checked: commit
            if is_param:
                module._parameters[attr].data = array
                module._parameters[attr].grad = None
            else:
                module.register_buffer(attr, array)
        return LoadResult(missing, unexpected)

    def to(self, device):
        """Move every parameter (and gradient) and buffer to ``device``, in place; returns self."""
        for module in self.modules():
            for param in module._parameters.values():
                param.data = to_device(param.data, device)
                if param.grad is not None:
                    param.grad = to_device(param.grad, device)
            for attr, array in module._buffers.items():
                if array is not None:
                    module.register_buffer(attr, to_device(array, device))
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(module).replace("\n", "\n  ")
                 for name, module in self._modules.items() if module is not None]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + (")" if not lines else "\n" + "\n".join(lines) + "\n)")


class HookHandle:
    """What ``register_forward_hook`` returns: ``remove()`` detaches the hook (twice is fine)."""
    __slots__ = ("id", "_module")
    _next_id = itertools.count()

    def __init__(self, module):
        self.id = next(HookHandle._next_id)
        self._module = weakref.ref(module)

    def remove(self):
        module = self._module()
        if module is not None:
            module.__dict__.get("_forward_hooks", {}).pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class ModuleList(Module):
    """A list of modules, registered under the names ``'0'``, ``'1'``, ..."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(module).__name__}")
        self._register(self._modules, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(items[index])
        return items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))
