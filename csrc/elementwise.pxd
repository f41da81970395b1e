# cython: language_level=3
"""Scalar math and the elementwise drivers shared by the kernel modules.

Everything here is ``inline`` and fused over float/double, so each .pyx that
cimports it gets its own specialised copy; the loops take raw pointers that the
kernel table (``nanodl/backend/table.py``, then ``kernels_native.py``) has already
checked for dtype, shape and contiguity, and ``arrays.pxd`` guards again.

Float32 uses the vectorizable polynomials of ``nd_math.h``; float64 calls libm.
Constants are typed ``floating`` (a local ``one``, casts) so float32 kernels compute in
float32 like the NumPy twin: Cython writes a bare ``1`` next to a float as the C
double ``1.0``, which would promote the expression to double (and halve the SIMD width).

Parallel thresholds (``PAR_MIN_*``, in elements), measured on the 2-core dev machine
(AMD EPYC, AVX-512, gcc 12, libgomp), float32, preallocated arrays, median of 400
calls: the same kernels built with the threshold at 0, run with OMP_NUM_THREADS=1
(serial) and 2:

    elements   relu fwd    relu bwd    adam        tanh fwd    gelu fwd     (us, 1 / 2 threads)
      4 096    1.5 / 2.7   1.8 / 2.9   3.2 / 4.6   3.5 / 4.7   4.2 / 5.4
      8 192    1.8 / 3.0   2.2 / 3.1   4.7 / 5.7   5.9 / 5.0   7.4 / 5.7
     16 384    2.4 / 3.3   3.1 / 3.7   8.3 / 7.8  10.5 / 7.2  13.5 / 8.6
     32 768    3.7 / 4.0   5.5 / 4.8  15.4 / 10.3 19.9 / 11.9 25.6 / 14.8
     65 536    6.1 / 5.2   9.5 / 7.2  29.4 / 18.3 38.7 / 21.5 50.3 / 27.2

Opening a parallel region costs ~1.3 us (and more on a busy machine), so a second
thread pays once the serial loop takes ~4-5 us: ~32K elements for the memory-bound
passes (relu, leaky_relu, backward passes from y), ~16K for the optimizer updates
(4-5 streams and a sqrt/divide per element), ~8K for kernels that evaluate exp or
tanh per element.

Those numbers are for kernels run back to back. Inside a training step each
kernel follows a BLAS call whose threads are still spinning on both cores, and the
OpenMP threads have gone to sleep (nanodl sets a short spin, see
nanodl/backend/__init__.py), so a parallel region costs far more: SGD on the 100K
weights of a 784-128 layer took 195 us with two threads and 45 us with one. The
thresholds below are therefore set from whole training steps (bench_mlp configs,
A/B builds, median of 5): raising them 2-8x made the small (784-128-10) step 15-20%
faster and left the medium (784-512-512-10) one unchanged; raising them 16-32x
made medium 20% slower (its 400K-weight Adam updates need both cores).
"""
from libc.math cimport exp, expm1, tanh, log1p, fabs, fabsf, sqrt, sqrtf
from cython cimport floating
from cython.parallel cimport prange

cdef extern from "nd_math.h" nogil:
    float nd_expf(float x)
    float nd_expm1f(float x)
    float nd_tanhf(float x)
    float nd_log1pf_unit(float x)

# nd_thread_cap: at most this many OpenMP threads per kernel (0: no cap). Each extension
# module has its own copy, set through its set_thread_cap() by nanodl.backend.threads
# (1 when the process's libgomp was loaded before nanodl and spins long after each
# parallel region, which would steal the cores the next BLAS call needs).
cdef extern from *:
    """
    static int nd_thread_cap = 0;
    #ifdef _OPENMP
    #include <omp.h>
    static int nd_max_threads(void) {
        int n = omp_get_max_threads();
        return (nd_thread_cap > 0 && nd_thread_cap < n) ? nd_thread_cap : n;
    }
    #else
    static int nd_max_threads(void) { return 1; }
    #endif
    """
    int nd_max_threads() noexcept nogil
    int nd_thread_cap

cdef enum:
    PAR_MIN_CHEAP = 65536     # elements; see the module docstring
    PAR_MIN_UPDATE = 131072
    PAR_MIN_COSTLY = 32768
    CHUNK = 4096              # elements per prange iteration

# Activation codes: each is its record's ``code`` (nanodl/backend/activations.py);
# tests/test_kernels.py::test_c_enum_order_is_the_records_order ties them together.
cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_LEAKY_RELU = 2
    ACT_SIGMOID = 3
    ACT_TANH = 4
    ACT_GELU = 5
    ACT_ELU = 6
    ACT_SOFTPLUS = 7


# ---------------------------------------------------------------- scalar math
cdef inline floating f_abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)

cdef inline floating f_sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)

cdef inline floating f_exp(floating x) noexcept nogil:
    if floating is float:
        return nd_expf(x)
    else:
        return exp(x)

