"""Inputs for every kernel of the table contract, shared by the kernel tests and the fuzzer.

``build(name, rng, dims, dtype, opts)`` gives a valid call of kernel ``name``;
``assert_same`` compares two tables' results to float32 (or float64) rounding.
"""
import numpy as np

from nanodl.backend import activations, kernels_numpy, table

NUMPY = kernels_numpy.TABLE
NAMES = table.NAMES
ACTIVATIONS = tuple(a.name for a in activations.ELEMENTWISE)
OUTPUT_SAVED = tuple(a.name for a in activations.ELEMENTWISE if a.saves == "output")
WITH_ALPHA = tuple(a.name for a in activations.ELEMENTWISE if a.has_alpha)
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
        saved = getattr(NUMPY.compute, f"{act}_forward")(x, *extra) if act in OUTPUT_SAVED else x
        return [saved, randn(*shape, scale=1.0)] + extra, {}, ()
    if name == "linear_forward":
        bias = randn(m) if opts["bias"] else None
        return [randn(n, k), randn(k, m, scale=0.5), bias, opts["activation"], ALPHA], {}, ()
    if name == "linear_backward":
        x, kernel = randn(n, k), randn(k, m, scale=0.5)
        known = opts["activation"] if opts["activation"] in activations.LINEAR_ACTIVATIONS else "linear"
        _, saved = NUMPY.compute.linear_forward(x, kernel, randn(m), known, ALPHA)
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
        _, probs = NUMPY.compute.softmax_xent_forward(logits, target)
        return [probs, target, rng.random(n).astype(dtype)], {}, ()

    shape = dims[:opts["ndim"]]
    param, grad = randn(*shape, scale=1.0), randn(*shape, scale=1.0)
    wd = opts["weight_decay"]
    if name == "sgd_step":
        momentum = opts["momentum"]
        buf = randn(*shape, scale=0.1) if momentum else None
        return ([param, grad], dict(momentum_buf=buf, lr=0.1, momentum=momentum,
                                    nesterov=opts["flag_a"], weight_decay=wd),
                (0, "momentum_buf"))
    if name == "adam_step":
        amsgrad = opts["flag_b"]
        exp_avg_sq = np.asarray(np.abs(randn(*shape, scale=0.1)))  # 0-d ops give scalars
        max_sq = np.asarray(exp_avg_sq + np.abs(randn(*shape, scale=0.1))) if amsgrad else None
        return ([param, grad],
                dict(exp_avg=randn(*shape, scale=0.1), exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_sq,
                     step=opts["step"], lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=wd, decoupled=opts["flag_a"], amsgrad=amsgrad),
                (0, "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    if name == "adagrad_step":
        state_sum = np.asarray(np.abs(randn(*shape)))
        return ([param, grad], dict(state_sum=state_sum, lr=0.1, eps=1e-10, weight_decay=wd),
                (0, "state_sum"))
    if name == "rmsprop_step":
        momentum, centered = opts["momentum"], opts["flag_a"]
        grad_avg = randn(*shape, scale=0.1)
        square_avg = np.asarray(grad_avg * grad_avg + np.abs(randn(*shape, scale=0.1)))
        buf = randn(*shape, scale=0.1) if momentum else None
        return ([param, grad],
                dict(square_avg=square_avg, momentum_buf=buf, grad_avg=grad_avg if centered else None,
                     lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=wd, momentum=momentum,
                     centered=centered),
                (0, "square_avg", "momentum_buf", "grad_avg"))
    raise AssertionError(f"no input builder for {name}")


def relayout(args, mutated, layout):
    """Apply ``layout`` to every array argument that is not updated in place."""
    return [LAYOUTS[layout](a) if isinstance(a, np.ndarray) and i not in mutated else a
            for i, a in enumerate(args)]


def copy_args(args, kwargs):
    return ([a.copy() if isinstance(a, np.ndarray) else a for a in args],
            {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()})


def mutated_value(args, kwargs, key):
    return args[key] if isinstance(key, int) else kwargs[key]


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
    finite = np.abs(reference[np.isfinite(reference)]) if reference.size else reference
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(native, reference, rtol=rtol, atol=rtol * scale, err_msg=what)




# ---------------------------------------------------------------- fuzzing (test_fuzz_kernels.py)
# A fuzz case is a JSON-able description: a valid call (kernel, seed, dims, dtype, options)
# and one mutation of it. ``fuzz_verdict`` runs it on every table given and says whether
# they agree: the same results to rounding, or the same clear exception.
CLEAR_ERRORS = (TypeError, ValueError)


def fuzz_call(case):
    """``(args, kwargs, mutated)`` for a fuzz case: the valid call, then its mutation."""
    opts = dict(case["opts"], label_dtype=np.dtype(case["opts"]["label_dtype"]).type)
    args, kwargs, mutated = build(case["name"], np.random.default_rng(case["seed"]),
                                  tuple(case["dims"]), np.dtype(case["dtype"]).type, opts)
    kind, slot, value = case["mutation"]
    slots = array_slots(args, kwargs)
    if kind == "none" or (kind != "scalar" and not slots):
        return args, kwargs, mutated
    if kind == "scalar":
        keys = [k for k, v in kwargs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        keys += [i for i, v in enumerate(args) if isinstance(v, float)]
        if not keys:
            return args, kwargs, mutated
        key = keys[slot % len(keys)]
        replacement = {"str": "0.5", "none": None, "nan": float("nan"), "inf": float("inf"),
                       "complex": 1j}[value]
        _put(args, kwargs, key, replacement)
        return args, kwargs, mutated
    key = slots[slot % len(slots)]
    array = mutated_value(args, kwargs, key)
    if kind == "dtype":
        with np.errstate(all="ignore"):
            array = array.astype(value)
    elif kind == "layout":
        array = {"F": lambda a: np.asfortranarray(a) if a.ndim >= 2 else a, "strided": strided,
                 "negative": _negative_strides, "readonly": _read_only}[value](array)
    elif kind == "nonfinite":
        if array.dtype.kind == "f" and array.size:
            array = array.copy()
            array.reshape(-1)[slot % array.size] = float(value)
    elif kind == "label":
        if array.dtype.kind in "iu" and array.size:
            array = array.astype(np.int64)
            array[slot % array.size] = int(value)
    elif kind == "swap":
        array = {"none": None, "list": array.tolist(), "scalar": 1.0, "bytes": b"\x00" * 8}[value]
    _put(args, kwargs, key, array)
    return args, kwargs, mutated


def array_slots(args, kwargs):
    return ([i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
            + [k for k, a in kwargs.items() if isinstance(a, np.ndarray)])


def _put(args, kwargs, key, value):
    if isinstance(key, int):
        args[key] = value
    else:
        kwargs[key] = value


def _negative_strides(a):
    """The same values, viewed through negative strides."""
    if a.ndim == 0:
        return a
    flipped = a[(slice(None, None, -1),) * a.ndim].copy()
    return flipped[(slice(None, None, -1),) * a.ndim]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def outcome(tbl, name, args, kwargs, mutated):
    """``('ok', result, in-place arrays after)`` or ``('raise', type, message)``."""
    args, kwargs = copy_args(args, kwargs)
    try:
        with np.errstate(all="ignore"):
            result = getattr(tbl, name)(*args, **kwargs)
    except Exception as error:  # the verdict below judges which exceptions are clear
        return ("raise", type(error), str(error))
    return ("ok", result, [mutated_value(args, kwargs, key) for key in mutated
                           if isinstance(mutated_value(args, kwargs, key), np.ndarray)])


def fuzz_verdict(case, tables):
    """'' when every table in ``tables`` agrees with the first (the NumPy twin), else why not."""
    name = case["name"]
    args, kwargs, mutated = fuzz_call(case)
    reference = outcome(tables[0], name, args, kwargs, mutated)
    if reference[0] == "raise":
        if not issubclass(reference[1], CLEAR_ERRORS) or not reference[2].startswith(f"{name}:"):
            return f"{tables[0].name}: unclear {reference[1].__name__}: {reference[2]}"
    for tbl in tables[1:]:
        other = outcome(tbl, name, args, kwargs, mutated)
        if other[0] != reference[0]:
            return f"{tbl.name} gave {other[:3]!s:.300}, {tables[0].name} gave {reference[:3]!s:.300}"
        if reference[0] == "raise":
            if other[1] is not reference[1] or other[2] != reference[2]:
                return (f"{tbl.name} raised {other[1].__name__}({other[2]!r}), {tables[0].name} "
                        f"raised {reference[1].__name__}({reference[2]!r})")
            continue
        try:
            dtype = _result_dtype(reference[1])
            assert_same(other[1], reference[1], dtype, f"{name} result")
            assert len(other[2]) == len(reference[2])
            for got, want in zip(other[2], reference[2]):
                assert_same(got, want, dtype, f"{name} in-place array")
        except AssertionError as error:
            return f"{tbl.name} differs from {tables[0].name}: {error}"
    return ""


def _result_dtype(result):
    for item in result if isinstance(result, tuple) else (result,):
        if item is not None:
            return item.dtype.type
    return np.float64
