"""Tests for nanodl.losses: values vs NumPy formulas, reductions, shapes, stability."""
import numpy as np
import pytest

import nanodl as nd
from nanodl import losses

from helpers import check_gradients

RNG = np.random.default_rng(0)
PRED = RNG.standard_normal((6, 3))
TARGET = RNG.standard_normal((6, 3))
LOGITS = RNG.standard_normal((6, 4)) * 3
LABELS = np.array([0, 3, 1, 2, 3, 0])
ONE_HOT = np.eye(4)[LABELS]
EPS = 1e-7


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_huber(d, delta=1.0):
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def reduce(values, reduction):
    return {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]


def t64(array):
    return nd.tensor(np.asarray(array, dtype=np.float64))


REGRESSION = [
    ("mse", losses.mse, losses.MeanSquaredError, lambda p, t: (p - t) ** 2, {}),
    ("mae", losses.mae, losses.MeanAbsoluteError, lambda p, t: np.abs(p - t), {}),
    ("huber", losses.huber, losses.Huber, lambda p, t: np_huber(p - t, 0.7), {"delta": 0.7}),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, function, cls, reference, options", REGRESSION)
def test_regression_losses_match_numpy(name, function, cls, reference, options, reduction):
    expected = reduce(reference(PRED, TARGET), reduction)
    value = function(t64(PRED), t64(TARGET), reduction=reduction, **options)
    np.testing.assert_allclose(value.data, expected, rtol=1e-12)
    value = cls(reduction=reduction, **options)(t64(PRED), TARGET)  # a plain array target works
    np.testing.assert_allclose(value.data, expected, rtol=1e-12)


def test_huber_gradient():
    check_gradients(lambda p: losses.huber(p, t64(TARGET), delta=0.7, reduction="none"), [PRED])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_crossentropy_matches_numpy(reduction):
    probs = 1 / (1 + np.exp(-PRED))
    probs[0, 0] = 0.0  # clipped to EPS
    target = (TARGET > 0).astype(np.float64)
    clipped = np.clip(probs, EPS, 1 - EPS)
    expected = -(target * np.log(clipped) + (1 - target) * np.log(1 - clipped))
    value = losses.binary_crossentropy(t64(probs), t64(target), reduction=reduction)
    np.testing.assert_allclose(value.data, reduce(expected, reduction), rtol=1e-10)
    value = losses.BinaryCrossentropy(reduction=reduction)(t64(probs), t64(target))
    np.testing.assert_allclose(value.data, reduce(expected, reduction), rtol=1e-10)


def test_binary_crossentropy_from_logits_matches_probabilities_and_is_stable():
    target = (TARGET > 0).astype(np.float64)
    from_logits = losses.binary_crossentropy(t64(PRED), t64(target), from_logits=True, reduction="none")
    composed = losses.binary_crossentropy(t64(1 / (1 + np.exp(-PRED))), t64(target), reduction="none")
    np.testing.assert_allclose(from_logits.data, composed.data, rtol=1e-9)
    extreme = nd.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    loss = losses.binary_crossentropy(extreme, nd.tensor([0.0, 1.0, 1.0, 0.0]), from_logits=True,
                                      reduction="sum")
    loss.backward()
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(2e4, rel=1e-6)
    np.testing.assert_allclose(extreme.grad, [1.0, -1.0, 0.0, 0.0], atol=1e-6)  # sigmoid(x) - t


def test_binary_crossentropy_from_logits_gradient():
    target = t64((TARGET > 0).astype(np.float64))
    check_gradients(lambda x: losses.binary_crossentropy(x, target, from_logits=True, reduction="none"),
                    [PRED])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_categorical_crossentropy_matches_numpy(reduction):
    probs = np.exp(np_log_softmax(LOGITS))
    expected = -(ONE_HOT * np.log(np.clip(probs, EPS, 1 - EPS))).sum(-1)
    value = losses.categorical_crossentropy(t64(probs), ONE_HOT, reduction=reduction)
    np.testing.assert_allclose(value.data, reduce(expected, reduction), rtol=1e-10)
    exact = -(ONE_HOT * np_log_softmax(LOGITS)).sum(-1)
    value = losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)(t64(LOGITS), ONE_HOT)
    np.testing.assert_allclose(value.data, reduce(exact, reduction), rtol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sparse_categorical_crossentropy_matches_numpy(reduction):
    exact = -np_log_softmax(LOGITS)[np.arange(6), LABELS]
    value = losses.sparse_categorical_crossentropy(t64(LOGITS), LABELS, from_logits=True,
                                                   reduction=reduction)
    np.testing.assert_allclose(value.data, reduce(exact, reduction), rtol=1e-10)
    probs = np.exp(np_log_softmax(LOGITS))
    value = losses.SparseCategoricalCrossentropy(reduction=reduction)(t64(probs), LABELS)
    np.testing.assert_allclose(value.data, reduce(exact, reduction), rtol=1e-9)


def test_fused_cross_entropy_equals_composed_with_gradients():
    def grads(fn):
        logits = t64(LOGITS)
        logits.requires_grad = True
        fn(logits).backward()
        return logits.grad

    fused_sparse = grads(lambda z: losses.sparse_categorical_crossentropy(z, LABELS, from_logits=True))
    fused_dense = grads(lambda z: losses.categorical_crossentropy(z, ONE_HOT, from_logits=True))
    composed = grads(lambda z: -(z.log_softmax() * t64(ONE_HOT)).sum(axis=-1).mean())
    via_probs = grads(lambda z: losses.sparse_categorical_crossentropy(z.softmax(), LABELS))
    for grad in (fused_sparse, fused_dense, via_probs):
        np.testing.assert_allclose(grad, composed, rtol=1e-7, atol=1e-10)


def test_cross_entropy_gradients():
    check_gradients(lambda z: losses.categorical_crossentropy(z.softmax(), ONE_HOT, reduction="none"),
                    [LOGITS])
    check_gradients(lambda z: losses.sparse_categorical_crossentropy(z, LABELS, from_logits=True,
                                                                     reduction="none"), [LOGITS])


def test_cross_entropy_from_logits_is_stable_at_1e4():
    logits = nd.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]])
    sparse = losses.sparse_categorical_crossentropy(logits, [1, 1], from_logits=True, reduction="none")
    np.testing.assert_allclose(sparse.data, [2e4, 0.0], rtol=1e-6)
    dense = losses.categorical_crossentropy(logits, np.eye(3)[[0, 2]], from_logits=True,
                                            reduction="none")
    np.testing.assert_allclose(dense.data, [0.0, 5e3], rtol=1e-6)
    probs = losses.categorical_crossentropy(logits.softmax(), np.eye(3)[[1, 1]])
    assert np.isfinite(probs.item())  # clipped: -log(1e-7) at worst
    assert probs.item() == pytest.approx(-np.log(EPS) / 2, rel=1e-3)