cdef inline floating f_expm1(floating x) noexcept nogil:
    if floating is float:
        return nd_expm1f(x)
    else:
        return expm1(x)

cdef inline floating f_tanh(floating x) noexcept nogil:
    if floating is float:
        return nd_tanhf(x)
    else:
        return tanh(x)

cdef inline floating f_log1p_unit(floating e) noexcept nogil:
    """log1p(e) for 0 <= e <= 1."""
    if floating is float:
        return nd_log1pf_unit(e)
    else:
        return log1p(e)


# ---------------------------------------------------------------- activations
# Forward takes x; backward takes (saved, grad) where saved is the output y for
# relu/sigmoid/tanh and the input x for the others (as in kernels_numpy).
# `0 if x < 0 else x` is np.maximum(x, 0): NaN propagates.
cdef inline floating relu_fwd(floating x) noexcept nogil:
    return 0 if x < 0 else x

cdef inline floating relu_bwd(floating y, floating g) noexcept nogil:
    return g * <floating>(y > 0)

cdef inline floating leaky_relu_fwd(floating x, floating alpha) noexcept nogil:
    return x if x > 0 else x * alpha

cdef inline floating leaky_relu_bwd(floating x, floating g, floating alpha) noexcept nogil:
    return g if x > 0 else g * alpha

cdef inline floating sigmoid_fwd(floating x) noexcept nogil:
    # exp of a non-positive number only: |x| = 1e4 gives exactly 0 or 1.
    cdef floating one = 1
    cdef floating e = f_exp(-f_abs(x))
    cdef floating r = one / (one + e)
    return r if x >= 0 else e * r

cdef inline floating sigmoid_bwd(floating y, floating g) noexcept nogil:
    cdef floating one = 1
    return g * y * (one - y)

cdef inline floating tanh_bwd(floating y, floating g) noexcept nogil:
    cdef floating one = 1
    return g * (one - y * y)

# GELU through the identity 0.5 (1 + tanh(u)) = sigmoid(2u), u = c (x + k x^3): one
# exp instead of a tanh, and no cancellation in 1 + tanh(u) for negative x (the plain
# formula loses all relative accuracy there; the NumPy twin uses this form too).
# With e = exp(-2|u|) <= 1, s = sigmoid(2u) and 1 - s are both formed without
# subtraction, and 1 - tanh(u)^2 = 4 s (1 - s).
cdef inline floating gelu_fwd(floating x) noexcept nogil:
    cdef floating one = 1, minus_two = -2
    cdef floating u = <floating>0.7978845608028654 * (x + <floating>0.044715 * (x * x * x))
    cdef floating e = f_exp(minus_two * f_abs(u))
    cdef floating r = one / (one + e)
    return x * (r if u >= 0 else e * r)

cdef inline floating gelu_bwd(floating x, floating g) noexcept nogil:
    cdef floating one = 1, minus_two = -2
    cdef floating u = <floating>0.7978845608028654 * (x + <floating>0.044715 * (x * x * x))
    cdef floating e = f_exp(minus_two * f_abs(u))
    cdef floating r = one / (one + e)
    cdef floating s = r if u >= 0 else e * r           # sigmoid(2u) = 0.5 (1 + tanh u)
    cdef floating s_rest = e * r if u >= 0 else r      # 1 - s
    cdef floating du = <floating>(2 * 0.7978845608028654) * (one + <floating>(3 * 0.044715) * x * x)
    return g * (s + du * x * s * s_rest)

cdef inline floating elu_fwd(floating x, floating alpha) noexcept nogil:
    cdef floating neg = 0 if x > 0 else x        # min(x, 0), NaN kept
    return x if x > 0 else alpha * f_expm1(neg)

cdef inline floating elu_bwd(floating x, floating g, floating alpha) noexcept nogil:
    cdef floating neg = 0 if x > 0 else x
    return g if x > 0 else g * alpha * f_exp(neg)

cdef inline floating softplus_fwd(floating x) noexcept nogil:
    # max(x, 0) + log1p(e^-|x|): no overflow at |x| = 1e4.
    return (0 if x < 0 else x) + f_log1p_unit(f_exp(-f_abs(x)))

cdef inline floating softplus_bwd(floating x, floating g) noexcept nogil:
    return g * sigmoid_fwd(x)


