"""Shared test helpers: central-difference gradients and kernel-table switching."""
import contextlib

import numpy as np

import nanodl as nd
from nanodl import backend


def numerical_grads(fn, arrays, eps=1e-6):
    """d(sum(fn(*arrays) * weights))/d(array) by central differences, for every array.

    A fixed random weighting of the output turns any output shape into a scalar,
    so one vector-Jacobian product checks every output element.
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    out = np.asarray(fn(*arrays))
    weights = np.random.default_rng(1).standard_normal(out.shape)
    grads = []
    for array in arrays:
        grad = np.zeros_like(array)
        flat = array.reshape(-1)
        flat_grad = grad.reshape(-1)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + eps
            up = float((np.asarray(fn(*arrays)) * weights).sum())
            flat[i] = original - eps
            down = float((np.asarray(fn(*arrays)) * weights).sum())
            flat[i] = original
            flat_grad[i] = (up - down) / (2 * eps)
        grads.append(grad)
    return grads, weights


def analytic_grads(fn, arrays, weights):
    """The gradients nanodl's backward gives for the same weighted sum."""
    tensors = [nd.Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(np.asarray(weights, dtype=np.float64))
    return [t.grad for t in tensors]


def check_gradients(fn, arrays, atol=1e-6, rtol=1e-5):
    """Assert nanodl's gradients of ``fn`` match central differences in float64."""
    def on_arrays(*raw):
        with nd.no_grad():
            return fn(*[nd.Tensor(r) for r in raw]).data
    numeric, weights = numerical_grads(on_arrays, arrays)
    analytic = analytic_grads(fn, arrays, weights)
    for i, (num, ana) in enumerate(zip(numeric, analytic)):
        assert ana is not None, f"input {i} got no gradient"
        assert ana.shape == num.shape, f"input {i}: gradient shape {ana.shape} != {num.shape}"
        np.testing.assert_allclose(ana, num, atol=atol, rtol=rtol, err_msg=f"input {i}")


@contextlib.contextmanager
def kernels(name):
    """Use kernel table ``name`` inside the block, then restore the previous one."""
    previous = backend.get_kernels()
    backend.set_kernels(name)
    try:
        yield
    finally:
        backend.set_kernels(previous)


KERNEL_TABLES = ["numpy"] + (["native"] if backend.native_available() else [])


class Cube(nd.Function):
    """SPEC §2's example op, x ** 3, with only ``forward``/``backward``: a first-order
    custom Function (the tests derive wrong or higher-order variants from it)."""

    def forward(self, x):
        self.save_for_backward(x)
        return x ** 3

    def backward(self, grad):
        (x,) = self.saved_tensors
        return 3 * x ** 2 * grad
