# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Optimizer updates, in place, one pass over memory per parameter.

Each loop reads param, grad and the state once and writes param and the state
once; the formulas, and their order of operations, are those of
``kernels_numpy`` (PyTorch's). Scalars arrive as Python floats (already combined by
the wrapper where NumPy combines them in double, e.g. ``lr / bias_correction1``) and
are cast to the array dtype, as NumPy does with a Python scalar. The option flags
are loop-invariant, so GCC unswitches them out of the vectorized loops.
Unused state arrays are passed as ``param`` and never touched.
"""
from cython cimport floating
from cython.parallel cimport prange
cimport elementwise as ew


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


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] buf, double lr,
             double momentum, bint nesterov, double weight_decay):
    cdef Py_ssize_t n = param.shape[0], c
    cdef floating* pp = &param[0]
    cdef const floating* gp = &grad[0]
    cdef floating* bp = &buf[0]
    cdef floating lr_ = <floating>lr, mom = <floating>momentum, wd = <floating>weight_decay
    cdef bint use_wd = weight_decay != 0, use_mom = momentum != 0
    for c in prange(ew.chunks(n), nogil=True, schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        sgd_range(pp, gp, bp, lr_, mom, wd, use_wd, use_mom, nesterov, c * ew.CHUNK,
                  min(n, (c + 1) * ew.CHUNK))


cdef inline void adam_range(floating* param, const floating* grad, floating* exp_avg,
                            floating* exp_avg_sq, floating* max_sq, floating step_size,
                            floating bc2_sqrt, floating beta1, floating beta2,
                            floating one_minus_beta1, floating one_minus_beta2, floating eps,
                            floating wd, floating decay, bint use_wd, bint decoupled,
                            bint amsgrad, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating p, g, m, v, second
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
            second = v if v > max_sq[i] else max_sq[i]
            max_sq[i] = second
        param[i] = p - step_size * m / (ew.f_sqrt(second) / bc2_sqrt + eps)


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq, double step_size,
              double bc2_sqrt, double beta1, double beta2, double eps, double weight_decay,
              double decay, bint decoupled, bint amsgrad):
    """step_size = lr / (1 - beta1**step); bc2_sqrt = sqrt(1 - beta2**step);
    decay = 1 - lr * weight_decay (AdamW); 1 - beta is taken in double, as NumPy does."""
    cdef Py_ssize_t n = param.shape[0], c
    cdef floating* pp = &param[0]
    cdef const floating* gp = &grad[0]
    cdef floating* mp = &exp_avg[0]
    cdef floating* vp = &exp_avg_sq[0]
    cdef floating* xp = &max_exp_avg_sq[0]
    cdef floating s = <floating>step_size, b2 = <floating>bc2_sqrt, b1_ = <floating>beta1
    cdef floating b2_ = <floating>beta2, e = <floating>eps, wd = <floating>weight_decay
    cdef floating dec = <floating>decay
    cdef floating omb1 = <floating>(1 - beta1), omb2 = <floating>(1 - beta2)
    cdef bint use_wd = weight_decay != 0
    for c in prange(ew.chunks(n), nogil=True, schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        adam_range(pp, gp, mp, vp, xp, s, b2, b1_, b2_, omb1, omb2, e, wd, dec, use_wd,
                   decoupled, amsgrad, c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


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


def adagrad_step(floating[::1] param, const floating[::1] grad, floating[::1] state_sum,
                 double lr, double eps, double weight_decay):
    cdef Py_ssize_t n = param.shape[0], c
    cdef floating* pp = &param[0]
    cdef const floating* gp = &grad[0]
    cdef floating* sp = &state_sum[0]
    cdef floating lr_ = <floating>lr, e = <floating>eps, wd = <floating>weight_decay
    cdef bint use_wd = weight_decay != 0
    for c in prange(ew.chunks(n), nogil=True, schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        adagrad_range(pp, gp, sp, lr_, e, wd, use_wd, c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


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


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                 floating[::1] momentum_buf, floating[::1] grad_avg, double lr, double alpha,
                 double eps, double weight_decay, double momentum, bint centered):
    cdef Py_ssize_t n = param.shape[0], c
    cdef floating* pp = &param[0]
    cdef const floating* gp = &grad[0]
    cdef floating* sp = &square_avg[0]
    cdef floating* bp = &momentum_buf[0]
    cdef floating* ap = &grad_avg[0]
    cdef floating lr_ = <floating>lr, al = <floating>alpha, e = <floating>eps
    cdef floating wd = <floating>weight_decay, mom = <floating>momentum
    cdef floating oma = <floating>(1 - alpha)
    cdef bint use_wd = weight_decay != 0, use_mom = momentum != 0
    for c in prange(ew.chunks(n), nogil=True, schedule='guided',
                    num_threads=ew.team(n, ew.PAR_MIN_UPDATE)):
        rmsprop_range(pp, gp, sp, bp, ap, lr_, al, oma, e, wd, mom, use_wd, use_mom, centered,
                      c * ew.CHUNK, min(n, (c + 1) * ew.CHUNK))


def set_thread_cap(int threads):
    """At most ``threads`` OpenMP threads per kernel of this module (0: no cap).

    Set by ``nanodl.backend.threads`` (see the cap in ``elementwise.pxd``)."""
    ew.nd_thread_cap = threads


def kernel_threads():
    """The most OpenMP threads a kernel of this module uses now (after the cap)."""
    return ew.nd_max_threads()
