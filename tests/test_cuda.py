"""nanodl on the GPU (``'cuda'``): every op, every kernel, device plumbing, models, optimizers.

The whole module runs only where CuPy imports and sees a GPU; elsewhere it is skipped
with the reason ``nanodl.backend.cuda.cuda_status()`` gives (CuPy missing, or no GPU).
The CPU is the reference throughout: its forward results are checked against NumPy and
its float64 gradients against central differences in ``test_ops.py``, so a GPU result
equal to the CPU's is a checked result.
"""
import inspect
import itertools
import zlib

import numpy as np
import pytest

import nanodl as nd
from nanodl import backend
from nanodl.backend import activations
from nanodl.backend import cuda as nd_cuda
from nanodl.backend import kernels_numpy, table
from nanodl.ops.registry import REGISTRY, draw_inputs

pytestmark = pytest.mark.skipif(not nd.cuda_available(), reason=str(nd_cuda.cuda_status()))

# float64 on the GPU differs from the CPU only by summation order and 1-2 ulp in exp/tanh;
# float32 additionally by the GEMM's blocking. TF32 would break the float32 bound (see
# test_float32_matmul_is_full_precision).
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-9, atol=1e-11)}


@pytest.fixture(scope="module")
def cp():
    return nd_cuda.require_cupy()


@pytest.fixture(scope="module")
def kc():
    return backend.gpu_table()


NUMPY = kernels_numpy.TABLE


def call(tbl, name, args):
    """Call kernel ``name`` with its declared parameters given in order (keyword-only by name)."""
    names = table.parameters(name)
    kinds = inspect.signature(getattr(tbl, name)).parameters.values()
    positional = sum(1 for p in kinds if p.kind != p.KEYWORD_ONLY)
    return getattr(tbl, name)(*args[:positional], **dict(zip(names[positional:], args[positional:])))


def host(array):
    """A NumPy copy of a NumPy or CuPy array (or a Tensor)."""
    array = getattr(array, "data", array) if isinstance(array, nd.Tensor) else array
    return np.asarray(array.get() if hasattr(array, "get") else array)


def is_cupy(array):
    return type(array).__module__.startswith("cupy")


# ---------------------------------------------------------------- every op of the registry
CASES = [(spec, shapes) for spec in REGISTRY for shapes in spec.cases]
CASE_IDS = [f"{spec.name}-{'x'.join(map(str, shapes))}" for spec, shapes in CASES]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec,shapes", CASES, ids=CASE_IDS)
def test_op_forward_matches_cpu(spec, shapes, dtype):
    arrays = draw_inputs(spec, shapes, np.random.default_rng(0), dtype=np.dtype(dtype))
    with nd.no_grad():
        on_cpu = spec.fn(*[nd.Tensor(a) for a in arrays])
        on_gpu = spec.fn(*[nd.Tensor(a, device="cuda") for a in arrays])
    assert on_gpu.device == "cuda" and is_cupy(on_gpu.data)
    assert on_gpu.dtype == on_cpu.dtype, f"{spec.name}: {on_gpu.dtype} on the GPU, {on_cpu.dtype} on the CPU"
    assert on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(host(on_gpu), host(on_cpu), **TOL[dtype], err_msg=spec.name)


@pytest.mark.parametrize("spec,shapes", CASES, ids=CASE_IDS)
def test_op_gradient_matches_cpu(spec, shapes):
    """float64 vector-Jacobian products on the GPU equal the CPU's (broadcasting included)."""
    arrays = draw_inputs(spec, shapes, np.random.default_rng(1), margin=1e-2)
    cpu_inputs = [nd.Tensor(a.copy(), requires_grad=True) for a in arrays]
    gpu_inputs = [nd.Tensor(a.copy(), requires_grad=True, device="cuda") for a in arrays]
    out_cpu = spec.fn(*cpu_inputs)
    weights = np.random.default_rng(2).standard_normal(out_cpu.shape)
    out_cpu.backward(weights)
    out_gpu = spec.fn(*gpu_inputs)
    out_gpu.backward(nd.Tensor(weights, device="cuda").data)
    for i, (c, g) in enumerate(zip(cpu_inputs, gpu_inputs)):
        assert g.grad is not None, f"{spec.name}: input {i} got no gradient on the GPU"
        assert is_cupy(g.grad), f"{spec.name}: input {i}'s .grad is not on the GPU"
        assert g.grad.shape == c.grad.shape and g.grad.dtype == c.grad.dtype
        np.testing.assert_allclose(host(g.grad), c.grad, **TOL["float64"],
                                   err_msg=f"{spec.name}: gradient of input {i}")


