"""Metrics for ``Model.fit``/``evaluate``: values per sample, summed over the epoch
(``EpochTotals``), so each is an exact (weighted) mean however the samples are batched.

>>> import numpy as np
>>> specs = metric_specs(["acc", "mae"])
>>> specs
[('accuracy', 'accuracy'), ('mae', 'mae')]
>>> metrics = choose_metrics(specs, "mse", (1,), (4, 1), logits=None)
>>> totals = EpochTotals(metrics)
>>> pred, target = np.array([[0.9], [0.2], [0.7], [0.4]]), np.array([[1.0], [0.0], [0.0], [0.0]])
>>> add_batch(totals, metrics, 0.5, pred, target)
>>> {k: round(v, 3) for k, v in totals.averages().items()}
{'loss': 0.5, 'accuracy': 0.75, 'mae': 0.35}
"""
import numpy as np

from .. import ops
from ..tensor import Tensor

__all__ = ["METRICS", "EpochTotals", "metric_specs", "choose_metrics", "add_batch"]

METRICS = ("accuracy", "mae", "mse", "rmse", "precision", "recall")
_METRIC_ALIASES = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse",
                   "root_mean_squared_error": "rmse"}
CROSS_ENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


def _per_sample(values):
    """Elementwise values (N, ...) -> their mean per sample (N,)."""
    return values.reshape(len(values), -1).mean(axis=1) if values.ndim != 1 else values * 1.0


def _aligned(target, shape, metric, pred_shape=None):
    """``target`` reshaped to ``shape`` across a trailing axis of one (never broadcast)."""
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


class EpochMetric:
    """A metric that is no mean (rmse, precision, recall): per-sample ``parts`` summed over
    the epoch, combined once at its end by ``finish(sums, weight)``."""

    def __init__(self, parts, finish, count):
        self.parts, self.finish, self.count = parts, finish, count

    def __call__(self, pred, target):
        return self.parts(pred, target)


def _positives(threshold, metric):
    def parts(pred, target):
        predicted = pred > threshold
        actual = _aligned(target, pred.shape, metric) > 0.5
        hits = _per_sample(predicted & actual)
        return hits, _per_sample(predicted if metric == "precision" else actual)
    return EpochMetric(parts, lambda sums, weight: sums[0] / sums[1] if sums[1] else 0.0, 2)


_RMSE = EpochMetric(lambda pred, target: (_mse(pred, target),),
                    lambda sums, weight: float(np.sqrt(sums[0] / weight)), 1)


class EpochTotals:
    """The sums behind an epoch's averages, ``values``: ``[Σ loss·count, samples, Σ weight,
    Σ weight·metric...]``, which a data-parallel run sums across processes."""

    def __init__(self, labels):
        entries = [(label, None) if isinstance(label, str) else label for label in labels]
        self.labels = [label for label, _ in entries]
        self.epoch_metrics = [m if isinstance(m, EpochMetric) else None for _, m in entries]
        width = sum(1 if m is None else m.count for m in self.epoch_metrics)
        self.values = [0.0] * (3 + width)

    def add(self, loss, count, weight, metric_sums):
        """Add one batch: mean ``loss``, ``count``, summed ``weight``, each metric's sum."""
        for i, total in enumerate((loss * count, count, weight, *metric_sums)):
            self.values[i] += total

    def averages(self):
        """``{'loss': ..., metric: ...}``: the loss per sample, each metric per unit weight."""
        loss_sum, count, weight = self.values[:3]
        logs, start = {"loss": loss_sum / count}, 3
        for label, metric in zip(self.labels, self.epoch_metrics):
            if metric is None:
                logs[label], start = self.values[start] / weight, start + 1
            else:
                sums = self.values[start:start + metric.count]
                logs[label], start = metric.finish(sums, weight), start + metric.count
        return logs


def metric_specs(metrics):
    """``[(label, name or callable)]`` for ``compile``'s ``metrics``; a callable is reported
    under its ``__name__``, an unknown name raises ``ValueError``."""
    specs = []
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    for metric in metrics or []:
        if callable(metric):
            specs.append((getattr(metric, "__name__", "metric"), metric))
            continue
        name = _METRIC_ALIASES.get(metric, metric) if isinstance(metric, str) else metric
        if name not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid names: {', '.join(METRICS)}")
        specs.append((name, name))
    return specs


def accuracy_kind(loss_name, out_shape, y_shape):
    """How accuracy reads targets: ``'binary'``, ``'sparse'`` or ``'categorical'``."""
    kind = {"binary_crossentropy": "binary", "sparse_categorical_crossentropy": "sparse",
            "categorical_crossentropy": "categorical"}.get(loss_name)
    if kind is not None:
        return kind
    if not out_shape or out_shape[-1] == 1:
        return "binary"
    return "categorical" if tuple(y_shape[1:]) == out_shape else "sparse"


def choose_metrics(specs, loss_name, out_shape, y_shape, logits):
    """``[(label, function(pred, target) -> per-sample values)]`` for ``specs``; with
    ``logits`` (``'softmax'``/``'sigmoid'``, see ``fuse_logits``) they take logits."""
    metrics = []
    to_probs = {"softmax": ops.softmax, "sigmoid": ops.sigmoid}.get(logits)
    for label, metric in specs:
        if callable(metric):
            function = metric if to_probs is None else _on_probabilities(metric, to_probs)
        elif metric == "accuracy":
            kind = accuracy_kind(loss_name, out_shape, y_shape)
            if kind == "binary":
                function = _binary_accuracy(0.0 if logits else 0.5)
            else:
                function = _sparse_accuracy if kind == "sparse" else _categorical_accuracy
        else:
            if loss_name == "sparse_categorical_crossentropy":
                raise ValueError(f"metric {metric!r} needs targets shaped like the predictions; "
                                 "integer class targets have no such shape")
            function = {"mae": _mae, "mse": _mse, "rmse": _RMSE}.get(metric) or \
                _positives(0.5, metric)  # precision and recall: binary, threshold 0.5
            if to_probs is not None:
                function = _on_probabilities(function, to_probs)
        metrics.append((label, function))
    return metrics


def _on_probabilities(function, to_probs):
    """``function`` fed probabilities where the training loop computes logits."""
    def on_probabilities(pred, target):
        return function(to_probs(Tensor(pred)).data, target)
    if isinstance(function, EpochMetric):
        return EpochMetric(on_probabilities, function.finish, function.count)
    return on_probabilities


def add_batch(totals, metrics, loss, out, target, weight=None):
    """Add one batch's mean ``loss`` and its ``metrics`` on ``out`` to ``totals``."""
    count = len(target)
    weight_sum = float(count) if weight is None else float(weight.sum())
    sums = []
    for _, metric in metrics:
        values = metric(out, target)
        for part in (values if isinstance(metric, EpochMetric) else (values,)):
            if np.ndim(part) == 0:  # a callable's one number stands for each of its samples
                sums.append(float(part) * weight_sum)
            elif weight is None:
                sums.append(float(part.sum()))
            else:
                sums.append(float((_per_sample(part) * weight).sum()))
    totals.add(loss, count, weight_sum, sums)
