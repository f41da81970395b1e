"""SPEC §17's ops beyond what the registry checks: erf's accuracy, prod at zeros, norm at 0,
std's ddof, cumsum's flattening, einsum's subscripts and errors.

Every one of them is also a registry entry (``nanodl.ops.registry``), so forward values,
first, second and third derivatives, both kernel tables and torch agreement are covered
in test_ops.py, test_higher.py and test_torch_ops.py.
"""
import math

import numpy as np
import pytest

import nanodl as nd
from helpers import check_gradients
from nanodl.ops.special import erf_array


def t64(values, requires_grad=True):
    return nd.Tensor(np.array(values, dtype=np.float64), requires_grad=requires_grad)


# ---------------------------------------------------------------- erf
def test_erf_is_accurate_to_1e_15_relative_everywhere():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    grid = np.concatenate([np.linspace(-7, 7, 4001), np.geomspace(1e-300, 8, 1500),
                           -np.geomspace(1e-300, 8, 1500), [1.999999999, 2.0, 2.000000001, 6.0]])
    exact = np.array([float(mpmath.erf(mpmath.mpf(float(v)))) for v in grid])
    got = erf_array(grid)
    assert got[exact == 0].tolist() == [0.0]   # x = 0
    got, exact, grid = got[exact != 0], exact[exact != 0], grid[exact != 0]
    relative = np.abs(got - exact) / np.abs(exact)
    assert relative.max() <= 1e-15, f"worst at x={grid[relative.argmax()]!r}: {relative.max():.2e}"


def test_erf_special_values_and_dtypes():
    out = erf_array(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -30.0]))
    np.testing.assert_array_equal(out[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.isnan(out[4]) and out[5] == 1.0 and out[6] == -1.0
    assert np.signbit(out[1])
    x32 = np.linspace(-3, 3, 101, dtype=np.float32)
    out32 = nd.erf(nd.tensor(x32)).data
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32, np.array([math.erf(v) for v in x32.astype(np.float64)],
                                                  dtype=np.float32))
    assert nd.erf(nd.tensor(np.float64(0.5))).shape == ()


# ---------------------------------------------------------------- prod
def _others_product(row, skip):
    return np.prod([v for k, v in enumerate(row) if k not in skip])


@pytest.mark.parametrize("row", [[2.0, 0.0, 3.0, 0.5], [0.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, 1.0],
                                 [1.5, -2.0, 0.5, 3.0]])
def test_prod_gradient_and_hessian_are_exact_with_zeros(row, kernel_table):
    x = t64(row)
    (g,) = nd.grad(x.prod(), x, create_graph=True)
    np.testing.assert_array_equal(g.data, [_others_product(row, {i}) for i in range(4)])
    hessian = np.stack([nd.grad(g[i], x, retain_graph=True)[0].data for i in range(4)])
    expected = [[0.0 if i == j else _others_product(row, {i, j}) for j in range(4)] for i in range(4)]
    np.testing.assert_array_equal(hessian, expected)


def test_prod_over_a_tuple_of_axes_and_empty_slices():
    a = np.random.default_rng(0).uniform(-2, 2, (2, 3, 4))
    a[1, 2, 3] = 0.0
    check_gradients(lambda t: t.prod(axis=(0, 2)), [a])
    empty = t64(np.zeros((3, 0)))
    out = nd.prod(empty, axis=1)
    np.testing.assert_array_equal(out.data, [1.0, 1.0, 1.0])
    out.sum().backward()
    assert empty.grad.shape == (3, 0)


# ---------------------------------------------------------------- norm
def test_norm_at_zero_has_gradient_zero_and_no_nan(kernel_table):
    x = t64(np.zeros((2, 3)))
    nd.norm(x).backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))
    rows = t64([[0.0, 0.0], [3.0, 4.0]])
    (g,) = nd.grad(nd.norm(rows, axis=1).sum(), rows, create_graph=True)
    np.testing.assert_allclose(g.data, [[0.0, 0.0], [0.6, 0.8]], rtol=1e-15)
    (h,) = nd.grad(g.sum(), rows)
    assert np.all(np.isfinite(h.data))
    # the Hessian of |x| is (I - u u^T) / |x| with u = x / |x|; summed over its columns:
    np.testing.assert_allclose(h.data[1], [(1 - 0.6 * 1.4) / 5, (1 - 0.8 * 1.4) / 5], rtol=1e-14)


