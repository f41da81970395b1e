"""What ``fit``/``evaluate`` decide once: the ``_Plan`` (forward, loss, metrics, the step).

``plan.step`` is the one eager step (``fit``, ``train_on_batch`` and ``nanodl.CapturedStep``
run it); see docs/training.md.
"""
import numpy as np

from .. import losses as losses_module
from ..backend import to_device, to_host
from ..data import batch_slices
from ..random import generator
from ..tensor import Tensor, as_array
from .metrics import CROSS_ENTROPIES as _CROSS_ENTROPIES, EpochTotals, accuracy_kind, add_batch, \
    choose_metrics

__all__ = ["fuse_logits", "LocalFit", "LOCAL_FIT", "register_capture"]


def fuse_logits(model, loss_name, loss_config):
    """``(forward, loss_fn, kind)`` training a softmax (sigmoid) head under a categorical
    (binary) cross-entropy as its logits fed to the from-logits loss (as Keras: the same
    function, without clipping or overflow), or None. Not while the head has a forward hook;
    ``forward`` stops at the logits and ``kind`` tells the metrics so."""
    if loss_name is None or loss_config.get("from_logits") or \
            loss_config.get("reduction", "mean") != "mean":
        return None
    head = model._logits_head()
    if head is None or head[1].__dict__.get("_forward_hooks"):
        return None
    body, dense = head
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

    def forward(x):
        for layer in body:
            x = layer(x)
        return dense.pre_activation(x)
    return forward, loss_fn, kind


def _compiled_loss(loss, loss_name, loss_config):
    """``loss_fn(out, target, reduction='mean')`` for a loss name or a callable."""
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


