"""Weighted training (SPEC §15): ``fit(class_weight=, sample_weight=)`` and
``evaluate(sample_weight=)`` with Keras semantics: the loss is the mean over samples of
weight x loss, metrics are weighted means, for every built-in loss (the fused
softmax/sigmoid heads included), with validation_split and validation_data."""
import numpy as np
import pytest

import nanodl as nd
from nanodl import losses, nn, optim


@pytest.fixture
def float64():
    nd.set_default_dtype("float64")
    yield
    nd.set_default_dtype("float32")


def data(n=12, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    y = rng.integers(0, classes, n)
    w = rng.uniform(0.1, 3.0, n)
    return x, y, w


def frozen(model, loss, metrics=None):
    """Compiled with SGD(lr=0): fit reports the loss of fixed weights."""
    nd.manual_seed(0)
    model.compile(optimizer=optim.SGD(lr=0.0), loss=loss, metrics=metrics)
    return model


# (model head, loss name, target builder, per-sample loss from predictions)
def _xent(p, y):
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1 - 1e-7))


def _bce(p, t):
    p = np.clip(p[:, 0], 1e-7, 1 - 1e-7)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _huber(p, t, delta=1.0):
    err = np.abs(p - t)
    return np.where(err <= delta, 0.5 * err ** 2, delta * (err - 0.5 * delta)).mean(axis=1)


CASES = {
    "sparse (fused softmax)": (lambda: nn.Dense(3, activation="softmax"),
                               "sparse_categorical_crossentropy", lambda y: y, _xent),
    "categorical (fused softmax)": (lambda: nn.Dense(3, activation="softmax"), "categorical_crossentropy",
                                    lambda y: np.eye(3)[y], lambda p, t: _xent(p, t.argmax(1))),
    "sparse from logits": (lambda: nn.Dense(3), losses.SparseCategoricalCrossentropy(from_logits=True),
                           lambda y: y, None),
    "binary (fused sigmoid)": (lambda: nn.Dense(1, activation="sigmoid"), "binary_crossentropy",
                               lambda y: (y > 0).astype(float), _bce),
    "mse": (lambda: nn.Dense(2), "mse", lambda y: np.stack([y, -y], 1).astype(float),
            lambda p, t: ((p - t) ** 2).mean(1)),
    "mae": (lambda: nn.Dense(2), "mae", lambda y: np.stack([y, -y], 1).astype(float),
            lambda p, t: np.abs(p - t).mean(1)),
    "huber": (lambda: nn.Dense(2), "huber", lambda y: np.stack([y, 2 * y], 1).astype(float), _huber),
}


def _per_sample_from_logits(model, x, y):
    z = model.predict(x)
    z = z - z.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


@pytest.mark.parametrize("case", CASES)
def test_weighted_loss_matches_a_hand_computation(case, float64):
    head, loss, target, per_sample = CASES[case]
    x, y, w = data()
    t = target(y)
    model = frozen(nn.Sequential([nn.Dense(5, activation="tanh"), head()]), loss)
    model.build((None, 4))
    if per_sample is None:
        expected_each = _per_sample_from_logits(model, x, y)
    else:
        expected_each = per_sample(model.predict(x), t)
    expected = float((w * expected_each).mean())
    assert model.evaluate(x, t, sample_weight=w, batch_size=5) == pytest.approx(expected, rel=1e-9)
    history = model.fit(x, t, sample_weight=w, batch_size=5, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-9)
    # unweighted is unchanged, and differs from the weighted value
    assert model.evaluate(x, t) == pytest.approx(float(expected_each.mean()), rel=1e-9)
    assert abs(expected - expected_each.mean()) > 1e-3


@pytest.mark.parametrize("case", ["sparse (fused softmax)", "binary (fused sigmoid)", "mse", "huber"])
def test_weighted_loss_matches_torch(case, float64):
    torch = pytest.importorskip("torch")
    head, loss, target, _ = CASES[case]
    x, y, w = data(seed=1)
    t = target(y)
    model = frozen(nn.Sequential([head()]), loss)
    model.build((None, 4))
    layer = model[0]
    z = torch.tensor(x) @ torch.tensor(np.array(layer.kernel.data)) + torch.tensor(np.array(layer.bias.data))
    tt = torch.tensor(t)
    if case.startswith("sparse"):
        each = torch.nn.functional.cross_entropy(z, tt, reduction="none")
    elif case.startswith("binary"):
        each = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], tt, reduction="none")
    elif case == "mse":
        each = torch.nn.functional.mse_loss(z, tt, reduction="none").mean(1)
    else:
        each = torch.nn.functional.huber_loss(z, tt, reduction="none", delta=1.0).mean(1)
    expected = float((each * torch.tensor(w)).mean())
    assert model.evaluate(x, t, sample_weight=w) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("case", ["sparse (fused softmax)", "binary (fused sigmoid)", "mae"])
