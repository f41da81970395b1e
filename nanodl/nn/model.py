"""``Model`` (a Module with Keras' compile/fit/evaluate/predict) and ``Sequential``.

How ``fit`` reads, top to bottom: check the arguments, split off the validation
set, prepare the arrays once (a ``_Plan``), then for each epoch ``_fit_epoch``:
draw the sample order (``_epoch_order``), run ``_train_step`` (forward, loss,
backward, optimizer step) per batch, add the batch's numbers to ``EpochTotals``,
and hand the averages to the callbacks. Printing and saving happen only in
callbacks (``callbacks.ProgressBar`` is what ``verbose`` adds).

Everything that can be decided once is decided once per ``fit`` in a ``_Plan``
(the forward to run, the loss closure, the metric functions, the parameters, the
penalty layers); the step itself is the hot path.

A softmax (sigmoid) output trained with a categorical (binary) cross-entropy on
probabilities is fused, as Keras does (``fuse_logits``): the last Dense computes
logits and the loss is the stable logits form (``ops.softmax_cross_entropy``),
the same function without the clipping and without overflow.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(8, activation='tanh'), nn.Dense(1)])
>>> model.compile(optimizer='sgd', loss='mse')
>>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
>>> history = model.fit(x, 2 * x, epochs=3, verbose=0)
>>> sorted(history.history), len(history.epoch)
(['loss', 'lr'], 3)
"""
import contextlib
import math
import warnings

import numpy as np

from .. import archive
from .. import callbacks as callbacks_module
from .. import losses as losses_module
from .. import distributed, ops, optim
from ..autograd import no_grad
from ..backend import array_module, to_device, to_host
from ..random import generator
from ..tensor import Tensor, as_array, get_default_dtype
from .layers import Dense, Embedding
from . import weighting
from .module import Module, ModuleList

__all__ = ["Model", "Sequential", "METRICS"]

METRICS = ("accuracy", "mae", "mse")
_METRIC_ALIASES = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse"}
_CROSS_ENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


# ---------------------------------------------------------------- metrics on backend arrays
# Each metric maps a batch's (pred, target) arrays to one value per sample, so an epoch's
# value is an exact per-sample (or weighted) mean however the samples are batched.
def _per_sample(values):
    """Elementwise values (N, ...) -> their mean per sample (N,)."""
    return values.reshape(len(values), -1).mean(axis=1) if values.ndim != 1 else values * 1.0


def _aligned(target, shape, metric, pred_shape=None):
    """``target`` reshaped to ``shape``, where they differ at most by a trailing axis of
    one (Keras' (N,) labels against (N, 1) outputs); any other mismatch is an error,
    never a broadcast of (N, 1) against (N,) into (N, N)."""
    if target.shape == shape:
        return target
    if target.shape + (1,) == shape or target.shape == shape + (1,):
        return target.reshape(shape)
    raise ValueError(f"metric {metric!r}: targets of shape {tuple(target.shape)} do not match "
                     f"predictions of shape {tuple(pred_shape or shape)}")


def _binary_accuracy(threshold):
    def accuracy(pred, target):
        target = _aligned(target, pred.shape, "accuracy")
        return _per_sample((pred > threshold) == (target > 0.5))
    return accuracy


def _categorical_accuracy(pred, target):
    if target.shape != pred.shape:
        raise ValueError(f"metric 'accuracy': one-hot targets of shape {tuple(target.shape)} do "
                         f"not match predictions of shape {tuple(pred.shape)}")
    return _per_sample(pred.argmax(axis=-1) == target.argmax(axis=-1))


def _sparse_accuracy(pred, target):
    target = _aligned(target, pred.shape[:-1], "accuracy", pred.shape)
    return _per_sample(pred.argmax(axis=-1) == target)


def _mae(pred, target):
    return _per_sample(abs(pred - _aligned(target, pred.shape, "mae")))


def _mse(pred, target):
    diff = pred - _aligned(target, pred.shape, "mse")
    return _per_sample(diff * diff)


def _metric_sum(values, count):
    """The sum over a batch of ``count`` samples of a metric's per-sample values; a
    callable metric that returns one number stands for each of its samples."""
    if np.ndim(values) == 0:
        return float(values) * count
    return float(values.sum())


def _softmax_array(logits):
    return ops.softmax(Tensor(logits)).data


def _sigmoid_array(logits):
    return ops.sigmoid(Tensor(logits)).data


