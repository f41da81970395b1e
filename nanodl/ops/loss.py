"""Fused softmax + cross-entropy: one stable node (the other losses compose ops)."""
import numpy as np

from ..autograd import Function
from ..backend import device_of, kernels, to_device


class SoftmaxCrossEntropy(Function):
    """Per-sample ``-sum(target * log_softmax(logits))`` over the last axis.

    ``target`` is a plain array: integer classes of shape (N,) or a (N, C)
    distribution; it is not differentiated.
    """

    def forward(self, logits, target=None):
        on_gpu = hasattr(target, "__cuda_array_interface__")
        if on_gpu != (device_of(logits) == "cuda"):  # class labels follow the logits' device
            target = to_device(target if on_gpu else np.asarray(target), device_of(logits))
        loss, probs = kernels(logits).softmax_xent_forward(logits, target)
        self.save_for_backward(probs, target)
        return loss

    def backward(self, grad):
        probs, target = self.saved_tensors
        return kernels(probs).softmax_xent_backward(probs, target, grad)
