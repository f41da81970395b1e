"""hessian_eigenvalues, hessian_trace and hessian_diagonal against the exact Hessian.

Every estimate is compared with ``numpy.linalg.eigvalsh`` (or the trace and the
diagonal) of the full Hessian that ``functional.hessian`` builds row by row, on
small smooth nets in float64 and on quadratics whose spectrum is known.
"""
import warnings

import numpy as np
import pytest

import nanodl as nd
import nanodl.functional as F
from nanodl import losses
from nanodl.autograd.functional import hessian, hessian_diagonal, hessian_eigenvalues, hessian_trace


def small_net(activation, seed=0, n=24, n_in=3, hidden=5, n_out=2, dtype="float64"):
    """``(params, loss_of)``: a n_in-hidden-n_out net with ``activation`` and its MSE
    loss on random data, as a function of a list of weight Tensors."""
    rng = np.random.default_rng(seed)
    x = nd.tensor(rng.standard_normal((n, n_in)), dtype=dtype)
    y = nd.tensor(rng.standard_normal((n, n_out)), dtype=dtype)
    shapes = [(n_in, hidden), (hidden,), (hidden, n_out), (n_out,)]
    params = [nd.tensor(rng.standard_normal(shape) * 0.8, dtype=dtype, requires_grad=True)
              for shape in shapes]

    def loss_of(ws):
        w1, b1, w2, b2 = ws
        return losses.mse(F.linear(F.linear(x, w1, b1, activation=activation), w2, b2), y)
    return params, loss_of


def exact_hessian(loss_of, params):
    """The full Hessian over ``params`` laid end to end (n x n)."""
    blocks = hessian(lambda *ws: loss_of(list(ws)), tuple(params))
    sizes = [p.size for p in params]
    return np.block([[blocks[i][j].numpy().reshape(sizes[i], sizes[j]) for j in range(len(params))]
                     for i in range(len(params))])


def quadratic(spectrum, seed=0):
    """``(params, fn, H)``: ``0.5 w^T H w`` over two parameters (a (2, 3) matrix and the
    rest) with H = Q diag(spectrum) Q^T for a random orthogonal Q."""
    rng = np.random.default_rng(seed)
    spectrum = np.asarray(spectrum, dtype=np.float64)
    q, _ = np.linalg.qr(rng.standard_normal((len(spectrum), len(spectrum))))
    h = (q * spectrum) @ q.T
    h = (h + h.T) / 2
    params = [nd.tensor(rng.standard_normal((2, 3)), requires_grad=True),
              nd.tensor(rng.standard_normal(len(spectrum) - 6), requires_grad=True)]
    matrix = nd.tensor(h)

    def fn():
        w = nd.concatenate([params[0].reshape(-1), params[1]])
        return 0.5 * (w * (matrix @ w)).sum()
    return params, fn, h


def flat(arrays):
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


NETS = ["tanh", "softplus", "gelu"]


@pytest.mark.parametrize("activation", NETS)
@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_eigenvalues_match_eigvalsh_of_the_exact_hessian(activation, which, method):
    params, loss_of = small_net(activation)
    h = exact_hessian(loss_of, params)
    exact = np.linalg.eigvalsh(h)
    k = 3 if method == "lanczos" else 1 if which == "smallest" else 2
    expected = exact[-k:] if which == "largest" else exact[:k]  # ascending, as eigvalsh
    values, vectors = hessian_eigenvalues(lambda: loss_of(params), params, k=k, which=which,
                                          method=method, seed=1)
    assert isinstance(values, np.ndarray) and values.dtype == np.float64 and values.shape == (k,)
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-9 * np.abs(exact).max())
    assert len(vectors) == k
    for value, vector in zip(values, vectors):
        assert [v.shape for v in vector] == [p.shape for p in params]
        v = flat(vector)
        assert abs(np.linalg.norm(v) - 1) < 1e-10
        np.testing.assert_allclose(h @ v, value * v, atol=1e-5 * np.abs(exact).max())


def test_eigenvectors_are_orthonormal_and_params_keep_no_grad():
    params, loss_of = small_net("tanh", seed=3)
    _, vectors = hessian_eigenvalues(lambda: loss_of(params), params, k=4, seed=0)
    basis = np.stack([flat(v) for v in vectors])
    np.testing.assert_allclose(basis @ basis.T, np.eye(4), atol=1e-10)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_a_quadratic_with_a_known_spectrum_repeated_and_negative(method):
    spectrum = [-3.0, -1.0, 0.5, 2.0, 2.0, 5.0, 7.0, 7.0, 7.0, 10.0]
    params, fn, h = quadratic(spectrum)
    largest, vectors = hessian_eigenvalues(fn, params, k=4, method=method, seed=0)
    np.testing.assert_allclose(largest, [7.0, 7.0, 7.0, 10.0], rtol=1e-6)
    smallest, _ = hessian_eigenvalues(fn, params, k=3, which="smallest", method=method, seed=0)
    np.testing.assert_allclose(smallest, [-3.0, -1.0, 0.5], rtol=1e-6)
    basis = np.stack([flat(v) for v in vectors])  # three independent vectors for 7, 7, 7
    np.testing.assert_allclose(basis @ h @ basis.T, np.diag(largest), atol=1e-6)