# ---------------------------------------------------------------- every kernel vs the NumPy twin
ACTIVATIONS = tuple(a.name for a in activations.ELEMENTWISE)
ALPHA = {a.name: a.check_alpha for a in activations.ELEMENTWISE if a.has_alpha}
ELEMENTWISE_SHAPES = ((1,), (3, 5), (7, 13), (2, 3, 5))
LINEAR_SHAPES = ((1, 1, 1), (1, 7, 3), (33, 17, 9))  # (batch, in, out)
XENT_SHAPES = ((1, 1), (1, 10), (5, 3), (7, 300), (3, 1000))    # (batch, classes)


def _activation_cases():
    for name in ACTIVATIONS:
        alpha = (ALPHA[name],) if name in ALPHA else ()
        for shape in ELEMENTWISE_SHAPES:
            yield f"{name}_forward", shape, lambda rng, dt, s=shape, a=alpha: (
                rng.uniform(-3, 3, s).astype(dt), *a)

            def backward_args(rng, dt, s=shape, a=alpha, n=name):
                x = rng.uniform(-3, 3, s).astype(dt)
                saved = getattr(NUMPY, f"{n}_forward")(x, *a) \
                    if n in activations.OUTPUT_GRAD_ACTIVATIONS else x
                return (saved, rng.standard_normal(s).astype(dt), *a)
            yield f"{name}_backward", shape, backward_args


def _linear_cases():
    for (n, i, o), activation, with_bias in itertools.product(
            LINEAR_SHAPES, activations.LINEAR_ACTIVATIONS, (True, False)):
        alpha = ALPHA.get(activation, 0.0)
        case = f"{n}x{i}x{o}-{activation}-{'bias' if with_bias else 'nobias'}"

        def forward_args(rng, dt, n=n, i=i, o=o, act=activation, bias=with_bias, a=alpha):
            return (rng.standard_normal((n, i)).astype(dt), rng.standard_normal((i, o)).astype(dt),
                    rng.standard_normal(o).astype(dt) if bias else None, act, a)
        yield "linear_forward", case, forward_args

        for needs in ((True, True, True), (False, True, False)):
            def backward_args(rng, dt, n=n, i=i, o=o, act=activation, a=alpha, needs=needs):
                x = rng.standard_normal((n, i)).astype(dt)
                kernel = rng.standard_normal((i, o)).astype(dt)
                _, saved = NUMPY.linear_forward(x, kernel, rng.standard_normal(o).astype(dt),
                                                act, a)
                return (x, kernel, saved, rng.standard_normal((n, o)).astype(dt), act, a, *needs)
            yield "linear_backward", f"{case}-{''.join('1' if k else '0' for k in needs)}", backward_args


def _xent_cases():
    for (n, c), sparse in itertools.product(XENT_SHAPES, (True, False)):
        def target(rng, dt, n=n, c=c, sparse=sparse):
            if sparse:
                return rng.integers(0, c, size=n)
            return rng.dirichlet(np.ones(c), size=n).astype(dt)
        kind = "sparse" if sparse else "dense"
        yield "softmax_xent_forward", f"{n}x{c}-{kind}", lambda rng, dt, n=n, c=c, t=target: (
            (3 * rng.standard_normal((n, c))).astype(dt), t(rng, dt))

        def backward_args(rng, dt, n=n, c=c, t=target):
            _, probs = NUMPY.softmax_xent_forward(
                (3 * rng.standard_normal((n, c))).astype(dt), t(rng, dt))
            return probs, t(rng, dt), rng.standard_normal(n).astype(dt)
        yield "softmax_xent_backward", f"{n}x{c}-{kind}", backward_args


