"""Built-in layers: Dense, activations, Dropout, Flatten, BatchNorm, LayerNorm, Embedding.

Dense without ``input_dim`` and the norms build on their first call, on the input's
device. Each is registered in ``LAYERS`` so that ``nanodl.load_model`` can rebuild it.
"""
import numpy as np

from .. import functional as F
from .. import ops, regularizers
from ..modelfile import LAYERS, register_layer
from ..backend import is_device_array, to_device
from ..tensor import Tensor, get_default_dtype
from . import init
from .module import Module, Parameter

__all__ = ["Layer", "Dense", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU", "Activation",
           "Dropout", "Flatten", "BatchNorm", "LayerNorm", "Embedding", "LAYERS", "register_layer"]


def _number(layer, name, value):
    """``value`` as a finite float, or TypeError/ValueError naming the layer and argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer}: {name} must be a number, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value):
        raise ValueError(f"{layer}: {name} must be finite, got {value!r}")
    return float(value)


def _positive_int(layer, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _input_dim(input_dim, input_shape):
    """``input_dim``, or the one feature count of Keras' ``input_shape=(d,)``."""
    if input_shape is None:
        return input_dim
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
    if len(shape) != 1:
        raise ValueError(f"Dense: input_shape must be (features,), got {input_shape!r}")
    if input_dim is not None and input_dim != shape[0]:
        raise ValueError(f"Dense: input_dim={input_dim!r} and input_shape={input_shape!r} disagree")
    return shape[0]


