"""``nd.diagnose(model, x, y)``: is this network able to learn? One batch, in plain words.

On the first ``batch_size`` samples: the loss against a uniform guess's, and per layer
the gradient norm, ``|update| / |weights|`` for one optimizer step (about 1e-3 is healthy),
dead ReLU and saturated sigmoid/tanh fractions, with warnings in plain words. It runs on a
deep copy of the model, in eval mode. See docs/diagnosing.md.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(16, activation='relu', input_dim=4), nn.Dense(3, activation='softmax')])
>>> model.compile('adam', 'sparse_categorical_crossentropy')
>>> x, y = np.random.default_rng(0).standard_normal((64, 4)), np.arange(64) % 3
>>> report = nd.diagnose(model, x, y)
>>> round(report.baseline, 4), report.warnings
(1.0986, [])
>>> [row['layer'] for row in report.layers]
['layers.0 (Dense)', 'layers.1 (Dense)']
"""
import copy
import math

import numpy as np

from .. import losses as losses_module
from ..autograd.higher import grad as gradients
from ..backend import to_host
from ..nn.prepare import prepare
from ..random import using
from .curves import uniform_loss

DEAD_WARNING = 0.25      # warn when this share of a layer's ReLU units are dead
SATURATED_WARNING = 0.5  # ... or of its sigmoid/tanh outputs sit at their bounds
VANISHING = 1e-3         # a layer's gradient this many times smaller than the last layer's
RATIO_HIGH, RATIO_LOW = 1e-1, 1e-6
_SATURATING = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
_ACTIVATION_NODES = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}


class Diagnosis:
    """What ``nd.diagnose`` found: ``loss``, ``baseline`` (a uniform guess's, or None),
    ``layers`` (a dict per layer with parameters or an activation: ``'layer'``,
    ``'activation'``, ``'grad_norm'``, ``'weight_norm'``, ``'update_ratio'``,
    ``'dead_fraction'``, ``'saturated_fraction'``) and ``warnings``; ``str()``: the report."""

    def __init__(self, loss, baseline, layers, warnings):
        self.loss, self.baseline, self.layers, self.warnings = loss, baseline, layers, warnings

    def __str__(self):
        against = "" if self.baseline is None else f" (a uniform guess: {self.baseline:.4g})"
        lines = [f"loss on one batch: {self.loss:.4g}{against}",
                 f"{'layer':<24}{'activation':<12}{'grad norm':>11}{'update/weight':>15}"
                 f"{'dead':>7}{'saturated':>11}"]
        for row in self.layers:
            def show(value, spec):
                return "-" if value is None else format(value, spec)
            lines.append(f"{row['layer'][:23]:<24}{row['activation'] or '-':<12}"
                         f"{show(row['grad_norm'], '.3g'):>11}{show(row['update_ratio'], '.2e'):>15}"
                         f"{show(row['dead_fraction'], '.0%'):>7}"
                         f"{show(row['saturated_fraction'], '.0%'):>11}")
        lines += [f"warning: {text}" for text in self.warnings] or ["no warnings"]
        return "\n".join(lines)

    __repr__ = __str__


def _activation(output):
    """The activation that produced ``output`` (a Tensor with its node), or None."""
    node = getattr(output, "grad_fn", None)
    if node is None:
        return None
    if node.name == "Linear":
        return node.activation if node.activation != "linear" else None
    return _ACTIVATION_NODES.get(node.name)


def _unit_stats(activation, out):
    """(dead fraction, saturated fraction) of a layer's output (N, units...)."""
    host = to_host(out).reshape(len(out), -1)
    if activation == "relu":
        return float((host <= 0).all(axis=0).mean()), None
    if activation in _SATURATING:
        low, high = _SATURATING[activation]
        return None, float(((host - low < 0.01) | (high - host < 0.01)).mean())
    return None, None


def _norm(arrays):
    return math.sqrt(sum(float((to_host(a).astype(np.float64) ** 2).sum()) for a in arrays))


def _one_step(optimizer, params, grads, before):
    """Each parameter's change in one step of ``optimizer`` from ``before``, or None."""
    inner = getattr(optimizer, "optimizer", optimizer)  # a wrapper (data parallel) holds one
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.data
    try:
        inner.step()
    except Exception:  # an optimizer that needs a closure (L-BFGS)
        return None
    return [p.data - old for p, old in zip(params, before)]


def _loss_warning(loss_name, config, activation, kind):
    """The sentences (one or none) saying that the compiled loss does not fit the output activation."""
    from_logits = config.get("from_logits", False)
    if kind is None and loss_name in ("categorical_crossentropy", "sparse_categorical_crossentropy",
                                      "binary_crossentropy"):
        wanted = "sigmoid" if loss_name == "binary_crossentropy" else "softmax"
        if from_logits and activation in ("softmax", "sigmoid"):
            return [f"the loss is told to expect logits (from_logits=True) but the last layer "
                    f"applies {activation} already: remove the activation or from_logits"]
        if not from_logits and activation != wanted:
            return [f"{loss_name} expects probabilities, but the last layer's activation is "
                    f"{activation or 'linear'}: use activation='{wanted}' on it, or from_logits=True"]
    if loss_name in ("mse", "mae", "huber") and activation == "softmax":
        return [f"a softmax output trained with {loss_name}: use a cross-entropy for "
                "classification (its gradient does not vanish when the model is confidently wrong)"]
    return []


def _baseline(loss_name, loss, target, out_width):
    guess = uniform_loss(loss, out_width)
    if guess is None and loss_name == "mse":
        return float(to_host(target).astype(np.float64).var(axis=0).mean())
    return guess


