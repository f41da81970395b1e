"""Fused softmax + cross-entropy: one stable node (the other losses compose ops)."""
from ..autograd import Function
from ..backend import kernels


class SoftmaxCrossEntropy(Function):
    """Per-sample ``-sum(target * log_softmax(logits))`` over the last axis.

    ``target`` is a plain array: integer classes of shape (N,) or a (N, C)
    distribution; it is not differentiated.
    """

    def forward(self, logits, target=None):
        loss, probs = kernels(logits).softmax_xent_forward(logits, target)
        self.save_for_backward(probs, target)
        return loss

    def backward(self, grad):
        probs, target = self.saved_tensors
        return kernels(probs).softmax_xent_backward(probs, target, grad)
