"""Data-parallel training over MPI (``import nanodl.distributed as dist``), as ChainerMN and Horovod.

Every process (a *rank*) holds a full copy of the model and trains on its own share of
each batch; before every update the ranks average their gradients with MPI's
allreduce, so they all apply the same update and stay identical. Start the same
script on N processes with ``mpirun -n N python train.py``; on one process (no
``mpirun``) it is a *world of one* and runs unchanged, without mpi4py.

* ``init()`` joins the MPI world (``rank()``, ``size()``, the collectives and
  ``DistributedOptimizer`` call it for you); ``is_initialized()`` says whether it ran.
* ``allreduce(array, op='sum'|'mean')`` and ``broadcast(array, root=0)`` return new
  arrays; ``barrier()`` waits for every rank. They move NumPy buffers (CuPy arrays
  are staged through the host), never pickled objects.
* ``DistributedOptimizer(optimizer)`` wraps any ``optim.Optimizer``: one flat
  allreduce of all gradients before each step (averaged), parameters broadcast from
  rank 0 at the first step and whenever the parameter set changes. Given to
  ``Model.compile``, it makes ``fit`` data-parallel (see ``docs/distributed.md``).

mpi4py is imported only when a process started by ``mpirun`` with more than one rank
calls ``init()``; importing nanodl never imports it.

>>> import numpy as np
>>> import nanodl.distributed as dist
>>> dist.size(), dist.rank()                  # no mpirun here: a world of one
(1, 0)
>>> dist.allreduce(np.array([1.0, 2.0]), op='mean')
array([1., 2.])
"""
import atexit
import math
import os
import sys
import time
import zlib

import numpy as np

from .backend import array_module, to_host
from .optim.optimizers import Optimizer

__all__ = ["init", "rank", "size", "is_initialized", "allreduce", "broadcast", "barrier",
           "DistributedOptimizer", "INSTALL_HINT"]

INSTALL_HINT = "install it with `pip install 'nanodl[distributed]'` (mpi4py and Open MPI)"

# What the MPI launchers put in each process' environment: Open MPI, MPICH/Hydra and
# Intel MPI, MVAPICH. A size variable gives the world size without asking MPI; a
# PMIx/PMI rank alone says "started by a launcher" (the size is then asked of MPI).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")

_OPS = ("sum", "mean")


class _World:
    """The process' view of the MPI world: ``comm`` is None in a world of one."""

    def __init__(self):
        self.initialized = False
        self.comm = None
        self.MPI = None
        self.rank = 0
        self.size = 1


_world = _World()


def launched_size():
    """The world size the launcher announced in the environment: an int, 0 if it gave a rank
    but no size, None when this process was not started by ``mpirun``/``mpiexec``."""
    for variable in _SIZE_VARIABLES:
        value = os.environ.get(variable)
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    if any(os.environ.get(variable) for variable in _RANK_VARIABLES):
        return 0
    return None


def init():
    """Join the MPI world when started by ``mpirun`` with more than one rank; else a world of one.

    Calling it again does nothing. Raises ImportError when the launcher started several
    ranks but mpi4py is not installed (each rank would otherwise train alone, unaware of
    the others). With more than one rank, an exception that escapes on one rank aborts
    the whole job (``MPI_Abort``), so the others never wait forever in a collective.
    """
    if _world.initialized:
        return
    launched = launched_size()
    if launched is None or launched == 1:
        _world.initialized = True  # a world of one: nothing to join, no mpi4py needed
        return
    try:
        import mpi4py
    except ImportError:
        raise ImportError(
            f"nanodl.distributed: this process was started by an MPI launcher "
            f"({'world size ' + str(launched) if launched else 'several ranks'}) but mpi4py "
            f"is not installed; {INSTALL_HINT}") from None
    if "mpi4py.MPI" not in sys.modules:  # only the main thread calls MPI (kernels use OpenMP)
        mpi4py.rc.thread_level = "funneled"
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:  # mpi4py without a usable MPI library
        raise ImportError(f"nanodl.distributed: mpi4py is installed but cannot load an MPI "
                          f"library ({error}); {INSTALL_HINT}") from None
    if not MPI.Is_initialized():  # imported earlier with rc.initialize = False (nanodl info)
        MPI.Init_thread(MPI.THREAD_FUNNELED)
        atexit.register(MPI.Finalize)
    comm = MPI.COMM_WORLD
    _world.MPI, _world.comm = MPI, comm
    _world.rank, _world.size = comm.Get_rank(), comm.Get_size()
    _world.initialized = True
    if _world.size > 1:
        _abort_on_uncaught_exception(comm)