class EpochTotals:
    """What an epoch adds up, batch by batch: the sums behind its reported averages.

    ``values`` is a list of floats ``[Σ loss·count, samples, Σ weight, Σ weight·metric
    for each metric]`` (weights are 1 without ``sample_weight``), so a data-parallel run
    sums it across processes, elementwise, before ``averages`` divides: the logs are
    then exact per-sample averages over every process.

    >>> totals = EpochTotals(["accuracy"])
    >>> totals.add(loss=0.5, count=2, weight=2.0, metric_sums=[2.0])
    >>> totals.add(loss=0.25, count=2, weight=2.0, metric_sums=[1.0])
    >>> totals.averages()
    {'loss': 0.375, 'accuracy': 0.75}
    """

    def __init__(self, labels):
        self.labels = list(labels)
        self.values = [0.0] * (3 + len(self.labels))

    def add(self, loss, count, weight, metric_sums):
        """Add one batch: its mean ``loss``, ``count`` samples, their summed ``weight``
        and each metric's weighted sum over the batch."""
        values = self.values
        values[0] += loss * count
        values[1] += count
        values[2] += weight
        for i, total in enumerate(metric_sums, start=3):
            values[i] += total

    def averages(self):
        """``{'loss': ..., metric: ...}``: the loss per sample, each metric per unit weight."""
        loss_sum, count, weight = self.values[:3]
        logs = {"loss": loss_sum / count}
        for label, total in zip(self.labels, self.values[3:]):
            logs[label] = total / weight
        return logs


def fuse_logits(model, loss_name, loss_config):
    """The logits fusion: ``(forward, loss_fn, kind)`` that trains a softmax (sigmoid)
    head through the fused from-logits loss, or None when it does not apply.

    A model whose last layer is ``Dense(activation='softmax')`` compiled with a
    categorical (or sparse categorical) cross-entropy on probabilities, or a
    ``Dense(activation='sigmoid')`` with a binary cross-entropy, computes the same
    function as its pre-activation (the logits) fed to the loss's ``from_logits=True``
    form, which is one stable node: no clipping of the probabilities, no overflow, an
    exact gradient (softmax - target). Keras makes the same swap (not while the head
    has a forward hook: the hook sees the layer's real output). ``forward`` then runs
    the model up to the logits, and ``kind`` (``'softmax'``/``'sigmoid'``) tells the
    metrics that they see logits. ``predict`` and ``evaluate`` outputs are unchanged:
    only the training graph differs.
    """
    if loss_name is None or loss_config.get("from_logits") or \
            loss_config.get("reduction", "mean") != "mean":
        return None
    head = model._logits_head()
    if head is None:
        return None
    body, dense = head
    if dense.__dict__.get("_forward_hooks"):
        return None  # a hook on the head sees (and may replace) its real output
    if loss_name in _CROSS_ENTROPIES and dense.activation == "softmax":
        kind = "softmax"

        def loss_fn(logits, target, reduction="mean"):
            return losses_module.softmax_xent(logits, target, reduction)
    elif loss_name == "binary_crossentropy" and dense.activation == "sigmoid":
        kind = "sigmoid"

        def loss_fn(logits, target, reduction="mean"):
            return losses_module.binary_crossentropy(logits, target, from_logits=True,
                                                     reduction=reduction)
    else:
        return None

    def forward(x):  # the model up to the last Dense's pre-activation: logits
        for layer in body:
            x = layer(x)
        return dense.pre_activation(x)
    return forward, loss_fn, kind


def _compiled_loss(loss, loss_name, loss_config):
    """``loss_fn(out, target, reduction='mean')`` for a built-in loss name or a callable:
    a scalar Tensor (the compiled reduction), or with ``reduction='none'`` the
    unreduced losses, at least one per sample (for sample weights)."""
    if loss_name is not None:
        function = losses_module.LOSSES[loss_name]
        options = dict(loss_config or {})

        def loss_fn(pred, target, reduction="mean"):
            if reduction == "none":
                return function(pred, target, **dict(options, reduction="none"))
            value = function(pred, target, **options)
            return value if value.ndim == 0 else value.mean()
        return loss_fn

    def loss_fn(pred, target, reduction="mean"):
        value = loss(pred, Tensor(target))
        if not isinstance(value, Tensor):
            raise TypeError(f"fit: the loss must return a Tensor, got {type(value).__name__}")
        if reduction == "none":
            if value.ndim == 0 or value.shape[0] != len(target):
                raise ValueError(f"fit: sample_weight and class_weight need one loss per sample; "
                                 f"the loss returned shape {value.shape} for {len(target)} samples "
                                 "(return the unreduced losses, e.g. reduction='none')")
            return value
        return value if value.ndim == 0 else value.mean()
    return loss_fn


def _per_sample_loss(losses, n):
    """Unreduced losses (N, ...) -> each sample's loss (N,): the mean over its elements."""
    return losses if losses.ndim == 1 else losses.reshape(n, -1).mean(axis=1)


