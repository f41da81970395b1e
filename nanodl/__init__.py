"""nanodl: a small neural-network engine, written to be read.

>>> import nanodl as nd
>>> x = nd.tensor([[1.0, 2.0]], requires_grad=True)
>>> y = (x * x).sum()
>>> y.backward()
>>> x.grad.tolist()
[[2.0, 4.0]]
"""
__version__ = "0.1.0"

from . import backend
from .autograd import Function, enable_grad, is_grad_enabled, no_grad
from .autograd.higher import grad
from .backend import cuda_available
from .creation import arange, eye, from_numpy, full, ones, ones_like, rand, randn, zeros, zeros_like
from .ops import (abs, clip, concatenate, exp, expand_dims, leaky_relu, log, log_softmax, logsumexp,
                  max, maximum, mean, min, minimum, relu, reshape, sigmoid, softmax, sqrt, squeeze,
                  stack, sum, tanh, transpose, var, where)
from .ops import cos, cumsum, einsum, erf, expm1, log1p, norm, prod, sin, std
from .random import manual_seed
from .tensor import Tensor, get_default_dtype, set_default_dtype, tensor
from . import functional
from .io import load, load_model, save
from . import callbacks, data, datasets, losses, nn, optim, regularizers
from .anomaly import detect_anomaly
from .diagnostics.profiler import profile
from .diagnostics.diagnose import Diagnosis, diagnose
from .capture import CapturedStep
from . import viz


def __getattr__(name):
    """``nanodl.onnx`` and ``nanodl.sklearn`` load on first use: their packages are optional."""
    if name in ("onnx", "sklearn"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