class Layer(Module):
    """A Module that can describe itself: ``get_config()`` and ``from_config(config)``."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def state_shapes(cls, config):
        """name -> shape of the state a layer made from ``config`` holds, which ``load_model``
        checks before allocating; None: build it to find out."""
        return None

    def extra_repr(self):
        return ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())


@register_layer
class Dense(Layer):
    """``activation(x @ kernel + bias)``, one fused ``F.linear`` node; ``kernel`` is ``(in, units)``.

    Without ``input_dim`` (or ``input_shape=(in,)``) the weights are made on the first call.
    ``activation``: a name or a callable; a built-in one (``nd.tanh``) is kept by its name, any
    other makes ``save`` raise ``ValueError``. Initializers: ``nn.init`` names or callables
    ``f(shape, dtype=None)``; regularizers: ``nanodl.regularizers.l2(1e-4)`` and the like.

    >>> import nanodl as nd
    >>> from nanodl import nn
    >>> nn.Dense(4, activation=nd.tanh, input_shape=(3,))
    Dense(4, activation='tanh', input_dim=3)
    >>> layer = nn.Dense(3, activation='relu')
    >>> layer(nd.ones((2, 5))).shape, layer.kernel.shape
    ((2, 3), (5, 3))
    """

    def __init__(self, units, activation=None, *, input_dim=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, input_shape=None):
        super().__init__()
        self.units = _positive_int("Dense", "units", units)
        self.activation = F.resolve_activation(activation)
        self.alpha = F.DEFAULT_ALPHA.get(self.activation, 0.0) if isinstance(self.activation, str) else 0.0
        input_dim = _input_dim(input_dim, input_shape)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = init.get(kernel_initializer)
        self.bias_initializer = init.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.input_dim = self.kernel = self.bias = None
        if input_dim is not None:
            self.build(input_dim)

    _builds_itself = True  # on its first input's device, in forward

    @classmethod
    def state_shapes(cls, config):
        units, input_dim = config.get("units"), config.get("input_dim")
        if input_dim is None:
            return {}  # saved before its first call: no weights yet
        shapes = {"kernel": (input_dim, units)}
        if config.get("use_bias", True):
            shapes["bias"] = (units,)
        return shapes

    @property
    def built(self):
        return self.kernel is not None

    def build(self, input_dim, device="cpu"):
        """Create the weights; ``input_dim`` may be an input shape (Keras): its last axis."""
        if isinstance(input_dim, (tuple, list)) and input_dim:
            input_dim = input_dim[-1]
        self.input_dim = _positive_int("Dense", "input_dim", input_dim)
        dtype = get_default_dtype()
        kernel = np.asarray(self.kernel_initializer((self.input_dim, self.units), dtype), dtype=dtype)
        self.kernel = Parameter(to_device(kernel, device))
        if self.use_bias:
            bias = np.asarray(self.bias_initializer((self.units,), dtype), dtype=dtype)
            self.bias = Parameter(to_device(bias, device))

    def forward(self, x):
        if not isinstance(self.activation, str):
            return self.activation(self._linear(x, "linear", 0.0))
        return self._linear(x, self.activation, self.alpha)

    def pre_activation(self, x):
        """``x @ kernel + bias`` without the activation (the logits of a softmax layer)."""
        return self._linear(x, "linear", 0.0)

    def _linear(self, x, activation, alpha):
        if x.ndim == 0:
            raise ValueError("Dense: input must have a feature axis (its last), got a 0-d tensor")
        kernel = self.kernel
        if kernel is None:
            self.build(x.shape[-1], x.device)
            kernel = self.kernel
        if x.dtype != kernel.dtype:
            x = x.astype(kernel.dtype)
        return ops.linear(x, kernel, self.bias, activation=activation, alpha=alpha)

    def penalties(self):
        pairs = ((self.kernel_regularizer, self.kernel), (self.bias_regularizer, self.bias))
        return [penalty(weight) for penalty, weight in pairs if penalty is not None and weight is not None]

    def get_config(self):
        return {"units": self.units, "activation": self.activation, "input_dim": self.input_dim,
                "use_bias": self.use_bias,
                "kernel_initializer": init.name_of(self.kernel_initializer) or "glorot_uniform",
                "bias_initializer": init.name_of(self.bias_initializer) or "zeros",
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}

    def extra_repr(self):
        activation = self.activation if isinstance(self.activation, str) else \
            getattr(self.activation, "__name__", type(self.activation).__name__)
        extras = f", activation={activation!r}" if activation != "linear" else ""
        return f"{self.units}{extras}, input_dim={self.input_dim}"


# ---------------------------------------------------------------- activations
def _activation_layer(name, function, doc=None):
    """A registered layer class ``name`` whose forward is ``function(x)``."""
    def forward(self, x):
        return function(x)
    namespace = {"forward": forward, "__doc__": doc, "__module__": __name__}
    return register_layer(type(name, (Layer,), namespace))


ReLU = _activation_layer("ReLU", F.relu)
Sigmoid = _activation_layer("Sigmoid", F.sigmoid)
Tanh = _activation_layer("Tanh", F.tanh)
GELU = _activation_layer("GELU", F.gelu, "GELU, tanh approximation.")


@register_layer
class LeakyReLU(Layer):
    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = _number("LeakyReLU", "alpha", alpha)

    def forward(self, x):
        return F.leaky_relu(x, self.alpha)

    def get_config(self):
        return {"alpha": self.alpha}


@register_layer
class Softmax(Layer):
    def __init__(self, axis=-1):
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Softmax: axis must be an integer, got {axis!r}")
        self.axis = int(axis)

    def forward(self, x):
        return F.softmax(x, self.axis)

    def get_config(self):
        return {"axis": self.axis}


@register_layer
class Activation(Layer):
    """An activation by name: ``Activation('tanh')`` (names as in ``F.ACTIVATIONS``)."""

    def __init__(self, name):
        super().__init__()
        self.name = F.check_activation(name)
        self.function = F.get_activation(self.name)

    def forward(self, x):
        return self.function(x)

    def get_config(self):
        return {"name": self.name}


# ---------------------------------------------------------------- regularisation and shape
@register_layer
class Dropout(Layer):
    """Inverted dropout of a ``rate`` fraction, in training mode only."""

    def __init__(self, rate):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate is the fraction dropped and must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def forward(self, x):
        return F.dropout(x, self.rate, self.training)

    def get_config(self):
        return {"rate": self.rate}


@register_layer
class Flatten(Layer):
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``."""

    def forward(self, x):
        return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------- normalisation
class _Norm(Layer):
    """BatchNorm's and LayerNorm's ``gamma``/``beta`` over the last axis, built lazily."""

    def __init__(self, epsilon, num_features):
        super().__init__()
        self.epsilon = _number(type(self).__name__, "epsilon", epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"{type(self).__name__}: epsilon must be > 0, got {epsilon!r}")
        self.num_features = self.gamma = self.beta = None
        if num_features is not None:
            self.build(num_features)

    _BUFFERS = ()
    _builds_itself = True  # on its first input's device, in forward

    @classmethod
    def state_shapes(cls, config):
        features = config.get("num_features")
        if features is None:
            return {}
        return {name: (features,) for name in ("gamma", "beta") + cls._BUFFERS}

    @property
    def built(self):
        return self.gamma is not None

    def build(self, num_features, device="cpu"):
        self.num_features = int(num_features)
        dtype = get_default_dtype()
        self.gamma = Parameter(to_device(np.ones(self.num_features, dtype), device))
        self.beta = Parameter(to_device(np.zeros(self.num_features, dtype), device))

    def _ensure_built(self, x):
        if x.ndim == 0:
            raise ValueError(f"{type(self).__name__}: input must have a feature axis (its last), "
                             "got a 0-d tensor")
        if self.gamma is None:
            self.build(x.shape[-1], x.device)
        elif x.shape[-1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: built for {self.num_features} features on the "
                             f"last axis, got input of shape {x.shape}")