class _Plan:
    """What one ``fit``/``evaluate`` decides once: forward, loss closure, metrics, targets."""

    def __init__(self, model, x_sample, y):
        self.model = model
        sample_out = model._build_on(x_sample)
        self.device = model._device()
        self.dtype = model._float_dtype()
        self.params = model.parameters()
        optimizer = model.optimizer
        if optimizer.params is None or [id(p) for p in optimizer.params] != [id(p) for p in self.params]:
            optimizer.set_params(self.params)
        self.optimizer = optimizer
        self.penalty_layers = [m for m in model.modules() if m.penalties()]
        self.penalty = self._penalty if self.penalty_layers else None
        self.loss_name, self.loss_config = losses_module.describe(model.loss)
        self.out_shape = tuple(sample_out.shape[1:])
        self.forward, self.loss_fn, self.logits = self._choose_forward_and_loss()
        self.loss_reduction = (self.loss_config or {}).get("reduction", "mean")
        self.metrics = self._choose_metrics(y.shape)

    def loss(self, out, target, weight=None):
        """The batch's loss, a scalar Tensor: the compiled loss; with per-sample
        ``weight``s, the mean over the batch of weight x each sample's loss (Keras'
        ``sum_over_batch_size``; the sum for a loss compiled with ``reduction='sum'``)."""
        if weight is None:
            return self.loss_fn(out, target)
        per_sample = _per_sample_loss(self.loss_fn(out, target, "none"), len(target))
        total = (per_sample * Tensor(weight)).sum()
        return total if self.loss_reduction == "sum" else total * (1.0 / len(target))

    # ------------------------------------------------------------ loss
    def _choose_forward_and_loss(self):
        fused = fuse_logits(self.model, self.loss_name, self.loss_config or {})
        if fused is not None:
            return fused
        return self.model.forward, _compiled_loss(self.model.loss, self.loss_name,
                                                  self.loss_config), None

    # ------------------------------------------------------------ metrics
    def _accuracy_kind(self, y_shape):
        name, out_shape = self.loss_name, self.out_shape
        if name == "binary_crossentropy":
            return "binary"
        if name == "sparse_categorical_crossentropy":
            return "sparse"
        if name == "categorical_crossentropy":
            return "categorical"
        if not out_shape or out_shape[-1] == 1:
            return "binary"
        return "categorical" if tuple(y_shape[1:]) == out_shape else "sparse"

    def _choose_metrics(self, y_shape):
        metrics = []
        for label, metric in self.model._metric_specs:
            if callable(metric):
                function = metric
            elif metric == "accuracy":
                kind = self._accuracy_kind(y_shape)
                if kind == "binary":
                    function = _binary_accuracy(0.0 if self.logits else 0.5)
                else:
                    function = _sparse_accuracy if kind == "sparse" else _categorical_accuracy
            else:
                if self.loss_name == "sparse_categorical_crossentropy":
                    raise ValueError(f"metric {metric!r} needs targets shaped like the predictions; "
                                     "integer class targets have no such shape")
                function = _mae if metric == "mae" else _mse
                if self.logits:  # the loop sees logits: turn them into probabilities first
                    to_probs = _softmax_array if self.logits == "softmax" else _sigmoid_array
                    function = (lambda f: lambda pred, target: f(to_probs(pred), target))(function)
            metrics.append((label, function))
        return metrics

    # ------------------------------------------------------------ data
    def inputs(self, x):
        """``x`` as a backend array of the model's float dtype on its device."""
        x = as_array(x, what="x")
        dtype = self.model._input_dtype(x.dtype)
        if x.dtype != dtype:
            x = x.astype(dtype)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        return to_device(x, self.device)

    def targets(self, y):
        """``y`` in the form the loss wants: class labels, or floats shaped like the output."""
        y = as_array(y, what="y")
        name, out_shape = self.loss_name, self.out_shape
        if name == "sparse_categorical_crossentropy":
            if y.ndim == len(out_shape) + 1 and y.ndim >= 2 and y.shape[-1] == 1:
                y = y.reshape(y.shape[:-1])  # Keras' (N, 1) labels
            y = losses_module.class_targets(name, (len(y),) + out_shape, y)
        elif name is not None:
            if y.dtype != self.dtype:
                y = y.astype(self.dtype)
            expected = (len(y),) + out_shape
            if y.shape != expected:
                if y.shape + (1,) != expected and y.shape != expected + (1,):
                    hint = (" (integer class labels need loss='sparse_categorical_crossentropy',"
                            " or one-hot targets)") if name == "categorical_crossentropy" else ""
                    raise ValueError(f"fit: targets of shape {y.shape} do not match the model's "
                                     f"output shape {(None,) + out_shape} for loss {name!r}{hint}")
                y = y.reshape(expected)  # (N,) against (N, 1) outputs and back, as Keras
        elif y.dtype.kind == "f" and y.dtype != self.dtype:
            y = y.astype(self.dtype)
        return to_device(y, self.device)

    def _penalty(self):
        """The sum of the weight penalties, a scalar Tensor in the graph."""
        total = None
        for layer in self.penalty_layers:
            for term in layer.penalties():
                total = term if total is None else total + term
        return total

    def weights(self, weight, who):
        """Host per-sample weights as an array of the model's float dtype on its device."""
        if weight.sum() == 0:
            raise ValueError(f"{who}: every sample weight is zero; nothing would be learned")
        return to_device(weight.astype(self.dtype), self.device)

    def sample_classes(self, y):
        """Each sample's class (a host int array) from prepared targets ``y``, for
        ``class_weight``: the label, the argmax of a one-hot row, or the 0/1 of a
        binary target; a regression target raises ``ValueError``."""
        host = to_device(y, "cpu")
        if host.ndim == 2 and host.shape[1] > 1:
            one_hot = ((host == 0) | (host == 1)).all() and (host.sum(axis=1) == 1).all()
            if self.loss_name != "categorical_crossentropy" and not one_hot:
                raise ValueError(f"fit: class_weight needs class targets; y of shape {host.shape} "
                                 "is not one-hot (a regression target?)")
            return host.argmax(axis=1)
        if host.ndim == 2 and host.shape[1] == 1:
            host = host[:, 0]
        if host.ndim != 1:
            raise ValueError(f"fit: class_weight needs one class per sample, got targets of "
                             f"shape {host.shape}")
        if host.dtype.kind == "f" and not (host == np.round(host)).all():
            raise ValueError("fit: class_weight needs class targets, but y holds non-integer "
                             "values (a regression target); use sample_weight instead")
        if (host < 0).any():
            raise ValueError(f"fit: class_weight needs class labels >= 0, y holds {host.min():g}")
        return host.astype(np.int64)

    def output_classes(self):
        """The classes the loss fixes (C classes of a softmax, 0 and 1 for a binary
        target), or None when only the targets tell."""
        if self.loss_name in _CROSS_ENTROPIES and self.out_shape:
            return set(range(self.out_shape[-1]))
        if self.loss_name == "binary_crossentropy":
            return {0, 1}
        return None

    def class_labels(self, y):
        """The distinct classes among prepared targets ``y`` (None for regression)."""
        classifying = self.loss_name in ("binary_crossentropy",) + _CROSS_ENTROPIES or \
            any(label == "accuracy" for label, _ in self.model._metric_specs)
        if not classifying:
            return None
        kind = self._accuracy_kind(y.shape)
        host = to_host(y)
        if kind == "categorical":
            host = host.argmax(axis=-1)
        elif kind == "binary":
            host = host > 0.5
        return np.unique(host)


