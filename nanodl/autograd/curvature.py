"""The curvature of a scalar loss ``fn()`` over ``params`` from Hessian-vector products
alone (H is never formed). ``seed`` is anything ``numpy.random.default_rng`` takes. See
``docs/curvature.md``.

>>> import numpy as np, nanodl as nd
>>> w = nd.tensor([1.0, 1.0, 1.0], dtype="float64", requires_grad=True)
>>> fn = lambda: (nd.tensor([1.0, 2.0, 5.0], dtype="float64") * w ** 2).sum()  # H = diag(2, 4, 10)
>>> values, vectors = hessian_eigenvalues(fn, [w], k=2)
>>> np.round(values, 8).tolist(), np.round(np.abs(vectors[1][0]), 8).tolist()
([4.0, 10.0], [0.0, 0.0, 1.0])
>>> hessian_trace(fn, [w], samples=10, seed=0)  # exact: a diagonal H has no probe noise
(16.0, 0.0)
"""
import math
import warnings

import numpy as np

from .higher import grad
from .mode import enable_grad
from ..backend import to_device, to_host
from ..tensor import Tensor

__all__ = ["hessian_eigenvalues", "hessian_trace", "hessian_diagonal"]

WHICH = ("largest", "smallest")
METHODS = ("lanczos", "power")
POWER_ITERATIONS = 10000  # power iteration's default max_iter, per eigenvalue


def hessian_eigenvalues(fn, params, k=1, which="largest", method="lanczos", tol=1e-8,
                        max_iter=None, seed=None):
    """The k extreme eigenvalues of the Hessian of ``fn()`` and their eigenvectors.

    Returns the k largest (or ``which='smallest'``) eigenvalues ascending, as float64
    (``eigvalsh(H)[-k:]`` or ``[:k]``), and their unit eigenvectors, each a list of host
    arrays shaped like ``params``. ``tol`` is relative to the largest eigenvalue seen;
    ``max_iter`` bounds the products (default ``min(n, max(300, 20 k))`` for Lanczos,
    10000 per eigenvalue for power). Unconverged warns.

    >>> import nanodl as nd
    >>> w = nd.tensor([0.5, -0.5], dtype="float64", requires_grad=True)
    >>> fn = lambda: (w[0] * w[1]) + w[0] ** 2       # H = [[2, 1], [1, 0]]: 1 +- sqrt(2)
    >>> values, _ = hessian_eigenvalues(fn, [w], which="smallest", method="power", seed=0)
    >>> round(float(values[0]), 10)
    -0.4142135624
    """
    who = "hessian_eigenvalues"
    params = _check_params(params, who)
    n = sum(int(p.size) for p in params)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"{who}: k must be an integer from 1 to the number of parameters ({n}), "
                         f"got {k!r}")
    if which not in WHICH:
        raise ValueError(f"{who}: which must be 'largest' or 'smallest', got {which!r}")
    if method not in METHODS:
        raise ValueError(f"{who}: method must be 'lanczos' or 'power', got {method!r}")
    tol = _check_tol(tol, who)
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
                                 or max_iter < 1):
        raise ValueError(f"{who}: max_iter must be None or a positive integer, got {max_iter!r}")
    rng = _generator(seed, who)
    operator = _HessianOperator(fn, params, who)
    tol = max(tol, 100 * operator.eps)
    if method == "lanczos":
        steps = min(n, max(300, 20 * int(k))) if max_iter is None else min(int(max_iter), n)
        values, vectors = _lanczos(operator, int(k), which, tol, max(steps, int(k)), rng)
    else:
        steps = POWER_ITERATIONS if max_iter is None else int(max_iter)
        values, vectors = _power(operator, int(k), which, tol, steps, rng)
    order = np.argsort(values, kind="stable")
    return values[order], [operator.split(vectors[i]) for i in order]


