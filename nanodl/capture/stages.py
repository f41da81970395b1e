"""What a captured program is made of: a stage per layer, a loss stage, the optimizer's
one-call update (``FlatUpdate``) and the ``_Program`` that runs them.
"""
import sys
import weakref

import numpy as np

from .. import autograd
from ..backend import array_module, threads
from ..backend.activations import OUTPUT_GRAD_ACTIVATIONS
from ..optim.optimizers import Optimizer
from ..tensor import Tensor

__all__ = ["DenseStage", "BufferedDenseStage", "EngineStage", "SoftmaxXentLoss", "EngineLoss",
           "FlatUpdate"]


def _leaf(data, requires_grad=False):
    """A leaf Tensor around ``data`` itself: no copy, no checks (the data is ours)."""
    tensor = Tensor.__new__(Tensor)
    tensor.data, tensor.grad, tensor.grad_fn, tensor.name = data, None, None, None
    tensor.requires_grad = requires_grad
    return tensor


# ---------------------------------------------------------------- stages
class DenseStage:
    """A ``Dense`` layer from the kernel table's compute functions: no node, no checks."""

    def __init__(self, layer, activation, alpha, need_x, table):
        self.layer, self.kernel, self.bias = layer, layer.kernel, layer.bias
        self.activation, self.alpha, self.need_x = activation, alpha, need_x
        self.need_kernel = self.kernel.requires_grad
        self.need_bias = self.bias is not None and self.bias.requires_grad
        self.requires_grad = need_x or self.need_kernel or self.need_bias  # of the output
        self.forward_kernel = table.compute.linear_forward
        self.backward_kernel = table.compute.linear_backward
        self.x = self.saved = None

    def forward(self, x):
        kernel = self.kernel.data
        bias = None if self.bias is None else self.bias.data
        with threads.gemm(x.shape[0], kernel.shape[0], kernel.shape[1]):
            out, saved = self.forward_kernel(x, kernel, bias, self.activation, self.alpha)
        if self.requires_grad:
            self.x, self.saved = x, saved
        return out

    def backward(self, grad):
        kernel = self.kernel.data
        with threads.gemm(self.x.shape[0], kernel.shape[0], kernel.shape[1]):
            dx, dkernel, dbias = self.backward_kernel(
                self.x, kernel, self.saved, grad, self.activation, self.alpha,
                self.need_x, self.need_kernel, self.need_bias)
        if self.need_kernel:
            self.kernel.grad = dkernel
        if self.need_bias:
            self.bias.grad = dbias
        self.x = self.saved = None  # freed after backward, as the engine does
        return dx

    def unchanged(self):
        """Whether the layer still holds the parameters this stage was built with."""
        return self.layer.kernel is self.kernel and self.layer.bias is self.bias


class BufferedDenseStage(DenseStage):
    """A ``DenseStage`` through ``table.buffered``: every step overwrites the same arrays,
    the gradients included (as PyTorch's ``.grad``)."""

    def __init__(self, layer, activation, alpha, need_x, table, rows):
        super().__init__(layer, activation, alpha, need_x, table)
        self.forward_kernel = table.buffered.linear_forward_into
        self.backward_kernel = table.buffered.linear_backward_into
        kernel = self.kernel.data
        dtype, (inputs, units) = kernel.dtype, kernel.shape
        self.z = np.empty((rows, units), dtype)
        in_place = activation in OUTPUT_GRAD_ACTIVATIONS  # out is z itself, as the table's
        self.out = self.z if in_place else np.empty((rows, units), dtype)
        self.dz = None if activation == "linear" else np.empty((rows, units), dtype)
        self.dx = np.empty((rows, inputs), dtype) if need_x else None
        self.dkernel = np.empty((inputs, units), dtype) if self.need_kernel else None
        self.dbias = np.empty(units, dtype) if self.need_bias else None
        serial = rows * inputs * units <= threads.GEMM_SERIAL_ANYWAY  # no scope needed
        self.scope = (lambda: threads.UNCHANGED) if serial else \
            (lambda: threads.gemm(rows, inputs, units))

    def forward(self, x):
        bias = None if self.bias is None else self.bias.data
        with self.scope():
            self.forward_kernel(x, self.kernel.data, bias, self.activation, self.alpha,
                                self.z, self.out)
        if self.requires_grad:
            self.x = x
        return self.out

    def backward(self, grad):
        with self.scope():
            self.backward_kernel(self.x, self.kernel.data, self.z, grad, self.activation,
                                 self.alpha, self.dz, self.dx, self.dkernel, self.dbias)
        if self.need_kernel:
            self.kernel.grad = self.dkernel
        if self.need_bias:
            self.bias.grad = self.dbias
        self.x = None
        return self.dx