class _Plan:
    """What one ``fit``/``evaluate`` decides once. ``_Plan(model, None, None, optimizer, loss)``
    (``nanodl.CapturedStep``): no sample, no metrics, the optimizer keeps its parameters."""

    def __init__(self, model, x_sample, y, optimizer=None, loss=None):
        self.model = model
        sample_out = None if x_sample is None else model._build_on(x_sample)
        self.params = model.parameters()
        if optimizer is None:
            optimizer, loss = model.optimizer, model.loss
            if optimizer.params is None or [id(p) for p in optimizer.params] != \
                    [id(p) for p in self.params]:
                optimizer.set_params(self.params)
        self.optimizer = optimizer
        # optim.LBFGS re-evaluates the loss itself: its step gets a closure, on the whole set
        self.full_batch = bool(getattr(optimizer, "full_batch", False))
        self.penalty_layers = [m for m in model.modules() if m.penalties()]
        self.penalty = self._penalty if self.penalty_layers else None
        self.loss_spec = loss
        self.loss_name, self.loss_config = losses_module.describe(loss)
        self.loss_reduction = (self.loss_config or {}).get("reduction", "mean")
        self.forward, self.loss_fn, self.logits = \
            fuse_logits(model, self.loss_name, self.loss_config or {}) or \
            (model.forward, _compiled_loss(loss, self.loss_name, self.loss_config), None)
        if sample_out is not None:
            self.device, self.dtype = model._device(), model._float_dtype()
            self.out_shape = tuple(sample_out.shape[1:])
            self.metrics = choose_metrics(model._metric_specs, self.loss_name, self.out_shape,
                                          y.shape, self.logits)

    def loss(self, out, target, weight=None):
        """The batch's loss, a scalar Tensor; with ``weight``, the batch mean of weight x loss
        (Keras' ``sum_over_batch_size``; the sum under ``reduction='sum'``)."""
        if weight is None:
            return self.loss_fn(out, target)
        losses, n = self.loss_fn(out, target, "none"), len(target)
        per_sample = losses if losses.ndim == 1 else losses.reshape(n, -1).mean(axis=1)
        total = (per_sample * Tensor(weight)).sum()
        return total if self.loss_reduction == "sum" else total * (1.0 / n)

    def objective(self, x, target, weight=None):
        """``(loss, out)``: what a step minimises (loss and weight penalties), with its graph."""
        out = self.forward(Tensor(x))
        loss = self.loss(out, target, weight)
        if self.penalty is not None:
            loss = loss + self.penalty()
        return loss, out

    def step(self, x, target, weight=None):
        """Forward, loss, backward, optimizer step; returns ``(loss, out)``. A ``full_batch``
        optimizer (LBFGS) gets the first three as its closure; returns the first evaluation."""
        if self.full_batch:
            return self._closure_step(x, target, weight)
        loss, out = self.loss_and_grad(x, target, weight)
        self.optimizer.step()
        return loss, out

    def loss_and_grad(self, x, target, weight=None):
        """``(loss, out)`` with every parameter's gradient filled: ``step`` less the update."""
        loss, out = self.objective(x, target, weight)
        for param in self.params:
            param.grad = None
        loss.backward()
        return loss, out

    def _closure_step(self, x, target, weight):
        first = []

        def closure():
            loss, out = self.loss_and_grad(x, target, weight)
            if not first:
                first.append((loss, out))
            return loss
        self.optimizer.step(closure)
        return first[0]

    def fit_batch_size(self, batch_size, n):
        """``batch_size``, or all ``n`` samples for a ``full_batch`` optimizer."""
        return n if self.full_batch else batch_size

    def capturable(self, capture, auto_allowed=True):
        """Whether ``fit(capture=...)`` trains through a captured step (``'auto'``: where valid)."""
        if capture not in (True, False, "auto"):
            raise ValueError(f"fit: capture must be True, False or 'auto', got {capture!r}")
        if capture != "auto":
            return capture
        return auto_allowed and self.device == "cpu" and self.penalty is None and \
            not self.full_batch and \
            not any(module.__dict__.get("_forward_hooks") for module in self.model.modules())

    def evaluate(self, x, y, weight, batch_size):
        """``(EpochTotals, penalty)`` over prepared arrays (the caller sets mode and no_grad)."""
        totals = EpochTotals(self.metrics)
        for batch in batch_slices(len(x), batch_size):
            w_batch = None if weight is None else weight[batch]
            out = self.forward(Tensor(x[batch]))
            loss = float(self.loss(out, y[batch], w_batch).data)
            add_batch(totals, self.metrics, loss, out.data, y[batch], w_batch)
        return totals, float(self.penalty().data) if self.penalty is not None else 0.0

    # ------------------------------------------------------------ data
    def inputs(self, x):
        """``x`` as a backend array of the model's input dtype on its device."""
        x = as_array(x, what="x")
        x = x.astype(self.model._input_dtype(x.dtype), copy=False)
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
            y = y.astype(self.dtype, copy=False)
            expected = (len(y),) + out_shape
            if y.shape != expected:
                if y.shape + (1,) != expected and y.shape != expected + (1,):
                    hint = (" (integer class labels need loss='sparse_categorical_crossentropy',"
                            " or one-hot targets)") if name == "categorical_crossentropy" else ""
                    raise ValueError(f"fit: targets of shape {y.shape} do not match the model's "
                                     f"output shape {(None,) + out_shape} for loss {name!r}{hint}")
                y = y.reshape(expected)  # (N,) against (N, 1) outputs and back, as Keras
        elif y.dtype.kind == "f":
            y = y.astype(self.dtype, copy=False)
        return to_device(y, self.device)

    def _penalty(self):
        """The sum of the weight penalties, a scalar Tensor in the graph."""
        terms = [term for layer in self.penalty_layers for term in layer.penalties()]
        return sum(terms[1:], terms[0])

    def weights(self, weight, who):
        """Host per-sample weights as an array of the model's float dtype on its device."""
        if weight.sum() == 0:
            raise ValueError(f"{who}: every sample weight is zero; nothing would be learned")
        return to_device(weight.astype(self.dtype), self.device)

    def class_labels(self, y):
        """The distinct classes among prepared targets ``y`` (None for regression)."""
        classifying = self.loss_name in ("binary_crossentropy",) + _CROSS_ENTROPIES or \
            any(label == "accuracy" for label, _ in self.model._metric_specs)
        if not classifying:
            return None
        kind = accuracy_kind(self.loss_name, self.out_shape, y.shape)
        host = to_host(y)
        if kind == "categorical":
            host = host.argmax(axis=-1)
        elif kind == "binary":
            host = host > 0.5
        return np.unique(host)


class LocalFit:
    """How a one-process ``fit`` orders its samples and totals an epoch (an optimizer's
    ``fit_strategy()`` may offer another: ``distributed.DataParallelFit``)."""

    @staticmethod
    def epoch_order(n, shuffle):
        return generator().permutation(n) if shuffle else None

    @staticmethod
    def samples_per_epoch(n):
        return n

    @staticmethod
    def reduce(totals):
        return totals


LOCAL_FIT = LocalFit()
_capture = []  # the wing that captures fit's step registers its maker here


def register_capture(make_step):
    """Let a wing (``nanodl.capture``) train ``fit``: ``make_step(plan)`` returns a
    ``train_step(plan, x, target, weight) -> (loss, out)``, or None to decline."""
    _capture[:] = [make_step]


def captured_step(plan):
    """The registered wing's step for ``plan``, or None (no wing registered, or it declines)."""
    return _capture[0](plan) if _capture else None
