# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Activation kernels: forward and backward over C-contiguous arrays of any shape.

Called only through ``nanodl/backend/kernels_native.py``, behind the checks of
``nanodl/backend/table.py``; ``arrays.pxd`` guards the pointers. The math lives in
``elementwise.pxd`` (shared with the fused dense layer in ``linear.pyx``).
"""
cimport numpy as cnp
cimport elementwise as ew
from arrays cimport float_type, like

cnp.import_array()


def forward(int act, cnp.ndarray x not None, cnp.ndarray out not None, double alpha):
    """out = act(x); ``act`` is an ACT_* code (``Activation.code``)."""
    cdef int typenum = float_type(x)
    cdef cnp.npy_intp n = cnp.PyArray_SIZE(x)
    like(out, typenum, n, True)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* op = cnp.PyArray_DATA(out)
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            ew.forward(act, <const float*>xp, <float*>op, n, <float>alpha)
    else:
        with nogil:
            ew.forward(act, <const double*>xp, <double*>op, n, alpha)


def backward(int act, cnp.ndarray saved not None, cnp.ndarray grad not None,
             cnp.ndarray out not None, double alpha):
    """out = grad * act'(saved); ``saved`` is y or x as the activation's record says."""
    cdef int typenum = float_type(saved)
    cdef cnp.npy_intp n = cnp.PyArray_SIZE(saved)
    like(grad, typenum, n, False)
    like(out, typenum, n, True)
    cdef void* sp = cnp.PyArray_DATA(saved)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* op = cnp.PyArray_DATA(out)
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            ew.backward(act, <const float*>sp, <const float*>gp, <float*>op, n, <float>alpha)
    else:
        with nogil:
            ew.backward(act, <const double*>sp, <const double*>gp, <double*>op, n, alpha)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
