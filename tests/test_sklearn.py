"""nanodl.sklearn: scikit-learn's own estimator checks, and the estimators in sklearn's tools.

Skipped when scikit-learn is not installed.
"""
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd
from nanodl import nn

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nanodl.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# No expected failures: check_sample_weight_equivalence_on_dense_data passes because a
# batch's loss is scikit-learn's weighted mean (sum(w * loss) / sum(w), the L2 term over
# sum(w) too) and batch_size='auto' puts its 15 samples (or their repeats) in one batch.
# max_iter=40 instead of 200 keeps the checks' ~100 fits to seconds; they still train to the
# accuracy check_classifiers_train and check_regressors_train ask for.
@parametrize_with_checks([MLPClassifier(random_state=0, max_iter=40), MLPRegressor(random_state=0, max_iter=40),
                          MLPClassifier(solver="lbfgs", random_state=0, max_iter=40)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ---------------------------------------------------------------- scikit-learn's tools
@pytest.fixture(scope="module")
def digits():
    x, y = nd.datasets.load_digits()
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def test_pipeline_on_digits_reaches_95_percent(digits):
    x_train, x_test, y_train, y_test = digits
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x_train, y_train)
    accuracy = pipeline.score(x_test, y_test)
    assert accuracy >= 0.95, accuracy
    classifier = pipeline[-1]
    assert classifier.n_features_in_ == 64 and classifier.classes_.tolist() == list(range(10))
    assert len(classifier.loss_curve_) == classifier.n_iter_ <= 200
    assert classifier.loss_curve_[-1] < classifier.loss_curve_[0] / 10


def test_grid_search_over_hidden_layer_sizes(digits):
    x_train, x_test, y_train, y_test = digits
    grid = GridSearchCV(MLPClassifier(max_iter=15, learning_rate_init=0.01, random_state=0),
                        {"hidden_layer_sizes": [(4,), (64,), (32, 16)]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(x_train[:600], y_train[:600])
    scores = dict(zip(map(str, grid.cv_results_["params"]), grid.cv_results_["mean_test_score"]))
    assert len(scores) == 3
    assert grid.best_params_["hidden_layer_sizes"] != (4,)  # 4 hidden units are too few for 10 digits
    assert grid.best_estimator_.score(x_test, y_test) > 0.9


def test_cross_val_score(digits):
    x_train, _, y_train, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(MLPClassifier(hidden_layer_sizes=(32,), max_iter=20,
                                               learning_rate_init=0.01, random_state=0),
                                 x_train[:600], y_train[:600], cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_clone_copies_parameters_not_the_fit(digits):
    x_train, _, y_train, _ = digits
    original = MLPClassifier(hidden_layer_sizes=(8,), solver="rmsprop", dropout=0.2, max_iter=2,
                             random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        original.fit(x_train[:100], y_train[:100])
    copy = clone(original)
    assert copy.get_params() == original.get_params()
    assert not hasattr(copy, "model_")
    with pytest.raises(NotFittedError):
        copy.predict(x_train[:5])


# ---------------------------------------------------------------- labels and outputs
def two_blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x, x[:, 0] + 0.5 * x[:, 1] > 0


@pytest.mark.parametrize("labels", [np.array(["cat", "dog"]), np.array([3, 7]), np.array([-1, 1]),
                                    np.array([False, True])])
def test_string_and_integer_labels(labels):
    x, positive = two_blobs()
    y = labels[positive.astype(int)]
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.01,
                        random_state=0).fit(x, y)
    assert clf.classes_.tolist() == sorted(labels.tolist())
    predictions = clf.predict(x)
    assert predictions.dtype == y.dtype and set(predictions) <= set(labels)
    assert clf.score(x, y) > 0.9
    proba = clf.predict_proba(x)
    assert proba.shape == (len(x), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], predictions)


def test_multiclass_string_labels_with_gaps():
    x, y = nd.datasets.make_spirals(300, n_classes=3, noise=0.05, seed=0)
    names = np.array(["alpha", "beta", "gamma"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), learning_rate_init=0.01, max_iter=60,
                        batch_size=32, random_state=0).fit(x, names)
    assert clf.classes_.tolist() == ["alpha", "beta", "gamma"]
    assert clf.score(x, names) > 0.9


def test_multilabel_indicator_targets():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = np.column_stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5]).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=60,
                        random_state=0).fit(x, y)
    assert clf.classes_.tolist() == [0, 1, 2] and clf.model_.layers[-1].activation == "sigmoid"
    predictions = clf.predict(x)
    assert predictions.shape == (300, 3) and predictions.dtype == y.dtype
    proba = clf.predict_proba(x)
    assert proba.shape == (300, 3) and ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(predictions, (proba > 0.5).astype(int))
    assert clf.score(x, y) > 0.85  # subset accuracy: every label of a sample right
    with pytest.raises(ValueError, match="multilabel indicator"):
        MLPClassifier(max_iter=1).fit(x, np.column_stack([np.arange(300) % 3, np.arange(300) % 2]))


