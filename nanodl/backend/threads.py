"""The thread policy: how many BLAS and OpenMP threads each operation gets.

A training step of a small network is a chain of small operations, each over in a
few microseconds. Handing one to a second thread pays only when the work is big
enough to cover the hand-over, and on a busy machine (a laptop with a browser open,
a CI runner, ``GridSearchCV(n_jobs=2)``) the second thread may not get a core at
all: the caller then waits a scheduler slice (milliseconds) for it. Measured on the
2-core dev machine beside three CPU-bound processes, a 32x128 @ 128x128 product took
16 us on one OpenBLAS thread and 450 us on two. So nanodl decides per operation.

**The policy may change speed, never results.** OpenBLAS splits some products
differently on one thread and on two (a 32x784 @ 784x128 float32 product differs by
4e-5), so the thread count of every product is a function of its size alone (and of
the user's settings), never of the machine's load or of the calling thread:

* **GEMMs** (``gemm(rows, inner, cols)``): up to ``GEMM_SERIAL_ANYWAY`` multiply-adds
  OpenBLAS runs on one thread by itself, and nothing is switched; below
  ``GEMM_PARALLEL_MIN`` the product runs on one thread (``SERIAL_BLAS``); above, on the
  library's count (``PARALLEL_BLAS``). On a quiet 2-core machine two threads start to
  pay between 2M and 6M multiply-adds (best of 15: 6.4M took 138 us on one, 77 us on
  two), but beside busy processes the second thread waits for a core: the same
  products ran 8-40x slower on two than on one, and a full-batch digits sweep
  (1797x64x64 products) went from 26 s to over 300 s. The old policy read the load
  average to choose; now that results may not depend on the load, the line sits where
  two threads pay on a quiet machine by enough to risk it: 32M multiply-adds (the
  784-512-512-10 step at batch 256, 67M-103M per product, keeps its two threads).
  OpenBLAS's count is one setting for the whole process, so the scopes share it:
  scopes that want the same count run side by side, one that wants the other count
  waits until they finish (microseconds: the products are small), and any thread gets
  the same count for the same product. The library's count is whatever is in force when
  no nanodl scope holds it, so a user's own limit (``threadpoolctl.threadpool_limits``)
  still holds inside nanodl. A scope costs a lock and a dict entry, plus, for the
  one-thread scope, one read and two writes through ctypes pointers (~2-5 us in all).
* **OpenMP** (the compiled kernels' ``prange`` loops): each kernel already picks one
  thread below a size where a second pays (``csrc/elementwise.pxd``), and every loop
  computes each element alone, so its thread count never changes a bit. What the
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
uses for the same job; a runtime dependency of nanodl). A process may hold several
(SciPy's wheels bring their own OpenBLAS, PyTorch's MKL): the one controlled is the one
numpy's own extension module links, told by the address its thread-count function
resolves to through numpy's handle; when that cannot be told, none is controlled.
Without threadpoolctl nanodl still runs, with the libraries' default thread counts:
``info()`` then says so.

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

GEMM_SERIAL_ANYWAY = 262_144       # multiply-adds; OpenBLAS's own serial limit (65536 * 4)
GEMM_PARALLEL_MIN = 33_554_432     # multiply-adds; below: one BLAS thread (see the docstring)

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_SHORT_SPIN = "1000"

_enabled = os.environ.get("NANODL_THREAD_POLICY", "on").lower() not in ("off", "0", "false", "no")

# The BLAS controls, resolved on first use: (get_num_threads, set_num_threads) or None.
_blas = None
_blas_resolved = False
_blas_description = None

# What happened when the compiled kernels loaded their OpenMP runtime.
_openmp = {"runtime": None, "loaded_before_nanodl": None, "short_spin": None, "kernel_cap": None}

# The thread-count function of each BLAS family threadpoolctl knows (OpenBLAS's through
# its prefix/suffix lookup, which finds ``scipy_openblas_get_num_threads64_`` too).
_GET_THREADS = {"openblas": "openblas_get_num_threads", "blis": "bli_thread_get_num_threads",
                "mkl": "MKL_Get_Max_Threads"}


def _user_set(names):
    return [name for name in names if os.environ.get(name)]


# ---------------------------------------------------------------- BLAS
def _address(function):
    return ctypes.cast(function, ctypes.c_void_p).value if function is not None else None


def _get_threads_function(lib):
    name = _GET_THREADS.get(lib.internal_api)
    if name is None:
        return None
    if hasattr(lib, "_get_symbol"):
        return lib._get_symbol(name)
    return getattr(getattr(lib, "dynlib", None), name, None)


def _numpy_handle():
    """numpy's compiled core as a ctypes handle (None where that cannot be had)."""
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    extension = getattr(core, "_multiarray_umath", None)
    mode = getattr(os, "RTLD_NOLOAD", None)
    if extension is None or mode is None:
        return None
    try:
        return ctypes.CDLL(extension.__file__, mode=mode | getattr(os, "RTLD_LAZY", 1))
    except OSError:
        return None