def hessian_trace(fn, params, samples=100, seed=None):
    """``(estimate, std_error)`` of ``trace(H)`` by Hutchinson's estimator.

    The mean of ``z^T H z`` over ``samples`` (at least 2) Rademacher probes z.

    >>> import nanodl as nd
    >>> w = nd.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    >>> fn = lambda: (w[0] * w[1]) + w[0] ** 2          # H = [[2, 1], [1, 0]], trace 2
    >>> estimate, std_error = hessian_trace(fn, [w], samples=400, seed=0)
    >>> abs(estimate - 2.0) < 3 * std_error, round(std_error, 2)    # one probe's std: 2
    (True, 0.1)
    """
    _, probed = _probed(fn, params, samples, seed, 2, "hessian_trace")
    values = np.array([z @ hz for z, hz in probed])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def hessian_diagonal(fn, params, samples=100, seed=None):
    """Hutchinson's estimate of ``diag(H)``: host arrays shaped like ``params``.

    The mean of ``z * (H z)``; the same seed gives the same probes as ``hessian_trace``.

    >>> import nanodl as nd
    >>> w = nd.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    >>> [d.tolist() for d in hessian_diagonal(lambda: (w ** 3).sum(), [w], samples=1, seed=0)]
    [[6.0, 12.0]]
    """
    operator, probed = _probed(fn, params, samples, seed, 1, "hessian_diagonal")
    return operator.split(sum(z * hz for z, hz in probed) / int(samples))


def _probed(fn, params, samples, seed, least, who):
    """The operator, and ``(z, H z)`` for ``samples`` Rademacher probes z, lazily."""
    params = _check_params(params, who)
    samples = _check_samples(samples, least, who)
    rng = _generator(seed, who)
    operator = _HessianOperator(fn, params, who)
    probes = (rng.integers(0, 2, size=operator.n) * 2.0 - 1.0 for _ in range(samples))
    return operator, ((z, operator(z)) for z in probes)


# ------------------------------------------------------------------ v -> H v
class _HessianOperator:
    """``H v`` for flat float64 host vectors v (``params`` end to end): one walk through
    the kept graph of ``fn``'s gradient."""

    def __init__(self, fn, params, who):
        self.params, self.who = params, who
        self.sizes = [int(p.size) for p in params]
        self.bounds = np.cumsum([0] + self.sizes)
        self.n = int(self.bounds[-1])
        self.eps = max(float(np.finfo(p.dtype).eps) for p in params)
        with enable_grad():
            out = fn()
        if not isinstance(out, Tensor):
            raise TypeError(f"{who}: fn() must return a Tensor, got {type(out).__name__}")
        if out.size != 1:
            raise ValueError(f"{who}: fn() must return a one-element Tensor, got shape {out.shape}")
        self.gradients = []  # (gradient Tensor with a graph, index of its parameter)
        if out.requires_grad:
            first = grad(out, params, create_graph=True, allow_unused=True)
            self.gradients = [(g, i) for i, g in enumerate(first) if g is not None and g.requires_grad]

    def __call__(self, vector):
        product = np.zeros(self.n)
        if not self.gradients:  # fn is at most linear in params: H = 0
            return product
        directions = [to_device(self.piece(vector, i).astype(self.params[i].dtype), self.params[i].device)
                      for _, i in self.gradients]
        products = grad([g for g, _ in self.gradients], self.params, directions, retain_graph=True,
                        allow_unused=True)
        for i, hv in enumerate(products):
            if hv is not None:
                product[self.bounds[i]:self.bounds[i + 1]] = to_host(hv.data).ravel()
        if not np.isfinite(product).all():
            raise ValueError(f"{self.who}: a Hessian-vector product is not finite (is fn() finite "
                             "at these params?)")
        return product

    def piece(self, vector, i):
        return vector[self.bounds[i]:self.bounds[i + 1]].reshape(self.params[i].shape)

    def split(self, vector):
        """A flat vector as host arrays shaped (and typed) like ``params``."""
        return [self.piece(vector, i).astype(p.dtype) for i, p in enumerate(self.params)]