def _optimizer_cases():
    shapes = ((1,), (7, 13))

    def arrays(rng, dt, s, count, low=-1.0, high=1.0):
        return [rng.uniform(low, high, s).astype(dt) for _ in range(count)]

    for s, momentum, nesterov, decay in itertools.product(shapes, (0.0, 0.9), (False, True), (0.0, 0.01)):
        if nesterov and not momentum:
            continue
        yield "sgd_step", f"{s}-m{momentum}-n{int(nesterov)}-wd{decay}", \
            lambda rng, dt, s=s, m=momentum, n=nesterov, wd=decay: (
                *arrays(rng, dt, s, 2), arrays(rng, dt, s, 1)[0] if m else None, 0.05, m, n, wd)
    for s, decay, decoupled, amsgrad in itertools.product(shapes, (0.0, 0.01), (False, True), (False, True)):
        yield "adam_step", f"{s}-wd{decay}-dec{int(decoupled)}-ams{int(amsgrad)}", \
            lambda rng, dt, s=s, wd=decay, dec=decoupled, ams=amsgrad: (
                *arrays(rng, dt, s, 3), *arrays(rng, dt, s, 1, 0.1, 1.0),
                arrays(rng, dt, s, 1, 0.5, 1.5)[0] if ams else None,
                3, 0.01, 0.9, 0.999, 1e-8, wd, dec, ams)
    for s, decay in itertools.product(shapes, (0.0, 0.1)):
        yield "adagrad_step", f"{s}-wd{decay}", lambda rng, dt, s=s, wd=decay: (
            *arrays(rng, dt, s, 2), *arrays(rng, dt, s, 1, 0.1, 1.0), 0.05, 1e-10, wd)
    for s, decay, momentum, centered in itertools.product(shapes, (0.0, 0.1), (0.0, 0.9), (False, True)):
        yield "rmsprop_step", f"{s}-wd{decay}-m{momentum}-c{int(centered)}", \
            lambda rng, dt, s=s, wd=decay, m=momentum, c=centered: (
                *arrays(rng, dt, s, 2), *arrays(rng, dt, s, 1, 1.0, 2.0),
                arrays(rng, dt, s, 1)[0] if m else None,
                arrays(rng, dt, s, 1, -0.5, 0.5)[0] if c else None,
                0.01, 0.99, 1e-8, wd, m, c)


KERNEL_CASES = list(itertools.chain(_activation_cases(), _linear_cases(), _xent_cases(),
                                    _optimizer_cases()))


def test_kernel_cases_cover_every_name(kc):
    for name in table.NAMES:
        assert callable(getattr(kc, name)), name
        assert tuple(inspect.signature(getattr(kc.compute, name)).parameters) == table.parameters(name)
    assert {case[0] for case in KERNEL_CASES} == set(table.NAMES)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,case,make_args", KERNEL_CASES,
                         ids=[f"{name}-{case}" for name, case, _ in KERNEL_CASES])
