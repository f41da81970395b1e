"""The CuPy kernel table: the GPU twin of ``kernels_numpy``, each formula in the same order
of operations, with the same checks (sparse labels cost one device synchronisation a call).

Activations, bias + activation and the losses' backward are ``cupy.ElementwiseKernel``s
from the records' device code; the softmax cross-entropy forward is one ``RawKernel``
(a block per row); an optimizer step is one elementwise kernel per combination of
options. Kernels are built on first use, cached in ``_KERNELS``, compiled per dtype.

nanodl never enables TF32: with ``CUPY_TF32=1`` float32 GEMMs drift ~1e-3 from the CPU's
and importing this module warns (``tf32_enabled()``).
"""
import os
import warnings

import numpy as np

from .activations import ELEMENTWISE, GELU_C, GELU_K, OUTPUT_GRAD_ACTIVATIONS, define_table_functions
from .cuda import require_cupy
from .table import Device, KernelTable

cupy = require_cupy()  # RuntimeError (saying what is missing) when there is no CuPy or GPU

_KERNELS = {}  # cache key -> cupy.ElementwiseKernel / cupy.RawKernel, built on first use


# ---------------------------------------------------------------- TF32
def tf32_enabled():
    """True when CuPy runs float32 GEMMs on TF32 tensor cores (only with ``CUPY_TF32=1``)."""
    try:
        linalg = cupy._core._routines_linalg  # private, but where CuPy keeps the GEMM compute type
        return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    except Exception:  # pragma: no cover - private CuPy API moved: fall back to the variable
        return os.environ.get("CUPY_TF32", "0").strip() not in ("", "0")


if os.environ.get("CUPY_TF32", "0").strip() not in ("", "0"):
    warnings.warn("CUPY_TF32 is set: CuPy will use TF32 for float32 matmuls, so nanodl's GPU "
                  "results will differ from the CPU's float32 by ~1e-3; unset it for exact float32",
                  RuntimeWarning, stacklevel=2)


# ---------------------------------------------------------------- the device
def _refuse_host(kernel, name, array):
    raise TypeError(f"{kernel}: expected CuPy arrays (on the GPU), got "
                    f"{type(array).__module__}.{type(array).__name__} for {name}; move the data "
                    "with .to('cuda')")


def _scan_labels(target, classes):
    """``(contiguous int64 labels, index of the first outside [0, classes) or -1)``."""
    labels = cupy.ascontiguousarray(target, dtype=cupy.int64)
    bad = (labels < 0) | (labels >= classes)
    return labels, int(bad.argmax()) if bool(bad.any()) else -1  # the one device synchronisation


DEVICE = Device("cuda", cupy.ndarray, _refuse_host, _scan_labels)


# ---------------------------------------------------------------- activation device code
# Device functions forward(x, alpha) and backward(saved, grad, alpha) per activation record.
_ACTIVATION_PREAMBLE = f"""
template <typename T> __device__ __forceinline__ T nanodl_stable_sigmoid(T x) {{
    const T e = exp(-fabs(x));  /* exp of a non-positive number only: no inf/inf */
    return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}}
template <typename T> __device__ __forceinline__ T nanodl_gelu_u(T x) {{
    return T({GELU_C!r}) * (x + T({GELU_K!r}) * (x * x * x));
}}
""" + "".join(
    f"template <typename T> __device__ __forceinline__ T nanodl_{a.name}_forward(T x, T alpha) {{\n"
    f"    {a.cuda_forward}\n}}\n"
    f"template <typename T> __device__ __forceinline__ T nanodl_{a.name}_backward(T s, T g, T alpha) {{\n"
    f"    {a.cuda_backward}\n}}\n"
    for a in ELEMENTWISE)


def _elementwise(key, in_params, out_params, operation, preamble=""):
    """The cached ``cupy.ElementwiseKernel`` for ``key`` (built on first use)."""
    kernel = _KERNELS.get(key)
    if kernel is None:
        name = "nanodl_" + "_".join(str(part) for part in key if part)
        kernel = _KERNELS[key] = cupy.ElementwiseKernel(in_params, out_params, operation, name,
                                                        preamble=preamble)
    return kernel


