"""Export a trained ``Sequential`` to ONNX, so a runtime that is not Python can serve it.

Each layer becomes the few ONNX ops that compute exactly what its eval-mode forward
computes (the table is in docs/onnx.md). ``export`` refuses, with a ``ValueError`` naming
the layer, what it cannot prove it reproduces: a layer it has no form for, a class that
overrides ``forward``, a forward hook, an op onnxruntime lacks in the model's dtype, a model
not built yet. Needs the ``onnx`` package (``pip install 'nanodl[onnx]'``).

>>> import os, tempfile, numpy as np, nanodl as nd
>>> from nanodl import nn
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(8, activation='relu', input_dim=4),
...                        nn.Dense(3, activation='softmax', input_dim=8)])
>>> path = os.path.join(tempfile.mkdtemp(), 'model.onnx')
>>> proto = nd.onnx.export(model, path)
>>> [node.op_type for node in proto.graph.node]
['MatMul', 'Add', 'Relu', 'MatMul', 'Add', 'Softmax']
>>> import onnxruntime
>>> session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
>>> x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
>>> bool(np.allclose(session.run(None, {'input': x})[0], model.predict(x), rtol=1e-5, atol=1e-6))
True
"""
import functools

import numpy as np

from .autograd import no_grad
from .backend import to_host as _host
from .backend.activations import ACTIVATIONS, BY_NAME, GELU_C, GELU_K
from .io import atomic_write
from .nn import layers as _layers
from .nn.model import Sequential
from .tensor import Tensor

__all__ = ["export", "SUPPORTED_LAYERS", "MIN_OPSET"]

MIN_OPSET = 13        # Softmax over one axis (opset 13 semantics) and Gather as used here
REDUCE_AXES_INPUT_OPSET = 18  # ReduceMean takes its axes as an input from here on

_INSTALL_HINT = ("nanodl.onnx.export needs the onnx package, which is not installed; get it with "
                 "`pip install 'nanodl[onnx]'` (onnx, and onnxruntime to run the file)")


class _Graph:
    """The nodes and initializers of one graph, with unique names."""

    def __init__(self, onnx, opset, float_dtype):
        self.onnx = onnx
        self.opset = opset
        self.float_dtype = np.dtype(float_dtype)
        self.nodes = []
        self.initializers = []
        self.names = set()

    def unique(self, name):
        candidate, suffix = name, 1
        while candidate in self.names:
            suffix += 1
            candidate = f"{name}_{suffix}"
        self.names.add(candidate)
        return candidate

    def constant(self, name, array, dtype=None):
        """Add ``array`` as an initializer (in the model's float dtype by default); returns its name."""
        array = np.asarray(array, dtype=self.float_dtype if dtype is None else dtype)
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, scope, label, value):
        return self.constant(f"{scope}/{label}", value)

    def node(self, op_type, inputs, scope, **attributes):
        """Add one node; returns the name of its (single) output."""
        output = self.unique(f"{scope}/{op_type}")
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=output,
                                                     **attributes))
        return output

    def reduce_mean_last(self, x, scope):
        if self.opset >= REDUCE_AXES_INPUT_OPSET:
            axes = self.constant(f"{scope}/axes", np.array([-1], np.int64), dtype=np.int64)
            return self.node("ReduceMean", [x, axes], scope, keepdims=1)
        return self.node("ReduceMean", [x], scope, axes=[-1], keepdims=1)


# ---------------------------------------------------------------- activations, by record name
def _one_node(op_type, **attributes):
    return lambda graph, x, scope, alpha: graph.node(op_type, [x], scope, **attributes)


def _leaky_relu(graph, x, scope, alpha):
    """``Where(x > 0, x, alpha x)``, ``alpha`` in the model's dtype (``LeakyRelu``'s is a float32)."""
    condition = graph.node("Greater", [x, graph.scalar(scope, "zero", 0.0)], scope)
    scaled = graph.node("Mul", [x, graph.scalar(scope, "alpha", alpha)], scope)
    return graph.node("Where", [condition, x, scaled], scope)


def _exp_minus_abs(graph, x, scope):
    return graph.node("Exp", [graph.node("Neg", [graph.node("Abs", [x], scope)], scope)], scope)