def _abort_on_uncaught_exception(comm):
    """Chain ``sys.excepthook`` so an exception on one rank ends every rank (as ``python -m mpi4py``)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stderr.flush()
        comm.Abort(1)
    sys.excepthook = hook


def is_initialized():
    """True once ``init()`` has run (explicitly or through ``rank()``, ``size()``, ...)."""
    return _world.initialized


def rank():
    """This process' index in the world, 0 to ``size() - 1`` (0 in a world of one)."""
    init()
    return _world.rank


def size():
    """The number of processes training together (1 without ``mpirun``)."""
    init()
    return _world.size


def library_version():
    """The MPI library's version line, without joining the world; None without mpi4py.

    ``MPI_Get_library_version`` may be called before ``MPI_Init``, so ``nanodl info``
    can report the library without starting MPI.
    """
    try:
        import mpi4py
    except ImportError:
        return None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False  # report only; init() initialises MPI if it joins later
        mpi4py.rc.finalize = False
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:
        return f"mpi4py {mpi4py.__version__} is installed but cannot load an MPI library ({error})"
    return MPI.Get_library_version().strip("\x00 \n").splitlines()[0].strip("\x00 ")


# ---------------------------------------------------------------- collectives
def _host_buffer(array, who):
    """``(host, xp)``: a C-contiguous NumPy copy of ``array`` and the array module to return in."""
    from .tensor import Tensor
    if isinstance(array, Tensor):
        raise TypeError(f"{who}: pass an array (tensor.data), not a Tensor")
    xp = array_module(array)
    if xp is np:
        host = np.array(array, order="C")  # a copy: the caller's array is never changed
    else:
        host = np.ascontiguousarray(to_host(array))
    if host.dtype.kind not in "biufc":
        raise TypeError(f"{who}: cannot reduce an array of dtype {host.dtype}")
    return host, xp


def _check_same_layout(host, who):
    """Raise ValueError on every rank when the ranks passed arrays of different shapes or dtypes.

    A mismatched collective would otherwise hang or read past a buffer. The check is one
    tiny allreduce (the min and max of a fingerprint); on a mismatch the ranks gather
    their shapes so the message names them.
    """
    MPI, comm = _world.MPI, _world.comm
    layout = f"{host.dtype.str}{host.shape}"
    fingerprint = np.array([zlib.crc32(layout.encode()), host.size], dtype=np.int64)
    both = np.concatenate([fingerprint, -fingerprint])
    comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    if np.array_equal(both[:2], -both[2:]):
        return
    sizes = np.zeros(_world.size, dtype=np.int64)
    comm.Allgather(np.array([host.size], dtype=np.int64), sizes)
    raise ValueError(f"{who}: the ranks passed arrays of different shapes or dtypes (this rank, "
                     f"{_world.rank}: {host.dtype} {host.shape}; element counts by rank: "
                     f"{sizes.tolist()}); every rank must pass the same shape and dtype")


