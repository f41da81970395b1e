# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Softmax cross-entropy, fused row by row.

Forward, per row: max, exp(x - max) into ``probs`` (a loop of its own, which GCC
vectorizes), their sum in order (in double), one log, the loss, then ``probs /= sum``. Backward, per row: one pass writing
``(probs - target) * grad``. Rows run in parallel above ``ew.PAR_MIN_COSTLY``
elements. Sparse targets arrive as contiguous ``intp``; their range is checked by the
kernel table first (``labels_out_of_range``) and again here, in one cheap pass, so
that no call can index outside a row.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log
cimport elementwise as ew
from arrays cimport float_type, like

cnp.import_array()

ctypedef Py_ssize_t intp_t


def labels_out_of_range(cnp.ndarray target not None, Py_ssize_t classes):
    """Index of the first label outside [0, classes), or -1 when all are valid (intp labels)."""
    like(target, cnp.NPY_INTP, cnp.PyArray_SIZE(target), False)
    cdef const intp_t* t = <const intp_t*>cnp.PyArray_DATA(target)
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(target), bad = -1
    with nogil:
        for i in range(n):
            if t[i] < 0 or t[i] >= classes:
                bad = i
                break
    return bad


cdef inline void* rows_of(cnp.ndarray sparse, cnp.ndarray dense, int typenum, Py_ssize_t rows,
                          Py_ssize_t cols, Py_ssize_t* labels_in_range) except? NULL:
    """The target's data: intp labels (N,) checked to lie in [0, cols), or a dense (N, C)."""
    if sparse is not None:
        like(sparse, cnp.NPY_INTP, rows, False)
        labels_in_range[0] = labels_out_of_range(sparse, cols)
        return cnp.PyArray_DATA(sparse)
    like(dense, typenum, rows * cols, False)
    labels_in_range[0] = -1
    return cnp.PyArray_DATA(dense)


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
        for j in range(cols):  # apart from the sum, so that the exps vectorize
            p[j] = ew.f_exp(x[j] - m)
        total = 0
        for j in range(cols):  # in order, in double: the same sum as one fused loop
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


cdef inline void forward_all(const floating* xp, const intp_t* sp, const floating* dp, floating* lp,
                             floating* pp, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t c, per_chunk
    if rows * cols < ew.PAR_MIN_COSTLY or rows < 2:
        forward_rows(xp, sp, dp, lp, pp, cols, 0, rows)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // cols)
    for c in prange((rows + per_chunk - 1) // per_chunk, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        forward_rows(xp, sp, dp, lp, pp, cols, c * per_chunk, min(rows, (c + 1) * per_chunk))


def forward(cnp.ndarray logits not None, cnp.ndarray sparse, cnp.ndarray dense,
            cnp.ndarray loss not None, cnp.ndarray probs not None):
    """Per-row loss and softmax; exactly one of ``sparse`` (intp) / ``dense`` is not None."""
    cdef int typenum = float_type(logits)
    if cnp.PyArray_NDIM(logits) != 2:
        raise ValueError("softmax_xent: logits must be 2-D")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(logits, 0), cols = cnp.PyArray_DIM(logits, 1)
    cdef Py_ssize_t bad
    cdef void* tp = rows_of(sparse, dense, typenum, rows, cols, &bad)
    if bad >= 0 or (rows and cols == 0):
        raise ValueError("softmax_xent: a label is out of range or the logits have no classes")
    like(loss, typenum, rows, True)
    like(probs, typenum, rows * cols, True)
    cdef void* xp = cnp.PyArray_DATA(logits)
    cdef void* lp = cnp.PyArray_DATA(loss)
    cdef void* pp = cnp.PyArray_DATA(probs)
    cdef const intp_t* sp = <const intp_t*>tp if sparse is not None else NULL
    if rows == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            forward_all(<const float*>xp, sp, <const float*>(NULL if sp != NULL else tp),
                        <float*>lp, <float*>pp, rows, cols)
    else:
        with nogil:
            forward_all(<const double*>xp, sp, <const double*>(NULL if sp != NULL else tp),
                        <double*>lp, <double*>pp, rows, cols)


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


cdef inline void backward_all(const floating* pp, const intp_t* sp, const floating* dp,
                              const floating* gp, floating* op, Py_ssize_t rows,
                              Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t c, per_chunk
    if rows * cols < ew.PAR_MIN_CHEAP or rows < 2:
        backward_rows(pp, sp, dp, gp, op, cols, 0, rows)
        return
    per_chunk = max(1, <Py_ssize_t>ew.CHUNK // cols)
    for c in prange((rows + per_chunk - 1) // per_chunk, schedule='guided',
                    num_threads=ew.nd_max_threads()):
        backward_rows(pp, sp, dp, gp, op, cols, c * per_chunk, min(rows, (c + 1) * per_chunk))


def backward(cnp.ndarray probs not None, cnp.ndarray sparse, cnp.ndarray dense,
             cnp.ndarray grad not None, cnp.ndarray out not None):
    """out = (probs - target) * grad[:, None] (dense: probs * sum(target) - target)."""
    cdef int typenum = float_type(probs)
    if cnp.PyArray_NDIM(probs) != 2:
        raise ValueError("softmax_xent: probs must be 2-D")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(probs, 0), cols = cnp.PyArray_DIM(probs, 1)
    cdef Py_ssize_t bad
    cdef void* tp = rows_of(sparse, dense, typenum, rows, cols, &bad)
    if bad >= 0 or (rows and cols == 0):
        raise ValueError("softmax_xent: a label is out of range or the logits have no classes")
    like(grad, typenum, rows, False)
    like(out, typenum, rows * cols, True)
    cdef void* pp = cnp.PyArray_DATA(probs)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* op = cnp.PyArray_DATA(out)
    cdef const intp_t* sp = <const intp_t*>tp if sparse is not None else NULL
    if rows * cols == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            backward_all(<const float*>pp, sp, <const float*>(NULL if sp != NULL else tp),
                         <const float*>gp, <float*>op, rows, cols)
    else:
        with nogil:
            backward_all(<const double*>pp, sp, <const double*>(NULL if sp != NULL else tp),
                         <const double*>gp, <double*>op, rows, cols)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