def _sigmoid(graph, x, scope, alpha=None):
    """nanodl's stable form (onnxruntime's ``Sigmoid`` is off by ~1e-4 relative in the tails)."""
    e = _exp_minus_abs(graph, x, scope)
    one = graph.scalar(scope, "one", 1.0)
    denominator = graph.node("Add", [e, one], scope)
    positive = graph.node("Div", [one, denominator], scope)
    negative = graph.node("Div", [e, denominator], scope)
    condition = graph.node("GreaterOrEqual", [x, graph.scalar(scope, "zero", 0.0)], scope)
    return graph.node("Where", [condition, positive, negative], scope)


def _elu(graph, x, scope, alpha):
    """ELU with ``expm1(m) = tanh(m / 2) (exp(m) + 1)`` (``Elu``'s ``exp(x) - 1`` loses ~1e-5 near 0)."""
    negative = graph.node("Min", [x, graph.scalar(scope, "zero", 0.0)], scope)
    half = graph.node("Tanh", [graph.node("Mul", [negative, graph.scalar(scope, "half", 0.5)], scope)],
                      scope)
    plus_one = graph.node("Add", [graph.node("Exp", [negative], scope), graph.scalar(scope, "one", 1.0)],
                          scope)
    expm1 = graph.node("Mul", [half, plus_one], scope)
    scaled = graph.node("Mul", [expm1, graph.scalar(scope, "alpha", alpha)], scope)
    condition = graph.node("Greater", [x, graph.scalar(scope, "zero", 0.0)], scope)
    return graph.node("Where", [condition, x, scaled], scope)


def _softplus(graph, x, scope, alpha):
    """``max(x, 0) + log1p(e)``, ``log1p(e) = log(u) e / (u - 1)`` (ONNX has no log1p)."""
    e = _exp_minus_abs(graph, x, scope)
    one = graph.scalar(scope, "one", 1.0)
    u = graph.node("Add", [e, one], scope)
    ratio = graph.node("Div", [e, graph.node("Sub", [u, one], scope)], scope)
    log1p = graph.node("Where", [graph.node("Equal", [u, one], scope), e,
                                 graph.node("Mul", [graph.node("Log", [u], scope), ratio], scope)], scope)
    positive = graph.node("Max", [x, graph.scalar(scope, "zero", 0.0)], scope)
    return graph.node("Add", [positive, log1p], scope)


def _gelu(graph, x, scope, alpha):
    """GELU's tanh form as ``x * sigmoid(2u)``, as nanodl (onnxruntime's ``Gelu`` is 5.6e-10 off)."""
    cube = graph.node("Mul", [graph.node("Mul", [x, x], scope), x], scope)
    inner = graph.node("Add", [x, graph.node("Mul", [cube, graph.scalar(scope, "k", GELU_K)], scope)],
                       scope)
    twice_u = graph.node("Mul", [inner, graph.scalar(scope, "two_c", 2 * GELU_C)], scope)
    return graph.node("Mul", [x, _sigmoid(graph, twice_u, scope)], scope)


# One emitter per activation record (tests/test_onnx.py checks every record has one).
_ACTIVATION_NODES = {"linear": lambda graph, x, scope, alpha: x, "relu": _one_node("Relu"),
                     "leaky_relu": _leaky_relu, "sigmoid": _sigmoid, "tanh": _one_node("Tanh"),
                     "gelu": _gelu, "elu": _elu, "softplus": _softplus,
                     "softmax": _one_node("Softmax", axis=-1)}


def _activation(graph, x, name, scope, alpha=None):
    """The nodes of activation ``name`` (a record's name) applied to ``x``."""
    if name not in _ACTIVATION_NODES:
        raise ValueError(f"nanodl.onnx.export: no ONNX form for activation {name!r}")
    record = BY_NAME.get(name)
    if alpha is None and record is not None:
        alpha = record.alpha
    return _ACTIVATION_NODES[name](graph, x, scope, alpha)


# ---------------------------------------------------------------- layers, by type
def _dense(graph, layer, x, scope, rank):
    out = graph.node("MatMul", [x, graph.constant(f"{scope}.kernel", layer.kernel.numpy())], scope)
    if layer.bias is not None:
        out = graph.node("Add", [out, graph.constant(f"{scope}.bias", layer.bias.numpy())], scope)
    return _activation(graph, out, layer.activation, scope, layer.alpha)