def test_gradient_of_the_weighted_loss_matches_central_differences(case, float64):
    # One SGD step with lr=1 moves each parameter by -grad; the gradient must be that of
    # evaluate's weighted loss (the same function, in one batch), by central differences.
    head, loss, target, _ = CASES[case]
    x, y, w = data(n=8, seed=2)
    t = target(y)
    model = frozen(nn.Sequential([nn.Dense(3, activation="tanh"), head()]), loss)
    model.build((None, 4))
    before = [p.data.copy() for p in model.parameters()]

    def weighted_loss():
        return model.evaluate(x, t, sample_weight=w, batch_size=len(x))

    numeric = []
    eps = 1e-6
    for param in model.parameters():
        grad = np.zeros_like(param.data)
        for index in np.ndindex(param.shape):
            saved = param.data[index]
            param.data[index] = saved + eps
            up = weighted_loss()
            param.data[index] = saved - eps
            down = weighted_loss()
            param.data[index] = saved
            grad[index] = (up - down) / (2 * eps)
        numeric.append(grad)
    model.compile(optimizer=optim.SGD(lr=1.0), loss=loss)
    model.fit(x, t, sample_weight=w, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    for param, start, grad in zip(model.parameters(), before, numeric):
        np.testing.assert_allclose(start - param.data, grad, rtol=1e-5, atol=1e-8)


def test_weighted_metrics_are_weighted_means(float64):
    x, y, w = data(n=20)
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]),
                   "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((None, 4))
    correct = model.predict(x).argmax(1) == y
    expected = float((w * correct).sum() / w.sum())
    history = model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0)
    assert history.history["accuracy"][0] == pytest.approx(expected, rel=1e-12)
    assert model.evaluate(x, y, sample_weight=w)[1] == pytest.approx(expected, rel=1e-12)
    reg = frozen(nn.Sequential([nn.Dense(1)]), "mse", metrics=["mae"])
    target = x[:, 0]
    reg.build((None, 4))
    error = np.abs(reg.predict(x)[:, 0] - target)
    assert reg.evaluate(x, target, sample_weight=w)[1] == pytest.approx((w * error).sum() / w.sum())


def test_class_weight_dict_balanced_and_both(float64):
    x, y, w = data(n=30)
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]), "sparse_categorical_crossentropy")
    model.build((None, 4))
    table = {0: 0.5, 1: 2.0, 2: 4.0}
    per_class = np.array([table[c] for c in y])
    by_class = model.fit(x, y, class_weight=table, verbose=0, shuffle=False).history["loss"][0]
    assert by_class == pytest.approx(model.evaluate(x, y, sample_weight=per_class), rel=1e-12)
    counts = np.bincount(y, minlength=3)
    balanced = len(y) / (3 * counts[y])
    got = model.fit(x, y, class_weight="balanced", verbose=0).history["loss"][0]
    assert got == pytest.approx(model.evaluate(x, y, sample_weight=balanced), rel=1e-12)
    both = model.fit(x, y, class_weight=table, sample_weight=w, verbose=0).history["loss"][0]
    assert both == pytest.approx(model.evaluate(x, y, sample_weight=w * per_class), rel=1e-12)
    # a class missing from the dict weighs 1 (Keras)
    partial = model.fit(x, y, class_weight={2: 3.0}, verbose=0).history["loss"][0]
    assert partial == pytest.approx(model.evaluate(x, y, sample_weight=np.where(y == 2, 3.0, 1.0)))


def test_class_weight_on_one_hot_and_binary_targets(float64):
    x, y, _ = data(n=24, classes=2)
    one_hot = frozen(nn.Sequential([nn.Dense(2, activation="softmax")]), "categorical_crossentropy")
    got = one_hot.fit(x, np.eye(2)[y], class_weight={1: 5.0}, verbose=0).history["loss"][0]
    assert got == pytest.approx(one_hot.evaluate(x, np.eye(2)[y], sample_weight=np.where(y == 1, 5.0, 1.0)))
    binary = frozen(nn.Sequential([nn.Dense(1, activation="sigmoid")]), "binary_crossentropy")
    got = binary.fit(x, y, class_weight={0: 0.25}, verbose=0).history["loss"][0]
    assert got == pytest.approx(binary.evaluate(x, y, sample_weight=np.where(y == 0, 0.25, 1.0)))


def test_weights_split_with_validation_split_and_validation_data(float64):
    x, y, w = data(n=20, seed=5)
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]),
                   "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, sample_weight=w, validation_split=0.25, verbose=0).history
    assert history["loss"][0] == pytest.approx(model.evaluate(x[:15], y[:15], sample_weight=w[:15])[0])
    val_loss, val_acc = model.evaluate(x[15:], y[15:], sample_weight=w[15:])
    assert history["val_loss"][0] == pytest.approx(val_loss) and history["val_accuracy"][0] == pytest.approx(val_acc)
    history = model.fit(x[:15], y[:15], validation_data=(x[15:], y[15:], w[15:]), verbose=0).history
    assert history["val_loss"][0] == pytest.approx(val_loss)
    assert history["loss"][0] == pytest.approx(model.evaluate(x[:15], y[:15])[0])


