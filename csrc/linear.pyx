# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""The dense layer's elementwise halves; the GEMMs are NumPy's (see below).

GEMM decision: NumPy's ``np.matmul`` (OpenBLAS, as NumPy ships it), not
``scipy.linalg.cython_blas.sgemm``. Measured on the 2-core dev machine, float32,
best of 7, output allocated in each call as the kernel must return a fresh array:

    x @ kernel                  np.matmul(out=)   np.matmul   cython_blas sgemm
    (1, 64) x (64, 10)               1.3 us          1.0 us       0.8 us
    (32, 64) x (64, 64)              3.7 us          3.4 us       3.2 us
    (128, 256) x (256, 256)          100 us          97 us        104 us
    (1024, 1024) x (1024, 1024)     12.0 ms         12.0 ms      21.5 ms

Calling sgemm directly saves only Python-level dispatch on tiny layers (< 0.5 us),
and SciPy's own OpenBLAS build was slower on big ones; it would also make SciPy (not
a dependency of nanodl) a runtime requirement and add a second BLAS thread pool.
Since the output is returned fresh anyway, a preallocated ``out=`` buys nothing, so
the wrapper calls plain ``np.matmul``.

What is fused here: the bias add and the activation, one pass over the GEMM output
(``bias_act``); the backward's activation gradient is ``_activations.backward``
(``elementwise.backward``, one pass into a scratch buffer).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
cimport elementwise as ew
from arrays cimport float_type, like

cnp.import_array()


cdef inline void bias_act_rows(int act, floating* z, const floating* bias, floating* out,
                               Py_ssize_t cols, Py_ssize_t r0, Py_ssize_t r1,
                               floating alpha) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating* zr
    for r in range(r0, r1):
        zr = z + r * cols
        if bias != NULL:
            for j in range(cols):
                zr[j] = zr[j] + bias[j]
        if act != ew.ACT_LINEAR or out != z:
            ew.forward_range(act, zr, out + r * cols, 0, cols, alpha)


cdef inline void bias_act_all(int act, floating* z, const floating* bias, floating* out,
                              Py_ssize_t rows, Py_ssize_t cols, floating alpha) noexcept nogil:
    cdef Py_ssize_t c, per_chunk
    if rows * cols < ew.par_min_forward(act) or rows < 2:
        bias_act_rows(act, z, bias, out, cols, 0, rows, alpha)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // max(cols, 1))
    for c in prange((rows + per_chunk - 1) // per_chunk, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        bias_act_rows(act, z, bias, out, cols, c * per_chunk, min(rows, (c + 1) * per_chunk), alpha)


def bias_act(int act, cnp.ndarray z not None, cnp.ndarray bias, cnp.ndarray out not None,
             double alpha):
    """z += bias (row-wise, skipped when bias is None); out = act(z); ``out`` may be ``z``."""
    cdef int typenum = float_type(z)
    if cnp.PyArray_NDIM(z) != 2:
        raise ValueError("bias_act: z must be 2-D")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(z, 0), cols = cnp.PyArray_DIM(z, 1)
    like(z, typenum, rows * cols, True)
    like(out, typenum, rows * cols, True)
    cdef void* bp = NULL
    if bias is not None:
        like(bias, typenum, cols, False)
        bp = cnp.PyArray_DATA(bias)
    cdef void* zp = cnp.PyArray_DATA(z)
    cdef void* op = cnp.PyArray_DATA(out)
    if rows * cols == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            bias_act_all(act, <float*>zp, <const float*>bp, <float*>op, rows, cols, <float>alpha)
    else:
        with nogil:
            bias_act_all(act, <double*>zp, <const double*>bp, <double*>op, rows, cols, alpha)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