class EngineStage:
    """Any function of one Tensor (a layer, a model's forward) through the engine."""

    def __init__(self, function, need_x):
        self.function, self.need_x = function, need_x
        self.x = self.out = None

    def forward(self, x):
        self.x = _leaf(x, self.need_x)
        self.out = self.function(self.x)
        return self.out.data

    def backward(self, grad):
        x, out = self.x, self.out
        self.x = self.out = None
        if out is x:  # the layer handed its input back (Flatten of a 2-D batch)
            return grad
        if out.grad_fn is not None:
            autograd.backward(out, grad)
        return x.grad

    def unchanged(self):
        return True


class SoftmaxXentLoss:
    """The fused softmax cross-entropy, mean over the batch, without node or checks; unless
    ``labels_checked`` (``fit`` checked them once), a bad label raises the checked kernel's error."""

    def __init__(self, table, logits, labels_checked):
        self.table = table
        self.forward_kernel = table.compute.softmax_xent_forward
        self.backward_kernel = table.compute.softmax_xent_backward
        self.scan_labels = None if labels_checked else table.device.scan_labels
        xp, rows = array_module(logits), len(logits)
        self.rows = max(rows, 1)
        # d(mean)/d(loss_i), as the op's backward computes it (the same every step)
        self.row_grad = xp.empty(rows, dtype=logits.dtype)
        self.row_grad[...] = xp.ones((), dtype=logits.dtype) / self.rows

    def __call__(self, logits, target, weight):
        if self.scan_labels is not None and target.ndim == 1:
            target, bad = self.scan_labels(target, logits.shape[1])
            if bad >= 0:
                self.table.softmax_xent_forward(logits, target)  # raises the table's error
        losses, probs = self.forward_kernel(logits, target)
        loss = losses.sum() / self.rows  # as the op computes it: a 0-d array on the GPU
        if type(loss) is not type(losses):
            loss = np.asarray(loss)  # NumPy gives a scalar: the 0-d array run() returns
        return loss, self.backward_kernel(probs, target, self.row_grad)