def test_multi_output_regression():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(400, 4))
    y = np.column_stack([x[:, 0] + x[:, 1], np.sin(2 * x[:, 2]), x[:, 3] ** 2])
    reg = MLPRegressor(hidden_layer_sizes=(64,), learning_rate_init=0.01, max_iter=80,
                       random_state=0).fit(x, y)
    assert reg.predict(x).shape == (400, 3)
    assert reg.score(x, y) > 0.9
    single = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(x, y[:, 0])
    assert single.predict(x).shape == (400,)


# ---------------------------------------------------------------- partial_fit
def test_partial_fit_classifier_needs_classes_first_and_keeps_learning():
    x, positive = two_blobs(400)
    y = np.where(positive, "yes", "no")
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=32, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(x, y)
    clf.partial_fit(x[:200], y[:200], classes=["no", "yes", "maybe"])
    assert clf.classes_.tolist() == ["maybe", "no", "yes"] and clf.n_iter_ == 1
    for _ in range(9):
        clf.partial_fit(x, y)
    # as scikit-learn: n_iter_ counts this call's epochs (one), t_ and loss_curve_ every sample seen
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 10 and clf.t_ == 200 + 9 * 400
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(x, y) > 0.9
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(x[:5], ["never"] * 5)
    with pytest.raises(ValueError, match="3 features"):
        clf.partial_fit(x[:, :2], y)


def test_partial_fit_regressor():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(300, 2))
    y = x[:, 0] - 2 * x[:, 1]
    reg = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=32, random_state=0)
    for _ in range(20):
        reg.partial_fit(x, y)
    assert reg.n_iter_ == 1 and len(reg.loss_curve_) == 20 and reg.score(x, y) > 0.95
    with pytest.raises(ValueError, match="outputs"):
        reg.partial_fit(x, np.column_stack([y, y]))


# ---------------------------------------------------------------- reproducibility and training rules
def test_random_state_makes_fits_identical_and_leaves_the_global_generator_alone():
    x, positive = two_blobs()
    nd.manual_seed(123)
    before = nd.random.generator().bit_generator.state
    fits = [MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, dropout=0.2, random_state=7).fit(x, positive)
            for _ in range(2)]
    assert nd.random.generator().bit_generator.state == before
    assert fits[0].loss_curve_ == fits[1].loss_curve_
    np.testing.assert_array_equal(fits[0].predict_proba(x), fits[1].predict_proba(x))
    other = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, dropout=0.2, random_state=8).fit(x, positive)
    assert other.loss_curve_ != fits[0].loss_curve_


def test_without_random_state_the_global_seed_decides():
    x, positive = two_blobs()
    curves = []
    for _ in range(2):
        nd.manual_seed(5)
        curves.append(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3).fit(x, positive).loss_curve_)
    assert curves[0] == curves[1]


def test_training_stops_when_the_loss_stops_improving():
    x, positive = two_blobs()
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.05, max_iter=500, tol=1e-2,
                        n_iter_no_change=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it converged: no warning
        clf.fit(x, positive)
    assert clf.n_iter_ < 500 and clf.best_loss_ == min(clf.loss_curve_)


def test_max_iter_reached_warns_as_sklearn():
    x, positive = two_blobs()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(x, positive)


def test_early_stopping_keeps_the_best_validation_epoch():
    x, positive = two_blobs(400)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300,
                        early_stopping=True, n_iter_no_change=5, random_state=0).fit(x, positive)
    assert clf.n_iter_ < 300
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) > 0.9
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=50, early_stopping=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(x, x[:, 0] * 2)
    assert reg.best_validation_score_ == max(reg.validation_scores_)


