"""Watch each layer's activations while a network learns, with forward hooks.

``module.register_forward_hook(hook)`` calls ``hook(module, inputs, output)`` after
every forward of that module. A small callback registers one hook per hidden layer
when training starts, gathers what the layers output during each epoch, prints
their distribution at the epoch's end, and removes the hooks when training ends.

Two symptoms are counted:
* dead ReLUs: units whose output was 0 for every sample of the epoch (they get no
  gradient, so they never come back);
* saturated tanh: outputs with |a| > 0.99, where tanh's slope is below 0.02.

The same network is trained twice on the digits: with a sensible learning rate, and
with one far too large, which kills ReLUs and pins tanh units at +-1.

Run: python examples/activation_stats.py
"""
import os

import numpy as np

import nanodl as nd
from nanodl import callbacks, datasets, nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast


class ActivationStats(callbacks.Callback):
    """Prints, per epoch, the distribution of every hidden Dense layer's outputs."""

    def __init__(self, every=1):
        super().__init__()
        self.every = every
        self.handles = []

    def on_train_begin(self, logs=None):
        layers = [layer for layer in self.model.layers[:-1] if isinstance(layer, nn.Dense)]
        self.names = {id(layer): f"{index}:{layer.activation}" for index, layer in enumerate(layers)}
        self.handles = [layer.register_forward_hook(self.record) for layer in layers]

    def on_epoch_begin(self, epoch, logs=None):
        self.outputs = {name: [] for name in self.names.values()}

    def record(self, module, inputs, output):
        if module.training:  # skip the evaluation passes
            self.outputs[self.names[id(module)]].append(output.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        print(f"epoch {epoch + 1}: loss {logs['loss']:.3f}")
        for name, batches in self.outputs.items():
            values = np.concatenate(batches)
            low, median, high = np.percentile(values, [5, 50, 95])
            line = f"  layer {name:<7} 5%/50%/95%: {low:+.2f} {median:+.2f} {high:+.2f}"
            if name.endswith("relu"):
                dead = float((values.max(axis=0) <= 0).mean())
                line += f"  dead units: {dead:.0%}"
            elif name.endswith("tanh"):
                saturated = float((np.abs(values) > 0.99).mean())
                line += f"  saturated: {saturated:.0%}"
            print(line)

    def on_train_end(self, logs=None):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def run(learning_rate, epochs):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(64, activation="relu", input_dim=64),
                           nn.Dense(64, activation="relu"),
                           nn.Dense(32, activation="tanh"),
                           nn.Dense(10, activation="softmax")])
    model.compile(optimizer=optim.SGD(lr=learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stats = ActivationStats(every=max(epochs // 3, 1))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[stats])
    accuracy = model.evaluate(x, y)[1]
    assert all(not layer.__dict__.get("_forward_hooks") for layer in model.layers)  # all removed
    return accuracy


x, y = datasets.load_digits()
x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
epochs = 3 if QUICK else 9
for learning_rate in (0.05, 3.0):
    print(f"--- SGD, learning rate {learning_rate}")
    accuracy = run(learning_rate, epochs)
    print(f"training accuracy: {accuracy:.3f}")
