"""The thread policy: how many BLAS and OpenMP threads each operation gets.

A training step of a small network is a chain of small operations, each over in a
few microseconds. Handing one to a second thread pays only when the work is big
enough to cover the hand-over, and on a busy machine (a laptop with a browser open,
a CI runner, ``GridSearchCV(n_jobs=2)``) the second thread may not get a core at
all: the caller then waits a scheduler slice (milliseconds) for it. Measured on the
2-core dev machine beside three CPU-bound processes, a 32x128 @ 128x128 product took
16 us on one OpenBLAS thread and 450 us on two. So nanodl decides per operation:

* **GEMMs** (``gemm(rows, inner, cols)``): one BLAS thread when the product has
  fewer than ``GEMM_PARALLEL_MIN`` multiply-adds, the library's own setting above it
  (measured: two threads start to pay between 2M and 6M multiply-adds on 2 cores),
  unless the machine is busy (``machine_busy()``: the load average leaves at most
  one free core), when every GEMM runs on one thread.
  Below ``GEMM_SERIAL_ANYWAY`` OpenBLAS already runs on one thread by itself, so
  nothing is switched at all. A switch is a call through a ctypes pointer resolved
  once (~0.3 us; the scope reads the current count, lowers it and restores it:
  ~0.8 us in all), and it only ever *lowers* the count, so a user's own limit
  (``threadpoolctl.threadpool_limits``) still holds inside nanodl.
* **OpenMP** (the compiled kernels' ``prange`` loops): each kernel already picks one
  thread below a size where a second pays (``csrc/elementwise.pxd``). What the
  policy adds is the wait policy: after a parallel region libgomp's worker threads
  spin, by default for ~300,000 rounds (milliseconds), on the cores the next BLAS
  call needs (measured on 2 cores: a 784-128-10 step went from 0.40 ms to 6.8 ms,
  784-512-512-10 from 6 ms to 43 ms). nanodl sets a short spin (``GOMP_SPINCOUNT=1000``)
  while it loads libgomp (``OMP_WAIT_POLICY=PASSIVE`` would also do for nanodl, but
  makes PyTorch's many small parallel regions ~4x slower in the same process). libgomp
  reads the variable once, when it is loaded, and a process has one
  ``libgomp.so.1``: if another library loaded it first (``import torch`` before
  ``import nanodl``: PyTorch ships its own ``libgomp.so.1``), nanodl cannot shorten
  the spin, and a 784-512-512-10 step went 8x slower. Then the compiled kernels are
  capped at one OpenMP thread (``set_thread_cap`` in each extension), so they never
  wake a spinning pool; the kernels lose their second thread (a few percent of a
  medium step), nothing else changes, and PyTorch's own threads are left alone.

A user's explicit choice wins: with ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS`` or
``OMP_NUM_THREADS`` set, BLAS thread counts are never touched; with
``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set, neither is the
OpenMP side. ``NANODL_THREAD_POLICY=off`` turns the whole policy off.

The BLAS library is found with ``threadpoolctl`` (the maintained library scikit-learn
uses for the same job; a runtime dependency of nanodl). Without it nanodl still runs,
with the libraries' default thread counts: ``info()`` then says so.

>>> from nanodl.backend import threads
>>> threads.gemm(32, 64, 10) is threads.UNCHANGED  # tiny: OpenBLAS is serial anyway
True
>>> with threads.gemm(64, 128, 128):   # small: one BLAS thread inside, restored after
...     pass
>>> sorted(threads.info())[:3]
['blas', 'blas_threads', 'enabled']
"""
import contextlib
import ctypes
import os
import threading
import time

GEMM_SERIAL_ANYWAY = 262_144       # multiply-adds; OpenBLAS's own serial limit (65536 * 4)
GEMM_PARALLEL_MIN = 4_194_304      # multiply-adds; below: one BLAS thread (see the docstring)

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_SHORT_SPIN = "1000"