def test_sample_weight_reaches_nanodls_weighted_fit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 2)).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.standard_normal(400) > 0).astype(int)  # overlapping classes
    recalls = []
    for weight_of_one in (1.0, 10.0):
        weights = np.where(y == 1, weight_of_one, 1.0)
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01,
                            random_state=0).fit(x, y, sample_weight=weights)
        recalls.append(float((clf.predict(x)[y == 1] == 1).mean()))
    assert recalls[1] > recalls[0] + 0.05 and recalls[1] > 0.95  # heavier class 1: found more often
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(max_iter=1).fit(x, y, sample_weight=np.ones(3))


def test_alpha_is_an_l2_penalty():
    x, positive = two_blobs()
    norms = []
    for alpha in (0.0, 30.0):
        clf = MLPClassifier(hidden_layer_sizes=(16,), alpha=alpha, max_iter=30, learning_rate_init=0.01,
                            random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, positive)
        norms.append(sum(float((layer.kernel.numpy() ** 2).sum()) for layer in clf.model_.layers))
    assert norms[1] < norms[0] / 2


def test_architecture_solver_and_activation_names():
    x, positive = two_blobs(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5, 4), activation="logistic", solver="sgd", dropout=0.5,
                            max_iter=1, random_state=0).fit(x, positive)
        kinds = [type(layer).__name__ for layer in clf.model_.layers]
        assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
        # two classes: one logistic output, as scikit-learn
        assert clf.model_.layers[0].activation == "sigmoid" and clf.model_.layers[-1].units == 1
        assert type(clf.model_.optimizer).__name__ == "SGD"
        MLPRegressor(activation="identity", solver="adamw", max_iter=1).fit(x, x[:, 0])
    for bad in ({"solver": "newton"}, {"activation": "softmax"}, {"hidden_layer_sizes": (0,)},
                {"dropout": 1.0}, {"device": "tpu"}, {"batch_size": 0}, {"learning_rate": "cyclic"},
                {"momentum": 1.5}, {"max_fun": 0}, {"batch_size": "big"}):
        with pytest.raises(ValueError, match=next(iter(bad))) as caught:
            MLPClassifier(max_iter=1, **bad).fit(x, positive)
        assert "MLPClassifier" in str(caught.value)


def test_custom_model_callable():
    x, positive = two_blobs()

    def build(n_features, n_outputs):  # two classes: one output, the probability of classes_[1]
        head = "softmax" if n_outputs > 1 else "sigmoid"
        return nn.Sequential([nn.Dense(16, activation="tanh", input_dim=n_features), nn.LayerNorm(),
                              nn.Dense(n_outputs, activation=head)])

    clf = MLPClassifier(model=build, max_iter=30, learning_rate_init=0.01, batch_size=32,
                        random_state=0).fit(x, positive)
    assert isinstance(clf.model_.layers[1], nn.LayerNorm)
    assert clf.score(x, positive) > 0.9
    assert [c.shape for c in clf.coefs_] == [(3, 16), (16, 1)] and clf.n_layers_ == 3
    three = MLPClassifier(model=build, max_iter=2, random_state=0).fit(x, np.arange(len(x)) % 3)
    assert three.model_.layers[-1].units == 3 and three.predict_proba(x).shape == (len(x), 3)
    with pytest.raises(TypeError, match="nn.Model"):
        MLPClassifier(model=lambda n, k: "not a model", max_iter=1).fit(x, positive)


def test_verbose_prints_sklearn_style_lines(capsys):
    x, positive = two_blobs(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, verbose=True, random_state=0).fit(x, positive)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["Iteration 1", "Iteration 2", "Iteration 3"]


def test_pickle_round_trip_keeps_predictions_and_training_state():
    x, positive = two_blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, learning_rate_init=0.01,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, positive)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(x), clf.predict_proba(x))
    clf.partial_fit(x, positive)
    restored.partial_fit(x, positive)  # the optimizer's moments came along: same next step
    np.testing.assert_allclose(restored.predict_proba(x), clf.predict_proba(x), rtol=1e-5, atol=1e-7)


def test_fitted_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x, positive = two_blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, positive)
    nd.onnx.export(clf.model_, tmp_path / "clf.onnx")
    session = ort.InferenceSession(str(tmp_path / "clf.onnx"), providers=["CPUExecutionProvider"])
    # two classes: the network's one output is the probability of classes_[1]
    np.testing.assert_allclose(session.run(None, {"input": x})[0], clf.predict_proba(x)[:, 1:],
                               rtol=1e-5, atol=1e-6)