# ---------------------------------------------------------------- fit's helpers
def _check_batch_size(batch_size, who):
    """``batch_size`` as a positive int (None means Keras' default, 32)."""
    batch_size = 32 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{who}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")


def _samples(x, y, who):
    """``x`` and ``y`` as arrays holding the same, non-zero number of samples."""
    x, y = as_array(x, what="x"), as_array(y, what="y")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"{who}: x and y must hold the same number of samples, got x of shape "
                         f"{tuple(x.shape)} and y of shape {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{who}: x and y are empty")
    return x, y


def _split_validation(x, y, weight, validation_data, validation_split):
    """``((x, y, weight), (x_val, y_val, weight_val) or None)``: ``validation_data`` as
    given (``(x, y)`` or ``(x, y, sample_weight)``), or the last ``validation_split``
    of the samples and their weights (taken before any shuffling, as Keras)."""
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be a tuple (x_val, y_val) or "
                             "(x_val, y_val, sample_weight_val)")
        x_val, y_val = (as_array(v, what="validation_data") for v in validation_data[:2])
        if x_val.ndim == 0 or y_val.ndim == 0 or len(x_val) != len(y_val) or len(x_val) == 0:
            raise ValueError(f"fit: validation x and y must hold the same (non-zero) number of "
                             f"samples, got {tuple(x_val.shape)} and {tuple(y_val.shape)}")
        w_val = validation_data[2] if len(validation_data) == 3 else None
        w_val = weighting.check_sample_weight(w_val, len(x_val), "fit: validation_data's sample_weight")
        return (x, y, weight), (x_val, y_val, w_val)
    if not validation_split:
        return (x, y, weight), None
    if not 0 < validation_split < 1:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    if split_at == 0 or split_at == len(x):
        raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves "
                         "an empty training or validation set")
    head, tail = slice(None, split_at), slice(split_at, None)
    if weight is None:
        return (x[head], y[head], None), (x[tail], y[tail], None)
    return (x[head], y[head], weight[head]), (x[tail], y[tail], weight[tail])


def _warn_single_class(plan, y_val, validation_split):
    classes = plan.class_labels(y_val)
    if classes is not None and len(classes) == 1:
        warnings.warn(
            f"fit: the validation set (the last {validation_split:g} of the data, taken "
            f"before shuffling) holds a single class ({classes[0]}); shuffle x and y "
            "first or pass validation_data", stacklevel=4)