_enabled = os.environ.get("NANODL_THREAD_POLICY", "on").lower() not in ("off", "0", "false", "no")
_main_thread = threading.main_thread().ident

# The BLAS controls, resolved on first use: (get_num_threads, set_num_threads) or None.
_blas = None
_blas_resolved = False
_blas_description = None

# What happened when the compiled kernels loaded their OpenMP runtime.
_openmp = {"runtime": None, "loaded_before_nanodl": None, "short_spin": None, "kernel_cap": None}


def _user_set(names):
    return [name for name in names if os.environ.get(name)]


# ---------------------------------------------------------------- BLAS
def _find_blas():
    """numpy's BLAS as ``(get, set)`` ctypes functions (None when it cannot be controlled)."""
    global _blas_description
    try:
        import threadpoolctl
    except ImportError:
        _blas_description = "not controlled: threadpoolctl is not installed"
        return None
    import numpy as np
    numpy_dirs = {os.path.dirname(os.path.dirname(np.__file__))}  # site-packages holding numpy
    candidates = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                  if lib.user_api == "blas"]
    # The BLAS numpy links (a process may hold others, e.g. one a PyTorch wheel brings).
    candidates.sort(key=lambda lib: not any(lib.filepath.startswith(d) for d in numpy_dirs))
    for lib in candidates:
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp":
            get, set_ = (lib._get_symbol(name) for name in
                         ("openblas_get_num_threads", "openblas_set_num_threads"))
            if get is not None and set_ is not None:
                _blas_description = f"OpenBLAS {lib.version} ({lib.filepath})"
                return get, set_
        if hasattr(lib, "get_num_threads") and hasattr(lib, "set_num_threads"):
            _blas_description = f"{lib.internal_api} {lib.version} ({lib.filepath}), via threadpoolctl"
            return lib.get_num_threads, lib.set_num_threads
    _blas_description = "not controlled: threadpoolctl found no BLAS library"
    return None


def _resolve_blas():
    global _blas, _blas_resolved, _blas_description
    _blas_resolved = True
    if _user_set(_BLAS_ENV):
        _blas_description = f"not controlled: {', '.join(_user_set(_BLAS_ENV))} set by the user"
        _blas = None
    else:
        _blas = _find_blas()
    SERIAL_BLAS.bind(_blas)
    return _blas


class _Unchanged:
    """A scope that changes nothing (the work runs with the libraries' settings)."""
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _SerialBlas:
    """A re-entrant scope that runs BLAS calls on one thread and restores the count after.

    Only the main thread switches: OpenBLAS's pool is process-wide, and two Python
    threads taking turns at it would undo each other's restore.
    """
    __slots__ = ("get", "set", "depth", "restore")

    def __init__(self):
        self.get = self.set = None
        self.depth = 0
        self.restore = 0

    def bind(self, controls):
        self.get, self.set = controls if controls else (None, None)

    def __enter__(self):
        if threading.get_ident() != _main_thread:
            return self
        if not _blas_resolved:
            _resolve_blas()
        if self.depth == 0 and self.set is not None:
            current = self.get()
            self.restore = current if current > 1 else 0
            if self.restore:
                self.set(1)
        self.depth += 1
        return self

    def __exit__(self, *exc):
        if threading.get_ident() != _main_thread:
            return False
        self.depth -= 1
        if self.depth == 0 and self.restore:
            self.set(self.restore)
            self.restore = 0
        return False


UNCHANGED = _Unchanged()
SERIAL_BLAS = _SerialBlas()


def gemm(rows, inner, cols):
    """The scope to run a ``(rows, inner) @ (inner, cols)`` product (or its gradients) in.

    >>> from nanodl.backend import threads
    >>> threads.gemm(64, 128, 128) is threads.SERIAL_BLAS
    True
    """
    work = rows * inner * cols
    if not _enabled or work <= GEMM_SERIAL_ANYWAY:
        return UNCHANGED
    if work >= GEMM_PARALLEL_MIN and not machine_busy():
        return UNCHANGED
    return SERIAL_BLAS