def _activation_forward_kernel(name):
    return _elementwise(("act_fwd", name), "T x, T alpha", "T y",
                        f"y = nanodl_{name}_forward(x, alpha);", _ACTIVATION_PREAMBLE)


def _activation_backward_kernel(name):
    return _elementwise(("act_bwd", name), "T saved, T grad, T alpha", "T dx",
                        f"dx = nanodl_{name}_backward(saved, grad, alpha);", _ACTIVATION_PREAMBLE)


def _forward(name, x, alpha):
    return _activation_forward_kernel(name)(x, float(alpha))


def _backward(name, saved, grad, alpha):
    return _activation_backward_kernel(name)(saved, grad, float(alpha))


define_table_functions(globals(), "name", _forward, _backward)


# ---------------------------------------------------------------- dense layer
def _bias_activation_kernel(name, keep_preactivation):
    """z = act(z + bias) in place; or, keeping z + bias for the backward, y = act(z + bias)."""
    if keep_preactivation:
        return _elementwise(("bias_act_keep", name), "T bias, T alpha", "T z, T y",
                            f"const T v = z + bias; z = v; y = nanodl_{name}_forward(v, alpha);",
                            _ACTIVATION_PREAMBLE)
    if name == "linear":
        return _elementwise(("bias_add",), "T bias, T alpha", "T z", "z = z + bias;")
    return _elementwise(("bias_act", name), "T bias, T alpha", "T z",
                        f"z = nanodl_{name}_forward(z + bias, alpha);", _ACTIVATION_PREAMBLE)


def linear_forward(x, kernel, bias, activation, alpha):
    """``act(x @ kernel + bias)`` for 2-D ``x``: cuBLAS GEMM, then one fused elementwise pass."""
    alpha = float(alpha)
    z = cupy.matmul(x, kernel)  # cuBLAS; a fresh C-contiguous (N, out) array we may overwrite
    if activation in OUTPUT_GRAD_ACTIVATIONS:
        if bias is not None:
            _bias_activation_kernel(activation, False)(bias, alpha, z)
        elif activation != "linear":
            _activation_forward_kernel(activation)(z, alpha, z)
        return z, z
    out = cupy.empty_like(z)
    if bias is not None:
        _bias_activation_kernel(activation, True)(bias, alpha, z, out)
    else:
        _activation_forward_kernel(activation)(z, alpha, out)
    return out, z


def linear_backward(x, kernel, saved, grad, activation, alpha, need_x, need_kernel, need_bias):
    """Gradients ``(dx, dkernel, dbias)`` of ``linear_forward``; unneeded ones are None."""
    if activation == "linear":
        dz = grad
    else:
        dz = _activation_backward_kernel(activation)(saved, grad, float(alpha))
    dx = cupy.matmul(dz, kernel.T) if need_x else None
    dkernel = cupy.matmul(x.T, dz) if need_kernel else None
    dbias = dz.sum(axis=0) if need_bias else None
    return dx, dkernel, dbias


