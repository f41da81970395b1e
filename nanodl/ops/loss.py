"""Fused softmax + cross-entropy: one stable node (the other losses compose ops)."""
import numpy as np

from ..autograd import Function
from ..backend import array_module, device_of, is_device_array, kernels, to_device
from .activation import Softmax
from .elementwise import constant

REDUCTIONS = ("none", "mean", "sum")


class SoftmaxCrossEntropy(Function):
    """``-sum(target * log_softmax(logits))`` over the last axis of (N, C) logits.
    ``target`` (not differentiated): (N,) classes or a (N, C) distribution."""

    def forward(self, logits, target=None, reduction="none"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"softmax_cross_entropy: unknown reduction {reduction!r}; "
                             f"valid: {', '.join(REDUCTIONS)}")
        on_gpu = is_device_array(target)
        if on_gpu != (device_of(logits) == "cuda"):  # class labels follow the logits' device
            target = to_device(target if on_gpu else np.asarray(target), device_of(logits))
        loss, probs = kernels(logits).softmax_xent_forward(logits, target)
        self.save_for_backward(probs, target)
        self.reduction = reduction
        if reduction == "none":
            return loss
        total = loss.sum()
        return total / max(len(loss), 1) if reduction == "mean" else total

    def backward(self, grad):
        probs, target = self.saved_tensors
        if self.reduction != "none":  # d(mean)/d(loss_i) = 1/N, d(sum)/d(loss_i) = 1
            scale = grad / max(len(probs), 1) if self.reduction == "mean" else grad
            grad = array_module(probs).empty(len(probs), dtype=probs.dtype)
            grad[...] = scale  # a 0-d array (maybe on the GPU) spread over the samples
        return kernels(probs).softmax_xent_backward(probs, target, grad)

    def vjp(self, grad, logits):
        """``(softmax(logits) * sum(target) - target) * grad``, with Tensor ops."""
        probs, target = self.saved_tensors
        xp = array_module(probs)
        if target.ndim == 1:
            target = xp.eye(probs.shape[1], dtype=probs.dtype)[target]
        target = constant(target, logits)
        dlogits = Softmax.apply(logits, axis=-1) * target.sum(axis=1, keepdims=True) - target
        if self.reduction == "none":
            return dlogits * grad.expand_dims(-1)
        return dlogits * (grad / max(len(probs), 1) if self.reduction == "mean" else grad)
