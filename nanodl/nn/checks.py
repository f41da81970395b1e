"""What ``compile`` and ``fit`` check before training: the settings kept for ``save``, a
probability loss on a head without an activation, inputs that do not fit a layer."""
import warnings

from .. import losses as losses_module
from ..autograd import no_grad
from ..tensor import Tensor
from ..modelfile import unsaved_setting
from .module import ModuleList

__all__ = ["compile_config", "warn_missing_activation", "check_input", "input_error", "wanted_features"]

# The losses on probabilities: the activation that makes them, the from-logits class.
_PROBABILITY_LOSSES = {"binary_crossentropy": ("sigmoid", "BinaryCrossentropy"),
                       "categorical_crossentropy": ("softmax", "CategoricalCrossentropy"),
                       "sparse_categorical_crossentropy": ("softmax", "SparseCategoricalCrossentropy")}


def compile_config(optimizer, loss, specs):
    """The compile settings by name (saved with the model), or None if a file cannot hold them."""
    if unsaved_setting(optimizer, loss, specs) is not None:
        return None
    loss_name, loss_config = losses_module.describe(loss)
    return {"optimizer": {"name": optimizer.name, "config": optimizer.get_config()},
            "loss": {"name": loss_name, "config": loss_config,
                     "class": isinstance(loss, losses_module.Loss)},
            "metrics": [name for name, _ in specs]}


def warn_missing_activation(model, loss):
    """One ``UserWarning`` when a loss on probabilities meets a last Dense without an
    activation: it would train on raw outputs, clipped into [eps, 1 - eps]."""
    loss_name, loss_config = losses_module.describe(loss)
    if loss_name not in _PROBABILITY_LOSSES or (loss_config or {}).get("from_logits"):
        return
    head = model._logits_head()
    if head is None or head[1].activation != "linear":
        return
    activation, loss_class = _PROBABILITY_LOSSES[loss_name]
    index = len(head[0])
    warnings.warn(f"compile: loss {loss_name!r} expects probabilities, but the last layer "
                  f"(layer {index}, 'layers.{index}', Dense({head[1].units})) has no activation, "
                  f"so it would train on raw outputs; give it activation={activation!r}, or "
                  f"compile with loss=losses.{loss_class}(from_logits=True)", UserWarning,
                  stacklevel=3)


def wanted_features(layer):
    """The feature count ``layer`` takes on the last axis, or None when it is not fixed yet."""
    kernel = getattr(layer, "kernel", None)
    if kernel is not None and getattr(layer, "_builds_itself", False):
        return int(kernel.shape[0])
    return getattr(layer, "num_features", None)


def _does_not_fit(who, shape, index, name, layer, detail):
    return ValueError(f"{who}: x of shape {tuple(shape)} does not fit layer {index} "
                      f"({name!r}, {type(layer).__name__}): {detail}")


def check_input(model, x, who):
    """ValueError naming the first layer when ``x``'s last axis is not what it was built for."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, ModuleList) or not len(layers) or x.ndim < 2:
        return
    wanted = wanted_features(layers[0])
    if wanted is not None and x.shape[-1] != wanted:
        raise _does_not_fit(who, x.shape, 0, "layers.0", layers[0],
                            f"it takes {wanted} features on the last axis, x has {x.shape[-1]}")


def input_error(model, shape, x, error, who):
    """The error for ``x`` (a few samples of the user's array of ``shape``) failing in the
    forward with ``error``, naming the innermost layer that could not take its input."""
    layers = [(name, module) for name, module in model.named_modules()[1:]
              if not isinstance(module, ModuleList)]
    failed = []

    def watched(index, name, layer, forward):
        def forward_watched(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            except ValueError as inner:
                if not failed:  # the innermost layer fails first
                    failed.append((index, name, layer, args[0] if args else None, inner))
                raise
        return forward_watched

    for index, (name, layer) in enumerate(layers):
        layer.__dict__["forward"] = watched(index, name, layer, layer.forward)
    try:
        with model._mode(False), no_grad():
            model.forward(Tensor(x))
    except ValueError:
        pass
    finally:
        for _, layer in layers:
            layer.__dict__.pop("forward", None)
    if not failed:
        return ValueError(f"{who}: x of shape {tuple(shape)} does not fit the model: {error}")
    index, name, layer, received, inner = failed[0]
    wanted, features = wanted_features(layer), getattr(received, "shape", (None,))[-1:]
    detail = str(inner) if wanted is None or features in ((), (wanted,)) else \
        f"it takes {wanted} features on the last axis, its input has {features[0]}"
    return _does_not_fit(who, shape, index, name, layer, detail)