_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
BUSY_RECHECK_SECONDS = 0.5
_busy = {"checked": -1.0, "busy": False}


def machine_busy():
    """Whether other processes leave this one at most one free core (rechecked every 0.5 s).

    From the 1-minute load average, less this process's own BLAS threads (they count
    in it while they run): beside three CPU-bound processes on 2 cores, a GEMM big
    enough for two threads on a quiet machine still ran 8-40x slower on two than on
    one (784-512-512-10 step: 57-320 ms against 7.3 ms), because the second thread
    waits for a core. One-core machines never split a GEMM anyway.
    """
    now = time.monotonic()
    if now - _busy["checked"] < BUSY_RECHECK_SECONDS:
        return _busy["busy"]
    _busy["checked"] = now
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): assume a free machine
        return False
    own = blas_threads() or 1
    _busy["busy"] = _CPUS - max(load - own, 0.0) < 1.5
    return _busy["busy"]


def blas_threads():
    """The BLAS thread count in force now (None when nanodl cannot read it)."""
    if not _blas_resolved:
        _resolve_blas()
    return None if _blas is None else _blas[0]()


# ---------------------------------------------------------------- OpenMP
def _loaded(soname):
    """Whether the shared library ``soname`` is already loaded in this process."""
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:  # Windows: no such probe (and no libgomp)
        return False
    try:
        ctypes.CDLL(soname, mode=mode | getattr(os, "RTLD_LAZY", 1))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def loading_native_kernels():
    """Wrap the import of the compiled kernels: give their libgomp a short spin.

    libgomp reads ``GOMP_SPINCOUNT`` once, when it loads, so the variable is set only
    for the import (never when the user chose a wait policy) and removed afterwards.
    Whether some other library loaded libgomp first is recorded for ``configure_native``.
    """
    before = _loaded("libgomp.so.1")
    user = _user_set(_SPIN_ENV)
    set_spin = not user
    if set_spin:
        os.environ["GOMP_SPINCOUNT"] = _SHORT_SPIN
    try:
        yield
    finally:
        if set_spin:
            del os.environ["GOMP_SPINCOUNT"]
    _openmp["loaded_before_nanodl"] = before
    _openmp["runtime"] = "libgomp" if _loaded("libgomp.so.1") else None
    if user:
        _openmp["short_spin"] = f"user's choice ({', '.join(user)})"
    else:
        _openmp["short_spin"] = not before


def configure_native(modules):
    """Cap the compiled kernels at one OpenMP thread when their runtime spins long.

    ``modules`` are the extension modules (each has ``set_thread_cap``).
    """
    cap = 0  # no cap
    if _enabled and _openmp["runtime"] == "libgomp" and _openmp["short_spin"] is False \
            and not _user_set(("OMP_NUM_THREADS",)):
        cap = 1
    for module in modules:
        setter = getattr(module, "set_thread_cap", None)
        if setter is not None:
            setter(cap)
    _openmp["kernel_cap"] = cap or None


# ---------------------------------------------------------------- switches
@contextlib.contextmanager
def disabled():
    """Run the block with the libraries' own thread settings (for comparisons)."""
    global _enabled
    previous = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = previous


def info():
    """What the policy controls in this process, as a dict (for reports and benchmarks)."""
    if not _blas_resolved:
        _resolve_blas()
    return {
        "enabled": _enabled,
        "blas": _blas_description,
        "blas_threads": blas_threads(),
        "gemm_serial_below": GEMM_PARALLEL_MIN,
        "machine_busy": machine_busy(),
        "openmp_runtime": _openmp["runtime"],
        "openmp_loaded_before_nanodl": _openmp["loaded_before_nanodl"],
        "openmp_short_spin": _openmp["short_spin"],
        "openmp_kernel_cap": _openmp["kernel_cap"],
    }