def _batch_norm(graph, layer, x, scope, rank):
    dtype = graph.float_dtype
    gamma, beta = layer.gamma.numpy().astype(dtype), layer.beta.numpy().astype(dtype)
    mean = _host(layer.moving_mean).astype(dtype)
    variance = _host(layer.moving_variance).astype(dtype)
    scale = gamma / np.sqrt(variance + dtype.type(layer.epsilon))  # as BatchNorm.forward in eval
    centred = graph.node("Sub", [x, graph.constant(f"{scope}.moving_mean", mean)], scope)
    scaled = graph.node("Mul", [centred, graph.constant(f"{scope}.scale", scale)], scope)
    return graph.node("Add", [scaled, graph.constant(f"{scope}.beta", beta)], scope)


def _layer_norm(graph, layer, x, scope, rank):
    mean = graph.reduce_mean_last(x, scope)
    centred = graph.node("Sub", [x, mean], scope)
    variance = graph.reduce_mean_last(graph.node("Mul", [centred, centred], scope), scope)
    shifted = graph.node("Add", [variance, graph.scalar(scope, "epsilon", layer.epsilon)], scope)
    normalised = graph.node("Div", [centred, graph.node("Sqrt", [shifted], scope)], scope)
    scaled = graph.node("Mul", [normalised, graph.constant(f"{scope}.gamma", layer.gamma.numpy())], scope)
    return graph.node("Add", [scaled, graph.constant(f"{scope}.beta", layer.beta.numpy())], scope)


def _embedding(graph, layer, x, scope, rank):
    table = graph.constant(f"{scope}.embeddings", layer.embeddings.numpy())
    return graph.node("Gather", [table, x], scope, axis=0)


def _layer_table():
    """``{layer class: emitter(graph, layer, x, scope, rank)}``, activation layers from their records."""
    table = {
        _layers.Dense: _dense,
        _layers.Softmax: lambda graph, layer, x, scope, rank: graph.node("Softmax", [x], scope,
                                                                         axis=layer.axis),
        _layers.Activation: lambda graph, layer, x, scope, rank: _activation(graph, x, layer.name, scope),
        _layers.Dropout: lambda graph, layer, x, scope, rank: graph.node("Identity", [x], scope),
        _layers.Flatten: lambda graph, layer, x, scope, rank: (
            x if rank == 2 else graph.node("Flatten", [x], scope, axis=1)),
        _layers.BatchNorm: _batch_norm,
        _layers.LayerNorm: _layer_norm,
        _layers.Embedding: _embedding,
    }
    for record in ACTIVATIONS:
        layer_class = _layers.LAYERS.get(record.op)
        if layer_class is not None:
            table[layer_class] = functools.partial(_activation_layer, record)
    return table


def _activation_layer(record, graph, layer, x, scope, rank):
    return _activation(graph, x, record.name, scope, layer.alpha if record.has_alpha else None)


_LAYERS = _layer_table()
SUPPORTED_LAYERS = tuple(layer_class.__name__ for layer_class in _LAYERS) + ("Sequential",)


# ---------------------------------------------------------------- what can be proven
# Ops onnxruntime's CPU provider lacks in a dtype; export refuses a graph that holds one.
_RUNTIME_LACKS = {np.dtype(np.float64): frozenset({"Softplus", "Elu", "Erf", "Gelu", "Selu",
                                                   "Softsign", "HardSigmoid", "ThresholdedRelu"})}


def _overrides(instance, base, names=("forward", "__call__")):
    """The first of ``names`` that ``instance`` (or its class) overrides from ``base``, else None."""
    return next((name for name in names if name in instance.__dict__
                 or getattr(type(instance), name) != getattr(base, name)), None)


def _refuse_unprovable(module, scope, base):
    """ValueError when ``module`` may compute something its class table entry does not."""
    overridden = _overrides(module, base)
    if overridden is not None:
        raise ValueError(f"nanodl.onnx.export: {scope} ({type(module).__name__}) overrides "
                         f"{overridden}; the export writes what {base.__name__}.{overridden} "
                         "computes, so it cannot prove it reproduces this model")
    if module.__dict__.get("_forward_hooks"):
        raise ValueError(f"nanodl.onnx.export: {scope} ({type(module).__name__}) has a forward hook; "
                         "a hook may change the output, which the ONNX graph would not; remove it "
                         "(handle.remove()) before exporting")