def test_kernel_matches_numpy_twin(kc, cp, name, case, make_args, dtype):
    """Same inputs to both tables: equal returns, and equal arrays after in-place updates."""
    args = make_args(np.random.default_rng(zlib.crc32(f"{name}-{case}".encode())), np.dtype(dtype))
    cpu_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    gpu_args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    expected = call(NUMPY, name, cpu_args)
    result = call(kc, name, gpu_args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    result = result if isinstance(result, tuple) else (result,)
    assert len(result) == len(expected)
    for index, (got, want) in enumerate(zip(result, expected)):
        assert (got is None) == (want is None), f"{name}: output {index}"
        if want is not None:
            assert is_cupy(got), f"{name}: output {index} is not a CuPy array"
            assert got.shape == want.shape and got.dtype == want.dtype, \
                f"{name}: output {index} is {got.shape} {got.dtype}, expected {want.shape} {want.dtype}"
            np.testing.assert_allclose(host(got), want, **TOL[dtype], err_msg=f"{name}: output {index}")
    for index, (got, want) in enumerate(zip(gpu_args, cpu_args)):
        if isinstance(want, np.ndarray):  # in-place updates (optimizer state) must agree too
            np.testing.assert_allclose(host(got), want, **TOL[dtype], err_msg=f"{name}: argument {index}")


def test_kernels_are_stable_at_1e4(kc, cp):
    x = cp.asarray(np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=np.float32))
    for name in ("sigmoid_forward", "softplus_forward", "gelu_forward", "tanh_forward"):
        out = host(getattr(kc, name)(x))
        assert np.isfinite(out).all(), f"{name}: {out}"
        np.testing.assert_allclose(out, getattr(NUMPY, name)(host(x)), rtol=1e-6, err_msg=name)
    logits = cp.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32))
    loss, probs = kc.softmax_xent_forward(logits, cp.asarray(np.array([1, 2])))
    assert np.isfinite(host(loss)).all() and np.isfinite(host(probs)).all()


def test_kernel_errors_name_the_kernel(kc, cp):
    x32 = cp.zeros((2, 3), dtype=cp.float32)
    with pytest.raises(TypeError, match="relu_forward"):
        kc.relu_forward(np.zeros(3, dtype=np.float32))  # a host array
    with pytest.raises(TypeError, match="relu_forward"):
        kc.relu_forward(cp.zeros(3, dtype=cp.int32))
    with pytest.raises(TypeError, match="sigmoid_backward"):
        kc.sigmoid_backward(x32, x32.astype(cp.float64))
    with pytest.raises(ValueError, match="tanh_backward"):
        kc.tanh_backward(x32, cp.zeros((3, 2), dtype=cp.float32))
    with pytest.raises(ValueError, match="linear_forward"):
        kc.linear_forward(x32, cp.zeros((4, 2), dtype=cp.float32), None)
    with pytest.raises(ValueError, match="relu"):
        kc.linear_forward(x32, cp.zeros((3, 2), dtype=cp.float32), None, "swish")
    with pytest.raises(ValueError, match="softmax_xent_forward"):
        kc.softmax_xent_forward(x32, cp.zeros(5, dtype=cp.int64))
    with pytest.raises(ValueError, match="adam_step"):
        kc.adam_step(x32, cp.zeros(3, dtype=cp.float32), exp_avg=x32.copy(), exp_avg_sq=x32.copy(),
                     step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("label", [-1, 3, 7])
@pytest.mark.parametrize("name", ["softmax_xent_forward", "softmax_xent_backward"])
def test_out_of_range_class_is_refused_like_on_the_cpu(kc, cp, name, label):
    """Issue 9: the GPU table used to turn label -1 into class C-1 and train it."""
    logits = np.zeros((2, 3), dtype=np.float32)
    target = np.array([0, label])
    args = (logits, target) if name == "softmax_xent_forward" else (logits, target, np.ones(2, np.float32))
    with pytest.raises(ValueError) as on_cpu:
        getattr(NUMPY, name)(*args)
    with pytest.raises(ValueError) as on_gpu:
        getattr(kc, name)(*[cp.asarray(a) for a in args])
    assert str(on_gpu.value) == str(on_cpu.value)


def test_float32_matmul_is_full_precision(kc, cp):
    """TF32 is off: a float32 GEMM on the GPU is as accurate as the CPU's (TF32 gives ~1e-3)."""
    import os
    if os.environ.get("CUPY_TF32", "0").strip() not in ("", "0"):
        pytest.skip("CUPY_TF32 is set in this environment")
    from nanodl.backend import kernels_cupy
    assert not kernels_cupy.tf32_enabled()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    w = rng.standard_normal((512, 128)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    out, _ = kc.linear_forward(cp.asarray(x), cp.asarray(w), None)
    error = np.abs(host(out) - exact).max() / np.abs(exact).max()
    assert error < 1e-5, f"relative error {error:.2e}: is TF32 on?"


# ---------------------------------------------------------------- device plumbing
def test_kernel_table_dispatch(kc, cp):
    assert backend.kernels(cp.zeros(3, dtype=cp.float32)) is kc
    assert backend.kernels(np.zeros(3, dtype=np.float32)) is not kc
    assert backend.array_module(cp.zeros(3)) is cp
    assert backend.array_module(nd.zeros(3, device="cuda")) is cp
    assert backend.array_module(nd.zeros(3)) is np


def test_to_cuda_and_back(cp):
    t = nd.tensor([[1.0, 2.0], [3.0, 4.0]])
    for moved in (t.to("cuda"), t.cuda(), t.to("cuda:0"), nd.tensor(t.numpy(), device="cuda")):
        assert moved.device == "cuda" and isinstance(moved.data, cp.ndarray)
        assert moved.dtype == np.float32 and moved.shape == (2, 2)
        back = moved.cpu()
        assert back.device == "cpu" and isinstance(back.data, np.ndarray)
        np.testing.assert_array_equal(back.numpy(), t.numpy())
    gpu = t.cuda()
    assert gpu.to("cuda") is gpu
    assert gpu.sum().item() == 10.0
    assert gpu.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert "cuda" in repr(gpu)
    assert np.asarray(gpu).tolist() == [[1.0, 2.0], [3.0, 4.0]]  # __array__ fetches to the host


def test_to_device_is_differentiable():
    x = nd.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x.to("cuda") * x.to("cuda")).sum()
    assert y.device == "cuda"
    y.backward()
    assert isinstance(x.grad, np.ndarray)  # the gradient came back to the CPU leaf
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])