def test_importing_nanodl_does_not_import_sklearn_or_onnx():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    code = ("import sys, nanodl; "
            "print(sorted(m for m in ('sklearn', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, nanodl; nanodl.sklearn.MLPClassifier; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"  # nanodl.sklearn loads on first use


def test_fits_in_parallel_threads_match_serial_fits(digits):
    """Each fit draws from its own random_state in its own thread (nanodl.random.using):
    GridSearchCV with a threading backend gets the serial results."""
    import threading
    x, y = digits[0][:300], digits[2][:300]
    make = [lambda: MLPClassifier(hidden_layer_sizes=(16,), max_iter=8, random_state=seed)
            for seed in (1, 2)]
    serial = [make[i]().fit(x, y).loss_curve_ for i in range(2)]
    results, barrier = [None, None], threading.Barrier(2)

    def fit(i):
        barrier.wait()
        results[i] = make[i]().fit(x, y).loss_curve_
    threads = [threading.Thread(target=fit, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == serial


# ---------------------------------------------------------------- a drop-in: parameters and attributes
from sklearn.neural_network import MLPClassifier as SklearnClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SklearnRegressor  # noqa: E402

PAIRS = [(MLPClassifier, SklearnClassifier), (MLPRegressor, SklearnRegressor)]


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_every_sklearn_parameter_with_its_name_default_and_place(ours, theirs):
    import inspect
    mine, expected = ours().get_params(), theirs().get_params()
    assert {name: mine[name] for name in expected} == expected
    assert {name: mine[name] for name in set(mine) - set(expected)} == \
        {"dropout": 0.0, "device": "cpu", "model": None}
    ours_signature = list(inspect.signature(ours).parameters.values())
    theirs_signature = list(inspect.signature(theirs).parameters.values())
    assert [(p.name, p.kind) for p in ours_signature[:len(theirs_signature)]] == \
        [(p.name, p.kind) for p in theirs_signature]  # positional ones in the same order


@pytest.mark.parametrize("ours", [MLPClassifier, MLPRegressor])
def test_unknown_parameters_name_the_public_class(ours):
    with pytest.raises(TypeError, match=f"{ours.__name__}.__init__.. got an unexpected keyword"):
        ours(learning_rate_decay=0.5)
    with pytest.raises(ValueError, match=f"Invalid parameter 'learning_rate_decay' for estimator {ours.__name__}"):
        ours().set_params(learning_rate_decay=0.5)
    with pytest.raises(ValueError, match=f"'alpha' parameter of {ours.__name__} must be"):
        ours(alpha=-1.0).fit(np.zeros((4, 2)), [0, 1, 0, 1])


def fitted_attributes(estimator):
    names = ["classes_", "n_features_in_", "n_outputs_", "n_layers_", "out_activation_", "t_",
             "n_iter_", "best_loss_", "validation_scores_", "best_validation_score_"]
    summary = {name: getattr(estimator, name) for name in names if hasattr(estimator, name)}
    if "classes_" in summary:
        summary["classes_"] = summary["classes_"].tolist()
    summary["coefs_"] = [c.shape for c in estimator.coefs_]
    summary["intercepts_"] = [b.shape for b in estimator.intercepts_]
    summary["loss_"] = type(float(estimator.loss_))
    summary["curve"] = len(getattr(estimator, "loss_curve_", ()))
    summary["has_curve"] = hasattr(estimator, "loss_curve_")
    if summary.get("best_loss_") is not None:
        summary["best_loss_"] = "a number"
    for key in ("validation_scores_",):
        if summary.get(key) is not None:
            summary[key] = len(summary[key])
    if summary.get("best_validation_score_") is not None:
        summary["best_validation_score_"] = "a number"
    return summary


def attribute_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 60)]
    multilabel = (rng.random((60, 3)) > 0.5).astype(int)
    return [
        ("binary", x, labels == "a", {}),
        ("multiclass", x, labels, {}),
        ("multilabel", x, multilabel, {}),
        ("multiclass-early-stopping", x, labels, {"early_stopping": True}),
        ("multiclass-lbfgs", x, labels, {"solver": "lbfgs"}),
        ("regression", x, x[:, 0], {}),
        ("multi-output-regression", x, x[:, :2], {"hidden_layer_sizes": (5, 6)}),
        ("poisson", x, np.exp(x[:, 0]), {"loss": "poisson"}),
        ("regression-sgd-lbfgs", x, x[:, 0], {"solver": "lbfgs"}),
    ]


@pytest.mark.parametrize("case", attribute_cases(), ids=lambda case: case[0])
def test_fitted_attributes_have_sklearns_shapes(case):
    _, x, y, options = case
    regression = y.dtype.kind == "f"
    ours, theirs = (MLPRegressor, SklearnRegressor) if regression else (MLPClassifier, SklearnClassifier)
    options = dict({"hidden_layer_sizes": (7,), "max_iter": 3, "random_state": 0}, **options)
    mine = fitted_attributes(ours(**options).fit(x, y))
    expected = fitted_attributes(theirs(**options).fit(x, y))
    assert mine == expected


def test_feature_names_in_for_dataframes():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"height": [1.0, 2.0, 3.0, 4.0], "weight": [2.0, 1.0, 4.0, 3.0]})
    clf = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2).fit(frame, [0, 1, 0, 1])
    assert clf.feature_names_in_.tolist() == ["height", "weight"]