def _twin(model):
    """A deep copy of ``model`` and its optimizer state (not its plan cache nor History)."""
    left_out = {id(model.__dict__.get(name)): None for name in ("_plan_cache", "history", "_data_parallel")
                if model.__dict__.get(name) is not None}
    return copy.deepcopy(model, left_out)


def diagnose(model, x, y, batch_size=32):
    """A ``Diagnosis`` of ``model`` (compiled) on its first batch of ``(x, y)``."""
    model._require_compiled("diagnose")
    x, y = np.asarray(x)[:batch_size], np.asarray(y)[:batch_size]
    if len(x) == 0:
        raise ValueError(f"diagnose: x must hold at least one sample, got shape {x.shape}")
    model = _twin(model)
    with using(np.random.default_rng(0)):  # a lazy layer built here draws from its own generator
        plan, x, y, _ = prepare(model, x, y, None, "diagnose")
    loss_name, config = losses_module.describe(model.loss)
    config, kind = config or {}, plan.logits  # kind: the head's activation when fused into the loss
    head = model._logits_head()[1] if kind else None
    outputs, handles = {}, []
    for name, module in model.named_modules()[1:]:
        if not module._modules:  # a leaf layer: its output is one activation's
            def record(module, inputs, output, name=name):
                made = not any(output is given for given in inputs)  # not an identity (Dropout in eval)
                outputs[name] = (_activation(output) if made else None, output.data)  # before the walk
            handles.append(module.register_forward_hook(record))
    try:
        with model._mode(False):
            loss, _ = plan.objective(x, y)  # the training step's forward, loss and penalties
            params = [p for p in model.parameters() if p.requires_grad]
            grads = gradients(loss, params, allow_unused=True) if params else []
    finally:
        for handle in handles:
            handle.remove()
    before = [p.data.copy() for p in params]
    stepped = _one_step(model.optimizer, params, grads, before)
    by_param = {id(p): i for i, p in enumerate(params)}
    layers = []
    for name, module in model.named_modules()[1:]:
        own = [p for p in module._parameters.values() if p is not None and id(p) in by_param]
        recorded = outputs.get(name)
        activation = recorded[0] if recorded else None
        if module is head:
            activation = kind  # the fused head: its activation is applied in the loss
        if not own and activation is None:
            continue
        indices = [by_param[id(p)] for p in own]
        present = [i for i in indices if grads[i] is not None]
        grad_norm = _norm([grads[i].data for i in present]) if present else None
        weight_norm = _norm([before[i] for i in indices]) if own else None
        ratio = _norm([stepped[i] for i in indices]) / weight_norm \
            if stepped is not None and weight_norm else None
        dead, saturated = _unit_stats(activation, recorded[1]) if recorded else (None, None)
        layers.append({"layer": f"{name} ({type(module).__name__})", "activation": activation,
                       "grad_norm": grad_norm, "weight_norm": weight_norm, "update_ratio": ratio,
                       "dead_fraction": dead, "saturated_fraction": saturated})
    value = float(to_host(loss.data))
    out_width = int(np.prod(plan.out_shape)) if plan.out_shape else 1
    baseline = _baseline(loss_name, model.loss, y, out_width)
    warnings = _warnings(value, baseline, layers) + _loss_warning(
        loss_name, config, layers[-1]["activation"] if layers else None, kind)
    return Diagnosis(value, baseline, layers, warnings)


def _warnings(loss, baseline, layers):
    found = []
    if not math.isfinite(loss):
        found.append(f"the loss is {loss}: an input, a weight or a step is already out of range")
    elif baseline and loss > 1.5 * baseline:
        found.append(f"the loss {loss:.4g} is far above a uniform guess's {baseline:.4g}: the "
                     "initial weights are too large or the output layer is off")
    norms = [(row["layer"], row["grad_norm"]) for row in layers if row["grad_norm"] is not None]
    if any(not math.isfinite(norm) for _, norm in norms):
        found.append("a gradient is not finite: exploding gradients (a smaller learning rate, "
                     "gradient clipping)")
    elif len(norms) > 1 and norms[-1][1] > 0:
        first, last = norms[0], norms[-1]
        if first[1] < VANISHING * last[1]:
            found.append(f"vanishing gradients: {first[0]} gets {first[1] / last[1]:.1e} times the "
                         f"gradient of {last[0]} (ReLU instead of sigmoid/tanh, He initialisation, "
                         "BatchNorm)")
        if first[1] > last[1] / VANISHING:
            found.append(f"exploding gradients: {first[0]} gets {first[1] / last[1]:.1e} times the "
                         f"gradient of {last[0]} (a smaller learning rate, gradient clipping, "
                         "BatchNorm)")
    for row in layers:
        name, ratio = row["layer"], row["update_ratio"]
        if ratio is not None and ratio > RATIO_HIGH:
            found.append(f"one step would change {name}'s weights by {ratio:.0%} of their size: "
                         "the learning rate is too large")
        elif ratio is not None and ratio < RATIO_LOW and row["grad_norm"]:
            found.append(f"one step would change {name}'s weights by only {ratio:.1e} of their "
                         "size: the learning rate is too small, or the gradient vanishes")
        if row["dead_fraction"] is not None and row["dead_fraction"] >= DEAD_WARNING:
            found.append(f"{row['dead_fraction']:.0%} of {name}'s ReLU units are dead (0 for every "
                         "sample): they get no gradient and never recover (a smaller learning "
                         "rate, LeakyReLU, He initialisation)")
        if row["saturated_fraction"] is not None and row["saturated_fraction"] >= SATURATED_WARNING:
            found.append(f"{row['saturated_fraction']:.0%} of {name}'s {row['activation']} outputs "
                         "are saturated, where their slope vanishes (smaller initial weights, "
                         "normalised inputs, ReLU)")
    return found
