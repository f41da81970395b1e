"""The MPI world: joining it, rank and size, the collectives and their deadline."""
import atexit
import hashlib
import itertools
import json
import os
import sys
import time
import zlib

import numpy as np

from ..backend import array_module, to_host
from ..tensor import Tensor

INSTALL_HINT = "install it with `pip install 'nanodl[distributed]'` (mpi4py and Open MPI)"
DEFAULT_TIMEOUT = 300.0   # seconds any collective nanodl makes waits for every rank
TIMEOUT_VARIABLE = "NANODL_MPI_TIMEOUT"

# Set by Open MPI, MPICH/Hydra, Intel MPI, MVAPICH; a rank alone says "started by a launcher".
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
        self.timeout = None  # seconds; None: the environment's or DEFAULT_TIMEOUT
        self.broken = None   # why the world can no longer be trusted (a collective timed out)


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
                pass
    return 0 if any(os.environ.get(variable) for variable in _RANK_VARIABLES) else None


def init():
    """Join the MPI world when started by ``mpirun`` with more than one rank; else a world of one.

    Idempotent. ImportError when several ranks were launched but mpi4py is missing. With
    several ranks, an exception that escapes on one aborts the job (``MPI_Abort``).
    """
    if _world.initialized:
        return
    launched = launched_size()
    if launched is None or launched == 1:
        _world.initialized = True  # a world of one: no mpi4py needed
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
    atexit.register(_abort_if_broken)  # runs before any Finalize: a broken world would hang in it
    comm = MPI.COMM_WORLD
    _world.MPI, _world.comm = MPI, comm
    _world.rank, _world.size = comm.Get_rank(), comm.Get_size()
    _world.initialized = True
    if _world.size > 1:  # an exception on one rank ends every rank (as ``python -m mpi4py``)
        previous = sys.excepthook

        def hook(kind, value, traceback):
            previous(kind, value, traceback)
            _abort()
        sys.excepthook = hook


def _abort():
    sys.stderr.flush()
    _world.comm.Abort(1)


def _abort_if_broken():
    if _world.broken is not None and _world.comm is not None:
        _abort()


def timeout():
    """Seconds any collective nanodl makes waits for every rank before it raises
    ``TimeoutError`` (``set_timeout``, else ``NANODL_MPI_TIMEOUT``, else 300)."""
    if _world.timeout is not None:
        return _world.timeout
    value = os.environ.get(TIMEOUT_VARIABLE)
    if value:
        try:
            return _check_timeout(float(value), TIMEOUT_VARIABLE)
        except ValueError:
            raise ValueError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, "
                             f"got {value!r}") from None
    return DEFAULT_TIMEOUT


def set_timeout(seconds):
    """Wait at most ``seconds`` in any collective (every rank should set the same)."""
    _world.timeout = _check_timeout(seconds, "set_timeout")