def _flat_layers(model, table, prefix="layers"):
    """``(scope, layer)`` for every layer, nested Sequentials inlined; ValueError if unsupported."""
    result = []
    for index, layer in enumerate(model.layers):
        scope = f"{prefix}.{index}"
        kind = type(layer).__name__
        if isinstance(layer, Sequential):
            _refuse_unprovable(layer, scope, Sequential)
            result.extend(_flat_layers(layer, table, scope + ".layers"))
            continue
        if type(layer) not in table:
            raise ValueError(f"nanodl.onnx.export: layer {scope} ({kind}) has no ONNX export; "
                             f"supported layers: {', '.join(SUPPORTED_LAYERS[:-1])}")
        _refuse_unprovable(layer, scope, type(layer))
        if getattr(layer, "built", True) is False:
            raise ValueError(f"nanodl.onnx.export: the model is not built (layer {scope}, {kind}, has "
                             "no weights yet); build it first with model.build(input_shape), fit, "
                             "or by calling it on a batch")
        result.append((scope, layer))
    return result


def export(model, path, opset=17):
    """Write ``model`` (a built ``nn.Sequential`` of built-in layers) to ``path`` as ONNX, atomically.

    ``opset``: 13 up to the installed ``onnx``'s newest. The input is ``'input'``, ``(batch,
    *features)`` (int64 indices when the model starts with an ``Embedding``), the output
    ``'output'``; the weights keep their ``state_dict`` names. Returns the ``onnx.ModelProto``.
    """
    if not isinstance(model, Sequential):
        raise ValueError(f"nanodl.onnx.export: expected an nn.Sequential of built-in layers, got "
                         f"{type(model).__name__} (a subclassed model's forward cannot be read as a graph)")
    _refuse_unprovable(model, "the model", Sequential)
    try:
        import onnx
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= latest:
        raise ValueError(f"nanodl.onnx.export: opset must be an integer from {MIN_OPSET} to {latest} "
                         f"(the installed onnx's newest), got {opset!r}")
    layers = _flat_layers(model, _LAYERS)
    if not layers:
        raise ValueError("nanodl.onnx.export: the model has no layers")
    features = model._input_features()
    if features is None:
        raise ValueError("nanodl.onnx.export: the model's input shape is unknown; build it first with "
                         "model.build(input_shape) (e.g. model.build((None, 8))), fit, or predict on a "
                         "batch")
    float_dtype = model._float_dtype()
    input_dtype = np.dtype(np.int64) if type(layers[0][1]) is _layers.Embedding else float_dtype

    # A one-sample batch gives each layer's input rank and proves the shapes before any write.
    ranks = []
    with model._mode(False), no_grad():
        x = Tensor(np.zeros((1,) + features, dtype=input_dtype))
        for _, layer in layers:
            ranks.append(x.ndim)
            x = layer(x)
        out_shape = tuple(x.shape[1:])

    graph = _Graph(onnx, int(opset), float_dtype)
    current = "input"
    graph.names.add(current)
    for (scope, layer), rank in zip(layers, ranks):
        current = _LAYERS[type(layer)](graph, layer, current, scope, rank)
    if current == "input":  # nothing but linear activations: keep input and output distinct
        current = graph.node("Identity", [current], "output")
    assert graph.nodes[-1].output[0] == current  # every layer ends in its last node, or adds none
    lacking = _RUNTIME_LACKS.get(float_dtype, ())
    for node in graph.nodes:
        if node.op_type in lacking:
            raise ValueError(f"nanodl.onnx.export: {node.name.split('/')[0]} would need onnxruntime's "
                             f"{node.op_type} in {float_dtype}, which it does not implement")
    graph.nodes[-1].output[0] = "output"

    helper = onnx.helper
    to_onnx = helper.np_dtype_to_tensor_dtype
    inputs = [helper.make_tensor_value_info("input", to_onnx(input_dtype), ["batch", *features])]
    outputs = [helper.make_tensor_value_info("output", to_onnx(float_dtype), ["batch", *out_shape])]
    from . import __version__
    body = helper.make_graph(graph.nodes, "nanodl_sequential", inputs, outputs, graph.initializers)
    opset_imports = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(body, opset_imports=opset_imports, producer_name="nanodl",
                              producer_version=__version__,
                              doc_string=f"exported by nanodl {__version__} from a Sequential of "
                                         f"{len(layers)} layers")
    proto.ir_version = helper.find_min_ir_version_for(opset_imports)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return proto
