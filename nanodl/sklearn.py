"""scikit-learn estimators on nanodl: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in replacements for ``sklearn.neural_network``'s estimators of the same names:
change the import and a ``Pipeline``, ``GridSearchCV`` or ``cross_val_score`` runs on
nanodl's ``Sequential`` and ``fit`` (so on its native kernels, with dropout, any nanodl
optimizer, or the GPU). They take scikit-learn's parameter names where its MLP has
them, and pass scikit-learn's own estimator checks.

* ``hidden_layer_sizes``, ``activation`` (nanodl's names, or sklearn's ``'identity'``
  and ``'logistic'``), ``solver`` (any nanodl optimizer name), ``alpha`` (L2, with
  scikit-learn's scale: ``0.5 * alpha * ||W||^2 / batch_size`` is added to each batch's
  mean loss), ``batch_size``, ``learning_rate_init``, ``max_iter`` (epochs),
  ``shuffle``, ``random_state``, ``early_stopping``, ``validation_fraction``,
  ``n_iter_no_change`` and ``tol`` stop training as scikit-learn does; ``verbose``
  prints its ``Iteration n, loss = ...`` lines.
* ``dropout`` (after each hidden layer), ``device`` (``'cpu'`` or ``'cuda'``) and
  ``model``: a callable ``model(n_features, n_outputs)`` returning an uncompiled
  ``nn.Model`` for any architecture (a classifier's must output class probabilities,
  ``(batch, n_classes)``, e.g. a softmax head; a regressor's ``(batch, n_outputs)``).

After ``fit``: ``classes_`` (classifier), ``n_features_in_``, ``loss_curve_``,
``n_iter_``, ``best_loss_``, ``validation_scores_`` / ``best_validation_score_`` (with
early stopping) and ``model_``, the trained nanodl model (export it with
``nanodl.onnx.export``). With an integer ``random_state`` a fit is reproducible: the
weights, the shuffling and the dropout draw from a generator of its own, and nanodl's
global generator is left as it was.

This module imports scikit-learn (``pip install 'nanodl[sklearn]'``); ``import nanodl``
alone never does.

>>> import numpy as np
>>> from nanodl.sklearn import MLPClassifier
>>> x = np.random.default_rng(0).standard_normal((200, 2))
>>> y = np.where(x[:, 0] * x[:, 1] > 0, 'same', 'different')
>>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=60, random_state=0)
>>> clf.fit(x, y).classes_.tolist()
['different', 'same']
>>> bool(clf.score(x, y) > 0.9), clf.predict_proba(x[:3]).shape
(True, (3, 2))
"""
import contextlib
import numbers
import sys
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                          validate_data)
except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("nanodl.sklearn needs scikit-learn >= 1.6, which is not installed; get it "
                      "with `pip install 'nanodl[sklearn]'`") from error

from . import callbacks as nd_callbacks
from . import optim, regularizers
from . import random as nd_random
from .nn import Dense, Dropout, Model, Sequential
from .tensor import get_default_dtype

__all__ = ["MLPClassifier", "MLPRegressor"]

_SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid"}


def _local_generator(generator):
    """Make this thread draw from ``generator`` inside the block (None: the global one).
    Only this thread: fits running in parallel threads keep their own numbers."""
    return contextlib.nullcontext() if generator is None else nd_random.using(generator)


