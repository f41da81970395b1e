"""scikit-learn estimators on nanodl: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in replacements for ``sklearn.neural_network``'s estimators of the same names, plus
``dropout=0.0``, ``device='cpu'`` and ``model=None`` (``model(n_features, n_outputs)`` returns
an uncompiled ``nn.Model``); see docs/sklearn.md. Needs ``pip install 'nanodl[sklearn]'``.

>>> import numpy as np
>>> from nanodl.sklearn import MLPClassifier
>>> x = np.random.default_rng(0).standard_normal((200, 2))
>>> y = np.where(x[:, 0] * x[:, 1] > 0, 'same', 'different')
>>> clf = MLPClassifier(hidden_layer_sizes=(16,), solver='lbfgs', random_state=0)
>>> clf.fit(x, y).classes_.tolist(), [c.shape for c in clf.coefs_]
(['different', 'same'], [(2, 16), (16, 1)])
>>> bool(clf.score(x, y) > 0.9), clf.predict_proba(x[:3]).shape
(True, (3, 2))
"""
import numpy as np

from ._base import _BaseMLP, _constraints, _half_poisson_deviance, _store  # first: it checks for sklearn
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier as _SklearnClassifier, MLPRegressor as _SklearnRegressor
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target

__all__ = ["MLPClassifier", "MLPRegressor"]


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by nanodl (``sklearn.neural_network``'s API):
    a softmax output for several classes, a logistic one for two, one logistic output per
    label for a 2-D 0/1 ``y`` (multilabel)."""

    _parameter_constraints = _constraints(_SklearnClassifier)
    _stratify = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dropout=0.0, device="cpu", model=None):
        _store(self, locals())

    def _encode(self, y, first, incremental, classes, sample_weight):
        """Check the labels; returns the network's targets (class indices, or 0/1 columns)."""
        name = type(self).__name__
        multilabel = y.ndim == 2
        if multilabel and type_of_target(y) != "multilabel-indicator":
            raise ValueError(f"{name}: a 2-D y must be a multilabel indicator matrix (one 0/1 column "
                             f"per label), got {type_of_target(y)!r} targets")
        check_classification_targets(y)
        if first:
            if incremental and classes is None:
                raise ValueError(f"{name}: classes must be passed on the first call to partial_fit")
            if multilabel:
                if classes is not None and len(classes) != y.shape[1]:
                    raise ValueError(f"{name}: {len(classes)} classes for {y.shape[1]} label columns")
                self.classes_, self._label_dtype = np.arange(y.shape[1]), y.dtype
            else:
                self.classes_ = np.unique(np.asarray(classes) if incremental else y)
                if len(self.classes_) < 2:
                    raise ValueError(f"{name} needs samples of at least 2 classes to train; got 1 "
                                     f"class ({self.classes_[0]!r})")
            self._multilabel = multilabel
            logistic = multilabel or len(self.classes_) == 2
            self.n_outputs_ = y.shape[1] if multilabel else 1 if logistic else len(self.classes_)
            self.out_activation_ = "logistic" if logistic else "softmax"
            self._head = ("sigmoid", "binary_crossentropy", self.n_outputs_, 1) if logistic else \
                ("softmax", "sparse_categorical_crossentropy", 1, 1)
        elif multilabel != self._multilabel or (multilabel and y.shape[1] != self.n_outputs_):
            raise ValueError(f"{name}: y does not have the form of the targets the network was "
                             f"trained on ({'multilabel' if self._multilabel else 'labels'}, "
                             f"{self.n_outputs_} outputs)")
        elif incremental and classes is not None and \
                not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"{name}: `classes={list(classes)}` is not the same as on the first call "
                             f"to partial_fit, {self.classes_.tolist()}")
        if multilabel:
            return y.astype(np.float64)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"{name}: y holds labels not in classes {self.classes_.tolist()}: "
                             f"{unknown.tolist()}")
        if sample_weight is not None and not incremental and len(np.unique(y[sample_weight > 0])) < 2:
            raise ValueError(f"{name} needs samples of at least 2 classes with a non-zero "
                             "sample_weight; got 1 class")
        if len(self.classes_) == 2:
            return (y == self.classes_[1]).astype(np.float64).reshape(-1, 1)
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _decide(self, scores):
        """Labels from the network's outputs: argmax, or each probability above 0.5."""
        if self._multilabel:
            return (scores > 0.5).astype(self._label_dtype)
        if len(self.classes_) == 2:
            return self.classes_[(scores[:, 0] > 0.5).astype(int)]
        return self.classes_[scores.argmax(axis=1)]

    def _score(self, x, y, sample_weight):
        return accuracy_score(y, self._decide(self._predict_arrays(x)), sample_weight=sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``, building the network on the first call (needs ``classes``)."""
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        scores = self._raw(X)
        if self._multilabel:
            return scores
        if len(self.classes_) == 2:
            return np.hstack([1 - scores, scores])
        return scores / scores.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """The log of ``predict_proba``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class of each sample (multilabel: the indicator matrix)."""
        return self._decide(self._raw(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by nanodl (``sklearn.neural_network``'s API):
    ``loss='poisson'`` gives an exp output trained on the half Poisson deviance."""

    _parameter_constraints = _constraints(_SklearnRegressor)
    _stratify = False

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, device="cpu", model=None):
        _store(self, locals())

    def _encode(self, y, first, incremental, classes, sample_weight):
        name = type(self).__name__
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError(f"{name}: loss='poisson' needs non-negative targets, y holds {y.min()!r}")
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self.n_outputs_ = n_outputs
            if self.loss == "poisson":
                self.out_activation_, self._head = "exp", ("linear", _half_poisson_deviance, 1, 1)
            else:  # scikit-learn trains on half the squared error summed over the outputs
                self.out_activation_, self._head = "identity", ("linear", "mse", 0.5 * n_outputs,
                                                                1 / n_outputs)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"{name}: y has {n_outputs} outputs, the network was built for "
                             f"{self.n_outputs_}")
        return np.asarray(y, dtype=np.float64).reshape(len(y), n_outputs)

    def _score(self, x, y, sample_weight):
        pred = self._predict_arrays(x)
        return r2_score(np.asarray(y).reshape(pred.shape), pred, sample_weight=sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, building the network on the first call."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions, ``(n_samples,)`` for one output, else ``(n_samples, n_outputs)``."""
        pred = self._raw(X)
        return pred.ravel() if pred.shape[1] == 1 else pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