class EngineLoss:
    """Any loss ``loss_fn(out, target, weight) -> scalar Tensor``, through the engine."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def __call__(self, out, target, weight):
        leaf = _leaf(out, True)
        loss = self.loss_fn(leaf, target, weight)
        if loss.grad_fn is not None:
            autograd.backward(loss, array_module(loss.data).ones_like(loss.data))  # d(loss)/d(loss)
        return loss.data, leaf.grad


class FlatUpdate:
    """The optimizer's update as *one* kernel call over every parameter laid end to end
    (``.data``, state and ``.grad`` become views); see docs/capture.md, section 6."""

    def __init__(self, optimizer, params):
        self.optimizer, self.params, self.states = optimizer, params, optimizer._state
        ends = np.cumsum([p.data.size for p in params])
        self.segments = list(zip(ends - [p.data.size for p in params], ends))
        dtype = params[0].data.dtype
        self.data, self.grad = np.empty(ends[-1], dtype), np.empty(ends[-1], dtype)
        slots = [name for name in self.states[0] if name != "step"]
        self.state = {"step": self.states[0]["step"]}
        for name in slots:
            self.state[name] = np.empty(ends[-1], dtype)
        self.views = []  # (holder, key, weakref to the view): what must still be in place
        for param, state, segment in zip(params, self.states, self.segments):
            self._move(param, "data", self.data, segment)
            for name in slots:
                self._move(state, name, self.state[name], segment)

    def _move(self, holder, key, flat, segment):
        value = holder[key] if type(holder) is dict else getattr(holder, key)
        view = flat[segment[0]:segment[1]].reshape(value.shape)
        view[...] = value
        if type(holder) is dict:
            holder[key] = view
        else:
            setattr(holder, key, view)
        self.views.append((holder, key, weakref.ref(view)))  # weak: see build()

    @staticmethod
    def covers(params, stages):
        """Whether the stages write the gradients of exactly ``params``, into buffers."""
        owned = set()
        for stage in stages:
            if isinstance(stage, BufferedDenseStage):
                owned.update(id(p) for p, needed in ((stage.kernel, stage.need_kernel),
                                                     (stage.bias, stage.need_bias)) if needed)
        return len(owned) == len(params) and all(id(p) in owned for p in params)

    @classmethod
    def build(cls, optimizer, stages):
        """A FlatUpdate for these stages, or None where it does not apply (see above)."""
        params, states = optimizer._params, optimizer._state
        if type(optimizer).step is not Optimizer.step or "step" in vars(optimizer) or \
                "_update" in vars(optimizer) or not states or \
                len(states) != len(params) or not cls.covers(params, stages) or \
                len({state["step"] for state in states}) != 1 or \
                len({p.data.dtype for p in params}) != 1:
            return None
        arrays = [p.data for p in params]
        arrays += [value for state in states for value in state.values()
                   if isinstance(value, np.ndarray)]
        # held by its parameter or state dict alone (+ arrays, the loop, getrefcount's argument)?
        if any(sys.getrefcount(array) > 4 for array in arrays):
            return None
        del arrays
        return cls(optimizer, params)

    def adopt(self, stages):
        """Point the stages' gradient buffers at their segments of the flat gradient."""
        where = {id(param): segment for param, segment in zip(self.params, self.segments)}
        for stage in stages:
            if isinstance(stage, BufferedDenseStage):
                if stage.need_kernel:
                    stage.dkernel = self._segment(where[id(stage.kernel)], stage.dkernel.shape)
                if stage.need_bias:
                    stage.dbias = self._segment(where[id(stage.bias)], stage.dbias.shape)

    def _segment(self, segment, shape):
        return self.grad[segment[0]:segment[1]].reshape(shape)

    def intact(self):
        """Whether every parameter, state array and state list is still the flat one."""
        if self.optimizer._state is not self.states or self.optimizer._params is not self.params:
            return False
        for holder, key, view in self.views:
            if (holder[key] if type(holder) is dict else getattr(holder, key)) is not view():
                return False
        return True

    def step(self):
        """``optimizer.step()`` for a program whose stages filled every gradient."""
        optimizer = self.optimizer
        optimizer.step_count += 1
        for state in self.states:
            state["step"] += 1
        self.state["step"] = self.states[0]["step"]
        optimizer._update(self.data, self.grad, self.state)


def _layout(states):
    """How many slots each parameter's optimizer state holds."""
    return None if states is None else list(map(len, states))


class _Program:
    """What one signature replays: stages, loss, parameters, optimizer."""

    def __init__(self, stages, loss, params, optimizer, compute, flat=None):
        self.stages, self.loss, self.params = stages, loss, params
        self.optimizer, self.compute, self.flat = optimizer, compute, flat
        self.states = optimizer._state
        self.layout = _layout(self.states)

    def intact(self):
        """Whether the layers, the optimizer's state layout and the flat layout are the capture's."""
        for stage in self.stages:
            if not stage.unchanged():
                return False
        states = self.optimizer._state
        if states is not self.states or _layout(states) != self.layout:
            return False
        return self.flat is None or self.flat.intact()

    def run(self, x, target, weight):
        for param in self.params:
            param.grad = None
        out = x
        for stage in self.stages:                     # 1. forward
            out = stage.forward(out)
        loss, grad = self.loss(out, target, weight)   # 2. loss, and d(loss)/d(out)
        for stage in reversed(self.stages):           # 3. backward
            if grad is None:
                break
            grad = stage.backward(grad)
        optimizer = self.optimizer                    # 4. optimizer step, unchecked kernels
        optimizer._kernels = self._compute_table
        try:
            if self.flat is not None:
                self.flat.step()
            else:
                optimizer.step()
        finally:
            del optimizer._kernels
        return loss, out

    def _compute_table(self, data):
        return self.compute


class _Like:
    """The ndim and dtype of what a layer no hook saw returned (the fused head's ``pre_activation``)."""

    def __init__(self, received, layer):
        kernel = getattr(layer, "kernel", None)
        self.ndim = getattr(received, "ndim", None)
        self.dtype = kernel.dtype if kernel is not None else getattr(received, "dtype", None)
