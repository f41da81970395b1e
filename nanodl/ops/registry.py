"""One registry of ops that drives the tests and ``nanodl gradcheck``'s audit.

A new op is one ``OpSpec`` (call, NumPy reference, shapes, input range, distance to a kink),
then forward-tested, gradient-checked and audited everywhere at once. ``critical_points``
are inputs where a composition would kink though the op is smooth, with the gradient due.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from .. import functional as F
from .. import losses
from .. import ops
from ..backend.activations import BY_NAME as ACTIVATION_RECORDS
from ..backend.activations import ELEMENTWISE as ACTIVATIONS
from .shape import BroadcastTo, ScatterAdd


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable                     # (*tensors) -> Tensor
    reference: Callable              # (*ndarrays) -> ndarray, in float64 NumPy
    cases: Tuple[Tuple[tuple, ...], ...]
    domain: Tuple[float, float] = (-2.0, 2.0)
    kink_distance: Optional[Callable] = None  # (*ndarrays) -> distance to the nearest kink
    family: str = "elementwise"
    random_shapes: bool = True       # False: only the fixed ``cases`` make sense
    critical_points: Tuple[Tuple[np.ndarray, ...], ...] = ()  # input tuples (see the module doc)
    derivative: Optional[Callable] = None  # (*ndarrays) -> d sum(fn)/d input, one per input

    @property
    def shape_kind(self):
        """How tests may draw random shapes: 'unary', 'binary' (broadcasting), 'reduce' or None."""
        if not self.random_shapes:
            return None
        if self.name in ("softmax", "log_softmax") or self.family == "reduce":
            return "reduce"
        if self.family in ("elementwise", "activation"):
            return "unary" if len(self.cases[0]) == 1 else "binary"
        return None


def _gap_to_tie(axis):
    """Distance to a tie of the two largest or two smallest values along ``axis`` (a kink)."""
    def distance(a):
        axes = None if axis is None or a.ndim == 0 else (axis % a.ndim,)
        return min(_extreme_gap(a, axes, True), _extreme_gap(a, axes, False))
    return distance


def _abs_min(a, *rest):
    return float(np.abs(a).min()) if a.size else np.inf


def _np_softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_logsumexp(a, axis=None, keepdims=False):
    peak = a.max(axis=axis, keepdims=True)
    out = np.log(np.exp(a - peak).sum(axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _np_linear(x, w, b, act, alpha=None):
    z = x @ w + b
    if act == "softmax":
        return _np_softmax(z)
    record = ACTIVATION_RECORDS[act]
    return record.reference(z, record.alpha if alpha is None else alpha)


def _xent_spec(name, target, reduction):
    """``softmax_cross_entropy`` against (N,) classes or a (N, C) distribution (cast to the logits' dtype)."""
    classes = target.dtype.kind == "i"

    def fn(a):
        return ops.softmax_cross_entropy(a, target if classes else target.astype(a.dtype), reduction)

    def reference(a):
        dist = np.eye(a.shape[1])[target] if classes else target
        per_sample = -(dist * (a - _np_logsumexp(a, axis=1, keepdims=True))).sum(axis=1)
        return per_sample if reduction == "none" else getattr(per_sample, reduction)()
    return OpSpec(name, fn, reference, (((5, 3),),), family="loss")


UNARY = (((3, 4),), ((5,),), ((),), ((2, 1, 3),))
BINARY = (((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (3,)), ((5,), ()))
REDUCE_SHAPES = (((3, 4),), ((2, 3, 4),), ((5,),))

# Fixed class targets for the cross-entropy entry (the registry's inputs are all float).
_XENT_TARGET = np.array([0, 2, 1, 2, 0])
_XENT_PROBS = np.array([[0.2, 0.3, 0.5], [1, 0, 0], [0.1, 0.1, 0.8], [0, 0.5, 0.5], [0.3, 0.3, 0.4]])
_XENT_ONEHOT = np.eye(3)[_XENT_TARGET]

# Fixed targets for the loss entries (the prediction is the one differentiated input).
_TARGET = np.array([[0.5, -1.0, 1.5], [0.0, 1.25, -0.5]])
_LABELS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.25]])  # soft labels allowed
_HUBER_DELTA = 0.75
_SCATTER_INDEX = np.array([0, 2, 0])
_EXPONENTS = np.array([0.0, 1.0, 2.0, 3.0])


