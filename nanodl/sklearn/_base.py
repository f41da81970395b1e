"""What ``nanodl.sklearn``'s estimators share: the checks, the network and its training
with scikit-learn's rules. Private: import the estimators from ``nanodl.sklearn``."""
import contextlib
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                          validate_data)
except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("nanodl.sklearn needs scikit-learn >= 1.6, which is not installed; get it "
                      "with `pip install 'nanodl[sklearn]'`") from error

from .. import callbacks as nd_callbacks
from .. import optim, regularizers
from .. import random as nd_random
from ..backend import array_module
from ..functional import ACTIVATIONS
from ..nn import Dense, Dropout, Model, Module, Sequential
from ..ops import exp, log
from ..tensor import Tensor

_SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid"}
_OUR_PARAMETERS = {"dropout": [Interval(numbers.Real, 0, 1, closed="left")],
                   "device": [StrOptions({"cpu", "cuda"})], "model": [callable, None]}
_LBFGS_HISTORY = 10  # scipy's L-BFGS-B default (maxcor), which scikit-learn uses


def _constraints(sklearn_estimator):
    """scikit-learn's parameter constraints, widened to nanodl's activations and optimizers."""
    activations = set(_SKLEARN_ACTIVATIONS) | {a for a in ACTIVATIONS if a != "softmax"}
    return dict(sklearn_estimator._parameter_constraints, activation=[StrOptions(activations)],
                solver=[StrOptions(set(optim.OPTIMIZERS))], **_OUR_PARAMETERS)


def _store(estimator, arguments):
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def _array(param):
    """A parameter's own array on the CPU (writing into it changes the network), else a copy."""
    return param.data if param.device == "cpu" else param.numpy()


def _local_generator(generator):
    """This thread draws from ``generator`` inside the block (None: the global one)."""
    return contextlib.nullcontext() if generator is None else nd_random.using(generator)


class _Exp(Module):
    """The exp output of a Poisson regressor (the mean is exp of the last Dense)."""

    def forward(self, x):
        return exp(x)


def _half_poisson_deviance(pred, target):
    """Per sample, summed over the outputs: ``pred - y log(pred) + y log(y) - y``."""
    y = target.data
    xp = array_module(y)
    constant = xp.where(y > 0, y * xp.log(xp.where(y > 0, y, 1)), 0) - y
    return (pred - target * log(pred) + Tensor(constant)).sum(axis=1)