# The same weights, the same batches (shuffle=False), plain SGD: nanodl and scikit-learn must
# compute the same loss and take the same step, which pins down every head's loss, the 0.5 of
# the squared error, the weighted batch mean and the L2 term's scale.
STEP_CASES = [
    ("binary", lambda x, rng: x[:, 0] > 0, {}),
    ("multiclass", lambda x, rng: rng.integers(0, 3, len(x)), {}),
    ("multilabel", lambda x, rng: (x[:, :3] > 0).astype(int), {}),
    ("regression", lambda x, rng: np.sin(x[:, 0]), {"activation": "tanh"}),
    ("multi-output", lambda x, rng: np.column_stack([x[:, 0], x[:, 1] ** 2]), {"activation": "logistic"}),
    ("poisson", lambda x, rng: rng.poisson(np.exp(0.3 * x[:, 0])).astype(float), {"loss": "poisson"}),
]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("name, make_y, options", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_one_sgd_epoch_matches_sklearn(name, make_y, options, weighted):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4))
    y = make_y(x, rng)
    weight = rng.integers(0, 4, len(x)).astype(float) if weighted else None
    regression = y.dtype.kind == "f"
    ours, theirs = (MLPRegressor, SklearnRegressor) if regression else (MLPClassifier, SklearnClassifier)
    settings = dict(hidden_layer_sizes=(6, 5), solver="sgd", momentum=0.0, learning_rate_init=0.1,
                    alpha=0.3, batch_size=7, shuffle=False, max_iter=1, warm_start=True, random_state=0,
                    **options)
    mine, reference = ours(**settings).fit(x, y), theirs(**settings).fit(x, y)
    for coef, coef_ref, bias, bias_ref in zip(mine.coefs_, reference.coefs_, mine.intercepts_,
                                              reference.intercepts_):
        coef[...], bias[...] = coef_ref, bias_ref  # start from scikit-learn's weights
    mine.fit(x, y, sample_weight=weight)
    reference.fit(x, y, sample_weight=weight)
    np.testing.assert_allclose(mine.loss_, reference.loss_, rtol=1e-10)
    for coef, coef_ref in zip(mine.coefs_ + mine.intercepts_, reference.coefs_ + reference.intercepts_):
        np.testing.assert_allclose(coef, coef_ref, rtol=1e-9, atol=1e-12)


def test_batch_size_auto_is_min_200_and_the_sample_count():
    rng = np.random.default_rng(0)
    for n, steps in ((450, 3), (150, 1)):
        x = rng.standard_normal((n, 3))
        clf = MLPClassifier(hidden_layer_sizes=(4,), random_state=0).partial_fit(x, x[:, 0] > 0, classes=[False, True])
        assert clf.model_.optimizer.step_count == steps


@pytest.mark.parametrize("schedule", [
    dict(learning_rate="invscaling", power_t=0.25, max_iter=3),
    dict(learning_rate="constant", max_iter=3),
    # the loss 'stalls' every epoch: 'adaptive' divides the rate by 5 each time the count
    # passes n_iter_no_change (and goes on), 'constant' stops there
    dict(learning_rate="adaptive", tol=1e9, n_iter_no_change=1, max_iter=6),
    dict(learning_rate="constant", tol=1e9, n_iter_no_change=1, max_iter=6),
    dict(learning_rate="adaptive", tol=1e9, n_iter_no_change=1, max_iter=40),
], ids=["invscaling", "constant", "adaptive", "constant-stops", "adaptive-stops"])
def test_sgd_learning_rate_schedules_as_sklearn(schedule):
    x, positive = two_blobs(100)
    settings = dict(hidden_layer_sizes=(4,), solver="sgd", learning_rate_init=0.1, random_state=0,
                    **schedule)
    mine, reference = MLPClassifier(**settings).fit(x, positive), SklearnClassifier(**settings).fit(x, positive)
    assert (mine.n_iter_, mine.t_) == (reference.n_iter_, reference.t_)
    assert mine.model_.optimizer.lr == pytest.approx(reference._optimizer.learning_rate, rel=1e-12)