# ---------------------------------------------------------------- softmax cross-entropy
_XENT_FORWARD_SOURCE = r"""
typedef %(ctype)s T;
typedef %(target_ctype)s TargetT;
#define NANODL_SPARSE %(sparse)d

/* One thread block per row; blockDim.x is a power of two. Shared memory holds one T per
   thread for the three tree reductions (max, sum of exp, and the dense loss). */
extern "C" __global__ void nanodl_softmax_xent_forward(
        const T* logits, const TargetT* target, T* loss, T* probs,
        const long long n, const long long c) {
    extern __shared__ unsigned char nanodl_shared[];
    T* partial = reinterpret_cast<T*>(nanodl_shared);
    const long long row = blockIdx.x;
    const int tid = threadIdx.x;
    const int threads = blockDim.x;
    const T* x = logits + row * c;
    T* p = probs + row * c;

    /* 1. the row's maximum (NaN-agnostic; a NaN logit still makes the row NaN below) */
    T peak = x[0];
    for (long long j = tid; j < c; j += threads) peak = x[j] > peak ? x[j] : peak;
    partial[tid] = peak;
    __syncthreads();
    for (int s = threads / 2; s > 0; s >>= 1) {
        if (tid < s && partial[tid + s] > partial[tid]) partial[tid] = partial[tid + s];
        __syncthreads();
    }
    peak = partial[0];
    __syncthreads();

    /* 2. total = sum(exp(x - peak)) */
    T total = T(0);
    for (long long j = tid; j < c; j += threads) total += exp(x[j] - peak);
    partial[tid] = total;
    __syncthreads();
    for (int s = threads / 2; s > 0; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        __syncthreads();
    }
    total = partial[0];
    __syncthreads();
    const T log_total = log(total);

    /* 3. probabilities; the loss is -log_softmax at the target (or its dot with a dense target) */
#if !NANODL_SPARSE
    T term = T(0);
#endif
    for (long long j = tid; j < c; j += threads) {
        const T shifted = x[j] - peak;
        p[j] = exp(shifted) / total;
#if !NANODL_SPARSE
        term += target[row * c + j] * (shifted - log_total);
#endif
    }
#if NANODL_SPARSE
    if (tid == 0) {
        const long long t = (long long)target[row];  /* checked to lie in [0, c) */
        loss[row] = log_total - (x[t] - peak);
    }
#else
    partial[tid] = term;
    __syncthreads();
    for (int s = threads / 2; s > 0; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        __syncthreads();
    }
    if (tid == 0) loss[row] = -partial[0];
#endif
}
"""

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _xent_forward_kernel(dtype, sparse):
    key = ("xent_fwd", dtype.name, sparse)
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = _XENT_FORWARD_SOURCE % {
            "ctype": _CTYPES[dtype], "target_ctype": "long long" if sparse else _CTYPES[dtype],
            "sparse": int(sparse)}
        kernel = _KERNELS[key] = cupy.RawKernel(source, "nanodl_softmax_xent_forward")
    return kernel


def _target(target):
    """The target as a contiguous CuPy array, and whether it holds sparse labels."""
    if target.ndim == 1:
        return cupy.ascontiguousarray(target, dtype=cupy.int64), True
    return cupy.ascontiguousarray(target), False


def softmax_xent_forward(logits, target):
    """Per-sample ``-sum(target * log_softmax(logits))`` for 2-D logits; ``(loss, probs)``."""
    dtype = logits.dtype
    target, sparse = _target(target)
    n, c = logits.shape
    loss = cupy.empty((n,), dtype=dtype)
    probs = cupy.empty((n, c), dtype=dtype)
    if n == 0:
        return loss, probs
    threads = min(256, max(32, 1 << (c - 1).bit_length()))  # a power of two, 32 (a warp) to 256
    _xent_forward_kernel(dtype, sparse)(
        (n,), (threads,), (cupy.ascontiguousarray(logits), target, loss, probs,
                           np.int64(n), np.int64(c)),
        shared_mem=threads * dtype.itemsize)
    return loss, probs


def softmax_xent_backward(probs, target, grad):
    """Gradient w.r.t. the logits, given the per-sample upstream ``grad`` (N,)."""
    target, sparse = _target(target)
    if sparse:
        kernel = _elementwise(
            ("xent_bwd_sparse",), "T probs, raw int64 target, raw T grad, int64 classes", "T dlogits",
            """
            const long long row = i / classes;
            const long long t = target[row];
            dlogits = (probs - ((long long)i - row * classes == t ? T(1) : T(0))) * grad[row];
            """)
        return kernel(cupy.ascontiguousarray(probs), target, cupy.ascontiguousarray(grad),
                      probs.shape[1])
    kernel = _elementwise(("xent_bwd_dense",), "T probs, T target, T target_sum, T grad", "T dlogits",
                          "dlogits = (probs * target_sum - target) * grad;")
    return kernel(probs, target, target.sum(axis=1, keepdims=True), grad[:, None])


