"""The kernel tables against the NumPy twin, kernel by kernel, and the shared contract.

Every kernel declared in ``nanodl.backend.table`` runs on both CPU tables with the same inputs:
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

from nanodl.backend import activations, kernels_native, kernels_numpy, table

NUMPY = kernels_numpy.TABLE
NATIVE = kernels_native.TABLE if kernels_native is not None else None
needs_native = pytest.mark.skipif(kernels_native is None,
                                  reason="native kernels not built (pip install -e .)")
# Every CPU table: the contract's checks must behave the same on each.
CPU_TABLES = [pytest.param(NUMPY, id="numpy"),
              pytest.param(NATIVE, id="native", marks=needs_native)]

from kernel_cases import (ACTIVATIONS, ALPHA, LABEL_DTYPES, LAYOUTS, NAMES,  # noqa: E402
                          OPTIMIZERS, SINGLE_INPUT, WITH_ALPHA, assert_same, build, copy_args,
                          mutated_value, relayout, strided)



def run_both(name, args, kwargs, mutated, dtype):
    """Call both tables on copies of the same inputs; compare results and in-place arrays."""
    ref_args, ref_kwargs = copy_args(args, kwargs)
    nat_args, nat_kwargs = copy_args(args, kwargs)
    with np.errstate(all="ignore"):
        reference = getattr(NUMPY, name)(*ref_args, **ref_kwargs)
    native = getattr(NATIVE, name)(*nat_args, **nat_kwargs)
    assert_same(native, reference, dtype, name)
    for key in mutated:
        assert_same(mutated_value(nat_args, nat_kwargs, key), mutated_value(ref_args, ref_kwargs, key),
                    dtype, f"{name} argument {key}")


OPTIONS = st.fixed_dictionaries({
    "ndim": st.integers(0, 3),
    "bias": st.booleans(),
    "activation": st.sampled_from(activations.LINEAR_ACTIVATIONS),
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
@pytest.mark.parametrize("module", [kernels_numpy, pytest.param(kernels_native, marks=needs_native)],
                         ids=["numpy", "native"])
def test_every_declared_kernel_is_implemented_with_its_parameters(module):
    """The compute functions take exactly the declared parameters, in order."""
    for name in NAMES:
        compute = getattr(module.TABLE.compute, name)
        assert tuple(inspect.signature(compute).parameters) == table.parameters(name), name
        checked = getattr(module.TABLE, name)
        assert inspect.signature(checked) == inspect.signature(getattr(NUMPY, name)), name


def test_an_incomplete_or_misdeclared_table_is_refused():
    namespace = {name: getattr(NUMPY.compute, name) for name in NAMES}
    del namespace["relu_forward"]
    with pytest.raises(TypeError, match="does not implement relu_forward"):
        table.KernelTable("broken", namespace, table.CPU)
    namespace["relu_forward"] = lambda z: z
    with pytest.raises(TypeError, match="relu_forward takes"):
        table.KernelTable("broken", namespace, table.CPU)


def test_activation_kernels_follow_the_records():
    """One forward/backward pair per record, saving what the record says."""
    for act in activations.ELEMENTWISE:
        forward = inspect.signature(getattr(NUMPY, act.forward_kernel)).parameters
        backward = inspect.signature(getattr(NUMPY, act.backward_kernel)).parameters
        assert list(forward) == ["x"] + (["alpha"] if act.has_alpha else []), act.name
        saved = "y" if act.saves == "output" else "x"
        assert list(backward) == [saved, "grad"] + (["alpha"] if act.has_alpha else []), act.name
    kernel_names = {n for n in NAMES if n.endswith(("_forward", "_backward"))}
    expected = {k for a in activations.ELEMENTWISE for k in (a.forward_kernel, a.backward_kernel)}
    assert kernel_names - {"linear_forward", "linear_backward", "softmax_xent_forward",
                           "softmax_xent_backward"} == expected


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=DIMS, dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(sorted(LAYOUTS)), opts=OPTIONS, seed=st.integers(0, 2**32 - 1))
@needs_native
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
@needs_native
def test_edge_shapes(name, dims, dtype):
    if name.startswith("softmax_xent") and dims[0] and not dims[1]:
        dims = (dims[0], 1, dims[2])  # (N, 0) logits are an error, tested below
    for sparse in (True, False):
        args, kwargs, mutated = build(name, np.random.default_rng(0), dims, dtype,
                                      dict(EDGE_OPTS, sparse=sparse))
        run_both(name, args, kwargs, mutated, dtype)


# Large enough that every kernel takes its OpenMP path (see csrc/elementwise.pxd).
@pytest.mark.parametrize("name", NAMES)
@needs_native
def test_parallel_path_matches_numpy(name):
    dims = (601, 257, 263)  # 154K elements: above every PAR_MIN_* threshold
    for dtype, layout, sparse in ((np.float32, "C", True), (np.float64, "strided", False)):
        # flag_a turns on RMSprop's centered form, whose sqrt(E[g^2] - E[g]^2) cancels
        # catastrophically somewhere among 154K float32 draws; float64 covers it here.
        opts = dict(EDGE_OPTS, ndim=2, sparse=sparse,
                    flag_a=dtype == np.float32 and name != "rmsprop_step")
        args, kwargs, mutated = build(name, np.random.default_rng(1), dims, dtype, opts)
        run_both(name, relayout(args, mutated, layout), kwargs, mutated, dtype)


@pytest.mark.parametrize("activation", activations.LINEAR_ACTIVATIONS)
@needs_native
def test_linear_fused_paths(activation):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 40)).astype(np.float32)  # 300 x 300 = 90K outputs: parallel
    kernel = rng.standard_normal((40, 300)).astype(np.float32) * 0.3
    for bias in (None, rng.standard_normal(300).astype(np.float32)):
        args = [x, kernel, bias, activation, ALPHA]
        run_both("linear_forward", args, {}, (), np.float32)


@needs_native
def test_linear_backward_results_survive_the_next_call():
    """The dz scratch buffer is reused; what linear_backward returned must not change."""
    rng = np.random.default_rng(3)
    x, kernel = rng.standard_normal((8, 5)), rng.standard_normal((5, 4))
    _, saved = NATIVE.linear_forward(x, kernel, None, "tanh")
    first = NATIVE.linear_backward(x, kernel, saved, np.ones((8, 4)), "tanh")
    kept = [a.copy() for a in first]
    NATIVE.linear_backward(x, kernel, saved, -np.ones((8, 4)), "tanh")
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- numerical stability
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@needs_native
def test_extreme_inputs_are_stable(dtype):
    x = np.array([-1e4, -100.0, -20.0, -1e-20, 0.0, 1e-20, 20.0, 1e4], dtype)
    with np.errstate(all="raise"):
        y = NATIVE.sigmoid_forward(x)
        sp = NATIVE.softplus_forward(x)
        t = NATIVE.tanh_forward(x)
        dsp = NATIVE.softplus_backward(x, np.ones_like(x))
    for out in (y, sp, t, dsp):
        assert np.all(np.isfinite(out))
    assert y[0] == 0 and y[-1] == 1 and y[4] == 0.5
    assert sp[0] == 0 and sp[-1] == 1e4
    assert t[0] == -1 and t[-1] == 1 and t[5] == dtype(1e-20)
    # Tiny results keep their relative accuracy (log1p, expm1, tanh near 0).
    np.testing.assert_allclose(sp[2], np.log1p(np.exp(-20.0)), rtol=1e-6)
    np.testing.assert_allclose(y[2], 1 / (1 + np.exp(20.0)), rtol=1e-6)
    gelu = NATIVE.gelu_forward(x)
    dgelu = NATIVE.gelu_backward(x, np.ones_like(x))
    assert gelu[0] == 0 and gelu[-1] == 1e4 and dgelu[0] == 0 and dgelu[-1] == 1
    elu = NATIVE.elu_forward(np.array([-1e-6, -1e4], dtype), 1.0)
    np.testing.assert_allclose(elu, [np.expm1(-1e-6), -1.0], rtol=1e-6)
    loss, probs = NATIVE.softmax_xent_forward(np.array([[1e4, -1e4, 0.0]], dtype),
                                              np.array([1]))
    assert np.isfinite(loss).all() and loss[0] == 2e4 and probs[0, 0] == 1


@needs_native
def test_nan_propagates_like_numpy():
    x = np.array([np.nan, 1.0, -1.0], np.float32)
    for act in ACTIVATIONS:
        extra = [ALPHA] if act in WITH_ALPHA else []
        native = getattr(NATIVE, f"{act}_forward")(x, *extra)
        with np.errstate(all="ignore"):
            reference = getattr(NUMPY, f"{act}_forward")(x, *extra)
        np.testing.assert_array_equal(np.isnan(native), np.isnan(reference), err_msg=act)


# ---------------------------------------------------------------- errors
def first_array_position(args):
    return next(i for i, a in enumerate(args) if isinstance(a, np.ndarray))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_unsupported_dtype_raises_type_error(tbl, name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float16,
                            dict(EDGE_OPTS, sparse=True))
    with pytest.raises(TypeError, match=name):
        getattr(tbl, name)(*args, **kwargs)
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float64,
                            dict(EDGE_OPTS, sparse=True))
    i = first_array_position(args)
    args[i] = args[i].astype(np.int64)
    with pytest.raises(TypeError, match=name):
        getattr(tbl, name)(*args, **kwargs)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SINGLE_INPUT])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_mixed_dtypes_raise_type_error(tbl, name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float64,
                            dict(EDGE_OPTS, sparse=False))
    i = first_array_position(args)
    args[i] = args[i].astype(np.float32)
    with pytest.raises(TypeError, match=name) as error:
        getattr(tbl, name)(*args, **kwargs)
    assert "float32" in str(error.value) and "float64" in str(error.value)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SINGLE_INPUT])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_mismatched_shapes_raise_value_error(tbl, name):
    args, kwargs, _ = build(name, np.random.default_rng(0), (3, 4, 2), np.float32,
                            dict(EDGE_OPTS, ndim=2, sparse=False))
    i = first_array_position(args)
    args[i] = np.concatenate([args[i], args[i][..., :1]], axis=-1)  # one extra column
    with pytest.raises(ValueError, match=name) as error:
        getattr(tbl, name)(*args, **kwargs)
    assert str(args[i].shape) in str(error.value)


@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_linear_forward_names_the_unaligned_shapes(tbl):
    x, kernel = np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"linear_forward: x \(3, 4\) and kernel \(5, 2\) "
                                         r"are not aligned"):
        tbl.linear_forward(x, kernel, None)


@pytest.mark.parametrize("name", ["linear_forward", "linear_backward"])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_unknown_activation_lists_the_valid_names(tbl, name):
    x, kernel = np.ones((3, 4)), np.ones((4, 2))
    args = [x, kernel, None] if name == "linear_forward" else [x, kernel, None, np.ones((3, 2))]
    with pytest.raises(ValueError, match=name) as error:
        getattr(tbl, name)(*args, activation="swish")
    assert "swish" in str(error.value)
    assert all(act in str(error.value) for act in activations.LINEAR_ACTIVATIONS)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("which", ["param", "state"])
@pytest.mark.parametrize("fault", ["non-contiguous", "read-only"])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_in_place_arrays_must_be_writeable_and_contiguous(tbl, name, which, fault):
    args, kwargs, mutated = build(name, np.random.default_rng(0), (4, 6, 2), np.float32,
                                  dict(EDGE_OPTS, ndim=2))
    holder, key = (args, 0) if which == "param" else (kwargs, mutated[1])
    if fault == "non-contiguous":
        holder[key] = strided(holder[key])
    else:
        holder[key].flags.writeable = False
    with pytest.raises(ValueError, match=f"{name}: {'param' if which == 'param' else key}"):
        getattr(tbl, name)(*args, **kwargs)


@pytest.mark.parametrize("name", ["softmax_xent_forward", "softmax_xent_backward"])
@pytest.mark.parametrize("label", [-1, 5, 300])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_out_of_range_labels_raise_value_error(tbl, name, label):
    args, _, _ = build(name, np.random.default_rng(0), (4, 5, 1), np.float32,
                       dict(EDGE_OPTS, sparse=True, label_dtype=np.int64))
    args[1] = args[1].copy()
    args[1][2] = label
    with pytest.raises(ValueError, match=f"{name}.*{label}"):
        getattr(tbl, name)(*args)


@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_xent_rejects_logits_without_classes_and_non_integer_labels(tbl):
    with pytest.raises(ValueError, match="softmax_xent_forward"):
        tbl.softmax_xent_forward(np.ones((2, 0)), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="softmax_xent_forward"):
        tbl.softmax_xent_forward(np.ones((2, 3)), np.zeros(2, np.float64))


# ---------------------------------------------------------------- one contract for every table
@pytest.mark.parametrize("name", ["sigmoid_forward", "gelu_forward", "relu_forward", "tanh_forward"])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_integer_input_is_refused_not_truncated(tbl, name):
    """Issue 9: the NumPy twin used to truncate sigmoid/gelu of ints to ints."""
    with pytest.raises(TypeError, match=f"{name}: .*x int64"):
        getattr(tbl, name)(np.array([1, 2, 3]))


@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_gelu_is_accurate_in_float32_for_negative_inputs(tbl):
    """Issue 9: 0.5 x (1 + tanh(u)) cancels for x << 0 (relative error 0.3 at x = -5)."""
    x = np.linspace(-9, 3, 241).astype(np.float32)
    exact = activations.BY_NAME["gelu"].reference(x.astype(np.float64), None)
    slope = activations.BY_NAME["gelu"].derivative(x.astype(np.float64), None)
    np.testing.assert_allclose(tbl.gelu_forward(x), exact, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(tbl.gelu_backward(x, np.ones_like(x)), slope, rtol=5e-5, atol=1e-30)


@pytest.mark.parametrize("layout", ["F", "strided", "negative"])
@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_xent_accepts_any_logits_layout(tbl, layout):
    """Issue 9: transposed (Fortran-order) logits were refused with a message naming no op."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 0, 1])
    view = {"F": np.asfortranarray, "strided": strided, "negative": lambda a: a[::-1, ::-1].copy()[::-1, ::-1]}[layout](logits)
    loss, probs = tbl.softmax_xent_forward(view, target)
    expected_loss, expected_probs = NUMPY.softmax_xent_forward(np.ascontiguousarray(logits), target)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    dlogits = tbl.softmax_xent_backward(np.asfortranarray(probs), target, np.ones(6, np.float32))
    np.testing.assert_allclose(dlogits, NUMPY.softmax_xent_backward(expected_probs, target,
                                                                    np.ones(6, np.float32)), rtol=1e-6)


