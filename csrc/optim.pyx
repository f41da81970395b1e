# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Optimizer updates, in place, one pass over memory per parameter.

Each loop reads param, grad and the state once and writes param and the state
once; the formulas, and their order of operations, are those of
``kernels_numpy`` (PyTorch's). Scalars arrive as Python floats (already combined by
the wrapper where NumPy combines them in double, e.g. ``lr / bias_correction1``) and
are cast to the array dtype, as NumPy does with a Python scalar. The option flags
are loop-invariant, so GCC unswitches them out of the vectorized loops.
Unused state arrays are passed as ``param`` and never touched. The arrays may have
any shape (they are C-contiguous, so their data is one flat run of elements).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
cimport elementwise as ew
from arrays cimport float_type, like

cnp.import_array()


cdef inline int operands(cnp.ndarray param, cnp.ndarray grad, states) except -1:
    """param's dtype (writeable, C order); grad and every state array shaped like it."""
    cdef int typenum = float_type(param)
    cdef cnp.npy_intp n = cnp.PyArray_SIZE(param)
    like(param, typenum, n, True)
    like(grad, typenum, n, False)
    for state in states:
        like(state, typenum, n, True)
    return typenum


cdef inline void sgd_range(floating* param, const floating* grad, floating* buf, floating lr,
                           floating mom, floating wd, bint use_wd, bint use_mom, bint nesterov,
                           Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, b
    for i in range(lo, hi):
        g = grad[i]
        if use_wd:
            g = g + wd * param[i]
        if use_mom:
            b = buf[i] * mom + g
            buf[i] = b
            g = g + mom * b if nesterov else b
        param[i] = param[i] - lr * g


cdef inline void sgd_all(floating* pp, const floating* gp, floating* bp, Py_ssize_t n,
                         floating lr_, floating mom, floating wd, bint use_wd, bint use_mom,
                         bint nesterov) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(ew.chunks(n), schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        sgd_range(pp, gp, bp, lr_, mom, wd, use_wd, use_mom, nesterov, c * ew.CHUNK,
                  min(n, (c + 1) * ew.CHUNK))


def sgd_step(cnp.ndarray param not None, cnp.ndarray grad not None, cnp.ndarray buf not None,
             double lr, double momentum, bint nesterov, double weight_decay):
    cdef int typenum = operands(param, grad, (buf,))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef void* pp = cnp.PyArray_DATA(param)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* bp = cnp.PyArray_DATA(buf)
    cdef bint use_wd = weight_decay != 0, use_mom = momentum != 0
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            sgd_all(<float*>pp, <const float*>gp, <float*>bp, n, <float>lr, <float>momentum,
                    <float>weight_decay, use_wd, use_mom, nesterov)
    else:
        with nogil:
            sgd_all(<double*>pp, <const double*>gp, <double*>bp, n, lr, momentum, weight_decay,
                    use_wd, use_mom, nesterov)


cdef inline void adam_range(floating* param, const floating* grad, floating* exp_avg,
                            floating* exp_avg_sq, floating* max_sq, floating step_size,
                            floating bc2_sqrt, floating beta1, floating beta2,
                            floating one_minus_beta1, floating one_minus_beta2, floating eps,
                            floating wd, floating decay, bint use_wd, bint decoupled,
                            bint amsgrad, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating p, g, m, v, second
    cdef bint take_v
    for i in range(lo, hi):
        p = param[i]
        g = grad[i]
        if use_wd:
            if decoupled:
                p = p * decay
            else:
                g = g + wd * p
        m = exp_avg[i] * beta1 + one_minus_beta1 * g
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        second = v
        if amsgrad:
            take_v = (v > max_sq[i]) | (v != v)  # NaN propagates, as np.maximum (no branch)
            second = v if take_v else max_sq[i]
            max_sq[i] = second
        param[i] = p - step_size * m / (ew.f_sqrt(second) / bc2_sqrt + eps)


cdef inline void adam_all(floating* pp, const floating* gp, floating* mp, floating* vp,
                          floating* xp, Py_ssize_t n, floating s, floating b2, floating b1_,
                          floating b2_, floating omb1, floating omb2, floating e, floating wd,
                          floating dec, bint use_wd, bint decoupled, bint amsgrad) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(ew.chunks(n), schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        adam_range(pp, gp, mp, vp, xp, s, b2, b1_, b2_, omb1, omb2, e, wd, dec, use_wd,
                   decoupled, amsgrad, c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


def adam_step(cnp.ndarray param not None, cnp.ndarray grad not None, cnp.ndarray exp_avg not None,
              cnp.ndarray exp_avg_sq not None, cnp.ndarray max_exp_avg_sq not None,
              double step_size, double bc2_sqrt, double beta1, double beta2, double eps,
              double weight_decay, double decay, bint decoupled, bint amsgrad):
    """step_size = lr / (1 - beta1**step); bc2_sqrt = sqrt(1 - beta2**step);
    decay = 1 - lr * weight_decay (AdamW); 1 - beta is taken in double, as NumPy does."""
    cdef int typenum = operands(param, grad, (exp_avg, exp_avg_sq, max_exp_avg_sq))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef void* pp = cnp.PyArray_DATA(param)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* mp = cnp.PyArray_DATA(exp_avg)
    cdef void* vp = cnp.PyArray_DATA(exp_avg_sq)
    cdef void* xp = cnp.PyArray_DATA(max_exp_avg_sq)
    cdef bint use_wd = weight_decay != 0
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            adam_all(<float*>pp, <const float*>gp, <float*>mp, <float*>vp, <float*>xp, n,
                     <float>step_size, <float>bc2_sqrt, <float>beta1, <float>beta2,
                     <float>(1 - beta1), <float>(1 - beta2), <float>eps, <float>weight_decay,
                     <float>decay, use_wd, decoupled, amsgrad)
    else:
        with nogil:
            adam_all(<double*>pp, <const double*>gp, <double*>mp, <double*>vp, <double*>xp, n,
                     step_size, bc2_sqrt, beta1, beta2, 1 - beta1, 1 - beta2, eps, weight_decay,
                     decay, use_wd, decoupled, amsgrad)


cdef inline void adagrad_range(floating* param, const floating* grad, floating* state_sum,
                               floating lr, floating eps, floating wd, bint use_wd,
                               Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, s
    for i in range(lo, hi):
        g = grad[i]
        if use_wd:
            g = g + wd * param[i]
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] = param[i] - lr * g / (ew.f_sqrt(s) + eps)


cdef inline void adagrad_all(floating* pp, const floating* gp, floating* sp, Py_ssize_t n,
                             floating lr_, floating e, floating wd, bint use_wd) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(ew.chunks(n), schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        adagrad_range(pp, gp, sp, lr_, e, wd, use_wd, c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


def adagrad_step(cnp.ndarray param not None, cnp.ndarray grad not None,
                 cnp.ndarray state_sum not None, double lr, double eps, double weight_decay):
    cdef int typenum = operands(param, grad, (state_sum,))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef void* pp = cnp.PyArray_DATA(param)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* sp = cnp.PyArray_DATA(state_sum)
    cdef bint use_wd = weight_decay != 0
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            adagrad_all(<float*>pp, <const float*>gp, <float*>sp, n, <float>lr, <float>eps,
                        <float>weight_decay, use_wd)
    else:
        with nogil:
            adagrad_all(<double*>pp, <const double*>gp, <double*>sp, n, lr, eps, weight_decay,
                        use_wd)


cdef inline void rmsprop_range(floating* param, const floating* grad, floating* square_avg,
                               floating* buf, floating* grad_avg, floating lr, floating alpha,
                               floating one_minus_alpha, floating eps, floating wd,
                               floating mom, bint use_wd, bint use_mom, bint centered,
                               Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, sq, ga, avg, b
    for i in range(lo, hi):
        g = grad[i]
        if use_wd:
            g = g + wd * param[i]
        sq = square_avg[i] * alpha + one_minus_alpha * g * g
        square_avg[i] = sq
        if centered:
            ga = grad_avg[i] * alpha + one_minus_alpha * g
            grad_avg[i] = ga
            avg = ew.f_sqrt(sq - ga * ga) + eps
        else:
            avg = ew.f_sqrt(sq) + eps
        if use_mom:
            b = buf[i] * mom + g / avg
            buf[i] = b
            param[i] = param[i] - lr * b
        else:
            param[i] = param[i] - lr * g / avg


cdef inline void rmsprop_all(floating* pp, const floating* gp, floating* sp, floating* bp,
                             floating* ap, Py_ssize_t n, floating lr_, floating al, floating oma,
                             floating e, floating wd, floating mom, bint use_wd, bint use_mom,
                             bint centered) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(ew.chunks(n), schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        rmsprop_range(pp, gp, sp, bp, ap, lr_, al, oma, e, wd, mom, use_wd, use_mom, centered,
                      c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


def rmsprop_step(cnp.ndarray param not None, cnp.ndarray grad not None,
                 cnp.ndarray square_avg not None, cnp.ndarray momentum_buf not None,
                 cnp.ndarray grad_avg not None, double lr, double alpha, double eps,
                 double weight_decay, double momentum, bint centered):
    cdef int typenum = operands(param, grad, (square_avg, momentum_buf, grad_avg))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    cdef void* pp = cnp.PyArray_DATA(param)
    cdef void* gp = cnp.PyArray_DATA(grad)
    cdef void* sp = cnp.PyArray_DATA(square_avg)
    cdef void* bp = cnp.PyArray_DATA(momentum_buf)
    cdef void* ap = cnp.PyArray_DATA(grad_avg)
    cdef bint use_wd = weight_decay != 0, use_mom = momentum != 0
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rmsprop_all(<float*>pp, <const float*>gp, <float*>sp, <float*>bp, <float*>ap, n,
                        <float>lr, <float>alpha, <float>(1 - alpha), <float>eps,
                        <float>weight_decay, <float>momentum, use_wd, use_mom, centered)
    else:
        with nogil:
            rmsprop_all(<double*>pp, <const double*>gp, <double*>sp, <double*>bp, <double*>ap, n,
                        lr, alpha, 1 - alpha, eps, weight_decay, momentum, use_wd, use_mom,
                        centered)


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
