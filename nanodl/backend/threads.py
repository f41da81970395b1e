"""The thread policy: how many BLAS and OpenMP threads each operation gets.

A second thread pays only when the work covers the hand-over (on a busy machine a 32x128
@ 128x128 product took 16 us on one OpenBLAS thread, 450 us on two). **The policy may
change speed, never results**: a product's thread count depends on its size and the
user's settings alone (OpenBLAS may split a product differently on one thread and two):

* **GEMMs** (``gemm(rows, inner, cols)``): up to ``GEMM_SERIAL_ANYWAY`` multiply-adds
  OpenBLAS is serial anyway and nothing is switched; below ``GEMM_PARALLEL_MIN`` (32M,
  where the gain on a quiet machine is worth the risk on a busy one) one thread
  (``SERIAL_BLAS``), above it the library's count (``PARALLEL_BLAS``). The count is
  one process-wide setting: a scope wanting the other waits until those inside finish.
* **OpenMP** (the compiled kernels' ``prange`` loops, bitwise the same at any thread
  count): libgomp's idle workers spin for milliseconds on the cores the next BLAS call
  needs, so nanodl loads it with ``GOMP_SPINCOUNT=1000``; if another library loaded it
  first (``import torch`` before nanodl), the kernels are capped at one OpenMP thread.

A user's choice wins: with ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS`` or
``OMP_NUM_THREADS`` set, BLAS counts are never touched; with ``OMP_NUM_THREADS``,
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set, neither is OpenMP.
``NANODL_THREAD_POLICY=off`` turns the policy off. The BLAS controlled is numpy's (found
with ``threadpoolctl``; without it the libraries keep their defaults: ``info()`` says).

>>> from nanodl.backend import threads
>>> threads.gemm(32, 64, 10) is threads.UNCHANGED  # tiny: OpenBLAS is serial anyway
True
>>> threads.gemm(64, 128, 128) is threads.SERIAL_BLAS  # small: one BLAS thread inside
True
>>> sorted(threads.info())[:3]
['blas', 'blas_threads', 'enabled']
"""
import contextlib
import ctypes
import os
import threading

GEMM_SERIAL_ANYWAY = 262_144       # multiply-adds; OpenBLAS's own serial limit (65536 * 4)
GEMM_PARALLEL_MIN = 33_554_432     # multiply-adds; below: one BLAS thread

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_SHORT_SPIN = "1000"

_enabled = os.environ.get("NANODL_THREAD_POLICY", "on").lower() not in ("off", "0", "false", "no")

_blas = None  # (get_num_threads, set_num_threads) of numpy's BLAS, or None; resolved on first use
_blas_resolved = False
_blas_description = None

_openmp = {"runtime": None, "loaded_before_nanodl": None, "short_spin": None, "kernel_cap": None}

# Each BLAS family's thread-count function (threadpoolctl also finds scipy_openblas's)
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


def _already_loaded(path):
    """The shared library ``path`` as a ctypes handle if it is loaded already, else None."""
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:  # Windows: no such probe (and no libgomp)
        return None
    try:
        return ctypes.CDLL(path, mode=mode | getattr(os, "RTLD_LAZY", 1))
    except OSError:
        return None


def _numpy_handle():
    """numpy's compiled core as a ctypes handle (None where that cannot be had)."""
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    extension = getattr(core, "_multiarray_umath", None)
    return None if extension is None else _already_loaded(extension.__file__)


def _numpy_blas(candidates):
    """The controller of numpy's BLAS, or None (looked up through numpy's own handle)."""
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
    try:
        import threadpoolctl
    except ImportError:
        return None, "not controlled: threadpoolctl is not installed"
    candidates = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                  if lib.user_api == "blas"]
    if not candidates:
        return None, "not controlled: threadpoolctl found no BLAS library"
    lib = _numpy_blas(candidates)
    if lib is None:
        return None, ("not controlled: cannot tell which of the loaded BLAS libraries numpy "
                      f"uses ({', '.join(c.filepath for c in candidates)})")
    if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp":
        get, set_ = (lib._get_symbol(name) for name in
                     ("openblas_get_num_threads", "openblas_set_num_threads"))
        if get is not None and set_ is not None:
            return (get, set_), f"OpenBLAS {lib.version} ({lib.filepath})"
    if hasattr(lib, "get_num_threads") and hasattr(lib, "set_num_threads"):
        return ((lib.get_num_threads, lib.set_num_threads),
                f"{lib.internal_api} {lib.version} ({lib.filepath}), via threadpoolctl")
    return None, f"not controlled: no thread-count functions in {lib.filepath}"


def _resolve_blas():
    global _blas, _blas_resolved, _blas_description
    user = _user_set(_BLAS_ENV)
    if user:
        _blas, _blas_description = None, f"not controlled: {', '.join(user)} set by the user"
    else:
        _blas, _blas_description = _find_blas()
    _SHARED.get, _SHARED.set = _blas if _blas else (None, None)
    _blas_resolved = True
    return _blas


class _SharedCount:
    """The scopes' shared state: ``holders`` inside, all wanting ``count`` (1, or None: as is);
    ``restore``, what to set back; ``depth``, each thread's nesting (it never waits for itself)."""

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
    """A re-entrant scope running BLAS calls on one thread (``count`` 1) or the library's count."""
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


UNCHANGED = contextlib.nullcontext()  # a scope that changes nothing
SERIAL_BLAS = _BlasScope(count=1)
PARALLEL_BLAS = _BlasScope(count=None)


def gemm(rows, inner, cols):
    """The scope to run a ``(rows, inner) @ (inner, cols)`` product (or its gradients) in."""
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
@contextlib.contextmanager
def loading_native_kernels():
    """Wrap the import of the compiled kernels: libgomp loads with a short spin (unless the user chose)."""
    before = _already_loaded("libgomp.so.1") is not None
    user = _user_set(_SPIN_ENV)
    if not user:
        os.environ["GOMP_SPINCOUNT"] = _SHORT_SPIN
    try:
        yield
    finally:
        if not user:
            del os.environ["GOMP_SPINCOUNT"]
    _openmp.update(loaded_before_nanodl=before,
                   runtime="libgomp" if _already_loaded("libgomp.so.1") else None,
                   short_spin=f"user's choice ({', '.join(user)})" if user else not before)


def configure_native(modules):
    """Cap the compiled kernels' ``modules`` at one OpenMP thread when their runtime spins long."""
    cap = int(_enabled and _openmp["runtime"] == "libgomp" and _openmp["short_spin"] is False
              and not _user_set(("OMP_NUM_THREADS",)))
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
        **{f"openmp_{key}": value for key, value in _openmp.items()},
    }