def test_adam_and_sgd_hyperparameters_reach_the_optimizer():
    x, positive = two_blobs(50)
    adam = MLPClassifier(beta_1=0.8, beta_2=0.99, epsilon=1e-6, learning_rate_init=0.02,
                         max_iter=1).fit(x, positive)
    assert adam.model_.optimizer.get_config()["betas"] == (0.8, 0.99)
    assert adam.model_.optimizer.eps == 1e-6 and adam.model_.optimizer.lr == 0.02
    sgd = MLPClassifier(solver="sgd", momentum=0.5, nesterovs_momentum=False, max_iter=1).fit(x, positive)
    assert (sgd.model_.optimizer.momentum, sgd.model_.optimizer.nesterov) == (0.5, False)


def test_warm_start_continues_from_the_fitted_weights():
    x, positive = two_blobs(200)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, warm_start=True, random_state=0)
    clf.fit(x, positive)
    first_curve = list(clf.loss_curve_)
    clf.fit(x, positive)
    assert clf.loss_curve_[:5] == first_curve and len(clf.loss_curve_) == 10 and clf.t_ == 2000
    assert clf.loss_curve_[5] < first_curve[0]
    cold = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    cold.fit(x, positive)
    cold.fit(x, positive)
    assert cold.loss_curve_ == first_curve  # a new network each fit


def test_lbfgs_solver():
    x, y = nd.datasets.load_digits()
    clf = MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", max_iter=150, random_state=0)
    clf.fit(x[:500], y[:500])
    assert isinstance(clf.model_.optimizer, nd.optim.LBFGS)
    assert clf.n_iter_ <= 150 and clf.score(x[500:], y[500:]) > 0.85
    assert not hasattr(clf, "loss_curve_") and not hasattr(clf, "partial_fit") and clf.t_ == 0
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        short = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=3,
                              random_state=0).fit(x[:100], y[:100])
    assert short.n_iter_ == 3
    with pytest.warns(ConvergenceWarning):
        capped = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_fun=10,
                               random_state=0).fit(x[:100], y[:100])
    assert capped.model_.optimizer.state["func_evals"] <= 10 + 25
    assert capped.n_iter_ < 10


def test_poisson_regressor_predicts_a_positive_mean():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (400, 2))
    counts = rng.poisson(np.exp(1 + x[:, 0]))
    reg = MLPRegressor(loss="poisson", hidden_layer_sizes=(16,), solver="lbfgs", random_state=0).fit(x, counts)
    assert reg.out_activation_ == "exp" and (reg.predict(x) > 0).all()
    np.testing.assert_allclose(reg.predict(x).mean(), counts.mean(), rtol=0.05)
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson", max_iter=1).fit(x, -counts)


def test_the_trained_network_is_a_plain_nanodl_model_after_fit(tmp_path):
    """alpha's penalty is attached for training only: model_ evaluates, saves and
    reloads like any compiled Sequential, and a warm start with alpha=0 has none."""
    x, positive = two_blobs(60)
    clf = MLPClassifier(hidden_layer_sizes=(4,), alpha=0.1, max_iter=2, warm_start=True, random_state=0)
    clf.fit(x, positive)
    targets = positive.astype(np.float32)[:, None]
    loss = clf.model_.evaluate(x, targets)
    assert np.isfinite(loss)
    clf.model_.save(tmp_path / "net.npz")
    np.testing.assert_allclose(nd.load_model(tmp_path / "net.npz").predict(x), clf.model_.predict(x))
    clf.set_params(alpha=0.0).fit(x, positive)
    assert all(layer.kernel_regularizer is None for layer in clf._dense_layers())


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_negative_sample_weights_are_refused_naming_the_estimator(solver):
    # issue 18: was "needs samples of at least 2 classes", then a rescaled weight named by `fit`
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    weight = np.ones(40)
    weight[3] = -2.0
    with pytest.raises(ValueError, match=r"^MLPClassifier\.fit: sample_weight holds negative values "
                                         r"\(the smallest is -2\)"):
        MLPClassifier(solver=solver, max_iter=5).fit(X, y, sample_weight=weight)
