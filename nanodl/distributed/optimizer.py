"""``DistributedOptimizer``: any optimizer, its gradients averaged over the ranks before each step."""
import time
from operator import attrgetter

import numpy as np

from ..backend import array_module, to_host
from ..optim.lbfgs import _loss_value
from ..optim.optimizers import Optimizer
from . import world
from .fit import DataParallelFit
from .world import _agree, _wait, init


class _Bucket:
    """A flat buffer for the parameters of one dtype and device: their values back to back, then
    one flag per parameter, 1 where this rank has a gradient (summed: how many ranks had one)."""

    def __init__(self, params):
        self.params = params
        self.offsets = [0, *np.cumsum([int(p.data.size) for p in params]).tolist()]
        self.total = self.offsets[-1]
        self.xp = array_module(params[0].data)
        dtype = params[0].data.dtype
        self.buffer = self.xp.empty(self.total + len(params), dtype=dtype)
        self.host = self.buffer if self.xp is np else np.empty(self.buffer.shape, dtype=dtype)

    def pack_gradients(self):
        offsets = self.offsets
        has_grad = [p.grad is not None for p in self.params]
        for i, p in enumerate(self.params):
            self.buffer[offsets[i]:offsets[i + 1]] = p.grad.reshape(-1) if has_grad[i] else 0
        if self.xp is not np:
            self.buffer.get(out=self.host)
        self.host[self.total:] = has_grad

    def unpack_gradients(self, world_size):
        if self.xp is not np:
            self.buffer.set(self.host)
        buffer, offsets = self.buffer, self.offsets
        counts = self.host[self.total:]
        for i, p in enumerate(self.params):
            if counts[i] > 0:  # a new array: the segment is overwritten at the next step
                p.grad = buffer[offsets[i]:offsets[i + 1]].reshape(p.data.shape) / world_size
            else:
                p.grad = None

    def pack_data(self):
        for i, p in enumerate(self.params):
            self.buffer[self.offsets[i]:self.offsets[i + 1]] = p.data.reshape(-1)
        if self.xp is not np:
            self.buffer.get(out=self.host)

    def unpack_data(self):
        if self.xp is not np:
            self.buffer.set(self.host)
        for i, p in enumerate(self.params):
            p.data[...] = self.buffer[self.offsets[i]:self.offsets[i + 1]].reshape(p.data.shape)


def _wrapped(attribute, writable=True):
    """A property of the wrapper that is the wrapped optimizer's ``attribute``."""
    setter = (lambda self, value: setattr(self.optimizer, attribute, value)) if writable else None
    return property(attrgetter("optimizer." + attribute), setter)


