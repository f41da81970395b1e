# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Softmax cross-entropy, fused row by row.

Forward, per row: max, exp(x - max) into ``probs`` while summing (in double), one
log, the loss, then ``probs /= sum``. Backward, per row: one pass writing
``(probs - target) * grad``. Rows run in parallel above ``ew.PAR_MIN_COSTLY``
elements. Sparse targets arrive as ``intp`` already checked to lie in [0, C)
(``labels_out_of_range`` is that check, called by the wrapper first).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log
cimport elementwise as ew

ctypedef Py_ssize_t intp_t


def labels_out_of_range(const intp_t[::1] target, Py_ssize_t classes):
    """Index of the first label outside [0, classes), or -1 when all are valid."""
    cdef Py_ssize_t i, n = target.shape[0], bad = -1
    with nogil:
        for i in range(n):
            if target[i] < 0 or target[i] >= classes:
                bad = i
                break
    return bad


cdef inline void forward_rows(const floating* logits, const intp_t* sparse, const floating* dense,
                              floating* loss, floating* probs, Py_ssize_t cols,
                              Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating* x
    cdef floating* p
    cdef floating m, log_total, shifted
    cdef double total, acc
    for r in range(r0, r1):
        x = logits + r * cols
        p = probs + r * cols
        m = x[0]
        for j in range(1, cols):
            if x[j] > m:
                m = x[j]
        total = 0
        for j in range(cols):
            p[j] = ew.f_exp(x[j] - m)
            total += p[j]
        log_total = <floating>log(total)
        if sparse != NULL:
            loss[r] = -((x[sparse[r]] - m) - log_total)
        else:
            acc = 0
            for j in range(cols):
                acc += dense[r * cols + j] * ((x[j] - m) - log_total)
            loss[r] = <floating>(-acc)
        for j in range(cols):
            p[j] = p[j] / <floating>total


def forward(const floating[:, ::1] logits, const intp_t[::1] sparse, const floating[:, ::1] dense,
            floating[::1] loss, floating[:, ::1] probs):
    """Per-row loss and softmax; exactly one of ``sparse`` / ``dense`` is not None."""
    cdef Py_ssize_t rows = logits.shape[0], cols = logits.shape[1], c, per_chunk
    cdef const floating* xp = &logits[0, 0]
    cdef const intp_t* sp = NULL
    cdef const floating* dp = NULL
    if sparse is not None:
        sp = &sparse[0]
    else:
        dp = &dense[0, 0]
    if rows * cols < ew.PAR_MIN_COSTLY or rows < 2:
        with nogil:
            forward_rows(xp, sp, dp, &loss[0], &probs[0, 0], cols, 0, rows)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // cols)
    for c in prange((rows + per_chunk - 1) // per_chunk, nogil=True, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        forward_rows(xp, sp, dp, &loss[0], &probs[0, 0], cols, c * per_chunk,
                     min(rows, (c + 1) * per_chunk))


cdef inline void backward_rows(const floating* probs, const intp_t* sparse, const floating* dense,
                               const floating* grad, floating* out, Py_ssize_t cols,
                               Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating* p
    cdef const floating* t
    cdef floating* d
    cdef floating g, mass, one = 1
    cdef double acc
    for r in range(r0, r1):
        p = probs + r * cols
        d = out + r * cols
        g = grad[r]
        if sparse != NULL:
            for j in range(cols):
                d[j] = p[j] * g
            d[sparse[r]] = (p[sparse[r]] - one) * g
        else:
            t = dense + r * cols
            acc = 0
            for j in range(cols):
                acc += t[j]
            mass = <floating>acc
            for j in range(cols):
                d[j] = (p[j] * mass - t[j]) * g


def backward(const floating[:, ::1] probs, const intp_t[::1] sparse, const floating[:, ::1] dense,
             const floating[::1] grad, floating[:, ::1] out):
    """out = (probs - target) * grad[:, None] (dense: probs * sum(target) - target)."""
    cdef Py_ssize_t rows = probs.shape[0], cols = probs.shape[1], c, per_chunk
    cdef const floating* pp = &probs[0, 0]
    cdef const intp_t* sp = NULL
    cdef const floating* dp = NULL
    if sparse is not None:
        sp = &sparse[0]
    else:
        dp = &dense[0, 0]
    if rows * cols < ew.PAR_MIN_CHEAP or rows < 2:
        with nogil:
            backward_rows(pp, sp, dp, &grad[0], &out[0, 0], cols, 0, rows)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // cols)
    for c in prange((rows + per_chunk - 1) // per_chunk, nogil=True, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        backward_rows(pp, sp, dp, &grad[0], &out[0, 0], cols, c * per_chunk,
                      min(rows, (c + 1) * per_chunk))


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