@pytest.mark.parametrize("call", [
    lambda: losses.mse(nd.zeros((4, 1)), nd.zeros(4)),
    lambda: losses.mae(nd.zeros(4), nd.zeros((4, 1))),
    lambda: losses.huber(nd.zeros((2, 3)), nd.zeros((3, 2))),
    lambda: losses.binary_crossentropy(nd.zeros((4, 1)), nd.zeros(4)),
    lambda: losses.categorical_crossentropy(nd.zeros((4, 3)), np.zeros(4)),
    lambda: losses.sparse_categorical_crossentropy(nd.zeros((4, 3)), np.zeros((4, 1), dtype=int)),
    lambda: losses.sparse_categorical_crossentropy(nd.zeros(4), np.zeros(4, dtype=int)),
])
def test_shape_mismatch_names_the_loss_and_both_shapes(call):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "crossentropy" in message or "mse" in message or "mae" in message or "huber" in message
    assert message.count("(") >= 2


def test_mse_shape_message():
    with pytest.raises(ValueError, match=r"mse: pred shape \(4, 1\) and target shape \(4,\)"):
        losses.mse(nd.zeros((4, 1)), nd.zeros(4))


def test_sparse_labels_are_checked():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.sparse_categorical_crossentropy(nd.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.sparse_categorical_crossentropy(nd.zeros((2, 3)), [-1, 0])
    with pytest.raises(ValueError, match="integer"):
        losses.sparse_categorical_crossentropy(nd.zeros((2, 3)), [0.5, 1.0])
    value = losses.sparse_categorical_crossentropy(nd.zeros((2, 3)), np.array([0.0, 2.0]),
                                                   from_logits=True)
    assert value.item() == pytest.approx(np.log(3), rel=1e-6)


def test_unknown_reduction_and_name():
    with pytest.raises(ValueError, match="none"):
        losses.mse(nd.zeros(2), nd.zeros(2), reduction="avg")
    with pytest.raises(ValueError, match="none"):
        losses.Huber(reduction="avg")
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        losses.get("cross_entropy")
    assert losses.get("mse") is losses.mse and losses.get("mean_squared_error") is losses.mse
    custom = lambda p, t: (p - t).abs().sum()  # noqa: E731
    assert losses.get(custom) is custom


def test_float32_stays_float32():
    pred = nd.tensor([[0.2, 0.8]])
    assert losses.mse(pred, np.array([[0.0, 1.0]])).dtype == np.float32
    assert losses.binary_crossentropy(pred, np.array([[0.0, 1.0]])).dtype == np.float32
    assert losses.sparse_categorical_crossentropy(pred, [1], from_logits=True).dtype == np.float32


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("labels", [[0, 3], [0, -1]])
def test_sparse_labels_out_of_range_raise(labels, from_logits, kernel_table):
    pred = nd.tensor(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.sparse_categorical_crossentropy(pred, np.array(labels), from_logits=from_logits)


def test_binary_crossentropy_from_logits_gradient_at_zero():
    """Issue 9 item 1: at z = 0 the gradient is sigmoid(0) - t, not -1 / 0."""
    z = nd.tensor(np.zeros(3), requires_grad=True)
    losses.binary_crossentropy(z, np.array([1.0, 0.0, 0.25]), from_logits=True, reduction="sum").backward()
    np.testing.assert_allclose(z.grad, [-0.5, 0.5, 0.25], rtol=1e-12)
    # logistic regression from zero weights takes the right first step
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [2.0, -1.0]])
    y = np.array([1.0, 0.0, 1.0])
    w = nd.tensor(np.zeros(2), requires_grad=True)
    losses.binary_crossentropy(nd.tensor(x) @ w, y, from_logits=True).backward()
    np.testing.assert_allclose(w.grad, x.T @ (0.5 - y) / 3, rtol=1e-12)


def test_huber_gradient_is_the_clipped_error_everywhere():
    d = np.array([-2.0, -0.75, -0.3, 0.0, 0.3, 0.75, 2.0])
    pred = nd.tensor(d.copy(), requires_grad=True)
    losses.huber(pred, np.zeros(7), delta=0.75, reduction="sum").backward()
    np.testing.assert_allclose(pred.grad, np.clip(d, -0.75, 0.75), rtol=1e-12)


def test_mae_gradient_at_equality_is_zero():
    pred = nd.tensor(np.array([1.0, 2.0]), requires_grad=True)
    losses.mae(pred, np.array([1.0, 0.0]), reduction="sum").backward()
    np.testing.assert_array_equal(pred.grad, [0, 1])