def _np_huber(d, delta):
    return np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))


def _np_scatter(values, index, shape):
    full = np.zeros(shape)
    np.add.at(full, index, values)
    return full


_PROD_ZEROS = np.array([[2.0, 0.0, 3.0, 0.5], [0.0, 0.0, -1.0, 2.0], [1.5, -2.0, 0.5, 3.0]])
_EINSUMS = (  # (registry name, subscripts, operand shapes)
    ("einsum", "ij,jk->ik", (((3, 4), (4, 2)),)),
    ("einsum_batch", "bij,bjk->bik", (((2, 3, 4), (2, 4, 5)),)),
    ("einsum_ellipsis", "...ij,...jk", (((2, 1, 3, 4), (5, 4, 2)), ((3, 2), (2, 2)))),  # implicit '->'
    ("einsum_diagonal", "ii,ijk->j", (((3, 3), (3, 2, 4)),)),  # a repeated letter, a letter only one has
)


def _np_prod_others(a):
    """d sum(prod(a, axis=-1)) / da: each element's product of the others in its row."""
    rows = a.reshape(-1, a.shape[-1])
    others = [[np.prod(np.delete(row, i)) for i in range(len(row))] for row in rows]
    return np.array(others).reshape(a.shape)


def _sparse_probs_loss(p):
    return -np.log(np.clip(p[np.arange(len(_XENT_TARGET)), _XENT_TARGET], losses.EPSILON,
                           1 - losses.EPSILON)).sum()


def _activation_spec(activation):
    """The registry entry of an activation, from its record (alpha: its ``check_alpha``)."""
    alpha = activation.check_alpha
    fn = getattr(F, activation.name)
    kinks = activation.kink_points(alpha)
    return OpSpec(activation.name,
                  (lambda a: fn(a, alpha)) if activation.has_alpha else fn,
                  lambda a: activation.reference(a, alpha), UNARY,
                  kink_distance=(lambda a: _kink_gap(a, kinks)) if kinks else None,
                  family="activation")


def _linear_spec(act, alpha=None):
    """The fused dense node with activation ``act``; kinks at its record's (elu's 2nd order)."""
    kinks = () if act == "softmax" else ACTIVATION_RECORDS[act].kinks
    return OpSpec(f"linear_{act}", lambda x, w, b: F.linear(x, w, b, act, alpha=alpha),
                  lambda x, w, b: _np_linear(x, w, b, act, alpha), (((5, 3), (3, 4), (4,)),), family="linear",
                  kink_distance=(lambda x, w, b: _kink_gap(x @ w + b, kinks)) if kinks else None)


def _kink_gap(a, points):
    return min(_abs_min(a - point) for point in points)