class _Progress(nd_callbacks.Callback):
    """After each epoch: record the loss, print it (``verbose``), apply sklearn's stopping rule."""

    def __init__(self, estimator, validation, early_stopping):
        super().__init__()
        self.estimator = estimator
        self.validation = validation
        self.early_stopping = early_stopping

    def on_epoch_end(self, epoch, logs=None):
        est = self.estimator
        loss = float(logs["loss"])
        est.loss_curve_.append(loss)
        est.n_iter_ += 1
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}", file=sys.stdout)
        if not np.isfinite(loss):
            raise ValueError(f"{type(est).__name__}: the training loss became {loss} at iteration "
                             f"{est.n_iter_}; lower learning_rate_init or scale the inputs")
        if not self.early_stopping:
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            est.best_loss_ = min(est.best_loss_, loss)
        else:
            x_val, y_val = self.validation
            score = est._validation_score(x_val, y_val)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}", file=sys.stdout)
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = est.model_.get_weights()
        if est._no_improvement_count > est.n_iter_no_change:
            est._converged = True
            if est.verbose:
                what = "Validation score" if self.early_stopping else "Training loss"
                print(f"{what} did not improve more than tol={est.tol} for {est.n_iter_no_change} "
                      "consecutive epochs. Stopping.", file=sys.stdout)
            self.model.stop_training = True


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the model, the training loop."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size=32, learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, verbose=False, dropout=0.0, device="cpu", model=None,
                 tol=1e-4):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.verbose = verbose
        self.dropout = dropout
        self.device = device
        self.model = model
        self.tol = tol

    # ------------------------------------------------------------ checks (at fit, as sklearn)
    def _check_params(self):
        name = type(self).__name__
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"{name}: hidden_layer_sizes must be positive integers, got "
                             f"{self.hidden_layer_sizes!r}")
        activation = _SKLEARN_ACTIVATIONS.get(self.activation, self.activation)
        from .functional import ACTIVATIONS
        if activation not in ACTIVATIONS or activation == "softmax":
            raise ValueError(f"{name}: unknown activation {self.activation!r}; valid: identity, "
                             "logistic, " + ", ".join(a for a in ACTIVATIONS if a != "softmax"))
        if not isinstance(self.solver, str) or self.solver.lower() not in optim.OPTIMIZERS:
            raise ValueError(f"{name}: solver must be a nanodl optimizer name "
                             f"({', '.join(optim.OPTIMIZERS)}), got {self.solver!r}")
        for param, low in (("max_iter", 1), ("n_iter_no_change", 1)):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name}: {param} must be an integer >= {low}, got {value!r}")
        batch = self.batch_size
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
            raise ValueError(f"{name}: batch_size must be a positive integer, got {batch!r}")
        if not (isinstance(self.alpha, numbers.Real) and self.alpha >= 0):
            raise ValueError(f"{name}: alpha must be a number >= 0, got {self.alpha!r}")
        if not (isinstance(self.learning_rate_init, numbers.Real) and self.learning_rate_init > 0):
            raise ValueError(f"{name}: learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        if not (isinstance(self.dropout, numbers.Real) and 0 <= self.dropout < 1):
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"{name}: validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"{name}: device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.model is not None and not callable(self.model):
            raise ValueError(f"{name}: model must be None or a callable model(n_features, n_outputs)")
        return [int(s) for s in sizes], activation

    # ------------------------------------------------------------ the nanodl model
    def _new_generator(self):
        """A generator of our own from ``random_state`` (None: nanodl's global one)."""
        if self.random_state is None:
            return None
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        return np.random.default_rng(seed)

    def _build(self, n_features, n_outputs, batch_size):
        sizes, activation = self._check_params()
        if self.model is not None:
            model = self.model(n_features, n_outputs)
            if not isinstance(model, Model):
                raise TypeError(f"{type(self).__name__}: model(n_features, n_outputs) must return an "
                                f"uncompiled nanodl nn.Model, got {type(model).__name__}")
        else:
            layers, width = [], n_features
            for units in sizes:
                layers.append(Dense(units, activation=activation, input_dim=width))
                if self.dropout > 0:
                    layers.append(Dropout(self.dropout))
                width = units
            layers.append(Dense(n_outputs, activation=self._head()[0], input_dim=width))
            model = Sequential(layers)
        if self.alpha > 0:  # sklearn's L2: 0.5 * alpha * ||W||^2 / batch_size on each batch's loss
            penalty = regularizers.l2(0.5 * float(self.alpha) / batch_size)
            for module in model.modules():
                if isinstance(module, Dense) and module.kernel_regularizer is None:
                    module.kernel_regularizer = penalty
        if self.device != "cpu":
            model.to(self.device)
        optimizer = optim.get(self.solver.lower())
        optimizer.lr = float(self.learning_rate_init)
        model.compile(optimizer=optimizer, loss=self._head()[1])
        return model

    def _train(self, x, y, epochs, sample_weight=None, early_stopping=False, first=False):
        """Run ``fit`` for up to ``epochs`` epochs with sklearn's stopping rule."""
        if first:
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.best_loss_ = np.inf
            self._no_improvement_count = 0
            if early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
            else:
                self.validation_scores_ = None
                self.best_validation_score_ = None
        self._converged = False
        validation = None
        if early_stopping:
            stratify = y if self._stratify and y.ndim == 1 else None
            n_val = int(np.ceil(len(x) * self.validation_fraction))
            if n_val < 1 or len(x) - n_val < 1:
                raise ValueError(f"{type(self).__name__}: early_stopping needs enough samples for "
                                 f"validation_fraction={self.validation_fraction}, got {len(x)}")
            seed = int(nd_random.generator().integers(np.iinfo(np.int32).max))
            parts = train_test_split(x, y, *(() if sample_weight is None else (sample_weight,)),
                                     test_size=self.validation_fraction, random_state=seed,
                                     stratify=stratify)
            x, x_val, y, y_val = parts[:4]
            sample_weight = parts[4] if sample_weight is not None else None
            validation = (x_val, y_val)
            self._best_weights = None
        progress = _Progress(self, validation, early_stopping)
        options = {}
        if sample_weight is not None:
            options["sample_weight"] = sample_weight
        batch_size = min(int(self.batch_size), len(x))
        self.model_.fit(x, self._targets(y), batch_size=batch_size, epochs=epochs, verbose=0,
                        shuffle=bool(self.shuffle), callbacks=[progress], **options)
        if early_stopping and self._best_weights is not None:
            self.model_.set_weights(self._best_weights)  # keep the best epoch's weights, as sklearn
        self._best_weights = None

    def _fit(self, x, y, sample_weight, partial, classes=None):
        first = not (partial and hasattr(self, "model_"))
        x, y = self._validate(x, y, reset=first)
        if sample_weight is not None:  # passed on to Model.fit, which scales each sample's loss
            sample_weight = _check_sample_weight(sample_weight, x, dtype=np.float64)
        self._check_params()
        y = self._prepare_targets(y, first, partial, classes, sample_weight)
        if first:
            self._generator = self._new_generator()
            self._penalty_batch_size = min(int(self.batch_size), len(x))
        with _local_generator(self._generator):
            if first:
                self.model_ = self._build(x.shape[1], self._n_outputs, self._penalty_batch_size)
            epochs = 1 if partial else int(self.max_iter)
            early = bool(self.early_stopping) and not partial
            self._train(x, y, epochs, sample_weight, early, first)
        if not partial and not self._converged and self.n_iter_ >= self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                          "the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def fit(self, X, y, sample_weight=None):
        """Train a new network on ``(X, y)`` for up to ``max_iter`` epochs; returns self.

        ``sample_weight`` (one per sample) scales each sample's loss (``Model.fit``'s).
        """
        return self._fit(X, y, sample_weight, partial=False)

    # ------------------------------------------------------------ data
    def _validate(self, x, y, reset=True):
        return validate_data(self, x, y, reset=reset, dtype=get_default_dtype(),
                             multi_output=True, y_numeric=not self._stratify)

    def _head(self):
        """(output activation, loss) of the network."""
        return self._output_activation, self._loss

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        x = validate_data(self, X, reset=False, dtype=get_default_dtype())
        return self.model_.predict(x, batch_size=1024).astype(np.float64)

    # ------------------------------------------------------------ pickling: no nanodl objects
    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        if model is not None:
            state["_model_weights"] = model.get_weights()
            optimizer = model.optimizer
            state["_optimizer_state"] = optimizer.state_dict() if optimizer.params is not None else None
        return state

    def __setstate__(self, state):
        weights = state.pop("_model_weights", None)
        optimizer_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        if weights is not None:
            with _local_generator(np.random.default_rng(0)):  # the draws are overwritten at once
                self.model_ = self._build(self.n_features_in_, self._n_outputs,
                                          self._penalty_batch_size)
            self.model_.build((None, self.n_features_in_))
            self.model_.set_weights(weights)
            if optimizer_state is not None:
                self.model_.optimizer.set_params(self.model_.parameters())
                self.model_.optimizer.load_state_dict(optimizer_state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by nanodl (``sklearn.neural_network``'s API).

    The output layer is a softmax over the classes (two outputs for a binary problem),
    trained with cross-entropy. Labels may be strings or integers; ``classes_`` holds
    them sorted. A 2-D 0/1 ``y`` is multilabel: one sigmoid output per label, binary
    cross-entropy, and ``predict`` returns the indicator matrix. ``partial_fit(X, y, classes=...)`` trains one epoch per call (``classes``
    is required on the first call, as in scikit-learn).

    >>> from nanodl.sklearn import MLPClassifier
    >>> MLPClassifier(hidden_layer_sizes=(32, 16), solver='adamw', dropout=0.1)
    MLPClassifier(dropout=0.1, hidden_layer_sizes=(32, 16), solver='adamw')
    """

    _output_activation = "softmax"
    _loss = "sparse_categorical_crossentropy"
    _stratify = True
    _multilabel = False

    def _head(self):
        if self._multilabel:  # one independent yes/no per label
            return "sigmoid", "binary_crossentropy"
        return "softmax", "sparse_categorical_crossentropy"

    def _validate(self, x, y, reset=True):
        x, y = super()._validate(x, y, reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # as sklearn: a column of labels is one output
        return x, y

    def _prepare_targets(self, y, first, partial, classes, sample_weight=None):
        name = type(self).__name__
        multilabel = y.ndim == 2
        if multilabel and type_of_target(y) != "multilabel-indicator":
            raise ValueError(f"{name}: a 2-D y must be a multilabel indicator matrix (one 0/1 column "
                             f"per label), got {type_of_target(y)!r} targets")
        check_classification_targets(y)
        if not first and multilabel != self._multilabel:
            raise ValueError(f"{name}: the network was trained on "
                             f"{'multilabel' if self._multilabel else 'single-label'} targets")
        if multilabel:
            return self._prepare_multilabel(y, first, partial, classes)
        if first:
            self._multilabel = False
            if partial:
                if classes is None:
                    raise ValueError(f"{name}: classes must be passed on the first call to partial_fit")
                self.classes_ = np.unique(np.asarray(classes))
            else:
                self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"{name} needs samples of at least 2 classes to train; got 1 class "
                                 f"({self.classes_[0]!r})")
            self._n_outputs = len(self.classes_)
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"{name}: `classes={list(classes)}` is not the same as on the first call to "
                             f"partial_fit, {self.classes_.tolist()}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"{name}: y holds labels not in classes {self.classes_.tolist()}: "
                             f"{unknown.tolist()}")
        if sample_weight is not None and not partial and len(np.unique(y[sample_weight > 0])) < 2:
            raise ValueError(f"{name} needs samples of at least 2 classes with a non-zero "
                             "sample_weight; got 1 class")
        return y

    def _prepare_multilabel(self, y, first, partial, classes):
        n_labels = y.shape[1]
        if first:
            if partial and classes is None:
                raise ValueError(f"{type(self).__name__}: classes must be passed on the first call to "
                                 "partial_fit")
            if classes is not None and len(classes) != n_labels:
                raise ValueError(f"{type(self).__name__}: {len(classes)} classes for {n_labels} "
                                 "label columns")
            self._multilabel = True
            self._label_dtype = y.dtype
            self.classes_ = np.arange(n_labels)
            self._n_outputs = n_labels
        elif n_labels != self._n_outputs:
            raise ValueError(f"{type(self).__name__}: y has {n_labels} label columns, the network "
                             f"was built for {self._n_outputs}")
        return y

    def _targets(self, y):
        if self._multilabel:
            return np.asarray(y, dtype=get_default_dtype())
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _decide(self, scores):
        """Labels from the network's outputs: argmax, or each label's probability above 0.5."""
        if self._multilabel:
            return (scores > 0.5).astype(self._label_dtype)
        return self.classes_[scores.argmax(axis=1)]

    def _validation_score(self, x, y):
        return accuracy_score(y, self._decide(self.model_.predict(x, batch_size=1024)))

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``, building the network on the first call (needs ``classes``)."""
        return self._fit(X, y, sample_weight, partial=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, ``(n_samples, n_classes)``, columns in ``classes_`` order
        (for multilabel targets, each label's own probability)."""
        probabilities = self._predict_raw(X)
        if self._multilabel:
            return probabilities
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class of each sample (a label from ``classes_``); for multilabel
        targets, the indicator matrix of the labels whose probability is above 0.5."""
        return self._decide(self._predict_raw(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by nanodl (``sklearn.neural_network``'s API).

    The output layer is linear, trained with the mean squared error; ``y`` may have
    several columns (multi-output regression). ``partial_fit(X, y)`` trains one epoch
    per call. ``predict`` returns ``(n_samples,)`` for one output, as scikit-learn does.

    >>> import numpy as np
    >>> from nanodl.sklearn import MLPRegressor
    >>> x = np.linspace(-1, 1, 200)[:, None]
    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=100, random_state=0)
    >>> bool(reg.fit(x, np.sin(3 * x).ravel()).score(x, np.sin(3 * x).ravel()) > 0.9)
    True
    """

    _output_activation = "linear"
    _loss = "mse"
    _stratify = False

    def _prepare_targets(self, y, first, partial, classes, sample_weight=None):
        y = np.asarray(y)
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self._n_outputs = n_outputs
        elif n_outputs != self._n_outputs:
            raise ValueError(f"{type(self).__name__}: y has {n_outputs} outputs, the network was "
                             f"built for {self._n_outputs}")
        return y

    def _targets(self, y):
        return np.asarray(y, dtype=get_default_dtype()).reshape(len(y), self._n_outputs)

    def _validation_score(self, x, y):
        pred = self.model_.predict(x, batch_size=1024).astype(np.float64)
        return r2_score(np.asarray(y).reshape(pred.shape), pred)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, building the network on the first call."""
        return self._fit(X, y, sample_weight, partial=True)

    def predict(self, X):
        """Predictions, ``(n_samples,)`` for one output, else ``(n_samples, n_outputs)``."""
        pred = self._predict_raw(X)
        return pred.ravel() if pred.shape[1] == 1 else pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