@pytest.mark.parametrize("tbl", CPU_TABLES)
def test_activation_backward_matches_the_records_derivative(tbl):
    x = np.linspace(-4, 4, 81)
    x = x[np.abs(x) > 1e-3]
    for act in activations.ELEMENTWISE:
        alpha = (act.check_alpha,) if act.has_alpha else ()
        np.testing.assert_allclose(getattr(tbl, act.forward_kernel)(x, *alpha),
                                   act.reference(x, *alpha or (None,)), rtol=1e-12, atol=1e-14,
                                   err_msg=act.name)
        saved = getattr(tbl, act.forward_kernel)(x, *alpha) if act.saves == "output" else x
        np.testing.assert_allclose(getattr(tbl, act.backward_kernel)(saved, np.ones_like(x), *alpha),
                                   act.derivative(x, *alpha or (None,)), rtol=1e-9, atol=1e-12,
                                   err_msg=act.name)


def test_c_enum_order_is_the_records_order():
    """The ACT_* codes of csrc/elementwise.pxd are the records' ``code``s."""
    import pathlib
    import re
    source = (pathlib.Path(__file__).resolve().parent.parent / "csrc" / "elementwise.pxd").read_text()
    enum = {name.lower(): int(code) for name, code in re.findall(r"ACT_(\w+) = (\d+)", source)}
    assert enum == activations.CODES
    assert sorted(activations.CODES.values()) == list(range(len(activations.ACTIVATIONS)))


