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
(``bias_act``); the backward's activation gradient is one pass of
``elementwise.backward`` into a scratch buffer.
"""
from cython cimport floating
from cython.parallel cimport prange
cimport elementwise as ew


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


def bias_act(int act, floating[:, ::1] z, const floating[::1] bias, floating[:, ::1] out,
             double alpha):
    """z += bias (row-wise, skipped when bias is None); out = act(z); ``out`` may be ``z``."""
    cdef Py_ssize_t rows = z.shape[0], cols = z.shape[1], c, per_chunk
    cdef floating a = <floating>alpha
    cdef floating* zp = &z[0, 0]
    cdef floating* op = &out[0, 0]
    cdef const floating* bp = NULL
    if bias is not None:
        bp = &bias[0]
    if rows * cols < ew.par_min_forward(act) or rows < 2:
        with nogil:
            bias_act_rows(act, zp, bp, op, cols, 0, rows, a)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // max(cols, 1))
    for c in prange((rows + per_chunk - 1) // per_chunk, nogil=True, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        bias_act_rows(act, zp, bp, op, cols, c * per_chunk,
                      min(rows, (c + 1) * per_chunk), a)


def act_grad(int act, const floating[::1] saved, const floating[::1] grad, floating[::1] dz,
             double alpha):
    """dz = grad * act'(saved), flat."""
    with nogil:
        ew.backward(act, &saved[0], &grad[0], &dz[0], saved.shape[0], <floating>alpha)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