def test_grad_lives_on_the_gpu(cp):
    values = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    x = nd.tensor(values, requires_grad=True, device="cuda")
    ((x * x).sum() + x.relu().sum()).backward()
    assert isinstance(x.grad, cp.ndarray) and x.grad.shape == (2, 2) and x.grad.dtype == np.float32
    np.testing.assert_allclose(host(x.grad), 2 * values + (values > 0), rtol=1e-6)
    ((x * 3).sum()).backward()  # gradients accumulate on the device
    np.testing.assert_allclose(host(x.grad), 2 * values + (values > 0) + 3, rtol=1e-6)


def test_scalars_and_host_arrays_are_lifted_to_the_gpu(cp):
    x = nd.tensor([1.0, 2.0], device="cuda")
    for out in (x + 1, 2.0 * x, x - np.array([1.0, 1.0], dtype=np.float32), x ** 2, 1 / x):
        assert out.device == "cuda" and out.dtype == np.float32
    picked = x[np.array([1, 1, 0])]
    assert picked.device == "cuda" and picked.tolist() == [2.0, 2.0, 1.0]
    chosen = nd.where(np.array([True, False]), x, nd.tensor([9.0, 9.0], device="cuda"))
    assert chosen.tolist() == [1.0, 9.0]


def test_mixed_devices_raise_naming_both():
    a = nd.tensor([1.0, 2.0])
    b = nd.tensor([3.0, 4.0], device="cuda")
    for op in (lambda: a + b, lambda: b * a, lambda: nd.maximum(b, a), lambda: a @ b):
        with pytest.raises(RuntimeError) as info:
            op()
        assert "cpu" in str(info.value) and "cuda" in str(info.value)


def test_no_grad_and_detach_on_the_gpu():
    x = nd.tensor([1.0, 2.0], requires_grad=True, device="cuda")
    with nd.no_grad():
        y = x * 2
    assert not y.requires_grad and y.device == "cuda"
    assert x.detach().device == "cuda"


