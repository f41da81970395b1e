"""What ``fit``/``evaluate`` decide once: the ``_Plan`` (forward, loss, metrics, the step).

A ``_Plan`` holds the forward to run, the loss (``plan.loss``: the one place the
compiled loss, sample weights and the reduction meet), the metric functions, the
parameters, and the training step (``plan.step``, the one eager step: ``fit``,
``train_on_batch`` and ``nanodl.CapturedStep`` all run it); and ``LocalFit``, how a
one-process fit orders its samples. ``nn/prepare.py`` checks the user's arguments.

A softmax (sigmoid) output trained with a categorical (binary) cross-entropy on
probabilities is fused, as Keras does (``fuse_logits``): the last Dense computes
logits and the loss is the stable logits form (``ops.softmax_cross_entropy``),
the same function without the clipping and without overflow.

>>> from nanodl import nn
>>> model = nn.Sequential([nn.Dense(3, activation='softmax', input_dim=2)])
>>> forward, loss_fn, kind = fuse_logits(model, 'categorical_crossentropy', {})
>>> kind
'softmax'
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
    """What one ``fit``/``evaluate`` decides once: forward, loss closure, metrics, targets.

    ``_Plan(model, None, None, optimizer, loss)`` is the plan of a step of its own
    (``nanodl.CapturedStep``): no sample to build on, no metrics, and the optimizer
    keeps the parameters it was given."""

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
        # An optimizer that re-evaluates the loss itself (optim.LBFGS) is given the step's
        # first three parts as a closure, and fit trains it on the whole set at once.
        self.full_batch = bool(getattr(optimizer, "full_batch", False))
        self.penalty_layers = [m for m in model.modules() if m.penalties()]
        self.penalty = self._penalty if self.penalty_layers else None
        self.loss_spec = loss
        self.loss_name, self.loss_config = losses_module.describe(loss)
        self.loss_reduction = (self.loss_config or {}).get("reduction", "mean")
        self.forward, self.loss_fn, self.logits = self._choose_forward_and_loss()
        if sample_out is not None:
            self.device, self.dtype = model._device(), model._float_dtype()
            self.out_shape = tuple(sample_out.shape[1:])
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

    def objective(self, x, target, weight=None):
        """``(loss, out)``: what a step minimises on one batch (the forward, the loss,
        the weight penalties), with its graph; ``find_lr`` takes its Hessian."""
        out = self.forward(Tensor(x))
        loss = self.loss(out, target, weight)
        if self.penalty is not None:
            loss = loss + self.penalty()
        return loss, out

    def step(self, x, target, weight=None):
        """The training step, on one batch; returns ``(loss, out)``, both Tensors.

        1. Forward: run the batch through the model (``self.forward``; when the head
           is fused with the loss, see ``fuse_logits``, the model up to its logits).
        2. Loss: ``self.loss`` (with sample ``weight``s, the batch mean of weight x
           each sample's loss), plus the layers' weight penalties.
        3. Backward: clear every parameter's gradient, then backpropagate the loss,
           which leaves d(loss)/d(parameter) in each ``param.grad``.
        4. Optimizer step: update every parameter from its gradient.

        An optimizer with ``full_batch`` (``optim.LBFGS``) gets 1-3 as the closure
        of its ``step(closure)``, which it calls as often as it needs; the step then
        returns the first evaluation (the loss before the update, as for the others).
        """
        if self.full_batch:
            return self._closure_step(x, target, weight)
        loss, out = self.loss_and_grad(x, target, weight)  # 1-3
        self.optimizer.step()                              # 4. optimizer step
        return loss, out

    def loss_and_grad(self, x, target, weight=None):
        """Steps 1-3 of ``step``: ``(loss, out)``, with every parameter's gradient filled."""
        loss, out = self.objective(x, target, weight)  # 1. forward, 2. loss
        for param in self.params:                     # 3. backward
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
        """The batch size ``fit`` trains with: ``batch_size``, or all ``n`` samples for a
        ``full_batch`` optimizer (one ``step(closure)`` per epoch)."""
        return n if self.full_batch else batch_size

    def capturable(self, capture, auto_allowed=True):
        """Whether ``fit(capture=...)`` trains through a captured step: always for True;
        for ``'auto'`` only where it pays and is plainly valid (``auto_allowed``, CPU,
        no weight penalties, no forward hooks, not full-batch): elsewhere the eager step."""
        if capture not in (True, False, "auto"):
            raise ValueError(f"fit: capture must be True, False or 'auto', got {capture!r}")
        if capture != "auto":
            return capture
        return auto_allowed and self.device == "cpu" and self.penalty is None and \
            not self.full_batch and \
            not any(module.__dict__.get("_forward_hooks") for module in self.model.modules())

    def evaluate(self, x, y, weight, batch_size):
        """``(EpochTotals, penalty)`` over prepared arrays: each batch's loss and metrics
        (the caller chooses the mode and turns the graph off)."""
        totals = EpochTotals(self.metrics)
        for batch in batch_slices(len(x), batch_size):
            w_batch = None if weight is None else weight[batch]
            out = self.forward(Tensor(x[batch]))
            loss = float(self.loss(out, y[batch], w_batch).data)
            add_batch(totals, self.metrics, loss, out.data, y[batch], w_batch)
        return totals, float(self.penalty().data) if self.penalty is not None else 0.0

    # ------------------------------------------------------------ loss
    def _choose_forward_and_loss(self):
        fused = fuse_logits(self.model, self.loss_name, self.loss_config or {})
        if fused is not None:
            return fused
        return self.model.forward, _compiled_loss(self.loss_spec, self.loss_name,
                                                  self.loss_config), None

    # ------------------------------------------------------------ metrics
    def _accuracy_kind(self, y_shape):
        return accuracy_kind(self.loss_name, self.out_shape, y_shape)

    def _choose_metrics(self, y_shape):
        return choose_metrics(self.model._metric_specs, self.loss_name, self.out_shape, y_shape,
                              self.logits)

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


class LocalFit:
    """How a one-process ``fit`` visits its samples and totals an epoch: the default
    strategy. An optimizer that trains across processes offers its own through a
    ``fit_strategy()`` method (``distributed.DistributedOptimizer``: a
    ``DataParallelFit``, with ``begin``, ``validation_shard`` and ``rank`` too).

    >>> LOCAL_FIT.epoch_order(4, shuffle=False) is None, LOCAL_FIT.samples_per_epoch(4)
    (True, 4)
    """

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


# ---------------------------------------------------------------- the captured step's seam
_capture = []  # the wing that captures fit's step registers its maker here


def register_capture(make_step):
    """Let a wing train ``fit`` through a captured step: ``make_step(plan)`` returns a
    ``train_step(plan, x, target, weight) -> (loss, out)``, or None to decline
    (``nanodl.capture`` registers itself when it is imported: ``import nanodl`` does)."""
    _capture[:] = [make_step]


def captured_step(plan):
    """The registered wing's step for ``plan``, or None (no wing registered, or it declines)."""
    return _capture[0](plan) if _capture else None