# ---------------------------------------------------------------- optimizer updates
def sgd_step(param, grad, momentum_buf, lr, momentum, nesterov, weight_decay):
    use_momentum, use_decay = bool(momentum), bool(weight_decay)
    states = (momentum_buf,) if use_momentum else ()
    body = ["T d = grad;"]
    if use_decay:
        body.append("d = d + weight_decay * param;")
    if use_momentum:
        body.append("buf = buf * momentum + d;")
        body.append("d = d + momentum * buf;" if nesterov else "d = buf;")
    body.append("param = param - lr * d;")
    key = ("sgd_step", "decay" if use_decay else "", "momentum" if use_momentum else "",
           "nesterov" if use_momentum and nesterov else "")
    kernel = _elementwise(key, "T grad, T lr, T momentum, T weight_decay",
                          "T param, T buf" if use_momentum else "T param", "\n".join(body))
    kernel(grad, float(lr), float(momentum), float(weight_decay), param, *states)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
              weight_decay, decoupled, amsgrad):
    use_decay = bool(weight_decay)
    states = [exp_avg, exp_avg_sq, max_exp_avg_sq] if amsgrad else [exp_avg, exp_avg_sq]
    body = ["T d = grad;"]
    if use_decay:
        body.append("param = param * decay;" if decoupled else "d = d + weight_decay * param;")
    body += ["m = m * beta1 + one_minus_beta1 * d;",
             "v = v * beta2 + one_minus_beta2 * d * d;"]
    if amsgrad:
        body.append("v_max = (v > v_max || v != v) ? v : v_max;")
    body += [f"const T denom = sqrt({'v_max' if amsgrad else 'v'}) / bias_correction2_sqrt + eps;",
             "param = param - step_size * m / denom;"]
    key = ("adam_step", ("decoupled" if decoupled else "l2") if use_decay else "",
           "amsgrad" if amsgrad else "")
    kernel = _elementwise(
        key, "T grad, T decay, T weight_decay, T beta1, T one_minus_beta1, T beta2, "
             "T one_minus_beta2, T bias_correction2_sqrt, T eps, T step_size",
        "T param, T m, T v, T v_max" if amsgrad else "T param, T m, T v", "\n".join(body))
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    kernel(grad, float(1 - lr * weight_decay), float(weight_decay), float(beta1),
           float(1 - beta1), float(beta2), float(1 - beta2), float(bias_correction2_sqrt),
           float(eps), float(lr / bias_correction1), param, *states)


def adagrad_step(param, grad, state_sum, lr, eps, weight_decay):
    use_decay = bool(weight_decay)
    body = ["T d = grad;"]
    if use_decay:
        body.append("d = d + weight_decay * param;")
    body += ["total = total + d * d;", "param = param - lr * d / (sqrt(total) + eps);"]
    kernel = _elementwise(("adagrad_step", "decay" if use_decay else ""),
                          "T grad, T lr, T eps, T weight_decay", "T param, T total", "\n".join(body))
    kernel(grad, float(lr), float(eps), float(weight_decay), param, state_sum)


def rmsprop_step(param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps, weight_decay,
                 momentum, centered):
    use_decay, use_momentum = bool(weight_decay), bool(momentum)
    outputs, states = ["T param", "T square_avg"], [square_avg]
    if use_momentum:
        outputs.append("T buf")
        states.append(momentum_buf)
    if centered:
        outputs.append("T grad_avg")
        states.append(grad_avg)
    body = ["T d = grad;"]
    if use_decay:
        body.append("d = d + weight_decay * param;")
    body.append("square_avg = square_avg * alpha + one_minus_alpha * d * d;")
    if centered:
        body += ["grad_avg = grad_avg * alpha + one_minus_alpha * d;",
                 "const T avg = sqrt(square_avg - grad_avg * grad_avg) + eps;"]
    else:
        body.append("const T avg = sqrt(square_avg) + eps;")
    if use_momentum:
        body += ["buf = buf * momentum + d / avg;", "param = param - lr * buf;"]
    else:
        body.append("param = param - lr * d / avg;")
    key = ("rmsprop_step", "decay" if use_decay else "", "momentum" if use_momentum else "",
           "centered" if centered else "")
    kernel = _elementwise(key, "T grad, T lr, T alpha, T one_minus_alpha, T eps, T weight_decay, "
                               "T momentum", ", ".join(outputs), "\n".join(body))
    kernel(grad, float(lr), float(alpha), float(1 - alpha), float(eps),
           float(weight_decay), float(momentum), param, *states)


TABLE = KernelTable("cupy", globals(), DEVICE)