REGISTRY = (
    OpSpec("add", ops.add, np.add, BINARY),
    OpSpec("sub", ops.sub, np.subtract, BINARY),
    OpSpec("mul", ops.mul, np.multiply, BINARY),
    OpSpec("div", ops.div, np.divide, BINARY, domain=(0.5, 2.0)),
    OpSpec("pow", ops.power, np.power, BINARY, domain=(0.5, 2.0)),
    OpSpec("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, UNARY),
    # a ** k at a = 0 (k = 0..3: x^0, x, x^2, x^3) and 0 ** w: NaN there once, 0 * inf
    OpSpec("pow_integer", lambda a: a ** _EXPONENTS.astype(a.dtype), lambda a: a ** _EXPONENTS, (((4,),),),
           random_shapes=False, critical_points=((np.zeros(4),),),
           derivative=lambda a: (np.where(_EXPONENTS == 0, 0,
                                          _EXPONENTS * a ** np.maximum(_EXPONENTS - 1, 0)),)),
    OpSpec("pow_of_zero", lambda w: ops.power(np.zeros(3, w.dtype), w), lambda w: 0.0 ** w, (((3,),),),
           domain=(0.5, 2.0), random_shapes=False, critical_points=((np.array([0.5, 1.0, 2.0]),),),
           derivative=lambda w: (np.zeros_like(w),)),
    OpSpec("neg", ops.neg, np.negative, UNARY),
    OpSpec("exp", ops.exp, np.exp, UNARY),
    OpSpec("log", ops.log, np.log, UNARY, domain=(0.2, 3.0)),
    OpSpec("sqrt", ops.sqrt, np.sqrt, UNARY, domain=(0.2, 3.0)),
    OpSpec("abs", ops.abs, np.abs, UNARY, kink_distance=_abs_min),
    OpSpec("clip", lambda a: ops.clip(a, -0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7), UNARY,
           kink_distance=lambda a: float(min(np.abs(a + 0.5).min(), np.abs(a - 0.7).min()))
           if a.size else np.inf),
    OpSpec("maximum", ops.maximum, np.maximum, BINARY, kink_distance=lambda a, b: _abs_min(a - b)),
    OpSpec("minimum", ops.minimum, np.minimum, BINARY, kink_distance=lambda a, b: _abs_min(a - b)),
    OpSpec("where", lambda a, b: ops.where(a.data > 0, a, b), lambda a, b: np.where(a > 0, a, b),
           BINARY[:3], kink_distance=_abs_min),
    OpSpec("matmul", ops.matmul, np.matmul,
           (((3, 4), (4, 2)), ((4,), (4, 3)), ((3, 4), (4,)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2))),
           family="linear"),
    OpSpec("sum", lambda a: ops.sum(a), np.sum, UNARY, family="reduce"),
    OpSpec("sum_axis", lambda a: ops.sum(a, axis=(0, -1), keepdims=True),
           lambda a: a.sum(axis=(0, -1), keepdims=True), REDUCE_SHAPES[:2], family="reduce",
           random_shapes=False),
    OpSpec("mean", lambda a: ops.mean(a, axis=0), lambda a: a.mean(axis=0), REDUCE_SHAPES, family="reduce"),
    OpSpec("var", lambda a: ops.var(a, axis=-1), lambda a: a.var(axis=-1), REDUCE_SHAPES, family="reduce"),
    OpSpec("max", lambda a: ops.max(a, axis=-1), lambda a: a.max(axis=-1), REDUCE_SHAPES,
           kink_distance=_gap_to_tie(-1), family="reduce"),
    OpSpec("min", lambda a: ops.min(a, axis=0, keepdims=True), lambda a: a.min(axis=0, keepdims=True),
           REDUCE_SHAPES, kink_distance=_gap_to_tie(0), family="reduce"),
    OpSpec("max_all", lambda a: ops.max(a), np.max, REDUCE_SHAPES, kink_distance=_gap_to_tie(None),
           family="reduce"),
    OpSpec("logsumexp", lambda a: ops.logsumexp(a, axis=-1), lambda a: _np_logsumexp(a, axis=-1),
           REDUCE_SHAPES, family="reduce"),
    OpSpec("reshape", lambda a: ops.reshape(a, -1), lambda a: a.reshape(-1), UNARY, family="shape"),
    OpSpec("transpose", lambda a: ops.transpose(a), np.transpose, UNARY, family="shape"),
    OpSpec("transpose_axes", lambda a: ops.transpose(a, 1, 2, 0), lambda a: a.transpose(1, 2, 0),
           (((2, 3, 4),), ((1, 3, 2),)), family="shape"),
    OpSpec("squeeze", lambda a: ops.squeeze(a), np.squeeze, (((2, 1, 3),), ((1, 4),)), family="shape"),
    OpSpec("expand_dims", lambda a: ops.expand_dims(a, 1), lambda a: np.expand_dims(a, 1),
           (((3, 4),), ((5,),)), family="shape"),
    OpSpec("getitem_slice", lambda a: a[1:, ::2], lambda a: a[1:, ::2], (((4, 5),), ((3, 3, 2),)),
           family="shape"),
    OpSpec("getitem_repeat", lambda a: a[np.array([0, 2, 0, 0])], lambda a: a[np.array([0, 2, 0, 0])],
           (((3, 4),), ((4,),)), family="shape"),
    OpSpec("concatenate", lambda a, b: ops.concatenate([a, b], axis=1),
           lambda a, b: np.concatenate([a, b], axis=1), (((3, 2), (3, 4)), ((2, 1, 3), (2, 2, 3))),
           family="shape"),
    OpSpec("stack", lambda a, b: ops.stack([a, b], axis=-1), lambda a, b: np.stack([a, b], axis=-1),
           (((3, 2), (3, 2)), ((4,), (4,))), family="shape"),
    *(_activation_spec(activation) for activation in ACTIVATIONS),
    OpSpec("softmax", lambda a: ops.softmax(a, axis=-1), _np_softmax, REDUCE_SHAPES, family="activation"),
    OpSpec("log_softmax", lambda a: ops.log_softmax(a, axis=0),
           lambda a: a - _np_logsumexp(a, axis=0, keepdims=True), REDUCE_SHAPES, family="activation"),
    OpSpec("linear", lambda x, w, b: F.linear(x, w, b), lambda x, w, b: _np_linear(x, w, b, "linear"),
           (((5, 3), (3, 4), (4,)), ((2, 3, 3), (3, 2), (2,)), ((1, 1), (1, 1), (1,))), family="linear"),
    *(_linear_spec(act) for act in ("relu", "tanh", "sigmoid", "softmax", "gelu")),
    OpSpec("linear_nobias", lambda x, w: F.linear(x, w), lambda x, w: x @ w, (((4, 3), (3, 2)),),
           family="linear"),
    _linear_spec("leaky_relu", alpha=0.1), _linear_spec("elu"), _linear_spec("softplus"),
    OpSpec("broadcast_to", lambda a: BroadcastTo.apply(a, shape=(2, 3, 4)),
           lambda a: np.broadcast_to(a, (2, 3, 4)), (((3, 4),), ((1, 4),), ((3, 1),), ((),)),
           family="shape"),
    OpSpec("scatter_add", lambda a: ScatterAdd.apply(a, index=_SCATTER_INDEX, shape=(4, 2)),
           lambda a: _np_scatter(a, _SCATTER_INDEX, (4, 2)), (((3, 2),),), family="shape"),
    _xent_spec("softmax_xent", _XENT_TARGET, "none"), _xent_spec("softmax_xent_mean", _XENT_TARGET, "mean"),
    _xent_spec("softmax_xent_probs_sum", _XENT_PROBS, "sum"),
    _xent_spec("softmax_xent_sum", _XENT_TARGET, "sum"),
    _xent_spec("softmax_xent_onehot", _XENT_ONEHOT, "none"),
    _xent_spec("softmax_xent_onehot_mean", _XENT_ONEHOT, "mean"),
    # The losses, checked at the points where a composition of ops would kink.
    OpSpec("mse", lambda p: losses.mse(p, _TARGET), lambda p: ((p - _TARGET) ** 2).mean(),
           (((2, 3),),), family="loss", random_shapes=False,
           critical_points=((_TARGET.copy(),),), derivative=lambda p: (2 * (p - _TARGET) / p.size,)),
    OpSpec("mae", lambda p: losses.mae(p, _TARGET, reduction="sum"), lambda p: np.abs(p - _TARGET).sum(),
           (((2, 3),),), family="loss", random_shapes=False,
           kink_distance=lambda p: float(np.abs(p - _TARGET).min()),
           # a genuine kink at pred == target: the gradient returned there is 0 (documented)
           critical_points=((_TARGET.copy(),),), derivative=lambda p: (np.sign(p - _TARGET),)),
    OpSpec("huber", lambda p: losses.huber(p, _TARGET, delta=_HUBER_DELTA, reduction="none"),
           lambda p: _np_huber(p - _TARGET, _HUBER_DELTA), (((2, 3),),), family="loss",
           random_shapes=False,
           kink_distance=lambda p: float(np.abs(np.abs(p - _TARGET) - _HUBER_DELTA).min()),  # 2nd order
           critical_points=((_TARGET + np.array([[0, 0.75, -0.75], [0.75, 0, -0.75]]),),
                            (_TARGET.copy(),)),
           derivative=lambda p: (np.clip(p - _TARGET, -_HUBER_DELTA, _HUBER_DELTA),)),
    OpSpec("bce_logits", lambda z: losses.binary_crossentropy(z, _LABELS, from_logits=True),
           lambda z: (np.logaddexp(z, 0) - z * _LABELS).mean(), (((2, 3),),), family="loss",
           random_shapes=False, critical_points=((np.zeros((2, 3)),),),
           derivative=lambda z: ((1 / (1 + np.exp(-z)) - _LABELS) / z.size,)),
    OpSpec("bce_probs", lambda p: losses.binary_crossentropy(p, _LABELS, reduction="sum"),
           lambda p: -(_LABELS * np.log(p) + (1 - _LABELS) * np.log(1 - p)).sum(), (((2, 3),),),
           domain=(0.05, 0.95), family="loss", random_shapes=False),
    OpSpec("categorical_crossentropy_probs",
           lambda p: losses.categorical_crossentropy(p, _XENT_PROBS, reduction="none"),
           lambda p: -(_XENT_PROBS * np.log(p)).sum(axis=-1), (((5, 3),),), domain=(0.05, 0.95),
           family="loss", random_shapes=False),
    OpSpec("sparse_categorical_crossentropy_probs",
           lambda p: losses.sparse_categorical_crossentropy(p, _XENT_TARGET, reduction="sum"),
           _sparse_probs_loss, (((5, 3),),), domain=(0.05, 0.95), family="loss", random_shapes=False),
    # SPEC §17's ops for experiments (sine features, norm penalties, ports from JAX/autograd).
    OpSpec("sin", ops.sin, np.sin, UNARY, domain=(-4.0, 4.0)),
    OpSpec("cos", ops.cos, np.cos, UNARY, domain=(-4.0, 4.0)),
    OpSpec("log1p", ops.log1p, np.log1p, UNARY, domain=(-0.8, 3.0)),
    OpSpec("expm1", ops.expm1, np.expm1, UNARY),
    OpSpec("erf", ops.erf, np.vectorize(math.erf, otypes=[np.float64]), UNARY,
           domain=(-3.0, 3.0)),  # both of its formulas (|x| < 2, >= 2)
    OpSpec("prod", lambda a: ops.prod(a, axis=-1), lambda a: a.prod(axis=-1), REDUCE_SHAPES,
           family="reduce", critical_points=((_PROD_ZEROS.copy(),),),  # exp(sum(log)) is 0/0 there
           derivative=lambda a: (_np_prod_others(a),)),
    OpSpec("prod_axes", lambda a: ops.prod(a, axis=(0, 2), keepdims=True),
           lambda a: a.prod(axis=(0, 2), keepdims=True), (((2, 3, 4),), ((3, 1, 2),)), family="reduce",
           random_shapes=False),
    OpSpec("cumsum", lambda a: ops.cumsum(a, axis=-1), lambda a: np.cumsum(a, axis=-1), REDUCE_SHAPES,
           family="reduce"),
    OpSpec("cumsum_flat", ops.cumsum, np.cumsum, UNARY, family="reduce", random_shapes=False),
    OpSpec("std", lambda a: ops.std(a, axis=-1, ddof=1), lambda a: a.std(axis=-1, ddof=1), REDUCE_SHAPES,
           family="reduce", random_shapes=False),
    OpSpec("norm", ops.norm, lambda a: np.linalg.norm(a.reshape(-1)), UNARY, family="reduce",
           kink_distance=lambda a: float(np.linalg.norm(a)),
           critical_points=((np.zeros((2, 3)),),), derivative=lambda a: (np.zeros_like(a),)),
    OpSpec("norm_axis", lambda a: ops.norm(a, axis=-1, keepdims=True),
           lambda a: np.linalg.norm(a, axis=-1, keepdims=True), REDUCE_SHAPES, family="reduce",
           kink_distance=lambda a: float(np.linalg.norm(a, axis=-1).min())),
    *(OpSpec(name, (lambda s: lambda *t: ops.einsum(s, *t))(subscripts),
             (lambda s: lambda *a: np.einsum(s, *a))(subscripts), cases, family="linear")
      for name, subscripts, cases in _EINSUMS),
)