def _numpy_blas(candidates):
    """The controller of the BLAS numpy calls, or None when it cannot be told.

    A symbol looked up through numpy's own handle resolves in numpy's dependencies
    only, so the library whose thread-count function has that address is numpy's.
    """
    handle = _numpy_handle()
    if handle is not None:
        for lib in candidates:
            function = _get_threads_function(lib)
            if function is not None and \
                    _address(getattr(handle, function.__name__, None)) == _address(function):
                return lib
        return None
    import numpy as np
    bundled = [lib for lib in candidates  # numpy.libs/, numpy/.dylibs/: the wheel's own copy
               if os.path.dirname(lib.filepath).startswith(os.path.dirname(np.__file__))]
    if len(bundled) == 1:
        return bundled[0]
    return candidates[0] if len(candidates) == 1 else None


def _find_blas():
    """numpy's BLAS as ``(get, set)`` ctypes functions (None when it cannot be controlled)."""
    global _blas_description
    try:
        import threadpoolctl
    except ImportError:
        _blas_description = "not controlled: threadpoolctl is not installed"
        return None
    candidates = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                  if lib.user_api == "blas"]
    if not candidates:
        _blas_description = "not controlled: threadpoolctl found no BLAS library"
        return None
    lib = _numpy_blas(candidates)
    if lib is None:
        _blas_description = ("not controlled: cannot tell which of the loaded BLAS libraries numpy "
                             f"uses ({', '.join(c.filepath for c in candidates)})")
        return None
    if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp":
        get, set_ = (lib._get_symbol(name) for name in
                     ("openblas_get_num_threads", "openblas_set_num_threads"))
        if get is not None and set_ is not None:
            _blas_description = f"OpenBLAS {lib.version} ({lib.filepath})"
            return get, set_
    if hasattr(lib, "get_num_threads") and hasattr(lib, "set_num_threads"):
        _blas_description = f"{lib.internal_api} {lib.version} ({lib.filepath}), via threadpoolctl"
        return lib.get_num_threads, lib.set_num_threads
    _blas_description = f"not controlled: no thread-count functions in {lib.filepath}"
    return None


def _resolve_blas():
    global _blas, _blas_resolved, _blas_description
    if _user_set(_BLAS_ENV):
        _blas_description = f"not controlled: {', '.join(_user_set(_BLAS_ENV))} set by the user"
        _blas = None
    else:
        _blas = _find_blas()
    _SHARED.get, _SHARED.set = _blas if _blas else (None, None)
    _blas_resolved = True
    return _blas


class _Unchanged:
    """A scope that changes nothing (the work runs with the libraries' settings)."""
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _SharedCount:
    """numpy's BLAS thread count, one setting for the process, shared by the scopes.

    ``holders`` scopes are inside, all wanting ``count``: 1, or None for the count in
    force when no scope is inside (the library's or the user's: never read or set for
    them). ``restore`` is what the serial scopes set back. ``depth`` counts the scopes
    each thread is inside: a thread already inside enters nested ones without waiting for
    itself. The lock is a plain one (C-level acquire and release on the fast path); the
    condition is used only when a scope has to wait.
    """

    def __init__(self):
        self.get = self.set = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.holders = self.waiting = self.restore = 0
        self.count = None
        self.depth = {}


_SHARED = _SharedCount()
_thread_id = threading.get_ident


class _BlasScope:
    """A re-entrant scope that runs BLAS calls on one thread (``count`` 1) or on the
    library's count (None), and restores the count after; the same in every thread."""
    __slots__ = ("count",)

    def __init__(self, count):
        self.count = count

    def __enter__(self):
        if not _blas_resolved:
            _resolve_blas()
        shared = _SHARED
        if shared.set is None:
            return self
        ident, count = _thread_id(), self.count
        with shared.lock:
            depth = shared.depth.get(ident, 0)
            if shared.holders and shared.count != count and not depth:
                shared.waiting += 1
                while shared.holders and shared.count != count:
                    shared.changed.wait()
                shared.waiting -= 1
            if not shared.holders:
                shared.count = count
                if count is not None:
                    ambient = shared.get()
                    shared.restore = ambient if ambient > count else 0  # only ever lowers
                    if shared.restore:
                        shared.set(count)
            shared.holders += 1
            shared.depth[ident] = depth + 1
        return self

    def __exit__(self, *exc):
        shared = _SHARED
        ident = _thread_id()
        with shared.lock:
            depth = shared.depth.pop(ident, 0)
            if depth:
                if depth > 1:
                    shared.depth[ident] = depth - 1
                shared.holders -= 1
                if not shared.holders:
                    if shared.restore:
                        shared.set(shared.restore)
                        shared.restore = 0
                    if shared.waiting:
                        shared.changed.notify_all()
        return False


UNCHANGED = _Unchanged()
SERIAL_BLAS = _BlasScope(count=1)
PARALLEL_BLAS = _BlasScope(count=None)


def gemm(rows, inner, cols):
    """The scope to run a ``(rows, inner) @ (inner, cols)`` product (or its gradients) in:
    a function of the product's size alone.

    >>> from nanodl.backend import threads
    >>> threads.gemm(64, 128, 128) is threads.SERIAL_BLAS
    True
    """
    work = rows * inner * cols
    if not _enabled or work <= GEMM_SERIAL_ANYWAY:
        return UNCHANGED
    return PARALLEL_BLAS if work >= GEMM_PARALLEL_MIN else SERIAL_BLAS


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
        "openmp_runtime": _openmp["runtime"],
        "openmp_loaded_before_nanodl": _openmp["loaded_before_nanodl"],
        "openmp_short_spin": _openmp["short_spin"],
        "openmp_kernel_cap": _openmp["kernel_cap"],
    }