# ---------------------------------------------------------------- optimizers: GPU vs CPU
OPTIMIZERS = {
    "sgd": lambda optim, p: optim.SGD(p, lr=0.1),
    "sgd_nesterov_wd": lambda optim, p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                  weight_decay=0.01),
    "adam": lambda optim, p: optim.Adam(p, lr=0.01),
    "adam_amsgrad_wd": lambda optim, p: optim.Adam(p, lr=0.01, weight_decay=0.01, amsgrad=True),
    "adamw": lambda optim, p: optim.AdamW(p, lr=0.01),
    "adagrad": lambda optim, p: optim.Adagrad(p, lr=0.05),
    "rmsprop": lambda optim, p: optim.RMSprop(p, lr=0.01),
    "rmsprop_centered_momentum": lambda optim, p: optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_steps_match_cpu(name, dtype, cp):
    from nanodl import optim
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 7)).astype(dtype)
    target = rng.standard_normal((9, 5)).astype(dtype)
    initial = [rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    finals = {}
    for device in ("cpu", "cuda"):
        params = [nd.Tensor(p.copy(), requires_grad=True, device=device) for p in initial]
        opt = OPTIMIZERS[name](optim, params)
        xs, ts = nd.Tensor(x, device=device), nd.Tensor(target, device=device)
        for _ in range(5):
            opt.zero_grad()
            loss = (((xs @ params[0] + params[1]) - ts) ** 2).mean()
            loss.backward()
            opt.step()
        assert all(p.device == device for p in params)
        if device == "cuda":
            assert all(isinstance(p.data, cp.ndarray) for p in params)
        finals[device] = [p.numpy() for p in params]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    for got, want, start in zip(finals["cuda"], finals["cpu"], initial):
        assert not np.allclose(want, start), f"{name}: the parameters did not move"
        np.testing.assert_allclose(got, want, **tol, err_msg=name)


# ---------------------------------------------------------------- models on the GPU
def _classifier(nn, seed, inputs=8, classes=3):
    nd.manual_seed(seed)
    return nn.Sequential([nn.Dense(16, activation="relu", input_dim=inputs),
                          nn.Dense(12, activation="tanh"),
                          nn.Dense(classes, activation="softmax")])


def _blobs(n=96, inputs=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centers = rng.standard_normal((classes, inputs)) * 2
    x = (centers[y] + rng.standard_normal((n, inputs))).astype(np.float32)
    return x, y.astype(np.int64)


def test_model_to_cuda_fit_evaluate_predict_save_load(tmp_path, cp):
    from nanodl import nn
    x, y = _blobs()
    results = {}
    for device in ("cpu", "cuda"):
        model = _classifier(nn, seed=0)
        model.to(device)
        assert all(p.device == device for p in model.parameters())
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        nd.manual_seed(1)
        history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=True)
        loss, accuracy = model.evaluate(x, y, batch_size=32)
        results[device] = (model, history.history["loss"], loss, accuracy, host(model.predict(x)))
    gpu_model, gpu_losses, gpu_loss, gpu_acc, gpu_pred = results["cuda"]
    _, cpu_losses, cpu_loss, cpu_acc, cpu_pred = results["cpu"]
    assert all(isinstance(p.data, cp.ndarray) for p in gpu_model.parameters())
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-3, atol=1e-5)
    assert abs(gpu_acc - cpu_acc) <= 1 / len(y) + 1e-9
    assert gpu_pred.shape == (len(x), 3)
    np.testing.assert_allclose(gpu_pred, cpu_pred, rtol=1e-3, atol=1e-4)

    path = tmp_path / "model.npz"
    gpu_model.save(path)
    restored = nd.load_model(path)  # the file does not remember the device: it loads on the CPU
    assert all(p.device == "cpu" for p in restored.parameters())
    np.testing.assert_allclose(host(restored.predict(x)), gpu_pred, rtol=1e-5, atol=1e-6)
    restored.to("cuda")
    np.testing.assert_allclose(host(restored.predict(x)), gpu_pred, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_captured_fit_on_the_gpu_matches_the_eager_fit(cp, optimizer):
    """fit(capture=True) on 'cuda' replays the GPU table's compute functions: the same
    kernels on the same arrays as the eager step, so the same bits (no CUDA graph yet)."""
    from nanodl import nn
    from nanodl.capture import CapturedStep
    x, y = _blobs(n=40)
    made = []
    original = CapturedStep.for_plan.__func__
    CapturedStep.for_plan = classmethod(lambda cls, plan: made.append(original(cls, plan)) or made[-1])
    try:
        weights, histories = [], []
        for capture in (False, True):
            model = _classifier(nn, seed=3)
            model.to("cuda")
            model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
            nd.manual_seed(1)
            histories.append(model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                                       capture=capture).history["loss"])
            weights.append([host(p.data) for p in model.parameters()])
    finally:
        CapturedStep.for_plan = classmethod(original)
    assert histories[0] == histories[1]
    for eager, captured in zip(*weights):
        np.testing.assert_array_equal(eager, captured)
    (step,) = made
    assert step.reason is None and len(step._programs) == 2  # 16 rows and the last 8
    assert step._flat is None  # the one-call update is the compiled table's