# ---------------------------------------------------------------- drivers
# One `if` per call picks the loop; each loop body is a single scalar function,
# which GCC vectorizes (see nd_math.h).
cdef inline void forward_range(int act, const floating* x, floating* out,
                               Py_ssize_t lo, Py_ssize_t hi, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if act == ACT_LINEAR:
        for i in range(lo, hi):
            out[i] = x[i]
    elif act == ACT_RELU:
        for i in range(lo, hi):
            out[i] = relu_fwd(x[i])
    elif act == ACT_LEAKY_RELU:
        for i in range(lo, hi):
            out[i] = leaky_relu_fwd(x[i], alpha)
    elif act == ACT_SIGMOID:
        for i in range(lo, hi):
            out[i] = sigmoid_fwd(x[i])
    elif act == ACT_TANH:
        for i in range(lo, hi):
            out[i] = f_tanh(x[i])
    elif act == ACT_GELU:
        for i in range(lo, hi):
            out[i] = gelu_fwd(x[i])
    elif act == ACT_ELU:
        for i in range(lo, hi):
            out[i] = elu_fwd(x[i], alpha)
    elif act == ACT_SOFTPLUS:
        for i in range(lo, hi):
            out[i] = softplus_fwd(x[i])


cdef inline void backward_range(int act, const floating* saved, const floating* g, floating* out,
                                Py_ssize_t lo, Py_ssize_t hi, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if act == ACT_LINEAR:
        for i in range(lo, hi):
            out[i] = g[i]
    elif act == ACT_RELU:
        for i in range(lo, hi):
            out[i] = relu_bwd(saved[i], g[i])
    elif act == ACT_LEAKY_RELU:
        for i in range(lo, hi):
            out[i] = leaky_relu_bwd(saved[i], g[i], alpha)
    elif act == ACT_SIGMOID:
        for i in range(lo, hi):
            out[i] = sigmoid_bwd(saved[i], g[i])
    elif act == ACT_TANH:
        for i in range(lo, hi):
            out[i] = tanh_bwd(saved[i], g[i])
    elif act == ACT_GELU:
        for i in range(lo, hi):
            out[i] = gelu_bwd(saved[i], g[i])
    elif act == ACT_ELU:
        for i in range(lo, hi):
            out[i] = elu_bwd(saved[i], g[i], alpha)
    elif act == ACT_SOFTPLUS:
        for i in range(lo, hi):
            out[i] = softplus_bwd(saved[i], g[i])


cdef inline int team(Py_ssize_t n, Py_ssize_t threshold) noexcept nogil:
    """Threads for a prange over n elements: one below ``threshold``, else all.

    A one-thread prange instead of a plain loop on purpose: GCC compiled the same
    inlined optimizer loop 4-7x slower outside an OpenMP region than inside one
    (SGD with momentum 0.81 vs 0.19 ns/element, Adam 3.3 vs 0.45, float32, 100K).
    """
    return 1 if n < threshold else nd_max_threads()


cdef inline Py_ssize_t chunks(Py_ssize_t n) noexcept nogil:
    """Number of CHUNK-element pieces covering n elements.

    The parallel loops hand them out with schedule='guided': big contiguous blocks
    first (each thread first-touches its own huge pages of a fresh output), then
    smaller ones, so on a shared machine a thread that loses its core delays a few
    chunks, not half the array. Measured, 16M float32 on 2 threads, median ms:

        schedule   relu, fresh out   tanh, fresh out   relu, preallocated   adam
        static          6.3-7.7          8.8-10.7           3.7-4.1        10.6-11.6
        dynamic         8.2-10.7        11.9-12.7           4.6-4.8        11.4-11.7
        guided          6.0-9.0          8.8-9.0            3.7-3.8        10.4-10.5
    """
    return (n + CHUNK - 1) // CHUNK


cdef inline Py_ssize_t par_min_forward(int act) noexcept nogil:
    if act == ACT_LINEAR or act == ACT_RELU or act == ACT_LEAKY_RELU:
        return PAR_MIN_CHEAP
    return PAR_MIN_COSTLY


cdef inline Py_ssize_t par_min_backward(int act) noexcept nogil:
    if act == ACT_GELU or act == ACT_ELU or act == ACT_SOFTPLUS:
        return PAR_MIN_COSTLY
    return PAR_MIN_CHEAP


cdef inline void forward(int act, const floating* x, floating* out, Py_ssize_t n,
                         floating alpha) noexcept nogil:
    """out[i] = act(x[i]) for i < n; out may be x."""
    cdef Py_ssize_t c
    if n < par_min_forward(act):
        forward_range(act, x, out, 0, n, alpha)
        return
    for c in prange(chunks(n), schedule='guided', num_threads=nd_max_threads()):
        forward_range(act, x, out, c * CHUNK, min(n, (c + 1) * CHUNK), alpha)


cdef inline void backward(int act, const floating* saved, const floating* g, floating* out,
                          Py_ssize_t n, floating alpha) noexcept nogil:
    """out[i] = g[i] * act'(saved[i]) for i < n; out may be g."""
    cdef Py_ssize_t c
    if n < par_min_backward(act):
        backward_range(act, saved, g, out, 0, n, alpha)
        return
    for c in prange(chunks(n), schedule='guided', num_threads=nd_max_threads()):
        backward_range(act, saved, g, out, c * CHUNK, min(n, (c + 1) * CHUNK), alpha)
