"""Weight penalties, Keras style: callables from a weight Tensor to a scalar Tensor.

A layer's ``kernel_regularizer=regularizers.l2(1e-4)`` is reported by
``Module.regularization_losses()``, which ``Model.fit`` adds to the loss.

>>> import nanodl as nd
>>> from nanodl import regularizers
>>> w = nd.tensor([[1.0, -2.0]])
>>> regularizers.l2(0.1)(w).item(), regularizers.l1(0.1)(w).item()
(0.5, 0.30000001192092896)
"""
__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get"]


class Regularizer:
    """Base class: ``__call__(weight) -> scalar Tensor`` and ``get_config()``."""

    def __call__(self, weight):
        raise NotImplementedError

    def get_config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``; a zero factor adds no graph node."""

    def __init__(self, l1=0.0, l2=0.0):
        for label, factor in (("l1", l1), ("l2", l2)):
            if not factor >= 0:
                raise ValueError(f"{type(self).__name__}: {label} factor must be >= 0, got {factor}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, weight):
        terms = [weight.abs().sum() * self.l1] if self.l1 else []
        if self.l2:
            terms.append((weight * weight).sum() * self.l2)
        return sum(terms[1:], terms[0]) if terms else (weight * 0).sum()

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``factor * sum(|w|)``."""

    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """``factor * sum(w ** 2)`` (Keras' convention: no 1/2)."""

    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


def l1(factor=0.01):
    """``factor * sum(|w|)``."""
    return L1(factor)


def l2(factor=0.01):
    """``factor * sum(w ** 2)``."""
    return L2(factor)


def l1_l2(l1=0.01, l2=0.01):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``."""
    return L1L2(l1=l1, l2=l2)


REGULARIZERS = {"l1": L1, "l2": L2, "l1_l2": L1L2, "L1": L1, "L2": L2, "L1L2": L1L2}


def get(identifier):
    """A regularizer from None, a name (``'l1'``, ``'l2'``, ``'l1_l2'``), a config dict or a callable."""
    if identifier is None or callable(identifier):
        return identifier
    if isinstance(identifier, str):
        if identifier not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {identifier!r}; valid names: l1, l2, l1_l2")
        return REGULARIZERS[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in REGULARIZERS:
        return REGULARIZERS[identifier["class_name"]](**identifier.get("config", {}))
    raise TypeError(f"regularizer must be None, a name, a config dict or a callable, got {identifier!r}")


def serialize(regularizer):
    """The config dict of a built-in regularizer, None for None or a custom callable."""
    if isinstance(regularizer, L1L2):
        return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}
    return None