def test_class_weight_changes_what_is_learned():
    # 90% class 0: unweighted, the rare class is mostly missed; 'balanced' recovers it
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=400) < 0.1).astype(np.int64)
    x = (rng.standard_normal((400, 2)) + 1.2 * y[:, None]).astype(np.float32)
    recalls = []
    for class_weight in (None, "balanced"):
        nd.manual_seed(4)
        model = nn.Sequential([nn.Dense(2, activation="softmax")])
        model.compile(optimizer=optim.Adam(lr=0.05), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=30, verbose=0, class_weight=class_weight)
        recalls.append((model.predict(x).argmax(1)[y == 1] == 1).mean())
    assert recalls[1] > recalls[0] + 0.2


@pytest.mark.parametrize("weight, message", [
    (np.ones(11), "sample_weight.*one weight per sample"),
    (-np.ones(12), "sample_weight.*negative"),
    (np.r_[np.ones(11), np.nan], "sample_weight.*NaN"),
    (np.r_[np.ones(11), np.inf], "sample_weight.*inf"),
    (np.zeros(12), "every sample weight is zero"),
    (np.array(["a"] * 12), "sample_weight.*numbers"),
    (np.ones((12, 2)), "sample_weight.*one weight per sample"),
])
def test_bad_sample_weights_raise(weight, message):
    x, y, _ = data()
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, sample_weight=weight, verbose=0)
    if weight.dtype.kind == "f" and weight.shape == (11,):
        with pytest.raises(ValueError, match=message):
            model.evaluate(x, y, sample_weight=weight)
    with pytest.raises(ValueError, match=message.replace("sample_weight", "validation_data.*sample_weight")
                       if "sample_weight" in message else message):
        model.fit(x, y, validation_data=(x, y, weight), verbose=0)


@pytest.mark.parametrize("class_weight, message", [
    ({0: 1.0, 7: 2.0}, "class_weight names class 7"),
    ({"cat": 1.0}, "class_weight names class 'cat'"),
    ({0: -1.0}, r"class_weight\[0\].*non-negative"),
    ({0: float("nan")}, r"class_weight\[0\]"),
    ("balance", "class_weight must be a dict or 'balanced'"),
    ([1.0, 2.0, 3.0], "class_weight must be a dict or 'balanced'"),
])
def test_bad_class_weights_raise(class_weight, message):
    x, y, _ = data()
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, class_weight=class_weight, verbose=0)


def test_class_weight_with_a_regression_target_raises():
    x, _, _ = data()
    model = frozen(nn.Sequential([nn.Dense(1)]), "mse")
    with pytest.raises(ValueError, match="class_weight.*regression"):
        model.fit(x, x[:, 0] * 1.5, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="class_weight.*regression"):
        frozen(nn.Sequential([nn.Dense(2)]), "mse").fit(x, x[:, :2], class_weight="balanced", verbose=0)


def test_a_callable_loss_must_return_per_sample_losses_for_weights():
    x, y, w = data()
    model = frozen(nn.Sequential([nn.Dense(1)]), lambda pred, target: ((pred - target) ** 2).mean())
    with pytest.raises(ValueError, match="one loss per sample"):
        model.fit(x, y.astype(float)[:, None], sample_weight=w, verbose=0)
    per_sample = frozen(nn.Sequential([nn.Dense(1)]),
                        lambda pred, target: ((pred - target) ** 2).sum(axis=1))
    t = y.astype(float)[:, None]
    per_sample.build((None, 4))
    expected = (w * ((per_sample.predict(x) - t) ** 2)[:, 0]).mean()
    assert per_sample.fit(x, t, sample_weight=w, verbose=0).history["loss"][0] == \
        pytest.approx(expected, rel=1e-5)


def test_train_on_batch_takes_sample_weight(float64):
    x, y, w = data()
    model = frozen(nn.Sequential([nn.Dense(3, activation="softmax")]), "sparse_categorical_crossentropy")
    model.build((None, 4))
    expected = model.evaluate(x, y, sample_weight=w, batch_size=len(x))
    assert model.train_on_batch(x, y, sample_weight=w) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- data-parallel, two real ranks
def test_weighted_fit_on_two_ranks_is_weighted_fit_on_one_process(tmp_path):
    """Two ranks of 16 with sample and class weights (and weighted validation data) give
    one process's batch of 32: same parameters and History; and TerminateOnNaN stops
    both ranks on the same epoch when only one rank's batch sees the NaN (no hang)."""
    from test_distributed import HAVE_MPI4PY, MPIRUN, run_worker
    if not (MPIRUN and HAVE_MPI4PY):
        pytest.skip("needs mpi4py and mpirun (pip install 'nanodl[distributed]')")
    first, second = run_worker("fit_weighted.py", tmp_path)
    for r in (first, second):
        assert r["parameter_error"] <= 1e-10 and r["history_error"] <= 1e-10
        assert r["nan/epochs"] == [0] and r["nan/steps"] == 4  # the whole epoch, then stop
    assert first["history"] == second["history"]
    assert "Invalid loss, terminating training" in first["nan/stdout"] and second["nan/stdout"] == ""