def test_lanczos_on_a_larger_quadratic_stops_early():
    spectrum = np.concatenate([np.linspace(0.0, 1.0, 390), [3.0, 5.0, 8.0]])
    params, fn, _ = quadratic(np.concatenate([spectrum, np.zeros(1)]), seed=2)
    products = []
    count_fn = lambda: (products.append(1), fn())[1]  # noqa: E731 (fn runs once: counted)
    values, _ = hessian_eigenvalues(count_fn, params, k=2, seed=0)
    np.testing.assert_allclose(values, [5.0, 8.0], rtol=1e-6)
    assert products == [1]


def test_all_eigenvalues_with_k_equal_to_the_dimension():
    params, loss_of = small_net("tanh", n_in=2, hidden=2, n_out=1)
    exact = np.linalg.eigvalsh(exact_hessian(loss_of, params))
    values, _ = hessian_eigenvalues(lambda: loss_of(params), params, k=len(exact), which="smallest",
                                    seed=0)
    np.testing.assert_allclose(values, exact, rtol=1e-6, atol=1e-12)


def test_float32_parameters_are_accurate_to_their_precision():
    params, loss_of = small_net("tanh", dtype="float32")
    params64 = [nd.tensor(p.numpy().astype(np.float64), requires_grad=True) for p in params]
    _, loss64 = small_net("tanh")
    exact = np.linalg.eigvalsh(exact_hessian(loss64, params64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32's noise floor is respected: no warning
        values, vectors = hessian_eigenvalues(lambda: loss_of(params), params, k=2, seed=0)
    np.testing.assert_allclose(values, exact[-2:], rtol=1e-4)
    assert vectors[0][0].dtype == np.float32


def test_trace_is_within_three_standard_errors_and_the_error_shrinks_as_one_over_sqrt():
    for activation in NETS:
        params, loss_of = small_net(activation, seed=4)
        exact = np.trace(exact_hessian(loss_of, params))
        estimate, std_error = hessian_trace(lambda: loss_of(params), params, samples=100, seed=0)
        assert abs(estimate - exact) <= 3 * std_error, (activation, estimate, exact, std_error)
        _, std_error_4x = hessian_trace(lambda: loss_of(params), params, samples=400, seed=1)
        assert 0.35 < std_error_4x / std_error < 0.7  # 1 / sqrt(4) = 0.5


def test_trace_std_error_matches_the_rademacher_variance():
    params, loss_of = small_net("softplus", seed=5)
    h = exact_hessian(loss_of, params)
    predicted = np.sqrt(2 * ((h ** 2).sum() - (np.diag(h) ** 2).sum()) / 2000)
    _, std_error = hessian_trace(lambda: loss_of(params), params, samples=2000, seed=0)
    assert 0.85 < std_error / predicted < 1.15


def test_diagonal_matches_the_exact_diagonal():
    params, loss_of = small_net("gelu", seed=6)
    h = exact_hessian(loss_of, params)
    samples = 1500
    diagonal = hessian_diagonal(lambda: loss_of(params), params, samples=samples, seed=0)
    assert [d.shape for d in diagonal] == [p.shape for p in params]
    off_diagonal = (h ** 2).sum(axis=1) - np.diag(h) ** 2
    error = np.abs(flat(diagonal) - np.diag(h))
    assert (error <= 4 * np.sqrt(off_diagonal / samples) + 1e-12).all()
    assert np.abs(flat(diagonal) - np.diag(h)).max() < 0.1 * np.abs(np.diag(h)).max()


def test_trace_and_diagonal_share_their_probes_for_one_seed():
    params, loss_of = small_net("tanh", seed=7)
    fn = lambda: loss_of(params)  # noqa: E731
    estimate, _ = hessian_trace(fn, params, samples=30, seed=11)
    diagonal = hessian_diagonal(fn, params, samples=30, seed=11)
    assert abs(flat(diagonal).sum() - estimate) < 1e-10 * max(1.0, abs(estimate))


def test_a_diagonal_hessian_is_estimated_exactly():
    params, fn, h = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], seed=3)
    w = params[0]
    weights = nd.tensor(np.arange(1.0, 7.0).reshape(2, 3))
    fn = lambda: (weights * w * w).sum()  # noqa: E731  (H = 2 diag(1..6))
    estimate, std_error = hessian_trace(fn, [w], samples=5, seed=0)
    assert (estimate, std_error) == (42.0, 0.0)
    np.testing.assert_array_equal(hessian_diagonal(fn, [w], samples=1, seed=0)[0], 2 * weights.numpy())