def allreduce(array, op="sum"):
    """The elementwise sum (``op='sum'``) or mean (``op='mean'``) of ``array`` over all ranks.

    Every rank passes an array of the same shape and dtype and gets the result, a new
    array on the same device (the argument is not changed). A mean of integers is
    float64, as ``np.mean``. In a world of one it is a copy.

    >>> allreduce(np.array([1, 2, 3]), op='mean')
    array([1., 2., 3.])
    """
    if op not in _OPS:
        raise ValueError(f"allreduce: unknown op {op!r}; valid ops: {', '.join(_OPS)}")
    host, xp = _host_buffer(array, "allreduce")
    init()
    if _world.comm is not None:
        _check_same_layout(host, "allreduce")
        if host.dtype == np.bool_:
            host = host.astype(np.int64)  # a count of the ranks holding True
        _world.comm.Allreduce(_world.MPI.IN_PLACE, host, op=_world.MPI.SUM)
    if op == "mean":
        host = host / _world.size  # integers give float64, as np.mean
    return host if xp is np else xp.asarray(host)


def broadcast(array, root=0):
    """Rank ``root``'s ``array`` on every rank (a new array, on the caller's device).

    Every rank passes an array of the same shape and dtype (the non-root ranks' values
    are ignored).

    >>> broadcast(np.array([4.0, 5.0]))
    array([4., 5.])
    """
    init()
    if not isinstance(root, (int, np.integer)) or isinstance(root, bool) or \
            not 0 <= root < _world.size:
        raise ValueError(f"broadcast: root must be a rank in [0, {_world.size}), got {root!r}")
    host, xp = _host_buffer(array, "broadcast")
    if _world.comm is not None:
        _check_same_layout(host, "broadcast")
        _world.comm.Bcast(host, root=int(root))
    return host if xp is np else xp.asarray(host)


def barrier():
    """Wait until every rank has reached this call (nothing to wait for in a world of one)."""
    init()
    if _world.comm is not None:
        _world.comm.Barrier()