BY_NAME = {spec.name: spec for spec in REGISTRY}


def draw_inputs(spec, shapes, rng, dtype=np.float64, margin=1e-3, tries=50):
    """Random float inputs for ``spec`` at ``shapes``, kept ``margin`` away from its kinks."""
    low, high = spec.domain
    for _ in range(tries):
        arrays = [rng.uniform(low, high, size=shape).astype(dtype) for shape in shapes]
        if spec.kink_distance is None or spec.kink_distance(*arrays) > margin:
            return arrays
    raise RuntimeError(f"{spec.name}: could not draw inputs {margin} away from a kink")


# ------------------------------------------------------------------ kinks of graph nodes
# Where each built-in node is not differentiable (a custom Function defines ``kink_distance``).
@dataclass(frozen=True)
class NodeKink:
    what: str                        # 'relu at 0': what is not differentiable
    point: str                       # what the inputs sit close to: '0', 'a bound', ...
    distance: Callable               # (node, input arrays) -> distance of the inputs to the kink


def _extreme_gap(a, axes, largest):
    if a.size < 2:
        return np.inf
    axes = tuple(range(a.ndim)) if axes is None else tuple(axes)
    kept = [k for k in range(a.ndim) if k not in axes]
    moved = np.transpose(a, kept + list(axes)).reshape(-1, int(np.prod([a.shape[k] for k in axes])))
    if moved.shape[1] < 2:
        return np.inf
    ordered = np.sort(moved, axis=1)
    gaps = ordered[:, -1] - ordered[:, -2] if largest else ordered[:, 1] - ordered[:, 0]
    return float(gaps.min())