def test_norm_matches_numpy_for_axes_and_keepdims():
    a = np.random.default_rng(1).standard_normal((3, 4, 5))
    x = nd.tensor(a)
    np.testing.assert_allclose(nd.norm(x).data, np.linalg.norm(a.reshape(-1)), rtol=1e-14)
    np.testing.assert_allclose(x.norm(axis=(1, 2)).data, np.linalg.norm(a, axis=(1, 2)), rtol=1e-14)
    np.testing.assert_allclose(nd.norm(x, axis=-1, keepdims=True).data,
                               np.linalg.norm(a, axis=-1, keepdims=True), rtol=1e-14)


# ---------------------------------------------------------------- std, cumsum
@pytest.mark.parametrize("axis,ddof,keepdims", [(None, 0, False), (0, 1, True), ((0, 2), 2, False),
                                                (-1, 0.5, True)])
def test_std_matches_numpy_and_differentiates(axis, ddof, keepdims):
    a = np.random.default_rng(2).standard_normal((3, 4, 5))
    out = nd.std(nd.tensor(a), axis=axis, ddof=ddof, keepdims=keepdims)
    np.testing.assert_allclose(out.data, np.std(a, axis=axis, ddof=ddof, keepdims=keepdims), rtol=1e-13)
    check_gradients(lambda t: t.std(axis=axis, ddof=ddof, keepdims=keepdims), [a])


def test_std_of_a_constant_has_a_finite_gradient_and_ddof_is_checked():
    x = t64(np.full(4, 2.5))
    nd.std(x).backward()
    assert np.all(np.isfinite(x.grad))
    with pytest.raises(ValueError, match=r"std: ddof=3 .* 3 value"):
        nd.std(t64(np.ones((2, 3))), axis=1, ddof=3)
    with pytest.raises(TypeError, match="std: ddof"):
        nd.std(t64(np.ones(3)), ddof="1")


def test_cumsum_axes_like_numpy():
    a = np.random.default_rng(3).standard_normal((2, 3, 4))
    for axis in (None, 0, 1, -1):
        np.testing.assert_allclose(nd.tensor(a).cumsum(axis).data, np.cumsum(a, axis=axis), rtol=1e-14)
    check_gradients(lambda t: nd.cumsum(t, axis=1) ** 2, [a])
    with pytest.raises(ValueError, match="cumsum: axis 3 is out of range"):
        nd.cumsum(nd.tensor(a), 3)


# ---------------------------------------------------------------- einsum
EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 2)]), ("ij,jk", [(3, 4), (4, 2)]), ("ij->ji", [(2, 3)]),
    ("ba", [(2, 3)]), ("Ba,aC", [(2, 3), (3, 4)]), ("ii", [(3, 3)]), ("ii->i", [(3, 3)]),
    ("i,j->ij", [(3,), (4,)]), ("ij->", [(2, 3)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]), ("i...->...", [(3, 2, 2)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]), ("ij,ij->i", [(1, 3), (4, 3)]),
    ("iij,j->i", [(2, 2, 3), (3,)]), (" ij , jk -> ik ", [(2, 3), (3, 2)]), (",i->i", [(), (3,)]),
]