@pytest.mark.parametrize("tbl_name", ["numpy", pytest.param("native", marks=needs_native)])
def test_the_loss_op_takes_transposed_logits(tbl_name):
    """Issue 9: F-order (transposed) logits through the op, on both CPU tables."""
    import nanodl as nd
    from helpers import kernels
    rng = np.random.default_rng(5)
    logits_t = rng.standard_normal((3, 6)).astype(np.float32)
    target = np.array([0, 1, 2, 0, 1, 2])
    with kernels(tbl_name):
        logits = nd.tensor(logits_t, requires_grad=True)
        loss = nd.ops.softmax_cross_entropy(logits.T, target, "mean")
        loss.backward()
    expected, probs = NUMPY.softmax_xent_forward(np.ascontiguousarray(logits_t.T), target)
    np.testing.assert_allclose(loss.item(), expected.mean(), rtol=1e-6)
    dlogits = NUMPY.softmax_xent_backward(probs, target, np.full(6, 1 / 6, np.float32))
    np.testing.assert_allclose(logits.grad, dlogits.T, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- scalar domains (issue 18)
@pytest.mark.parametrize("table_", CPU_TABLES)
@pytest.mark.parametrize("bad, message", [
    ({"beta1": 1.0}, "adam_step: beta1 must lie in [0, 1), got 1.0"),   # was ZeroDivisionError
    ({"step": 0}, "adam_step: step must lie in [1, inf], got 0"),       # was ZeroDivisionError
    ({"beta2": -0.1}, "adam_step: beta2 must lie in [0, 1), got -0.1"),
    ({"lr": float("nan")}, "adam_step: lr must lie in [0, inf], got nan"),
    ({"eps": -1e-8}, "adam_step: eps must lie in [0, inf], got -1e-08"),
])
def test_adam_step_refuses_scalars_outside_their_domain(table_, bad, message):
    param, grad = np.zeros(3), np.ones(3)
    kwargs = dict(exp_avg=np.zeros(3), exp_avg_sq=np.zeros(3), step=1, lr=0.1, beta1=0.9,
                  beta2=0.999, eps=1e-8)
    kwargs.update(bad)
    with pytest.raises(ValueError) as info:
        table_.adam_step(param, grad, **kwargs)
    assert str(info.value) == message
    assert (param == 0).all()  # refused before anything was written


@pytest.mark.parametrize("table_", CPU_TABLES)
def test_domains_are_declared_per_kernel_where_a_name_means_two_things(table_):
    # a negative leaky-relu slope is a valid activation; a negative RMSprop alpha is not
    assert table_.leaky_relu_forward(np.array([-2.0, 2.0]), -0.5).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"rmsprop_step: alpha must lie in \[0, inf\]"):
        table_.rmsprop_step(np.zeros(2), np.ones(2), square_avg=np.zeros(2), lr=0.1, alpha=-0.5,
                            eps=1e-8)
    assert set(table.SCALAR_DOMAINS) >= {"lr", "beta1", "step", ("rmsprop_step", "alpha")}
