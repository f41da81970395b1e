"""Catch a wrong backward with nanodl.gradcheck, find it with locate, fix it.

A custom op, ``Swish(x) = x * sigmoid(x)``, with a subtly wrong derivative: it
forgets the product rule's second term. Training with it would still "work" (the
loss goes down, a bit slower), which is what makes such bugs expensive.

    python examples/gradient_checking.py
"""
import numpy as np

import nanodl as nd
from nanodl.gradcheck import GradcheckError, gradcheck, locate, report


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class BadSwish(nd.Function):
    def forward(self, x):
        self.save_for_backward(x)
        return x * sigmoid(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return grad * sigmoid(x)            # wrong: d/dx x·s(x) = s(x) + x·s(x)(1 - s(x))


class Swish(BadSwish):
    def backward(self, grad):
        (x,) = self.saved_tensors
        s = sigmoid(x)
        return grad * (s + x * s * (1 - s))


def network(swish):
    """A small two-layer net using the op, as a function of its input and weights."""
    def run(x, w1, w2):
        hidden = swish.apply(x @ w1)
        return (hidden @ w2).tanh().mean(axis=0)
    return run


def main():
    rng = np.random.default_rng(0)
    x = nd.Tensor(rng.standard_normal((8, 5)))                 # float64: gradcheck wants it
    w1 = nd.Tensor(rng.standard_normal((5, 6)), requires_grad=True)
    w2 = nd.Tensor(rng.standard_normal((6, 3)), requires_grad=True)
    w1.name, w2.name = "w1", "w2"

    print("1. gradcheck on the net with BadSwish:")
    try:
        gradcheck(network(BadSwish), x, w1, w2)
    except GradcheckError as error:
        print(error)

    print("\n2. locate: which op's backward is wrong?")
    culprit = locate(network(BadSwish), x, w1, w2)
    print(f"   -> {culprit.name} (op {culprit.position + 1} of {culprit.total} in forward order)")

    print("\n3. with the product rule fixed:")
    print(report(network(Swish), x, w1, w2))
    assert gradcheck(network(Swish), x, w1, w2) and locate(network(Swish), x, w1, w2) is None
    print("fixed: gradcheck passes and locate finds nothing")


if __name__ == "__main__":
    main()