def _check_timeout(seconds, who):
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) \
            or not 0 < seconds < float("inf"):
        raise ValueError(f"{who}: the timeout must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def _wait(request, what):
    """Complete ``request`` or raise ``TimeoutError`` after ``timeout()`` s (the world is then
    broken: aborted at exit). Polls hot for 5 ms, then sleeps up to 10 ms to leave the core."""
    if request.Test():
        return
    now = time.monotonic()
    deadline, hot_until, pause = now + timeout(), now + 0.005, 2e-5
    while not request.Test():
        now = time.monotonic()
        if now > deadline:
            _world.broken = what
            raise TimeoutError(
                f"{what}: not every rank joined within {timeout():g} s (a rank left fit early, "
                f"never called it, or is stuck); rank {_world.rank} gives up, and the job ends "
                f"(set_timeout() or {TIMEOUT_VARIABLE} sets the wait)")
        if now > hot_until:
            time.sleep(pause)
            pause = min(2 * pause, 0.01)


def _same_everywhere(fingerprint, what):
    """True when every rank passed the same int64 ``fingerprint`` (one allreduce: the max of it
    and of its negation are each other's negatives only then)."""
    both = np.concatenate([fingerprint, -fingerprint])
    _wait(_world.comm.Iallreduce(_world.MPI.IN_PLACE, both, op=_world.MPI.MAX), what)
    return np.array_equal(both[:len(fingerprint)], -both[len(fingerprint):])


def _agree(items, who, what, error=ValueError):
    """Raise ``error`` on every rank, naming the first difference, when the ranks' ``items``
    (``(label, value)`` pairs) differ; one small collective when they agree."""
    if _world.comm is None:
        return
    payload = json.dumps([[str(label), str(value)] for label, value in items]).encode()
    digest = int.from_bytes(hashlib.blake2b(payload, digest_size=7).digest(), "little")
    if _same_everywhere(np.array([digest], dtype=np.int64), f"{who}: checking {what}"):
        return
    comm, comparing = _world.comm, f"{who}: comparing {what}"
    lengths = np.zeros(_world.size, dtype=np.int64)
    _wait(comm.Iallgather(np.array([len(payload)], dtype=np.int64), lengths), comparing)
    gathered = np.empty(int(lengths.sum()), dtype=np.uint8)
    _wait(comm.Iallgatherv(np.frombuffer(payload, dtype=np.uint8), [gathered, lengths.tolist()]), comparing)
    lists = [json.loads(part.tobytes()) for part in np.split(gathered, np.cumsum(lengths)[:-1])]
    other = next(r for r in range(1, _world.size) if lists[r] != lists[0])
    raise error(f"{who}: the ranks differ in {what}: {_first_difference(lists[0], lists[other], other)}; "
                "every rank must run the same code on the same kind of data")


def _first_difference(first, second, other):
    """``'label: rank 0 has a, rank r has b'`` for the first item that differs."""
    for left, right in itertools.zip_longest(first, second):
        if left == right:
            continue
        if left and right and left[0] == right[0]:
            return f"{left[0]}: rank 0 has {left[1]}, rank {other} has {right[1]}"
        described = ["nothing more" if item is None else f"{item[0]} = {item[1]}" for item in (left, right)]
        return f"rank 0 has {described[0]}, rank {other} has {described[1]}"
    return "(no difference found)"


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
    """The MPI library's version line, without joining the world; None without mpi4py."""
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
    """``(host, xp)``: a C-contiguous NumPy copy of ``array`` and its array module."""
    if isinstance(array, Tensor):
        raise TypeError(f"{who}: pass an array (tensor.data), not a Tensor")
    xp = array_module(array)
    host = np.array(array, order="C") if xp is np else np.ascontiguousarray(to_host(array))
    if host.dtype.kind not in "biufc":
        raise TypeError(f"{who}: cannot reduce an array of dtype {host.dtype}")
    return host, xp


def _check_same_layout(host, who):
    """ValueError on every rank when the ranks passed different shapes or dtypes (a mismatched
    collective would hang or read past a buffer)."""
    layout = f"{host.dtype.str}{host.shape}".encode()
    if _same_everywhere(np.array([zlib.crc32(layout), host.size], dtype=np.int64), who):
        return
    sizes = np.zeros(_world.size, dtype=np.int64)
    _wait(_world.comm.Iallgather(np.array([host.size], dtype=np.int64), sizes), who)
    raise ValueError(f"{who}: the ranks passed arrays of different shapes or dtypes (this rank, "
                     f"{_world.rank}: {host.dtype} {host.shape}; element counts by rank: "
                     f"{sizes.tolist()}); every rank must pass the same shape and dtype")


def allreduce(array, op="sum"):
    """The elementwise sum (``op='sum'``) or mean (``op='mean'``) of ``array`` over all ranks.

    Every rank passes the same shape and dtype and gets a new array on the same device; a
    mean of integers is float64, as ``np.mean``.

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
        _wait(_world.comm.Iallreduce(_world.MPI.IN_PLACE, host, op=_world.MPI.SUM), "allreduce")
    if op == "mean":
        host = host / _world.size  # integers give float64, as np.mean
    return host if xp is np else xp.asarray(host)


def broadcast(array, root=0):
    """Rank ``root``'s ``array`` on every rank (a new array, on the caller's device); every
    rank passes the same shape and dtype (the other ranks' values are ignored).

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
        _wait(_world.comm.Ibcast(host, root=int(root)), "broadcast")
    return host if xp is np else xp.asarray(host)


def barrier():
    """Wait until every rank has reached this call (nothing to wait for in a world of one)."""
    init()
    if _world.comm is not None:
        _wait(_world.comm.Ibarrier(), "barrier")


def _is_rank_zero():
    """False on ranks other than 0 (only rank 0 prints and writes files); never joins the world."""
    return _world.rank == 0