# ------------------------------------------------------------------ Lanczos
def _lanczos(operator, k, which, tol, steps, rng):
    """Lanczos with full reorthogonalisation: ``(values, unit vectors)`` of the k wanted
    Ritz pairs after at most ``steps`` products."""
    n = operator.n
    basis = np.empty((min(steps, 32), n))  # grown as needed: max_iter bounds, not allocates
    alphas, betas = np.zeros(steps), np.zeros(steps)  # betas[j]: coupling of vectors j and j+1
    least = min(n, steps, max(2 * k, k + 10))  # a few extra vectors before trusting convergence
    q, scale = _unit(rng.standard_normal(n)), 0.0
    for j in range(steps):
        if j == len(basis):
            basis = np.concatenate([basis, np.empty((min(steps, 2 * j) - j, n))])
        basis[j] = q
        w = operator(q)
        alphas[j] = q @ w
        for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        betas[j] = np.linalg.norm(w)
        scale = max(scale, abs(alphas[j]), betas[j])
        closed = betas[j] <= n * np.finfo(float).eps * max(scale, 1e-300)
        if j + 1 == n or j + 1 == steps or (j + 1 >= least and not closed and _checkpoint(j + 1)):
            values, ritz = np.linalg.eigh(np.diag(alphas[:j + 1]) + np.diag(betas[:j], 1)
                                          + np.diag(betas[:j], -1))  # the tridiagonal matrix
            scale = max(scale, float(np.abs(values).max()))
            wanted = np.arange(len(values))[:k] if which == "smallest" else np.arange(len(values))[-k:]
            residuals = betas[j] * np.abs(ritz[-1, wanted])
            if j + 1 == n or residuals.max() <= tol * scale:
                break
        if closed:  # an invariant subspace: go on from a fresh direction orthogonal to it
            betas[j] = 0.0
            w = rng.standard_normal(n)
            for _ in range(2):
                w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
            q = _unit(w)
        else:
            q = w / betas[j]
    else:
        warnings.warn(f"hessian_eigenvalues: Lanczos stopped after max_iter={steps} products with "
                      f"a residual of {residuals.max():.3g} (tol x scale = {tol * scale:.3g}); "
                      "raise max_iter or tol", RuntimeWarning, stacklevel=3)
    vectors = [_unit(basis[:j + 1].T @ ritz[:, i]) for i in wanted]
    return values[wanted], vectors


def _checkpoint(size):
    """Test convergence at this basis size? Each up to 16, then about every eighth."""
    return size <= 16 or size % (size // 8) == 0


# ------------------------------------------------------------------ power iteration
def _power(operator, k, which, tol, steps, rng):
    """Power iteration with a shift and deflation: ``(values, unit vectors)``. A run on H
    finds rho, the largest magnitude; the rest come from ``H +- rho I``."""
    sign = 1.0 if which == "largest" else -1.0
    value, vector = _power_run(operator, 0.0, [], tol, 0.0, steps, rng)
    found = [(value, vector)] if sign * value >= 0 or operator.n == 1 else []
    rho = abs(value)
    while len(found) < k:
        value, vector = _power_run(operator, sign * rho, [v for _, v in found], tol, rho, steps, rng)
        found.append((value, vector))
    return np.array([value for value, _ in found]), [vector for _, vector in found]


def _power_run(operator, shift, deflate, tol, scale, steps, rng):
    """``(eigenvalue of H, unit vector)`` of ``H + shift I`` outside ``deflate``."""
    def project(v):
        for u in deflate:
            v = v - (u @ v) * u
        return v

    v = _unit(project(rng.standard_normal(operator.n)))
    for _ in range(steps):
        w = project(operator(v) + shift * v)
        theta = v @ w
        residual = np.linalg.norm(w - theta * v)
        size = max(scale, abs(theta - shift))
        norm = np.linalg.norm(w)
        if residual <= tol * size or norm == 0.0:
            break
        v = w / norm
    else:
        warnings.warn(f"hessian_eigenvalues: power iteration stopped after max_iter={steps} products "
                      f"with a residual of {residual:.3g} (tol x scale = {tol * size:.3g}); raise "
                      "max_iter or tol, or use method='lanczos'", RuntimeWarning, stacklevel=4)
    return float(theta - shift), v


# ------------------------------------------------------------------ shared steps
def _unit(vector):
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _check_params(params, who):
    if isinstance(params, Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{who}: params must be a list of Tensors, got {type(params).__name__}") from None
    if not params:
        raise ValueError(f"{who}: params is empty")
    for index, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: params[{index}] must be a Tensor, got {type(p).__name__}")
        if p.dtype.kind != "f":
            raise TypeError(f"{who}: params[{index}] must be a float Tensor, got {p.dtype}")
        if not p.requires_grad:
            raise ValueError(f"{who}: params[{index}] (shape {p.shape}) does not require grad; "
                             "fn() must be built from Tensors that do")
    return params


def _check_tol(tol, who):
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: tol must be a number, got {tol!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{who}: tol must be in (0, 1), got {tol!r}")
    return value


def _check_samples(samples, least, who):
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < least:
        raise ValueError(f"{who}: samples must be an integer >= {least}, got {samples!r}")
    return int(samples)


def _generator(seed, who):
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: seed must be None, a non-negative integer or a "
                         f"numpy.random.Generator, got {seed!r}") from None
