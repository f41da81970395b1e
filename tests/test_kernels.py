"""The native kernel table against its NumPy twin, kernel by kernel.

Every name in ``kernels_numpy.NAMES`` runs on both tables with the same inputs:
hypothesis draws the shapes (batch 1, odd sizes, empty arrays), the dtype, the
options and the memory layout (C order, Fortran order, strided views); results must
agree to float32 rounding (rtol 1e-5, float64: 1e-12, with an absolute floor scaled
by the result's magnitude). Bad input must raise the documented exception, naming
the kernel.
"""
import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanodl.backend import kernels_native, kernels_numpy

pytestmark = pytest.mark.skipif(kernels_native is None,
                                reason="native kernels not built (pip install -e .)")

NAMES = kernels_numpy.NAMES
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus")
OUTPUT_SAVED = ("relu", "sigmoid", "tanh")  # backward takes the forward output y
WITH_ALPHA = ("leaky_relu", "elu")
OPTIMIZERS = ("sgd_step", "adam_step", "adagrad_step", "rmsprop_step")
SINGLE_INPUT = tuple(f"{act}_forward" for act in ACTIVATIONS)
LABEL_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64)
ALPHA = 0.2


# ---------------------------------------------------------------- inputs
def strided(a):
    """A non-contiguous view holding ``a``'s values (every other element of the last axis)."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    view = big[..., 1::2]
    view[...] = a
    return view


def fortran(a):
    return np.asfortranarray(a) if a.ndim >= 2 else a  # asfortranarray makes 0-d 1-d


LAYOUTS = {"C": lambda a: a, "F": fortran, "strided": strided}


def build(name, rng, dims, dtype, opts):
    """``(args, kwargs, mutated)`` for one call of kernel ``name``.

    ``dims``: three small sizes (N, K, M / N, C / an elementwise shape);
    ``opts``: the options hypothesis drew; ``mutated``: positions of in-place arrays.
    """
    def randn(*shape, scale=3.0):
        return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)  # 0-d: an array

    n, k, m = dims
    act = name.rsplit("_", 1)[0]
    if act in ACTIVATIONS:
        shape = dims[:opts["ndim"]]
        x = randn(*shape)
        extra = [ALPHA] if act in WITH_ALPHA else []
        if name.endswith("_forward"):
            return [x] + extra, {}, ()
        saved = getattr(kernels_numpy, f"{act}_forward")(x, *extra) if act in OUTPUT_SAVED else x
        return [saved, randn(*shape, scale=1.0)] + extra, {}, ()
    if name == "linear_forward":
        bias = randn(m) if opts["bias"] else None
        return [randn(n, k), randn(k, m, scale=0.5), bias, opts["activation"], ALPHA], {}, ()
    if name == "linear_backward":
        x, kernel = randn(n, k), randn(k, m, scale=0.5)
        _, saved = kernels_numpy.linear_forward(x, kernel, randn(m), opts["activation"], ALPHA)
        need = opts["need"]
        return ([x, kernel, saved, randn(n, m, scale=1.0), opts["activation"], ALPHA],
                dict(need_x=need[0], need_kernel=need[1], need_bias=need[2]), ())
    if name.startswith("softmax_xent"):
        classes = max(k, 1)
        logits = randn(n, classes)
        if opts["sparse"]:
            target = rng.integers(0, classes, n).astype(opts["label_dtype"])
        else:
            target = rng.random((n, classes)).astype(dtype)
        if name.endswith("forward"):
            return [logits, target], {}, ()
        _, probs = kernels_numpy.softmax_xent_forward(logits, target)
        return [probs, target, rng.random(n).astype(dtype)], {}, ()

    shape = dims[:opts["ndim"]]
    param, grad = randn(*shape, scale=1.0), randn(*shape, scale=1.0)
    wd = opts["weight_decay"]
    if name == "sgd_step":
        momentum = opts["momentum"]
        buf = randn(*shape, scale=0.1) if momentum else None
        return ([param, grad, buf, 0.1],
                dict(momentum=momentum, nesterov=opts["flag_a"], weight_decay=wd), (0, 2))
    if name == "adam_step":
        amsgrad = opts["flag_b"]
        exp_avg_sq = np.asarray(np.abs(randn(*shape, scale=0.1)))  # 0-d ops give scalars
        max_sq = np.asarray(exp_avg_sq + np.abs(randn(*shape, scale=0.1))) if amsgrad else None
        return ([param, grad, randn(*shape, scale=0.1), exp_avg_sq, max_sq, opts["step"],
                 1e-2, 0.9, 0.999, 1e-8],
                dict(weight_decay=wd, decoupled=opts["flag_a"], amsgrad=amsgrad), (0, 2, 3, 4))
    if name == "adagrad_step":
        state_sum = np.asarray(np.abs(randn(*shape)))
        return [param, grad, state_sum, 0.1, 1e-10], dict(weight_decay=wd), (0, 2)
    if name == "rmsprop_step":
        momentum, centered = opts["momentum"], opts["flag_a"]
        grad_avg = randn(*shape, scale=0.1)
        square_avg = np.asarray(grad_avg * grad_avg + np.abs(randn(*shape, scale=0.1)))
        buf = randn(*shape, scale=0.1) if momentum else None
        return ([param, grad, square_avg, buf, grad_avg if centered else None, 1e-2, 0.99, 1e-8],
                dict(weight_decay=wd, momentum=momentum, centered=centered), (0, 2, 3, 4))
    raise AssertionError(f"no input builder for {name}")


def relayout(args, mutated, layout):
    """Apply ``layout`` to every array argument that is not updated in place."""
    return [LAYOUTS[layout](a) if isinstance(a, np.ndarray) and i not in mutated else a
            for i, a in enumerate(args)]


def copy_args(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def assert_same(native, reference, dtype, what):
    if reference is None:
        assert native is None, what
        return
    if isinstance(reference, tuple):
        assert isinstance(native, tuple) and len(native) == len(reference), what
        for i, (a, b) in enumerate(zip(native, reference)):
            assert_same(a, b, dtype, f"{what}[{i}]")
        return
    assert native.shape == reference.shape, what
    assert native.dtype == reference.dtype, what
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    np.testing.assert_allclose(native, reference, rtol=rtol, atol=rtol * scale, err_msg=what)


def run_both(name, args, kwargs, mutated, dtype):
    """Call both tables on copies of the same inputs; compare results and in-place arrays."""
    ref_args, nat_args = copy_args(args), copy_args(args)
    with np.errstate(all="ignore"):
        reference = getattr(kernels_numpy, name)(*ref_args, **kwargs)
    native = getattr(kernels_native, name)(*nat_args, **kwargs)
    assert_same(native, reference, dtype, name)
    for i in mutated:
        assert_same(nat_args[i], ref_args[i], dtype, f"{name} argument {i}")


OPTIONS = st.fixed_dictionaries({
    "ndim": st.integers(0, 3),
    "bias": st.booleans(),
    "activation": st.sampled_from(kernels_numpy.LINEAR_ACTIVATIONS),
    "need": st.tuples(st.booleans(), st.booleans(), st.booleans()),
    "sparse": st.booleans(),
    "label_dtype": st.sampled_from(LABEL_DTYPES),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "momentum": st.sampled_from([0.0, 0.9]),
    "flag_a": st.booleans(),
    "flag_b": st.booleans(),
    "step": st.integers(1, 20),
})
DIMS = st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9))


# ---------------------------------------------------------------- parity
def test_tables_export_the_same_signatures():
    for name in NAMES:
        native = getattr(kernels_native, name)
        assert inspect.signature(native) == inspect.signature(getattr(kernels_numpy, name)), name


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=DIMS, dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(sorted(LAYOUTS)), opts=OPTIONS, seed=st.integers(0, 2**32 - 1))
def test_native_matches_numpy(name, dims, dtype, layout, opts, seed):
    args, kwargs, mutated = build(name, np.random.default_rng(seed), dims, dtype, opts)
    run_both(name, relayout(args, mutated, layout), kwargs, mutated, dtype)


EDGE_OPTS = dict(ndim=2, bias=True, activation="gelu", need=(True, True, True), sparse=True,
                 label_dtype=np.int64, weight_decay=0.01, momentum=0.9, flag_a=True,
                 flag_b=True, step=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [(0, 5, 3), (1, 5, 3), (1, 1, 1), (3, 0, 2), (4, 3, 0)],
                         ids=["empty-batch", "batch-1", "all-1", "zero-inner", "zero-units"])
@pytest.mark.parametrize("name", NAMES)
def test_edge_shapes(name, dims, dtype):
    if name.startswith("softmax_xent") and dims[0] and not dims[1]:
        dims = (dims[0], 1, dims[2])  # (N, 0) logits are an error, tested below
    for sparse in (True, False):
        args, kwargs, mutated = build(name, np.random.default_rng(0), dims, dtype,
                                      dict(EDGE_OPTS, sparse=sparse))
        run_both(name, args, kwargs, mutated, dtype)


# Large enough that every kernel takes its OpenMP path (see csrc/elementwise.pxd).
@pytest.mark.parametrize("name", NAMES)
def test_parallel_path_matches_numpy(name):
    dims = (601, 257, 263)  # 154K elements: above every PAR_MIN_* threshold
    for dtype, layout, sparse in ((np.float32, "C", True), (np.float64, "strided", False)):
        # flag_a turns on RMSprop's centered form, whose sqrt(E[g^2] - E[g]^2) cancels
        # catastrophically somewhere among 154K float32 draws; float64 covers it here.
        opts = dict(EDGE_OPTS, ndim=2, sparse=sparse,
                    flag_a=dtype == np.float32 and name != "rmsprop_step")
        args, kwargs, mutated = build(name, np.random.default_rng(1), dims, dtype, opts)
        run_both(name, relayout(args, mutated, layout), kwargs, mutated, dtype)


@pytest.mark.parametrize("activation", kernels_numpy.LINEAR_ACTIVATIONS)
def test_linear_fused_paths(activation):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 40)).astype(np.float32)  # 300 x 300 = 90K outputs: parallel
    kernel = rng.standard_normal((40, 300)).astype(np.float32) * 0.3
    for bias in (None, rng.standard_normal(300).astype(np.float32)):
        args = [x, kernel, bias, activation, ALPHA]
        run_both("linear_forward", args, {}, (), np.float32)


def test_linear_backward_results_survive_the_next_call():
    """The dz scratch buffer is reused; what linear_backward returned must not change."""
    rng = np.random.default_rng(3)
    x, kernel = rng.standard_normal((8, 5)), rng.standard_normal((5, 4))
    _, saved = kernels_native.linear_forward(x, kernel, None, "tanh")
    first = kernels_native.linear_backward(x, kernel, saved, np.ones((8, 4)), "tanh")
    kept = [a.copy() for a in first]
    kernels_native.linear_backward(x, kernel, saved, -np.ones((8, 4)), "tanh")
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- numerical stability
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_inputs_are_stable(dtype):
    x = np.array([-1e4, -100.0, -20.0, -1e-20, 0.0, 1e-20, 20.0, 1e4], dtype)
    with np.errstate(all="raise"):
        y = kernels_native.sigmoid_forward(x)
        sp = kernels_native.softplus_forward(x)
        t = kernels_native.tanh_forward(x)
        dsp = kernels_native.softplus_backward(x, np.ones_like(x))
    for out in (y, sp, t, dsp):
        assert np.all(np.isfinite(out))
    assert y[0] == 0 and y[-1] == 1 and y[4] == 0.5
    assert sp[0] == 0 and sp[-1] == 1e4
    assert t[0] == -1 and t[-1] == 1 and t[5] == dtype(1e-20)
    # Tiny results keep their relative accuracy (log1p, expm1, tanh near 0).
    np.testing.assert_allclose(sp[2], np.log1p(np.exp(-20.0)), rtol=1e-6)
    np.testing.assert_allclose(y[2], 1 / (1 + np.exp(20.0)), rtol=1e-6)
    gelu = kernels_native.gelu_forward(x)
    dgelu = kernels_native.gelu_backward(x, np.ones_like(x))
    assert gelu[0] == 0 and gelu[-1] == 1e4 and dgelu[0] == 0 and dgelu[-1] == 1
    elu = kernels_native.elu_forward(np.array([-1e-6, -1e4], dtype), 1.0)
    np.testing.assert_allclose(elu, [np.expm1(-1e-6), -1.0], rtol=1e-6)
    loss, probs = kernels_native.softmax_xent_forward(np.array([[1e4, -1e4, 0.0]], dtype),
                                                      np.array([1]))
    assert np.isfinite(loss).all() and loss[0] == 2e4 and probs[0, 0] == 1


def test_nan_propagates_like_numpy():
    x = np.array([np.nan, 1.0, -1.0], np.float32)
    for act in ACTIVATIONS:
        extra = [ALPHA] if act in WITH_ALPHA else []
        native = getattr(kernels_native, f"{act}_forward")(x, *extra)
        with np.errstate(all="ignore"):
            reference = getattr(kernels_numpy, f"{act}_forward")(x, *extra)
        np.testing.assert_array_equal(np.isnan(native), np.isnan(reference), err_msg=act)


# ---------------------------------------------------------------- errors
def first_array_position(args):
    return next(i for i, a in enumerate(args) if isinstance(a, np.ndarray))


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_dtype_raises_type_error(name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float16,
                            dict(EDGE_OPTS, sparse=True))
    with pytest.raises(TypeError, match=name):
        getattr(kernels_native, name)(*args, **kwargs)
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float64,
                            dict(EDGE_OPTS, sparse=True))
    i = first_array_position(args)
    args[i] = args[i].astype(np.int64)
    with pytest.raises(TypeError, match=name):
        getattr(kernels_native, name)(*args, **kwargs)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SINGLE_INPUT])
def test_mixed_dtypes_raise_type_error(name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float64,
                            dict(EDGE_OPTS, sparse=False))
    i = first_array_position(args)
    args[i] = args[i].astype(np.float32)
    with pytest.raises(TypeError, match=name) as error:
        getattr(kernels_native, name)(*args, **kwargs)
    assert "float32" in str(error.value) and "float64" in str(error.value)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SINGLE_INPUT])
def test_mismatched_shapes_raise_value_error(name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float32,
                            dict(EDGE_OPTS, ndim=2, sparse=False))
    i = first_array_position(args)
    args[i] = np.concatenate([args[i], args[i][..., :1]], axis=-1)  # one extra column
    with pytest.raises(ValueError, match=name) as error:
        getattr(kernels_native, name)(*args, **kwargs)
    assert str(args[i].shape) in str(error.value)


def test_linear_forward_names_the_unaligned_shapes():
    x, kernel = np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"linear_forward: x \(3, 4\) and kernel \(5, 2\) "
                                         r"are not aligned"):
        kernels_native.linear_forward(x, kernel, None)


@pytest.mark.parametrize("name", ["linear_forward", "linear_backward"])
def test_unknown_activation_lists_the_valid_names(name):
    x, kernel = np.ones((3, 4)), np.ones((4, 2))
    args = [x, kernel, None] if name == "linear_forward" else [x, kernel, None, np.ones((3, 2))]
    with pytest.raises(ValueError, match=name) as error:
        getattr(kernels_native, name)(*args, activation="swish")
    assert "swish" in str(error.value)
    assert all(act in str(error.value) for act in kernels_numpy.LINEAR_ACTIVATIONS)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("position", [0, 2])
@pytest.mark.parametrize("fault", ["non-contiguous", "read-only"])
def test_in_place_arrays_must_be_writeable_and_contiguous(name, position, fault):
    args, kwargs, mutated = build(name, np.random.default_rng(0), (4, 6, 2), np.float32,
                                  dict(EDGE_OPTS, ndim=2))
    assert position in mutated
    if fault == "non-contiguous":
        args[position] = strided(args[position])
    else:
        args[position].flags.writeable = False
    with pytest.raises(ValueError, match=name):
        getattr(kernels_native, name)(*args, **kwargs)


@pytest.mark.parametrize("name", ["softmax_xent_forward", "softmax_xent_backward"])
@pytest.mark.parametrize("label", [-1, 5, 300])
def test_out_of_range_labels_raise_value_error(name, label):
    args, _, _ = build(name, np.random.default_rng(0), (4, 5, 1), np.float32,
                       dict(EDGE_OPTS, sparse=True, label_dtype=np.int64))
    args[1] = args[1].copy()
    args[1][2] = label
    with pytest.raises(ValueError, match=f"{name}.*{label}"):
        getattr(kernels_native, name)(*args)


def test_xent_rejects_logits_without_classes_and_non_integer_labels():
    with pytest.raises(ValueError, match="softmax_xent_forward"):
        kernels_native.softmax_xent_forward(np.ones((2, 0)), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="softmax_xent_forward"):
        kernels_native.softmax_xent_forward(np.ones((2, 3)), np.zeros(2, np.float64))
