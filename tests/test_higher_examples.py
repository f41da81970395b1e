"""The higher-order examples, run small: WGAN-GP, the Poisson PINN and the Hessian tour.

``tests/test_examples.py`` runs each script whole (in its quick configuration); here
their parts are imported and checked against what they claim: the gradient norm on
interpolates moves toward 1, the PINN's error falls, the Hessian and its top
eigenvalue match closed forms and ``numpy.linalg.eigvalsh``, Newton-CG converges.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ WGAN-GP
def test_gradient_penalty_of_a_linear_critic_has_the_closed_form_gradient():
    """D(x) = x·w + b: ∇x D = w everywhere, so d(λ (‖w‖ - 1)²)/dw = 2λ (‖w‖ - 1) w / ‖w‖."""
    wgan = load("wgan_gp")
    critic = nd.nn.Sequential([nd.nn.Dense(1, input_dim=2)])
    kernel, bias = critic.parameters()
    kernel.data = np.array([[1.5], [-2.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    real, fake = wgan.eight_gaussians(16, rng), wgan.eight_gaussians(16, rng)
    gp, mean_norm = wgan.gradient_penalty(critic, real, fake, rng)
    (10.0 * gp).backward()
    w = kernel.data.reshape(-1).astype(np.float64)
    norm = np.linalg.norm(w)
    assert mean_norm == pytest.approx(norm, rel=1e-6)
    np.testing.assert_allclose(kernel.grad.reshape(-1), 2 * 10.0 * (norm - 1) * w / norm, rtol=1e-5)
    assert bias.grad is None or np.all(bias.grad == 0)       # ∇x D does not depend on b


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_wgan_gp_pulls_the_gradient_norm_on_interpolates_toward_1(activation):
    wgan = load("wgan_gp")
    lines = []
    _, history = wgan.train(steps=40, batch=64, width=64, activation=activation, log=lines.append)
    norms = [norm for _, _, norm in history]
    assert abs(norms[-1] - 1) < 0.5 * abs(norms[0] - 1), norms
    assert all(np.isfinite([w for _, w, _ in history]))
    assert "Wasserstein estimate" in lines[0] and "on interpolates" in lines[0]


def test_wgan_gp_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path, capsys):
    wgan = load("wgan_gp")
    path = tmp_path / "samples.png"
    assert wgan.main(["--steps", "2", "--batch", "16", "--width", "16", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "needs matplotlib" in out and not path.exists()
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"saved {path}" in out


# ------------------------------------------------------------------ PINN
def test_pinn_residual_of_closed_form_solutions():
    """N(x) = x gives u = x - x³, -u'' = 6x; N(x) = 3 gives u = 3 (1 - x²), -u'' = 6."""
    pinn = load("pinn_poisson")
    points = np.linspace(-1, 1, 9).reshape(-1, 1)
    x = nd.tensor(points, requires_grad=True)
    source = np.pi ** 2 * np.sin(np.pi * points)
    np.testing.assert_allclose(pinn.residual(lambda t: t, x).numpy(), 6 * points - source, atol=1e-12)
    np.testing.assert_allclose(pinn.residual(lambda t: t * 0 + 3, x).numpy(), 6 - source, atol=1e-12)
    assert x.grad is None                                   # nd.grad touches no .grad


def test_pinn_u_xx_of_a_tanh_net_matches_central_differences():
    pinn = load("pinn_poisson")
    nd.manual_seed(0)
    nd.set_default_dtype("float64")
    try:
        net = pinn.make_net(8, 2)
    finally:
        nd.set_default_dtype("float32")
    points = np.linspace(-0.8, 0.8, 5).reshape(-1, 1)
    x = nd.tensor(points, requires_grad=True)
    residual = pinn.residual(net, x).numpy()

    def u(values):
        with nd.no_grad():
            return pinn.solution(net, nd.tensor(values)).numpy()
    h = 1e-4
    u_xx = (u(points + h) - 2 * u(points) + u(points - h)) / h ** 2
    np.testing.assert_allclose(residual, -u_xx - np.pi ** 2 * np.sin(np.pi * points), atol=1e-5)


def test_pinn_error_falls_in_a_short_run():
    pinn = load("pinn_poisson")
    _, history = pinn.train(steps=400, log=lambda line: None)
    errors = [error for _, _, error in history]
    assert errors[-1] < 0.05 < errors[0], errors
    assert nd.get_default_dtype() == np.float32        # the example puts the default back


# ------------------------------------------------------------------ Hessian
def test_rosenbrock_hessian_at_the_minimum():
    hessian = load("hessian")
    from nanodl.autograd import functional
    h = functional.hessian(hessian.rosenbrock, nd.tensor([1.0, 1.0], dtype="float64")).numpy()
    np.testing.assert_allclose(h, [[802.0, -400.0], [-400.0, 200.0]], rtol=1e-12)


def test_power_iteration_on_hvp_finds_the_top_eigenvalue():
    hessian = load("hessian")
    from nanodl.autograd import functional
    loss, theta = hessian.small_model_loss(seed=1)
    full = functional.hessian(loss, theta).numpy()
    assert full.shape == (theta.size, theta.size)
    np.testing.assert_allclose(full, full.T, atol=1e-10)
    exact = np.linalg.eigvalsh(full)
    top = exact[np.abs(exact).argmax()]
    assert hessian.top_eigenvalue(loss, theta, iterations=200) == pytest.approx(top, rel=1e-4)


def test_newton_cg_reaches_rosenbrocks_minimum():
    hessian = load("hessian")
    point, steps = hessian.minimize_newton_cg(hessian.rosenbrock, [-1.2, 1.0])
    np.testing.assert_allclose(point, [1.0, 1.0], atol=1e-6)
    assert 0 < steps < 100