class DistributedOptimizer(Optimizer):
    """Wraps an optimizer (or a name, ``'adam'``) so that every rank applies the gradient
    averaged over all ranks.

    ``step()`` calls ``synchronize()`` (unless it just ran: call it first to clip by the global
    norm), then the wrapped step. The learning rate, state dict and hyper-parameters are the
    wrapped optimizer's. ``mode='per_parameter'`` makes one allreduce per parameter instead
    of one per flat buffer (to measure the difference). ``comm_seconds`` and
    ``allreduce_calls`` count the time and calls in the gradient allreduce.

    >>> from types import SimpleNamespace
    >>> from nanodl import optim
    >>> w = SimpleNamespace(data=np.array([1.0, 2.0]), grad=np.array([0.5, -0.5]))
    >>> opt = DistributedOptimizer(optim.SGD([w], lr=0.1))
    >>> opt.step()                   # a world of one: the mean gradient is the gradient
    >>> w.data, opt.lr
    (array([0.95, 2.05]), 0.1)
    """

    _MODES = ("flat", "per_parameter")
    _OWN = frozenset({"optimizer", "mode", "comm_seconds", "allreduce_calls"})

    def __init__(self, optimizer, mode="flat"):
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("DistributedOptimizer: the optimizer is already distributed")
        if isinstance(optimizer, str):
            from ..optim import get
            optimizer = get(optimizer)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DistributedOptimizer: expected an optim.Optimizer or its name, "
                            f"got {type(optimizer).__name__}")
        if mode not in self._MODES:
            raise ValueError(f"DistributedOptimizer: unknown mode {mode!r}; "
                             f"valid modes: {', '.join(self._MODES)}")
        init()
        self.optimizer = optimizer
        self.mode = mode
        self.comm_seconds = 0.0
        self.allreduce_calls = 0
        self._synced_key = None     # the parameter layout last broadcast
        self._buckets = None        # flat buffers for that layout
        self._synchronized = False  # synchronize() ran since the last step()

    # ------------------------------------------------------------ the wrapped optimizer's face
    def __getattr__(self, name):
        optimizer = self.__dict__.get("optimizer")
        if optimizer is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(optimizer, name)

    def __setattr__(self, name, value):
        if name.startswith("_") or name in self._OWN or name in type(self).__dict__ or \
                "optimizer" not in self.__dict__:
            object.__setattr__(self, name, value)
        else:  # a hyper-parameter or a scheduler's note (initial_lr): the wrapped one's
            setattr(self.optimizer, name, value)

    lr = _wrapped("lr")
    step_count = _wrapped("step_count")
    name = _wrapped("name", writable=False)
    params = _wrapped("params", writable=False)

    def set_params(self, params):
        self.optimizer.set_params(params)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)

    def get_config(self):
        return self.optimizer.get_config()

    def state_dict(self):
        """The wrapped optimizer's state dict (it loads into a plain optimizer too)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self):
        mode = "" if self.mode == "flat" else f", mode={self.mode!r}"
        return f"DistributedOptimizer({self.optimizer!r}{mode})"

    @property
    def full_batch(self):
        """True when the wrapped optimizer drives a closure (``optim.LBFGS``): ``fit`` goes full-batch."""
        return bool(getattr(self.optimizer, "full_batch", False))

    # ------------------------------------------------------------ the data-parallel part
    def step(self, closure=None):
        """Average the gradients over the ranks (unless ``synchronize()`` just did), then step.

        With a ``closure`` (``optim.LBFGS``), each evaluation's gradients and loss are averaged.
        """
        if closure is None:
            if not self._synchronized:
                self.synchronize()
            self._synchronized = False
            return self.optimizer.step()
        self._synchronized = False
        params = self.optimizer._require_params()
        if world._world.comm is not None and self._synced_key != self._layout_key(params):
            self.broadcast_parameters()  # before the first evaluation, not between two

        def averaged():
            loss = closure()
            self.synchronize()
            self._synchronized = False
            if world._world.comm is None:
                return loss
            return float(world.allreduce(np.array([_loss_value(loss)]), op="mean")[0])
        return self.optimizer.step(averaged)

    def synchronize(self):
        """Broadcast the parameters if their set changed, then average the gradients over ranks."""
        params = self.optimizer._require_params()
        self._synchronized = True
        _world = world._world
        if _world.comm is None:
            return  # a world of one: the mean over one rank is the gradient itself
        if self._synced_key != self._layout_key(params):
            self.broadcast_parameters()
        started = time.perf_counter()
        if self.mode == "flat":
            for bucket in self._buckets:
                bucket.pack_gradients()
                _wait(_world.comm.Iallreduce(_world.MPI.IN_PLACE, bucket.host, op=_world.MPI.SUM),
                      "DistributedOptimizer: averaging the gradients")
                bucket.unpack_gradients(_world.size)
            self.allreduce_calls += len(self._buckets)
        else:
            self._allreduce_per_parameter(params)
        self.comm_seconds += time.perf_counter() - started

    def fit_strategy(self):
        """``fit``'s strategy (the seam of ``nn.plan.LocalFit``): a ``DataParallelFit`` on several
        ranks, else None."""
        return DataParallelFit(self) if world.size() > 1 else None

    def broadcast_parameters(self, root=0):
        """Copy rank ``root``'s parameter values into every rank's, in place (RuntimeError when
        the ranks' parameter layouts differ)."""
        params = self.optimizer._require_params()
        key = self._layout_key(params)
        _world = world._world
        if _world.comm is not None:
            _agree([(f"parameter {index}", f"{np.dtype(dtype).name} {shape}")
                    for index, (_, shape, dtype, _) in enumerate(key)] + [("parameters", len(key))],
                   "DistributedOptimizer", "their parameters (every rank must build the same model)",
                   RuntimeError)
            groups = {}  # one bucket per (dtype, device); normally just one
            for p, (_, _, dtype, device) in zip(params, key):
                groups.setdefault((dtype, device), []).append(p)
            buckets = [_Bucket(group) for group in groups.values()]
            for bucket in buckets:
                bucket.pack_data()
                _wait(_world.comm.Ibcast(bucket.host, root=root),
                      "DistributedOptimizer: broadcasting the parameters")
                bucket.unpack_data()
            self._buckets = buckets
        self._synced_key = key

    @staticmethod
    def _layout_key(params):
        return tuple((id(p), tuple(p.data.shape), p.data.dtype.str, array_module(p.data).__name__)
                     for p in params)

    def _allreduce_per_parameter(self, params):
        MPI, comm, world_size = world._world.MPI, world._world.comm, world._world.size
        what = "DistributedOptimizer: averaging the gradients"
        has_grad = np.array([p.grad is not None for p in params], dtype=np.int64)
        _wait(comm.Iallreduce(MPI.IN_PLACE, has_grad, op=MPI.SUM), what)
        for p, count in zip(params, has_grad):
            if count == 0:
                p.grad = None
                continue
            xp = array_module(p.data)
            host = np.array(to_host(p.grad if p.grad is not None else xp.zeros_like(p.data)), order="C")
            _wait(comm.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM), what)
            host /= world_size
            p.grad = host if xp is np else xp.asarray(host)
        self.allreduce_calls += 1 + int(np.count_nonzero(has_grad))