def test_model_back_to_cpu_keeps_weights(cp):
    from nanodl import nn
    x, _ = _blobs(n=10)
    model = _classifier(nn, seed=2)
    before = host(model.predict(x))
    model.to("cuda")
    on_gpu = host(model.predict(x))
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    np.testing.assert_allclose(on_gpu, before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(model.predict(x)), before, rtol=0, atol=0)


def test_digits_accuracy_on_gpu_matches_cpu(cp):
    """The embedded digits, same seed and schedule on both devices: test accuracy within 1%."""
    from nanodl import data, datasets, nn
    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, random_state=0)
    accuracy = {}
    for device in ("cpu", "cuda"):
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(64, activation="relu", input_dim=64),
                               nn.Dense(10, activation="softmax")])
        model.to(device)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0)
        accuracy[device] = model.evaluate(x_test, y_test)[1]
    assert accuracy["cuda"] >= 0.9, accuracy
    assert abs(accuracy["cuda"] - accuracy["cpu"]) <= 0.01, accuracy


def test_curvature_and_find_lr_on_the_gpu_match_the_cpu(cp):
    """hessian_eigenvalues and hessian_trace on 'cuda' agree with the CPU's (host arrays
    back); find_lr on a GPU model measures the same sharpness and leaves its weights and
    Adam state bit for bit."""
    from nanodl import losses, nn
    from nanodl.autograd.functional import hessian_eigenvalues, hessian_trace
    x, y = _blobs(n=40)
    loss = losses.SparseCategoricalCrossentropy()
    found = {}
    for device in ("cpu", "cuda"):
        model = _classifier(nn, seed=5)
        model.to(device)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        nd.manual_seed(1)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        xs, ys = nd.tensor(x, device=device), nd.tensor(y, device=device)
        fn = lambda: loss(model(xs), ys)  # noqa: E731
        values, vectors = hessian_eigenvalues(fn, model.parameters(), k=2, seed=0)
        assert all(isinstance(v, np.ndarray) for v in vectors[0])
        estimate, _ = hessian_trace(fn, model.parameters(), samples=20, seed=0)
        weights = [host(p.data) for p in model.parameters()]
        state = model.optimizer.state_dict()["state"]
        finder = model.find_lr(x, y, steps=10, batch_size=16)
        for before, p in zip(weights, model.parameters()):
            np.testing.assert_array_equal(before, host(p.data))
        for slot, arrays in model.optimizer.state_dict()["state"].items():
            for before, after in zip(state[slot], arrays):
                np.testing.assert_array_equal(before, after)
        found[device] = (values, estimate, finder.sharpness["start"])
    np.testing.assert_allclose(found["cuda"][0], found["cpu"][0], rtol=1e-3)
    np.testing.assert_allclose(found["cuda"][1:], found["cpu"][1:], rtol=1e-3)