# ---------------------------------------------------------------- the optimizer
class _Bucket:
    """One preallocated flat buffer for the parameters of one dtype and device.

    The layout: each parameter's values back to back (``offsets``), then one slot per
    parameter that holds 1 when this rank has a gradient for it. After the sum the slot
    counts the ranks that had one: a parameter no rank touched keeps ``grad = None``
    (and the wrapped optimizer skips it on every rank alike).
    """

    def __init__(self, params):
        self.params = params
        self.sizes = [int(p.data.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64).tolist()
        self.total = self.offsets[-1]
        self.xp = array_module(params[0].data)
        dtype = params[0].data.dtype
        self.buffer = self.xp.empty(self.total + len(params), dtype=dtype)
        self.host = self.buffer if self.xp is np else np.empty(self.buffer.shape, dtype=dtype)

    def pack_gradients(self):
        buffer, offsets, host = self.buffer, self.offsets, self.host
        has_grad = [p.grad is not None for p in self.params]
        for i, p in enumerate(self.params):
            segment = buffer[offsets[i]:offsets[i + 1]]
            if has_grad[i]:
                segment[...] = p.grad.reshape(-1)
            else:
                segment[...] = 0
        if self.xp is not np:
            buffer.get(out=host)
        host[self.total:] = has_grad

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


class DistributedOptimizer(Optimizer):
    """Wraps an optimizer (or a name, ``'adam'``) so that every rank applies the gradient
    averaged over all ranks.

    ``step()`` first calls ``synchronize()``, then the wrapped optimizer's step.
    ``synchronize()`` (1) broadcasts the parameters from rank 0 the first time and
    whenever the parameter set changes (a lazily built layer, a second model), and
    (2) replaces each parameter's gradient by its mean over the ranks, with ONE
    allreduce of a flat buffer holding every gradient (``mode='per_parameter'``: one
    allreduce per parameter, slower, kept to measure the difference).

    The learning rate, ``state_dict``, ``zero_grad`` and the hyper-parameters are the
    wrapped optimizer's, so schedulers, callbacks and checkpoints see no difference. To
    clip by the global norm, synchronize first (``step`` then does not reduce again)::

        loss.backward()
        opt.synchronize()                         # gradients averaged over the ranks
        optim.clip_grad_norm(params, max_norm=1)  # the same global norm on every rank
        opt.step()

    ``comm_seconds`` adds up the time spent in the gradient allreduce (waiting for a
    slower rank included); ``allreduce_calls`` counts the calls.

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
        if isinstance(optimizer, str):  # a name, as compile takes: 'adam', 'sgd', ...
            from .optim import get
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
        self._synced_key = None    # the parameter layout last broadcast
        self._buckets = None       # flat buffers for that layout
        self._synchronized = False  # synchronize() ran since the last step()

    # ------------------------------------------------------------ the wrapped optimizer's face
    def __getattr__(self, name):  # only for names not found on the wrapper itself
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

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    @property
    def name(self):
        return self.optimizer.name

    @property
    def params(self):
        return self.optimizer.params

    @property
    def step_count(self):
        return self.optimizer.step_count

    @step_count.setter
    def step_count(self, value):
        self.optimizer.step_count = value

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

    # ------------------------------------------------------------ the data-parallel part
    def step(self):
        """Average the gradients over the ranks (unless ``synchronize()`` just did), then step."""
        if not self._synchronized:
            self.synchronize()
        self._synchronized = False
        self.optimizer.step()

    def synchronize(self):
        """Broadcast the parameters if their set changed, then average the gradients over ranks."""
        params = self.optimizer._require_params()
        self._synchronized = True
        if _world.comm is None:
            return  # a world of one: the mean over one rank is the gradient itself
        if self._synced_key != self._layout_key(params):
            self.broadcast_parameters()
        started = time.perf_counter()
        if self.mode == "flat":
            for bucket in self._buckets:
                bucket.pack_gradients()
                _world.comm.Allreduce(_world.MPI.IN_PLACE, bucket.host, op=_world.MPI.SUM)
                bucket.unpack_gradients(_world.size)
            self.allreduce_calls += len(self._buckets)
        else:
            self._allreduce_per_parameter(params)
        self.comm_seconds += time.perf_counter() - started

    def fit_strategy(self):
        """``Model.fit``'s sample order and reduction for this optimizer (the seam the
        core declares, ``nn.plan.LocalFit``): a ``DataParallelFit`` on several ranks,
        None (a plain fit) on one."""
        return DataParallelFit.of(self)

    def broadcast_parameters(self, root=0):
        """Copy rank ``root``'s parameter values into every rank's parameters (in place).

        Checks first that all ranks hold the same parameter layout (count, shapes,
        dtypes) and raises RuntimeError on every rank when they do not.
        """
        params = self.optimizer._require_params()
        key = self._layout_key(params)
        if _world.comm is not None:
            self._check_layout(key)
            buckets = self._make_buckets(params)
            for bucket in buckets:
                bucket.pack_data()
                _world.comm.Bcast(bucket.host, root=root)
                bucket.unpack_data()
            self._buckets = buckets
        self._synced_key = key

    @staticmethod
    def _layout_key(params):
        return tuple((id(p), tuple(p.data.shape), p.data.dtype.str, array_module(p.data).__name__)
                     for p in params)

    @staticmethod
    def _make_buckets(params):
        groups = {}
        for p in params:  # one bucket per (dtype, device); normally just one
            groups.setdefault((p.data.dtype.str, array_module(p.data).__name__), []).append(p)
        return [_Bucket(group) for group in groups.values()]

    def _check_layout(self, key):
        MPI, comm = _world.MPI, _world.comm
        shapes = ";".join(f"{dtype}{shape}" for _, shape, dtype, _ in key)
        total = sum(math.prod(shape) for _, shape, _, _ in key)
        mine = np.array([len(key), total, zlib.crc32(shapes.encode())], dtype=np.int64)
        everyone = np.zeros((_world.size, 3), dtype=np.int64)
        comm.Allgather(mine, everyone)
        if not (everyone == everyone[0]).all():
            described = ", ".join(f"rank {r}: {n} parameters, {t} values"
                                  for r, (n, t, _) in enumerate(everyone.tolist()))
            raise RuntimeError(f"DistributedOptimizer: the ranks hold different parameter sets "
                               f"({described}); every rank must build the same model")

    def _allreduce_per_parameter(self, params):
        MPI, comm, world_size = _world.MPI, _world.comm, _world.size
        has_grad = np.array([p.grad is not None for p in params], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, has_grad, op=MPI.SUM)
        calls = 1
        for p, count in zip(params, has_grad):
            if count == 0:
                p.grad = None
                continue
            xp = array_module(p.data)
            grad = p.grad if p.grad is not None else xp.zeros_like(p.data)
            host = np.array(to_host(grad), order="C")
            comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            host /= world_size
            p.grad = host if xp is np else xp.asarray(host)
            calls += 1
        self.allreduce_calls += calls


# ---------------------------------------------------------------- data-parallel fit
def _is_rank_zero():
    """True unless this is a rank other than 0 of a joined world: only rank 0 prints and
    writes files (callbacks, ``Model.save``). Never joins the world itself."""
    return _world.rank == 0


class DataParallelFit:
    """What ``Model.fit`` does differently when its optimizer is a ``DistributedOptimizer``
    on more than one rank; ``fit``'s hooks call it, the training step itself is the same.

    * ``begin``: parameters broadcast from rank 0 before the first batch; each rank but 0
      reseeds nanodl's generator from its own stream and its rank, so dropout masks
      differ between ranks (rank 0 keeps the stream a single process would have).
    * ``epoch_order``: rank 0 draws the epoch's permutation as a single process would,
      every rank receives it; the first ``n - n % N`` positions are dealt out like cards,
      rank r taking positions r, r+N, r+2N, ... . Every rank gets the same number of
      samples, so every rank runs the same number of steps (each step is an allreduce
      that all ranks must join), and the ranks' k-th batches together are exactly a
      single process' k-th batch of ``N * batch_size``.
    * ``reduce``: an epoch's ``EpochTotals`` (sums and counts) summed over the ranks, so
      the averages are exact per-sample averages over all of them, the same on each rank.
    * ``validation_shard``: rank r validates on samples r, r+N, ... (all of them: the
      validation set needs no equal shards, only the summed totals).
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.rank, self.size = rank(), size()

    @classmethod
    def of(cls, optimizer):
        """A ``DataParallelFit`` for ``optimizer``, or None for a plain (one-process) fit."""
        if isinstance(optimizer, DistributedOptimizer) and size() > 1:
            return cls(optimizer)
        return None

    def begin(self):
        from .random import generator, manual_seed
        self.optimizer.broadcast_parameters()
        if self.rank != 0:
            manual_seed([int(generator().integers(2 ** 62)), self.rank])

    def epoch_order(self, n, shuffle):
        if shuffle:
            from .random import generator
            order = generator().permutation(n) if self.rank == 0 else np.empty(n, dtype=np.int64)
            order = broadcast(order.astype(np.int64, copy=False))
        else:
            order = np.arange(n)
        return order[:n - n % self.size][self.rank::self.size]

    def samples_per_epoch(self, n):
        if n < self.size:
            raise ValueError(f"fit: {n} training samples cannot be shared out among {self.size} "
                             "ranks (each rank needs at least one)")
        return (n - n % self.size) // self.size

    def reduce(self, totals):
        totals.values = allreduce(np.array(totals.values, dtype=np.float64)).tolist()
        return totals

    def validation_shard(self, *arrays):
        """This rank's share of each of ``arrays`` (x, y, sample weights; None stays None)."""
        return tuple(None if a is None else a[self.rank::self.size] for a in arrays)