def _warn_non_finite(x, y):
    """One RuntimeWarning before training when ``x`` or ``y`` holds NaN or inf."""
    xp = array_module(x)
    bad = [name for name, values in (("x", x), ("y", y))
           if values.dtype.kind in "fc" and not bool(xp.isfinite(values).all())]
    if bad:
        warnings.warn(f"fit: {' and '.join(bad)} hold{'s' if len(bad) == 1 else ''} NaN or inf "
                      "values; training on them turns the weights into NaN (clean the data, or "
                      "stop early with callbacks.TerminateOnNaN())", RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- sample and class weights
def _training_weights(plan, y, sample_weight, class_weight):
    """The per-sample weights ``fit`` trains with (sample x class weights), on the
    model's device, or None when neither is given."""
    weight = sample_weight
    if class_weight is not None:
        per_class = weighting.class_weight_per_sample(plan.sample_classes(y), class_weight,
                                                      plan.output_classes())
        weight = per_class if weight is None else weight * per_class
    return None if weight is None else plan.weights(weight, "fit")


def _add_batch(totals, plan, loss, out, target, weight=None):
    """Add one batch's loss and metrics (weighted means when ``weight`` is given) to the
    epoch's ``totals``."""
    count = len(target)
    out_data = out.data
    if weight is None:
        totals.add(float(loss.data), count, float(count),
                   [_metric_sum(metric(out_data, target), count) for _, metric in plan.metrics])
        return
    weight_sum = float(weight.sum())
    sums = []
    for _, metric in plan.metrics:
        values = metric(out_data, target)
        sums.append(float(values) * weight_sum if np.ndim(values) == 0
                    else float((_per_sample(values) * weight).sum()))
    totals.add(float(loss.data), count, weight_sum, sums)


class Model(Module):
    """A Module with Keras' training loop; subclass it and write ``forward``."""

    # Defaults as class attributes, so a subclass that forgets super().__init__() still works.
    optimizer = None          # set by compile
    loss = None               # name or callable, as given to compile
    stop_training = False     # a callback sets it to end fit after the current epoch
    history = None            # the History of the last fit
    _metric_specs = ()        # (label, name or callable) per compiled metric
    _compile_config = None    # compile settings by name, saved with the model
    _plan_cache = None        # (key, _Plan) of the last fit/evaluate
    _target_device = None     # where lazily built layers go (set by to())
    _data_parallel = None     # a distributed.DataParallelFit during a data-parallel fit

    # ------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss="mse", metrics=None):
        """Choose the optimizer (name or instance), the loss (name or callable) and metrics."""
        optimizer = optim.get(optimizer)
        losses_module.get(loss)  # validates a name
        specs = []
        for metric in metrics or []:
            if callable(metric):
                specs.append((getattr(metric, "__name__", "metric"), metric))
                continue
            name = _METRIC_ALIASES.get(metric, metric)
            if name not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; valid names: {', '.join(METRICS)}")
            specs.append((name, name))
        self.optimizer, self.loss, self._metric_specs = optimizer, loss, specs
        self._plan_cache = None
        loss_name, loss_config = losses_module.describe(loss)
        inner = optimizer.optimizer if isinstance(optimizer, distributed.DistributedOptimizer) else optimizer
        if loss_name is not None and type(inner) in optim.OPTIMIZERS.values() and \
                all(isinstance(m, str) for _, m in specs):
            self._compile_config = {
                "optimizer": {"name": optimizer.name, "config": optimizer.get_config()},
                "loss": {"name": loss_name, "config": loss_config,
                         "class": isinstance(loss, losses_module.Loss)},
                "metrics": [name for name, _ in specs]}
        else:
            self._compile_config = None

    def _require_compiled(self, what):
        if self.optimizer is None:
            raise RuntimeError(f"{what}: call compile(optimizer, loss, metrics) first")

    # ------------------------------------------------------------ building
    def _device(self):
        for param in self.parameters():
            return param.device
        return self._target_device or "cpu"

    def _float_dtype(self):
        for param in self.parameters():
            return param.dtype
        return get_default_dtype()

    def _input_dtype(self, dtype):
        """What inputs of ``dtype`` are cast to: the float dtype, except integer indices
        for a first layer that looks them up (an ``Embedding``)."""
        if np.dtype(dtype).kind in "iu" and self._takes_indices():
            return np.dtype(dtype)
        return self._float_dtype()

    def _takes_indices(self):
        return False

    @contextlib.contextmanager
    def _mode(self, training):
        """Run a block in training or eval mode, then restore every module's own mode."""
        saved = [(module, module.training) for module in self.modules()]
        self.train(training)
        try:
            yield
        finally:
            for module, mode in saved:
                module.__dict__["training"] = mode

    def _build_on(self, x_sample):
        """Run two samples through the model (eval mode, no graph): builds lazy layers."""
        x = as_array(x_sample, what="x")[:2]
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        x = x.astype(self._input_dtype(x.dtype)) if x.dtype.kind != "f" else x
        with self._mode(False), no_grad():
            out = self.forward(Tensor(to_device(x, self._device())))
        self._input_shape = tuple(x.shape[1:])
        return out

    def build(self, input_shape):
        """Build every layer for inputs of ``input_shape`` (with or without the batch axis None)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self._build_on(np.zeros((1,) + shape, dtype=self._input_dtype(np.dtype(np.int64))))
        return self

    def _logits_head(self):
        """``(layers before, last Dense)`` when the output is a Dense whose logits can be
        fused with the loss; None for models whose forward is opaque."""
        return None

    def to(self, device):
        super().to(device)
        self._target_device = device
        optimizer = self.optimizer
        if optimizer is not None and optimizer.params is not None:
            optimizer.load_state_dict(optimizer.state_dict())  # its state follows the parameters
        self._plan_cache = None
        return self

    def _plan(self, x, y):
        head = self._logits_head()
        key = (tuple(x.shape[1:]), tuple(y.shape[1:]), len(self.parameters()),
               head is not None and bool(head[1].__dict__.get("_forward_hooks")))
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, _Plan(self, x, y))
        return self._plan_cache[1]

    # ------------------------------------------------------------ fit
    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, validation_data=None,
            validation_split=0.0, shuffle=True, callbacks=None, class_weight=None,
            sample_weight=None, capture=False):
        """Train for ``epochs`` passes over ``(x, y)``; returns the ``callbacks.History``.

        Reported loss and metrics are averaged per sample over the epoch (the loss
        includes the layers' weight penalties, as in Keras). ``validation_split``
        holds out the *last* fraction of ``x``/``y`` before shuffling, as Keras does.
        ``sample_weight`` (one per sample) and ``class_weight`` (``{class: weight}`` or
        ``'balanced'``) scale each sample's loss; metrics become weighted means.
        ``capture=True`` trains through a captured step (``nanodl.capture``): the same
        results, bit for bit, with less work per batch.
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size, "fit")
        _check_epochs(epochs)
        verbose = callbacks_module.resolve_verbose(verbose)
        x, y = _samples(x, y, "fit")
        weight = weighting.check_sample_weight(sample_weight, len(x), "fit: sample_weight")
        (x, y, weight), validation = _split_validation(x, y, weight, validation_data, validation_split)
        plan = self._plan(x, y)
        x, y = plan.inputs(x), plan.targets(y)
        weight = _training_weights(plan, y, weight, class_weight)
        if validation is not None:
            validation = self._prepare_validation(plan, validation, validation_split)
        _warn_non_finite(x, y)
        verbose, validation = self._start_data_parallel(plan, verbose, validation)
        steps = math.ceil(self._samples_per_epoch(len(x)) / batch_size)
        callbacks = self._callback_list(callbacks, verbose, epochs, steps)
        logs = {}
        train_step = self._captured_step(plan) if capture else self._train_step
        with self._mode(True):
            callbacks.on_train_begin({})
            for epoch in range(epochs):
                callbacks.on_epoch_begin(epoch, {})
                lr = float(self.optimizer.lr)  # after the schedulers of on_epoch_begin
                logs = self._fit_epoch(plan, x, y, weight, batch_size, shuffle, callbacks,
                                       train_step)
                if validation is not None:
                    val_logs = self._evaluate_arrays(plan, *validation, batch_size, reduce=True)
                    logs.update({"val_" + key: value for key, value in val_logs.items()})
                logs["lr"] = lr
                callbacks.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            callbacks.on_train_end(logs)
        return self.history

    def _start_data_parallel(self, plan, verbose, validation):
        """With a DistributedOptimizer on several ranks (see
        ``distributed.DataParallelFit``): rank 0's parameters everywhere, printing on
        rank 0 only, this rank's shard of the validation set. Returns ``(verbose,
        validation)``, unchanged on one process."""
        self._data_parallel = parallel = distributed.DataParallelFit.of(plan.optimizer)
        if parallel is None:
            return verbose, validation
        parallel.begin()  # rank 0's parameters everywhere; dropout streams per rank
        if validation is not None:
            validation = parallel.validation_shard(*validation)
        return (verbose if parallel.rank == 0 else 0), validation

    @staticmethod
    def _prepare_validation(plan, validation, validation_split):
        x_val, y_val, w_val = validation
        x_val, y_val = plan.inputs(x_val), plan.targets(y_val)
        if validation_split:
            _warn_single_class(plan, y_val, validation_split)
        w_val = None if w_val is None else plan.weights(w_val, "fit: validation sample_weight")
        return x_val, y_val, w_val

    def _callback_list(self, callbacks, verbose, epochs, steps):
        """The user's callbacks, with the progress bar first (when ``verbose``, unless
        they hold one, as Keras) and a fresh ``History`` last; ``self.history`` is that
        History."""
        self.stop_training = False
        self.history = callbacks_module.History()
        callbacks = list(callbacks or [])
        has_bar = any(isinstance(c, callbacks_module.ProgressBar) for c in callbacks)
        shown = [callbacks_module.ProgressBar(verbose)] if verbose and not has_bar else []
        return callbacks_module.CallbackList(
            shown + callbacks + [self.history], model=self,
            params={"epochs": epochs, "steps": steps, "verbose": verbose})

    def _fit_epoch(self, plan, x, y, weight, batch_size, shuffle, callbacks, train_step=None):
        """One pass over the training set, in the order ``_epoch_order`` gives, one
        ``_train_step`` per batch; returns the epoch's logs (per-sample averages). A
        callback that sets ``stop_training`` in ``on_batch_end`` ends the epoch there
        (data-parallel: at the epoch's end)."""
        order = self._epoch_order(len(x), shuffle)
        if order is not None:
            order = to_device(order, plan.device)
            x, y = x[order], y[order]
            weight = None if weight is None else weight[order]
        totals = EpochTotals(label for label, _ in plan.metrics)
        for step, start in enumerate(range(0, len(x), batch_size)):
            batch = slice(start, start + batch_size)
            y_batch, w_batch = y[batch], None if weight is None else weight[batch]
            count = len(y_batch)
            callbacks.on_batch_begin(step, {"batch": step, "size": count})
            loss, out = (train_step or self._train_step)(plan, x[batch], y_batch, w_batch)
            _add_batch(totals, plan, loss, out, y_batch, w_batch)
            if callbacks.wants_batch_logs:
                callbacks.on_batch_end(step, dict(totals.averages(), batch=step, size=count))
                # A data-parallel run stops only at the epoch's end, where every rank sees
                # the same summed logs (a rank that stopped alone would leave the others
                # waiting in their next allreduce).
                if self.stop_training and self._data_parallel is None:
                    break
        return self._reduce_totals(totals).averages()

    def _train_step(self, plan, x, target, weight=None):
        """One training step on one batch; returns ``(loss, out)``, both Tensors.

        1. Forward: run the batch through the model (``plan.forward``; when the head
           is fused with the loss, see ``fuse_logits``, the model up to its logits).
        2. Loss: the compiled loss of the outputs against the targets (with sample
           ``weight``s, the batch mean of weight x each sample's loss), plus the
           layers' weight penalties (``kernel_regularizer`` and friends).
        3. Backward: clear every parameter's gradient, then backpropagate the loss,
           which leaves d(loss)/d(parameter) in each ``param.grad``.
        4. Optimizer step: update every parameter from its gradient.

        ``fit`` and ``train_on_batch`` both train through this method.
        """
        out = plan.forward(Tensor(x))                 # 1. forward
        loss = plan.loss(out, target, weight)         # 2. loss
        if plan.penalty is not None:
            loss = loss + plan.penalty()
        for param in plan.params:                     # 3. backward
            param.grad = None
        loss.backward()
        plan.optimizer.step()                         # 4. optimizer step
        return loss, out

    @staticmethod
    def _captured_step(plan):
        """``_train_step``'s captured twin for this fit (``nanodl.capture.CapturedStep``)."""
        from ..capture import CapturedStep, _leaf
        captured = CapturedStep.for_plan(plan)

        def train_step(plan, x, target, weight=None):
            loss, out = captured.run(x, target, weight)
            return _leaf(loss), _leaf(out)
        return train_step

    # Data-parallel hooks: a distributed fit changes which samples a process visits
    # per epoch and sums the epoch's totals across processes; nothing else differs.
    def _epoch_order(self, n, shuffle):
        """The order of the ``n`` training samples for one epoch: a host index array
        (a fresh permutation from nanodl's generator when ``shuffle``), or None for
        0, 1, ..., n-1. Data-parallel: this rank's shard of the shared order."""
        if self._data_parallel is not None:
            return self._data_parallel.epoch_order(n, shuffle)
        return generator().permutation(n) if shuffle else None

    def _samples_per_epoch(self, n):
        """How many samples ``_epoch_order`` visits per epoch (for the step count)."""
        if self._data_parallel is not None:
            return self._data_parallel.samples_per_epoch(n)
        return n

    def _reduce_totals(self, totals):
        """The epoch's ``EpochTotals`` over every process (one process: as it is)."""
        if self._data_parallel is not None:
            return self._data_parallel.reduce(totals)
        return totals

    def train_on_batch(self, x, y, sample_weight=None):
        """One optimizer step on one batch; returns the loss, or ``[loss, *metrics]``."""
        self._require_compiled("train_on_batch")
        x, y = _samples(x, y, "train_on_batch")
        weight = weighting.check_sample_weight(sample_weight, len(x), "train_on_batch: sample_weight")
        plan = self._plan(x, y)
        x, y = plan.inputs(x), plan.targets(y)
        weight = None if weight is None else plan.weights(weight, "train_on_batch")
        with self._mode(True):
            loss, out = self._train_step(plan, x, y, weight)
        totals = EpochTotals(label for label, _ in plan.metrics)
        _add_batch(totals, plan, loss, out, y, weight)
        values = [float(loss.data)] + list(totals.averages().values())[1:]
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------ evaluate / predict
    def _evaluate_arrays(self, plan, x, y, weight, batch_size, reduce=False):
        """``{'loss': ..., metric: ...}``, per-sample (or weighted) averages over prepared
        arrays (the loss with the weight penalties, as Keras), in eval mode, no graph.
        ``reduce``: the totals are summed over the processes first (fit's sharded
        validation)."""
        totals = EpochTotals(label for label, _ in plan.metrics)
        with self._mode(False), no_grad():
            for start in range(0, len(x), batch_size):
                batch = slice(start, start + batch_size)
                w_batch = None if weight is None else weight[batch]
                out = plan.forward(Tensor(x[batch]))
                _add_batch(totals, plan, plan.loss(out, y[batch], w_batch), out, y[batch], w_batch)
            penalty = float(plan.penalty().data) if plan.penalty is not None else 0.0
        if reduce:
            totals = self._reduce_totals(totals)
        logs = totals.averages()
        logs["loss"] += penalty
        return logs

    def evaluate(self, x, y, batch_size=32, sample_weight=None):
        """The loss (with weight penalties, as Keras) or ``[loss, *metrics]``: per-sample
        averages, or with ``sample_weight`` the mean of weight x loss and weighted means."""
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size, "evaluate")
        x, y = _samples(x, y, "evaluate")
        weight = weighting.check_sample_weight(sample_weight, len(x), "evaluate: sample_weight")
        plan = self._plan(x, y)
        weight = None if weight is None else plan.weights(weight, "evaluate")
        logs = self._evaluate_arrays(plan, plan.inputs(x), plan.targets(y), weight, batch_size)
        results = list(logs.values())
        return results[0] if len(results) == 1 else results

    def predict(self, x, batch_size=32):
        """The model's outputs for ``x`` as a host NumPy array (eval mode, no graph)."""
        batch_size = _check_batch_size(batch_size, "predict")
        x = as_array(x, what="x")
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"predict: x must hold at least one sample, got shape {tuple(x.shape)}")
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.dtype != self._input_dtype(x.dtype):
            x = x.astype(self._input_dtype(x.dtype))
        x = to_device(x, self._device())
        outputs = []
        with self._mode(False), no_grad():
            for start in range(0, len(x), batch_size):
                out = self.forward(Tensor(x[start:start + batch_size])).data
                outputs.append(to_host(out))
        return np.concatenate(outputs)

    # ------------------------------------------------------------ weights and files
    def get_weights(self):
        """Host copies of every parameter and buffer, in ``state_dict`` order (Keras)."""
        return list(self.state_dict().values())

    def set_weights(self, weights):
        """Load a list from ``get_weights`` (same order and shapes)."""
        names = list(self.state_dict())
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"set_weights: expected {len(names)} arrays, got {len(weights)}")
        self.load_state_dict(dict(zip(names, weights)))

    def save(self, path):
        """Write architecture (JSON) and weights into one ``.npz`` file, atomically.

        In a data-parallel run only rank 0 writes (the ranks hold the same weights)."""
        if not distributed._is_rank_zero():
            return
        archive.save_model(self, path)

    def load_weights(self, path):
        """Load weights saved by ``save`` or ``nanodl.save(model.state_dict(), path)``."""
        self.load_state_dict(archive.load(path))

    # ------------------------------------------------------------ summary
    def _summary_rows(self):
        return [(f"{name} ({type(module).__name__})", "?", module.count_params())
                for name, module in self._modules.items() if module is not None]

    def summary(self):
        """Print and return a table: layer, output shape, parameter count, total."""
        rows = [("Layer (type)", "Output Shape", "Param #")] + \
            [(name, str(shape), f"{count:,}") for name, shape, count in self._summary_rows()]
        widths = [max(len(row[i]) for row in rows) + 3 for i in range(3)]
        total_width = sum(widths)
        lines = [f'Model: "{type(self).__name__}"', "_" * total_width]
        for index, row in enumerate(rows):
            lines.append("".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
            lines.append("=" * total_width if index == 0 else "_" * total_width)
        trainable = self.count_params()
        frozen = sum(int(b.size) for b in self.buffers())
        lines[-1] = "=" * total_width
        lines += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {frozen:,}", "_" * total_width]
        text = "\n".join(lines)
        print(text)
        return text


class Sequential(Model):
    """A stack of layers, each feeding the next.

    >>> from nanodl import nn
    >>> model = nn.Sequential([nn.Dense(4, activation='relu', input_dim=3)])
    >>> model.add(nn.Dense(2, activation='softmax'))
    >>> len(model), type(model[1]).__name__
    (2, 'Dense')
    """

    def __init__(self, layers=None):
        super().__init__()
        self.layers = ModuleList()
        try:
            layers = list(layers or [])
        except TypeError:
            raise TypeError(f"Sequential: layers must be a list of layers, got {type(layers).__name__}") \
                from None
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.add: expected a layer (nn.Module), got {type(layer).__name__}")
        self.layers.append(layer)
        self._plan_cache = None

    def pop(self):
        """Remove and return the last layer."""
        if not len(self.layers):
            raise IndexError("Sequential.pop: there are no layers")
        kept = list(self.layers)
        last = kept.pop()
        self.layers = ModuleList(kept)
        self._plan_cache = None
        return last

    def forward(self, x):
        for layer in self.layers._modules.values():
            x = layer(x)
        return x

    def _takes_indices(self):
        return len(self.layers) > 0 and isinstance(self.layers[0], Embedding)

    def _logits_head(self):
        layers = list(self.layers)
        if layers and isinstance(layers[-1], Dense):
            return layers[:-1], layers[-1]
        return None

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(list(self.layers)[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _input_features(self):
        shape = self.__dict__.get("_input_shape")
        if shape is not None:
            return shape
        first = self.layers[0] if len(self.layers) else None
        if isinstance(first, Dense) and first.input_dim is not None:
            return (first.input_dim,)
        if getattr(first, "num_features", None) is not None:
            return (first.num_features,)
        return None

    def _summary_rows(self):
        features = self._input_features()
        if features is None:
            raise ValueError("summary: the model is not built yet; call build(input_shape), fit, "
                             "or give the first layer input_dim")
        zeros = np.zeros((1,) + tuple(features), dtype=self._input_dtype(np.dtype(np.int64)))
        x = Tensor(to_device(zeros, self._device()))
        rows = []
        with self._mode(False), no_grad():
            for index, layer in enumerate(self.layers):
                x = layer(x)
                rows.append((f"layers.{index} ({type(layer).__name__})", (None,) + x.shape[1:],
                             layer.count_params()))
        return rows
