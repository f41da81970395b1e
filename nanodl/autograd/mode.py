"""Per-thread grad mode (``no_grad``/``enable_grad``) and debug hooks. A flag lives in a dict
holding only the threads that changed it, so ``Function.apply`` pays one empty-dict test.
"""
import threading
from threading import get_ident

grad_modes = {}        # thread id -> grad mode, for threads inside no_grad / enable_grad only
forward_hooks = {}     # thread id -> that thread's forward hooks, while it has any
backward_hooks = {}    # thread id -> that thread's backward hooks, while it has any
forward_pre_hooks, backward_pre_hooks = {}, {}  # the same, called before (``nd.profile``'s clock)
HOOK_KINDS = ("forward_hooks", "backward_hooks", "forward_pre_hooks", "backward_pre_hooks")
_hook_lists = threading.local()


def is_grad_enabled():
    """True when ops record a graph in this thread (not inside ``no_grad``)."""
    return grad_modes.get(get_ident(), True)


class no_grad:
    """Context manager (and decorator) under which no graph is recorded, in this thread.

    >>> import nanodl as nd
    >>> x = nd.tensor([1.0, 2.0], requires_grad=True)
    >>> with nd.no_grad():
    ...     y = x * 2
    >>> y.requires_grad
    False

    Blocks nest, and blocks in two threads may overlap (even one shared instance).
    """
    _enabled = False

    def __init__(self):
        self._previous = {}  # thread id -> the modes found on entry (a stack: blocks nest)

    def __enter__(self):
        ident = get_ident()
        self._previous.setdefault(ident, []).append(grad_modes.get(ident))
        grad_modes[ident] = self._enabled

    def __exit__(self, *exc):
        ident = get_ident()
        previous = self._previous[ident].pop()
        if not self._previous[ident]:
            del self._previous[ident]
        if previous is None:
            grad_modes.pop(ident, None)
        else:
            grad_modes[ident] = previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


class enable_grad(no_grad):
    """Context manager that turns graph recording back on (inside ``no_grad``)."""
    _enabled = True


class HookList(list):
    """One thread's hooks, in the hot path's dict (``forward_hooks``...) while not empty."""

    def __init__(self, active):
        super().__init__()
        self._active, self._ident = active, get_ident()

    def append(self, hook):
        super().append(hook)
        self._active[self._ident] = self

    def remove(self, hook):
        super().remove(hook)
        if not self:
            self._active.pop(self._ident, None)


def thread_hooks(name):
    """This thread's ``HookList`` of one of ``HOOK_KINDS``."""
    lists = getattr(_hook_lists, "lists", None)
    if lists is None:
        lists = _hook_lists.lists = {kind: HookList(globals()[kind]) for kind in HOOK_KINDS}
    return lists[name]