class _SetPenalty(nd_callbacks.Callback):
    """Sets the kernels' shared L2 ``penalty`` to each batch's factor (``0.5 * alpha / sum(w)``);
    ``track``: sums its value per sample for the reported loss."""

    def __init__(self, penalty, factors, kernels, track):
        super().__init__()
        self.penalty, self.factors, self.kernels, self.track = penalty, factors, kernels, track
        self.weighted_sum = 0.0

    def value(self):
        return self.penalty.l2 * sum(float((k.data * k.data).sum()) for k in self.kernels)

    def on_batch_begin(self, batch, logs=None):
        self.penalty.l2 = self.factors[batch]
        if self.track:
            self.weighted_sum += logs["size"] * self.value()


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: the network and its training. ``_encode``
    sets ``_head``: (output activation, loss, factor on fit's weights, on the reported loss)."""

    # ------------------------------------------------------------ the network
    def _sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if not hasattr(sizes, "__iter__") else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"{type(self).__name__}: hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _network(self, n_features):
        """A new network in ``self._dtype``, initialised as scikit-learn does (or ``model``'s)."""
        if self.model is not None:
            network = self.model(n_features, self.n_outputs_)
            if not isinstance(network, Model):
                raise TypeError(f"{type(self).__name__}: model(n_features, n_outputs) must return an "
                                f"uncompiled nanodl nn.Model, got {type(network).__name__}")
            network.build((None, n_features))
        else:
            units = [n_features] + self._sizes() + [self.n_outputs_]
            hidden = _SKLEARN_ACTIVATIONS.get(self.activation, self.activation)
            layers = []
            for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
                last = i == len(units) - 2
                layers.append(Dense(fan_out, activation=self._head[0] if last else hidden,
                                    input_dim=fan_in, kernel_initializer="zeros"))
                if not last and self.dropout > 0:
                    layers.append(Dropout(self.dropout))
            if self.out_activation_ == "exp":
                layers.append(_Exp())
            network = Sequential(layers)
            factor = 2.0 if self.activation == "logistic" else 6.0
            draws = nd_random.generator()
            for dense in [m for m in network.modules() if isinstance(m, Dense)]:
                bound = np.sqrt(factor / (dense.input_dim + dense.units))
                dense.kernel.data = draws.uniform(-bound, bound, (dense.input_dim, dense.units))
                dense.bias.data = draws.uniform(-bound, bound, dense.units)
        network._load_state({name: value.astype(self._dtype) if value.dtype.kind == "f" else value
                             for name, value in network.state_dict().items()}, keep_dtype=True)
        if self.device != "cpu":
            network.to(self.device)
        return network

    def _dense_layers(self):
        check_is_fitted(self, "model_")
        return [m for m in self.model_.modules() if isinstance(m, Dense)]

    @property
    def coefs_(self):
        """The Dense kernels, ``(fan_in, fan_out)`` each (live on the CPU)."""
        return [_array(layer.kernel) for layer in self._dense_layers()]

    @property
    def intercepts_(self):
        """The Dense biases, ``(fan_out,)`` each (live on the CPU)."""
        return [_array(layer.bias) for layer in self._dense_layers()]

    def _optimizer(self):
        solver = self.solver
        if solver == "lbfgs":
            return optim.LBFGS(lr=1, max_iter=int(self.max_iter), max_eval=int(self.max_fun),
                               tolerance_grad=float(self.tol), tolerance_change=1e7 * np.finfo(float).eps,
                               history_size=_LBFGS_HISTORY, line_search_fn="strong_wolfe")
        if solver == "sgd":
            return optim.SGD(lr=self.learning_rate_init, momentum=self.momentum,
                             nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        if solver == "adam":
            return optim.Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                              eps=self.epsilon)
        optimizer = optim.get(solver)
        optimizer.lr = self.learning_rate_init
        return optimizer

    def _compile(self):
        self.model_.compile(optimizer=self._optimizer(), loss=self._head[1])

    # ------------------------------------------------------------ fit
    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        self._validate_params()
        self._sizes()
        first = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, reset=first)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if (sample_weight < 0).any():  # a weight counts copies of a sample
                raise ValueError(f"{type(self).__name__}.fit: sample_weight holds negative values "
                                 f"(the smallest is {sample_weight.min():g}); weights must be >= 0")
        targets = self._encode(y, first, incremental, classes, sample_weight)
        if first or not incremental:
            self._generator = self._new_generator()
        with _local_generator(self._generator):
            if first:
                self._initialize(X, targets)
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, targets, sample_weight)
            else:
                self._fit_stochastic(X, y, targets, sample_weight, incremental)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _new_generator(self):
        """A generator of our own from ``random_state`` (None: nanodl's global one)."""
        if self.random_state is None:
            return None
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        return np.random.default_rng(seed)

    def _initialize(self, X, targets):
        self._dtype = X.dtype
        self.n_iter_, self.t_ = 0, 0
        self.model_ = self._network(X.shape[1])
        self.n_layers_ = len(self._dense_layers()) + 1
        if self.solver != "lbfgs":
            self.loss_curve_, self._no_improvement_count = [], 0
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = \
                ([], -np.inf, None) if self.early_stopping else (None, None, np.inf)

    def _batch_weights(self, weight, n, batch_size):
        """``(weights for Model.fit, each batch's penalty factor)``: each batch's weights scaled
        to its size over their sum, so fit's mean of weight x loss is scikit-learn's mean."""
        weight = np.ones(n) if weight is None else weight
        starts = np.arange(0, n, batch_size)
        counts = np.diff(np.append(starts, n))
        sums = np.add.reduceat(weight, starts)
        safe = np.where(sums > 0, sums, 1.0)
        scaled = self._head[2] * weight * np.repeat(np.where(sums > 0, counts / safe, 0.0), counts)
        return scaled, list(np.where(sums > 0, 0.5 * float(self.alpha) / safe, 0.0))

    @contextlib.contextmanager
    def _penalty(self, factors):
        """scikit-learn's L2 term on the Dense kernels in the block; yields a ``_SetPenalty`` or None."""
        if not self.alpha > 0:
            yield None
            return
        penalty = regularizers.L2(factors[0])
        denses = [m for m in self.model_.modules()
                  if isinstance(m, Dense) and m.kernel_regularizer is None]
        for dense in denses:
            dense.kernel_regularizer = penalty
        self.model_._plan_cache = None  # the plan lists the layers with penalties
        try:
            yield _SetPenalty(penalty, factors, [d.kernel for d in denses], self._head[3] != 1)
        finally:
            for dense in denses:
                dense.kernel_regularizer = None
            self.model_._plan_cache = None

    def _train(self, X, targets, weight, batch_size, final_loss=False):
        """One epoch of ``Model.fit`` in this order; the loss as scikit-learn reports it
        (``final_loss``: at the last weights, for L-BFGS)."""
        scaled, factors = self._batch_weights(weight, len(X), batch_size)
        sample_weight = None if weight is None and self._head[2] == 1 else scaled
        with self._penalty(factors) as setter:
            history = self.model_.fit(X, targets, batch_size=batch_size, epochs=1, verbose=0,
                                      shuffle=False, sample_weight=sample_weight,
                                      callbacks=[setter] if setter else None)
            if final_loss:
                loss = float(self.model_.evaluate(X, targets, batch_size=len(X),
                                                  sample_weight=sample_weight))
                penalty = setter.value() if setter else 0.0
            else:
                loss = float(history.history["loss"][0])
                penalty = setter.weighted_sum / len(X) if setter else 0.0
        # several squared-error outputs train on their sum, scikit-learn reports their mean
        return (loss - penalty) * self._head[3] + penalty

    def _fit_lbfgs(self, X, targets, weight):
        self._compile()
        optimizer = self.model_.optimizer
        self.loss_ = self._train(X, targets, weight, len(X), final_loss=True)
        self.n_iter_ = int(optimizer.state["n_iter"])
        if self.n_iter_ >= self.max_iter or optimizer.state["func_evals"] >= self.max_fun:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                          f"(max_iter={self.max_iter}, max_fun={self.max_fun}).\n\nIncrease the "
                          "number of iterations to improve the convergence.", ConvergenceWarning)

    def _fit_stochastic(self, X, y, targets, weight, incremental):
        if not incremental or not hasattr(self, "_optimizer_ready"):
            self._compile()
            self._optimizer_ready = True
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        validation = None
        if self.early_stopping:
            X, targets, weight, validation = self._split_validation(X, y, targets, weight)
        n = len(X)
        if self.batch_size != "auto" and self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                          "to be clipped")
        batch_size = min(200, n) if self.batch_size == "auto" else int(np.clip(self.batch_size, 1, n))
        optimizer = self.model_.optimizer
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            order = nd_random.generator().permutation(n) if self.shuffle else np.arange(n)
            loss = self._train(X[order], targets[order], None if weight is None else weight[order],
                               batch_size)
            self.n_iter_, self.t_, self.loss_ = self.n_iter_ + 1, self.t_ + n, loss
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            self._update_no_improvement_count(validation)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                optimizer.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                message = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                if self.solver == "sgd" and self.learning_rate == "adaptive" and optimizer.lr > 1e-6:
                    optimizer.lr /= 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{message} Setting learning rate to {optimizer.lr:f}")
                else:
                    if self.verbose:
                        print(f"{message} Stopping.")
                    break
            if not np.isfinite(loss) or incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                              "and the optimization hasn't converged yet.", ConvergenceWarning)
        if self.early_stopping and self._best_weights is not None:
            self.model_.set_weights(self._best_weights)  # the best validation epoch's, as sklearn
        self._best_weights = None

    def _split_validation(self, X, y, targets, weight):
        stratify = y if self._stratify and self.n_outputs_ == 1 else None
        seed = int(nd_random.generator().integers(np.iinfo(np.int32).max))
        arrays = (X, y, targets) + (() if weight is None else (weight,))
        parts = train_test_split(*arrays, random_state=seed, test_size=self.validation_fraction,
                                 stratify=stratify)
        train, val = parts[0::2] + [None], parts[1::2] + [None]  # [3]: the weights or None
        if len(val[0]) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or "
                             "the size of your dataset.")
        self._best_weights = self.model_.get_weights()
        return train[0], train[2], train[3], (val[0], val[1], val[3])

    def _update_no_improvement_count(self, validation):
        """scikit-learn's rule on the validation score, or on the loss (negated: higher is better)."""
        if validation is not None:
            value, best = self._score(*validation), self.best_validation_score_
            self.validation_scores_.append(value)
            if self.verbose:
                print(f"Validation score: {value:f}")
        else:
            value, best = -self.loss_curve_[-1], -self.best_loss_
        self._no_improvement_count = self._no_improvement_count + 1 if value < best + self.tol else 0
        if value > best and validation is not None:
            self.best_validation_score_ = value
            self._best_weights = self.model_.get_weights()
        elif value > best:
            self.best_loss_ = -value

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` and ``y``; returns self. A sample of weight k counts as k copies."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver == "lbfgs":
            raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is "
                                 "not stochastic.")
        return True

    # ------------------------------------------------------------ data
    def _validate_input(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, multi_output=True,
                             dtype=(np.float64, np.float32), y_numeric=not self._stratify)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _raw(self, X):
        check_is_fitted(self, "model_")
        x = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._predict_arrays(x)

    def _predict_arrays(self, x):
        return self.model_.predict(x, batch_size=max(1024, len(x) // 8)).astype(np.float64)

    # ------------------------------------------------------------ pickling: no nanodl objects
    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        if model is not None:
            state["_model_weights"] = model.get_weights()
            optimizer = model.optimizer
            keep = optimizer is not None and optimizer.params is not None and \
                not isinstance(optimizer, optim.LBFGS)
            state["_optimizer_state"] = optimizer.state_dict() if keep else None
        return state

    def __setstate__(self, state):
        weights = state.pop("_model_weights", None)
        optimizer_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        if weights is not None:
            with _local_generator(np.random.default_rng(0)):  # the draws are overwritten at once
                self.model_ = self._network(self.n_features_in_)
            self.model_.set_weights(weights)
            self._compile()
            if optimizer_state is not None:
                self.model_.optimizer.set_params(self.model_.parameters())
                self.model_.optimizer.load_state_dict(optimizer_state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


