"""Bad calls get a clear exception: the right type, naming the op or function and the
offending value (issue 9, item 9). Found by trying bad calls over the public API."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

import nanodl as nd
from nanodl import callbacks, data, losses, nn, optim

x23 = nd.ones((2, 3))
probs = nd.tensor([[0.2, 0.8], [0.6, 0.4]])


def sgd():
    return optim.SGD([SimpleNamespace(data=np.zeros(1), grad=None)], lr=0.1)


def fit(x, y, **options):
    model = nn.Sequential([nn.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model.fit(x, y, verbose=0, **options)


BAD_CALLS = {
    # indexing, shapes, bounds, dtypes: NumPy's own errors, with the op and the shapes
    "getitem float index": (lambda: x23[1.5], IndexError, r"getitem: index 1\.5 .* shape \(2, 3\)"),
    "getitem out of range": (lambda: x23[5], IndexError, r"getitem: index 5 .* shape \(2, 3\).*bounds"),
    "reshape to a str": (lambda: x23.reshape("a"), TypeError, r"reshape: a shape is integers.*'a'"),
    "clip bound str": (lambda: x23.clip("a", 1), TypeError, r"clip: lo must be a real number.*str 'a'"),
    "optimizer without an update": (lambda: type("Bare", (optim.Optimizer,), {})(
        [SimpleNamespace(data=np.zeros(1), grad=np.ones(1))]).step(), NotImplementedError,
        r"Bare: define _update\(data, grad, state\).* or step\(\)"),
    "where shapes": (lambda: nd.where(np.ones((2, 2), bool), x23, x23), ValueError,
                     r"where: cond \(2, 2\), a \(2, 3\) and b \(2, 3\) do not broadcast"),
    "tensor unknown dtype": (lambda: nd.tensor([1.0], dtype="float99"), TypeError,
                             r"tensor: 'float99' is not a dtype"),
    # tensors hold numbers
    "tensor of str": (lambda: nd.tensor([1.0, "a"]), TypeError, r"tensor: .*dtype <U"),
    "tensor of bytes": (lambda: nd.tensor(b"abc"), TypeError, r"tensor: .*dtype \|S3"),
    "tensor of objects": (lambda: nd.tensor(np.array([None])), TypeError, r"tensor: .*dtype object"),
    "Tensor of a str array": (lambda: nd.Tensor(np.array(["a"])), TypeError, r"tensor: .*dtype <U1"),
    "Parameter of str": (lambda: nn.Parameter(["a"]), TypeError, r"dtype <U1"),
    "str operand": (lambda: x23 + "a", TypeError, r"dtype <U1"),
    # axes
    "log_softmax axis 2 of 2-d": (lambda: nd.log_softmax(x23, axis=2), ValueError,
                                  r"log_softmax: axis 2 is out of range for a tensor of 2 dimensions"),
    "softmax axis -3": (lambda: x23.softmax(axis=-3), ValueError, r"softmax: axis -3 .* 2 dimensions"),
    "sum axis str": (lambda: x23.sum(axis="1"), TypeError, r"sum: axis must be an integer.*'1'"),
    "max axis bool": (lambda: x23.max(axis=True), TypeError, r"max: axis must be an integer"),
    "mean duplicate axes": (lambda: x23.mean(axis=(1, -1)), ValueError, r"mean: duplicate"),
    "stack axis 5": (lambda: nd.stack([x23, x23], axis=5), ValueError, r"stack: axis 5 .* 3 dimensions"),
    "Softmax layer axis str": (lambda: nn.Softmax("a"), TypeError, r"Softmax: axis must be an integer"),
    # creation
    "zeros negative": (lambda: nd.zeros((2, -1)), ValueError, r"zeros: shape .*\(2, -1\)"),
    "ones of str": (lambda: nd.ones("a"), TypeError, r"ones: shape .*'a'"),
    "randn float": (lambda: nd.randn(2.5), TypeError, r"randn: shape .*2\.5"),
    "rand negative": (lambda: nd.rand(-1), ValueError, r"rand: shape"),
    "eye negative": (lambda: nd.eye(-1), ValueError, r"eye: shape"),
    "full of str": (lambda: nd.full((2,), "a"), TypeError, r"full: value must be a number, got 'a'"),
    "arange of str": (lambda: nd.arange("a"), TypeError, r"arange: start .*'a'"),
    "arange step 0": (lambda: nd.arange(0, 3, 0), ValueError, r"arange: step must not be zero"),
    "zeros dtype": (lambda: nd.zeros(2, dtype="float99"), TypeError, r"zeros: unknown dtype 'float99'"),
    "manual_seed str": (lambda: nd.manual_seed("a"), ValueError, r"manual_seed: seed .*'a'"),
    "manual_seed negative": (lambda: nd.manual_seed(-1), ValueError, r"manual_seed: seed .*-1"),
    # losses
    "mse str targets": (lambda: losses.mse(probs, np.array([["a", "b"], ["c", "d"]])), TypeError,
                        r"mse: target: .*dtype <U1"),
    "sparse str targets": (lambda: losses.sparse_categorical_crossentropy(probs, ["a", "b"]),
                           TypeError, r"sparse_categorical_crossentropy: target: .*dtype <U1"),
    "bce str target": (lambda: losses.binary_crossentropy(probs, "a"), TypeError,
                       r"binary_crossentropy: target"),
    "huber delta str": (lambda: losses.huber(probs, probs, delta="a"), TypeError,
                        r"huber: delta must be a number, got 'a'"),
    "Huber delta str": (lambda: losses.Huber(delta="a"), TypeError, r"Huber: delta"),
    # layers
    "Dense on 0-d": (lambda: nn.Dense(2)(nd.tensor(1.0)), ValueError, r"Dense: .*0-d"),
    "LayerNorm on 0-d": (lambda: nn.LayerNorm()(nd.tensor(1.0)), ValueError, r"LayerNorm: .*0-d"),
    "LayerNorm features": (lambda: nn.LayerNorm(num_features=3)(nd.ones((2, 4))), ValueError,
                           r"LayerNorm: built for 3 features .*\(2, 4\)"),
    "BatchNorm features": (lambda: nn.BatchNorm(num_features=3)(nd.ones((2, 4))), ValueError,
                           r"BatchNorm: built for 3 features .*\(2, 4\)"),
    "LeakyReLU alpha str": (lambda: nn.LeakyReLU("a"), TypeError, r"LeakyReLU: alpha .*'a'"),
    "BatchNorm momentum str": (lambda: nn.BatchNorm(momentum="a"), TypeError, r"BatchNorm: momentum"),
    "BatchNorm epsilon str": (lambda: nn.BatchNorm(epsilon="a"), TypeError, r"BatchNorm: epsilon"),
    "LayerNorm epsilon inf": (lambda: nn.LayerNorm(epsilon=math.inf), ValueError, r"LayerNorm: epsilon"),
    "load_state_dict of a list": (lambda: nn.Dense(2, input_dim=2).load_state_dict([1, 2]), TypeError,
                                  r"load_state_dict: expected a dict .*list"),
    # training data
    "fit ragged x": (lambda: fit([[1.0], [1.0, 2.0]], [1.0, 2.0]), ValueError, r"^fit: x: .*ragged"),
    "fit str y": (lambda: fit(np.ones((4, 2)), ["a", "b", "c", "d"]), TypeError,
                  r"^fit: y: .*dtype <U1"),
    "fit str x": (lambda: fit(["a", "b"], [1.0, 2.0]), TypeError, r"^fit: x: .*dtype <U1"),
    "fit ragged validation": (lambda: fit(np.ones((2, 1)), [1.0, 2.0], validation_data=([[1.0], [1.0, 2.0]],
                                                                                          [1.0, 2.0])),
                              ValueError, r"^fit: validation_data: .*ragged"),
    "predict ragged x": (lambda: nn.Sequential([nn.Dense(1, input_dim=1)]).predict([[1.0], [1.0, 2.0]]),
                         ValueError, r"^predict: x: .*ragged"),
    "split ragged": (lambda: data.train_test_split([[1], [1, 2]]), ValueError,
                     r"train_test_split: array 0: .*ragged"),
    "DataLoader ragged": (lambda: data.DataLoader([[1], [1, 2]]), ValueError, r"DataLoader: x: .*ragged"),
    # optimizers
    "SGD lr inf": (lambda: optim.SGD([nn.Parameter([1.0])], lr=math.inf), ValueError,
                   r"SGD: invalid learning rate inf"),
    "Adam eps nan": (lambda: optim.Adam([nn.Parameter([1.0])], eps=math.nan), ValueError, r"Adam: .*nan"),
    "clip_grad_norm max_norm str": (lambda: optim.clip_grad_norm([nn.Parameter([1.0])], "a"), TypeError,
                                    r"clip_grad_norm: max_norm .*'a'"),
    "clip_grad_norm max_norm negative": (lambda: optim.clip_grad_norm([nn.Parameter([1.0])], -1),
                                         ValueError, r"clip_grad_norm: max_norm must be >= 0, got -1"),
    # callbacks and models
    "EarlyStopping patience str": (lambda: callbacks.EarlyStopping(patience="a"), TypeError,
                                   r"EarlyStopping: patience must be an integer, got 'a'"),
    "EarlyStopping min_delta str": (lambda: callbacks.EarlyStopping(min_delta="a"), TypeError,
                                    r"EarlyStopping: min_delta"),
    "ReduceLROnPlateau callback factor str": (lambda: callbacks.ReduceLROnPlateau(factor="a"), TypeError,
                                              r"ReduceLROnPlateau: factor"),
    "ReduceLROnPlateau callback patience inf": (lambda: callbacks.ReduceLROnPlateau(patience=math.inf),
                                                ValueError, r"ReduceLROnPlateau: patience"),
    "Sequential of an int": (lambda: nn.Sequential(3), TypeError, r"Sequential: layers must be a list"),
    # schedules
    "StepLR step_size str": (lambda: optim.lr_scheduler.StepLR(sgd(), "a"), TypeError,
                             r"StepLR: step_size must be an integer, got 'a'"),
    "StepLR step_size inf": (lambda: optim.lr_scheduler.StepLR(sgd(), math.inf), ValueError,
                             r"StepLR: step_size .*inf"),
    "StepLR gamma str": (lambda: optim.lr_scheduler.StepLR(sgd(), 2, gamma="a"), TypeError,
                         r"StepLR: gamma must be a number, got 'a'"),
    "StepLR gamma inf": (lambda: optim.lr_scheduler.StepLR(sgd(), 2, gamma=math.inf), ValueError,
                         r"StepLR: gamma must be a finite number .*inf"),
    "ExponentialLR gamma nan": (lambda: optim.lr_scheduler.ExponentialLR(sgd(), math.nan), ValueError,
                                r"ExponentialLR: gamma .*nan"),
    "CosineAnnealingLR T_max inf": (lambda: optim.lr_scheduler.CosineAnnealingLR(sgd(), math.inf),
                                    ValueError, r"CosineAnnealingLR: T_max .*inf"),
    "CosineAnnealingLR eta_min str": (lambda: optim.lr_scheduler.CosineAnnealingLR(sgd(), 5, eta_min="a"),
                                      TypeError, r"CosineAnnealingLR: eta_min"),
    "LambdaLR factor str": (lambda: optim.lr_scheduler.LambdaLR(sgd(), lambda epoch: "a"), TypeError,
                            r"LambdaLR: lr_lambda\(0\) returned 'a'"),
    "ReduceLROnPlateau factor str": (lambda: optim.lr_scheduler.ReduceLROnPlateau(sgd(), factor="a"),
                                     TypeError, r"ReduceLROnPlateau: factor .*'a'"),
    "ReduceLROnPlateau factor 2": (lambda: optim.lr_scheduler.ReduceLROnPlateau(sgd(), factor=2),
                                   ValueError, r"ReduceLROnPlateau: factor .*2"),
    "ReduceLROnPlateau patience inf": (lambda: optim.lr_scheduler.ReduceLROnPlateau(sgd(), patience=math.inf),
                                       ValueError, r"ReduceLROnPlateau: patience .*inf"),
    "ReduceLROnPlateau metric str": (lambda: optim.lr_scheduler.ReduceLROnPlateau(sgd()).step("a"),
                                     TypeError, r"ReduceLROnPlateau.step: metric .*'a'"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_call_names_the_op_and_the_value(name):
    call, error, message = BAD_CALLS[name]
    with pytest.raises(error, match=message) as caught:
        call()
    assert not isinstance(caught.value, np.exceptions.AxisError), "NumPy's AxisError leaked"


AXIS_OPS = {
    "sum": lambda t, axis: t.sum(axis=axis), "mean": lambda t, axis: t.mean(axis=axis),
    "var": lambda t, axis: t.var(axis=axis), "max": lambda t, axis: t.max(axis=axis),
    "min": lambda t, axis: t.min(axis=axis), "logsumexp": lambda t, axis: nd.logsumexp(t, axis=axis),
    "softmax": lambda t, axis: t.softmax(axis=axis), "log_softmax": lambda t, axis: t.log_softmax(axis=axis),
    "sum tuple": lambda t, axis: t.sum(axis=(0, axis)), "expand_dims": lambda t, axis: t.expand_dims(axis),
    "concatenate": lambda t, axis: nd.concatenate([t, t], axis=axis),
    "stack": lambda t, axis: nd.stack([t, t], axis=axis),
    "squeeze": lambda t, axis: t.reshape(2, 1, 3).squeeze(axis=axis),
}


@pytest.mark.parametrize("op", list(AXIS_OPS))
@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint8])
def test_numpy_integer_axes_are_accepted_everywhere(op, integer):
    values = np.arange(6.0).reshape(2, 3)
    plain = nd.tensor(values, requires_grad=True)
    numpy_axis = nd.tensor(values, requires_grad=True)
    expected, got = AXIS_OPS[op](plain, 1), AXIS_OPS[op](numpy_axis, integer(1))
    np.testing.assert_array_equal(got.data, expected.data)
    expected.sum().backward()
    got.sum().backward()
    np.testing.assert_array_equal(numpy_axis.grad, plain.grad)