@register_layer
class BatchNorm(_Norm):
    """Batch normalisation over every axis but the last (Keras' ``BatchNormalization``):
    batch statistics in training (updating ``moving = momentum * moving + (1 - momentum) *
    batch``), the moving ones in eval."""

    _BUFFERS = ("moving_mean", "moving_variance")

    def __init__(self, momentum=0.99, epsilon=1e-3, *, num_features=None):
        self.momentum = _number("BatchNorm", "momentum", momentum)
        if not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
        super().__init__(epsilon, num_features)

    def build(self, num_features, device="cpu"):
        super().build(num_features, device)
        dtype = get_default_dtype()
        self.register_buffer("moving_mean", to_device(np.zeros(self.num_features, dtype), device))
        self.register_buffer("moving_variance", to_device(np.ones(self.num_features, dtype), device))

    def forward(self, x):
        self._ensure_built(x)
        if not self.training:
            scale = self.gamma / (Tensor(self.moving_variance) + self.epsilon).sqrt()
            return (x - Tensor(self.moving_mean)) * scale + self.beta
        axes = tuple(range(x.ndim - 1))
        if x.ndim < 2 or x.size // max(x.shape[-1], 1) < 2:
            raise ValueError(f"BatchNorm: training needs more than one value per feature, got input "
                             f"of shape {x.shape}: a batch of one has no variance (choose a batch_size that "
                             "leaves no last batch of one sample, or call eval() to use the moving "
                             "statistics)")
        mean = x.mean(axis=axes)
        variance = x.var(axis=axes)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving *= self.momentum
            moving += (1 - self.momentum) * batch.data.astype(moving.dtype, copy=False)
        return (x - mean) / (variance + self.epsilon).sqrt() * self.gamma + self.beta

    def get_config(self):
        return {"momentum": self.momentum, "epsilon": self.epsilon, "num_features": self.num_features}


@register_layer
class LayerNorm(_Norm):
    """Normalise each sample over its last axis, then scale by ``gamma`` and shift by ``beta``."""

    def __init__(self, epsilon=1e-5, *, num_features=None):
        super().__init__(epsilon, num_features)

    def forward(self, x):
        self._ensure_built(x)
        mean = x.mean(axis=-1, keepdims=True)
        variance = x.var(axis=-1, keepdims=True)
        return (x - mean) / (variance + self.epsilon).sqrt() * self.gamma + self.beta

    def get_config(self):
        return {"epsilon": self.epsilon, "num_features": self.num_features}


@register_layer
class Embedding(Layer):
    """A trainable lookup table ``(input_dim, output_dim)``: integer inputs ``(...)`` give
    ``(..., output_dim)``; a row used twice gets both gradients. Indices outside
    ``[0, input_dim)`` raise ``IndexError``, float inputs ``TypeError``.

    >>> import numpy as np, nanodl as nd
    >>> from nanodl import nn
    >>> layer = nn.Embedding(10, 4)
    >>> out = layer(np.array([[1, 2, 1]]))
    >>> out.shape, layer.embeddings.shape
    ((1, 3, 4), (10, 4))
    >>> out.sum().backward()
    >>> layer.embeddings.grad[[0, 1, 2], 0].tolist()  # row 1 was used twice
    [0.0, 2.0, 1.0]
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform"):
        super().__init__()
        self.input_dim = _positive_int("Embedding", "input_dim", input_dim)
        self.output_dim = _positive_int("Embedding", "output_dim", output_dim)
        self.embeddings_initializer = init.get(embeddings_initializer)
        dtype = get_default_dtype()
        table = self.embeddings_initializer((self.input_dim, self.output_dim), dtype)
        self.embeddings = Parameter(np.asarray(table, dtype=dtype))

    built = True  # the table's size is known from the start

    @classmethod
    def state_shapes(cls, config):
        return {"embeddings": (config.get("input_dim"), config.get("output_dim"))}

    def forward(self, x):
        indices = x.data if isinstance(x, Tensor) else x
        if not is_device_array(indices):
            indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"Embedding: expected integer indices, got a {indices.dtype} input "
                            "(cast it with x.astype('int64'))")
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= self.input_dim:
                bad = low if low < 0 else high
                raise IndexError(f"Embedding: index {bad} is out of range for input_dim="
                                 f"{self.input_dim} (valid indices are 0 to {self.input_dim - 1})")
        return ops.getitem(self.embeddings, indices)

    def get_config(self):
        return {"input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": init.name_of(self.embeddings_initializer) or "uniform"}
