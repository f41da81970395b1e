# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Activation kernels: forward and backward over flat, C-contiguous arrays.

Called only through ``nanodl/backend/kernels_native.py``, which checks dtype,
shape and contiguity, flattens, and allocates ``out``. The math lives in
``elementwise.pxd`` (shared with the fused dense layer in ``linear.pyx``).
"""
from cython cimport floating
cimport elementwise as ew


def forward(int act, const floating[::1] x, floating[::1] out, double alpha):
    """out = act(x); ``act`` is an ACT_* code (kernels_native.ACTIVATION_CODES)."""
    with nogil:
        ew.forward(act, &x[0], &out[0], x.shape[0], <floating>alpha)


def backward(int act, const floating[::1] saved, const floating[::1] grad, floating[::1] out,
             double alpha):
    """out = grad * act'(saved); ``saved`` is y or x as in kernels_numpy."""
    with nogil:
        ew.backward(act, &saved[0], &grad[0], &out[0], saved.shape[0], <floating>alpha)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