def test_seed_int_repeats_and_a_generator_is_advanced():
    params, loss_of = small_net("tanh", seed=8)
    fn = lambda: loss_of(params)  # noqa: E731
    assert hessian_trace(fn, params, samples=10, seed=3) == hessian_trace(fn, params, samples=10, seed=3)
    rng = np.random.default_rng(3)
    first = hessian_trace(fn, params, samples=10, seed=rng)
    assert first == hessian_trace(fn, params, samples=10, seed=3)
    assert hessian_trace(fn, params, samples=10, seed=rng) != first
    a, _ = hessian_eigenvalues(fn, params, seed=5)
    b, _ = hessian_eigenvalues(fn, params, seed=5)
    np.testing.assert_array_equal(a, b)


def test_a_linear_function_has_a_zero_hessian():
    w = nd.tensor([1.0, 2.0, 3.0], requires_grad=True)
    fn = lambda: (w * nd.tensor([1.0, -1.0, 2.0])).sum()  # noqa: E731
    values, vectors = hessian_eigenvalues(fn, [w], k=2)
    np.testing.assert_array_equal(values, [0.0, 0.0])
    assert hessian_trace(fn, [w], samples=3) == (0.0, 0.0)
    np.testing.assert_array_equal(hessian_diagonal(fn, [w], samples=2)[0], np.zeros(3))


def test_an_unconverged_run_warns():
    params, loss_of = small_net("tanh", seed=9)
    with pytest.warns(RuntimeWarning, match="hessian_eigenvalues: Lanczos stopped after max_iter=3"):
        hessian_eigenvalues(lambda: loss_of(params), params, k=1, max_iter=3, seed=0)
    with pytest.warns(RuntimeWarning, match="power iteration stopped after max_iter=2"):
        hessian_eigenvalues(lambda: loss_of(params), params, method="power", max_iter=2, seed=0)


@pytest.mark.parametrize("call, message", [
    (lambda fn, ps: hessian_eigenvalues(fn, ps, k=0), r"hessian_eigenvalues: k must be .*\(5\), got 0"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, k=6), r"hessian_eigenvalues: k .* got 6"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, k=1.5), r"hessian_eigenvalues: k .* got 1.5"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, which="middle"), r"which .* got 'middle'"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, method="arnoldi"), r"method .* got 'arnoldi'"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, tol=0), r"hessian_eigenvalues: tol .* got 0"),
    (lambda fn, ps: hessian_eigenvalues(fn, ps, max_iter=0), r"max_iter .* got 0"),
    (lambda fn, ps: hessian_trace(fn, ps, samples=1), r"hessian_trace: samples .* >= 2, got 1"),
    (lambda fn, ps: hessian_diagonal(fn, ps, samples=0), r"hessian_diagonal: samples .* got 0"),
    (lambda fn, ps: hessian_trace(fn, ps, seed="x"), r"hessian_trace: seed .* got 'x'"),
    (lambda fn, ps: hessian_eigenvalues(fn, []), r"hessian_eigenvalues: params is empty"),
    (lambda fn, ps: hessian_diagonal(fn, [nd.tensor([1.0])]), r"params\[0\] .* does not require grad"),
    (lambda fn, ps: hessian_trace(lambda: ps[0] * 2, ps), r"hessian_trace: fn\(\) must return a "
                                                          r"one-element Tensor, got shape \(2,\)"),
])
def test_bad_arguments_raise_value_error_naming_the_function_and_value(call, message):
    params = [nd.tensor([1.0, 2.0], requires_grad=True), nd.tensor([[3.0, 4.0, 5.0]], requires_grad=True)]
    fn = lambda: (params[0] ** 2).sum() + (params[1] ** 3).sum()  # noqa: E731
    with pytest.raises(ValueError, match=message):
        call(fn, params)


def test_wrong_types_raise_type_error():
    w = nd.tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match=r"hessian_eigenvalues: params\[0\] must be a Tensor"):
        hessian_eigenvalues(lambda: w.sum(), [np.ones(1)])
    with pytest.raises(TypeError, match="hessian_trace: fn\\(\\) must return a Tensor, got float"):
        hessian_trace(lambda: 1.0, [w])


def test_a_non_finite_loss_is_refused():
    w = nd.tensor([0.0, 1.0], requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"), \
            pytest.raises(ValueError, match="hessian_eigenvalues: a Hessian-vector product is not finite"):
        hessian_eigenvalues(lambda: (w.log() ** 2).sum(), [w])


def test_a_model_s_parameters():
    model = nd.nn.Sequential([nd.nn.Dense(4, activation="tanh", input_dim=3), nd.nn.Dense(1, input_dim=4)])
    params = model.parameters()
    for p in params:
        p.data = p.data.astype(np.float64)
    rng = np.random.default_rng(0)
    x, y = nd.tensor(rng.standard_normal((16, 3))), nd.tensor(rng.standard_normal((16, 1)))

    def loss_of(ws):
        return losses.mse(F.linear(F.linear(x, ws[0], ws[1], activation="tanh"), ws[2], ws[3]), y)
    exact = np.linalg.eigvalsh(exact_hessian(loss_of, params))
    values, _ = hessian_eigenvalues(lambda: losses.mse(model(x), y), params, k=2)
    np.testing.assert_allclose(values, exact[-2:], rtol=1e-6)