def _clip_gap(node, xs):
    bounds = [b for b in (node.__dict__.get("lo"), node.__dict__.get("hi")) if b is not None]
    return min([_abs_min(xs[0] - b) for b in bounds] or [np.inf])


def _linear_gap(node, xs):
    """Distance of the pre-activation to the fused activation's kinks (inf if it has none)."""
    record = ACTIVATION_RECORDS.get(node.__dict__.get("activation", "linear"))
    points = record.kink_points(node.__dict__.get("alpha")) if record is not None else ()
    if not points:
        return np.inf
    x, kernel = xs[0], xs[1]
    z = x.reshape(-1, x.shape[-1]) @ kernel + (xs[2] if len(xs) > 2 else 0)
    return _kink_gap(z, points)


def _activation_kink(activation):
    where = ", ".join(f"{point:g}" for point in activation.kinks)
    smooth = "" if activation.smooth_alpha is None else f" (alpha != {activation.smooth_alpha:g})"

    def distance(node, xs):
        points = activation.kink_points(node.__dict__.get("alpha"))
        return _kink_gap(xs[0], points) if points else np.inf
    return NodeKink(f"{activation.name} at {where}{smooth}", where, distance)


NODE_KINKS = {
    **{activation.op: _activation_kink(activation) for activation in ACTIVATIONS if activation.kinks},
    "Abs": NodeKink("abs at 0", "0", lambda node, xs: _abs_min(xs[0])),
    "Clip": NodeKink("clip at its bounds", "a bound", _clip_gap),
    "Maximum": NodeKink("maximum at a tie", "each other", lambda node, xs: _abs_min(xs[0] - xs[1])),
    "Minimum": NodeKink("minimum at a tie", "each other", lambda node, xs: _abs_min(xs[0] - xs[1])),
    "Max": NodeKink("max at a tie", "a tie",
                    lambda node, xs: _extreme_gap(xs[0], node.__dict__.get("axes"), True)),
    "Min": NodeKink("min at a tie", "a tie",
                    lambda node, xs: _extreme_gap(xs[0], node.__dict__.get("axes"), False)),
    "Linear": NodeKink("linear's activation at 0", "0 (pre-activation)", _linear_gap),
    "Sqrt": NodeKink("sqrt at 0 (infinite slope)", "0", lambda node, xs: _abs_min(xs[0])),
    "Log": NodeKink("log at 0 (infinite slope)", "0", lambda node, xs: _abs_min(xs[0])),
    "Norm": NodeKink("norm at 0", "0 (a zero slice)", lambda node, xs: float(np.sqrt(
        (xs[0] * xs[0]).sum(axis=node.__dict__.get("axes"))).min()) if xs[0].size else np.inf),
}