@pytest.mark.parametrize("subscripts,shapes", EINSUMS, ids=[s for s, _ in EINSUMS])
def test_einsum_matches_numpy_and_central_differences(subscripts, shapes, kernel_table):
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(shape) for shape in shapes]
    out = nd.einsum(subscripts, *[nd.tensor(a) for a in arrays])
    np.testing.assert_allclose(out.data, np.einsum(subscripts, *arrays), rtol=1e-12, atol=1e-14)
    check_gradients(lambda *t: nd.einsum(subscripts, *t), arrays)


def test_einsum_second_derivatives_match_the_explicit_form():
    rng = np.random.default_rng(5)
    a, b = t64(rng.standard_normal((3, 3))), t64(rng.standard_normal((3, 2)))
    (ga,) = nd.grad((nd.einsum("ii,ij->j", a, b) ** 2).sum(), a, create_graph=True)
    (gb,) = nd.grad(ga.sum(), b)
    a2, b2 = t64(a.data), t64(b.data)
    diagonal = (a2 * nd.tensor(np.eye(3))).sum(axis=1)
    (ga2,) = nd.grad((((diagonal.reshape(3, 1) * b2).sum(axis=0)) ** 2).sum(), a2, create_graph=True)
    (gb2,) = nd.grad(ga2.sum(), b2)
    np.testing.assert_allclose(ga.data, ga2.data, rtol=1e-12)
    np.testing.assert_allclose(gb.data, gb2.data, rtol=1e-12)


@pytest.mark.parametrize("subscripts,shapes,message", [
    ("ij,jk->ik", [(3, 4), (5, 2)], "letter 'j' has sizes 4 and 5"),
    ("ij,jk", [(3, 4)], "2 operand subscripts for 1 operands"),
    ("ijk", [(3, 4)], "'ijk' do not match a 2-d operand"),
    ("ij->k", [(3, 4)], "output subscripts 'k'"),
    ("ij->ii", [(3, 3)], "repeat a letter"),
    ("i1", [(3, 4)], "only letters"),
    ("...ij->ij", [(2, 3, 4)], "'...' axes the output does not name"),
])
def test_einsum_bad_subscripts_raise_value_error_naming_einsum(subscripts, shapes, message):
    with pytest.raises(ValueError, match="einsum: ") as caught:
        nd.einsum(subscripts, *[nd.ones(shape) for shape in shapes])
    assert message in str(caught.value) and str(shapes[0]) in str(caught.value)


def test_einsum_lifts_arrays_and_keeps_float32():
    x = nd.tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    out = nd.einsum("ij,j->i", x, np.arange(3.0))
    assert out.dtype == np.float32 or out.dtype == np.float64
    out.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [[0, 1, 2], [0, 1, 2]])


# ---------------------------------------------------------------- methods and create_graph
def test_tensor_methods_and_nd_functions_are_the_same_ops():
    a = np.random.default_rng(6).uniform(0.1, 0.9, (2, 3))
    x = nd.tensor(a)
    for name in ("sin", "cos", "log1p", "expm1", "erf"):
        np.testing.assert_array_equal(getattr(x, name)().data, getattr(nd, name)(x).data)
    np.testing.assert_array_equal(x.prod(axis=0).data, a.prod(axis=0))
    np.testing.assert_array_equal(x.cumsum(1).data, np.cumsum(a, 1))
    np.testing.assert_allclose(x.std(ddof=1).data, a.std(ddof=1), rtol=1e-14)


def test_a_sine_network_has_a_pde_residual_with_create_graph():
    """u(x) = sum sin(w x + b): u'' = -sum w^2 sin(w x + b), by nd.grad twice (a SIREN's check)."""
    rng = np.random.default_rng(7)
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    x = t64(rng.standard_normal((4, 1)))
    u = (x * nd.tensor(w) + nd.tensor(b)).sin().sum()
    (du,) = nd.grad(u, x, create_graph=True)
    (ddu,) = nd.grad(du.sum(), x)
    expected = -(w ** 2 * np.sin(x.data * w + b)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ddu.data, expected, rtol=1e-12)
