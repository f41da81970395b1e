"""A subclassed model: write ``forward`` yourself, keep Keras' compile/fit/evaluate.

The model has a residual block (``h + block(h)``), something a plain ``Sequential``
cannot express, and returns logits, so the loss is told ``from_logits=True``.

Run: python examples/subclassed_model.py
"""
import os

import nanodl as nd
from nanodl import data, datasets, losses, nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast


class ResidualMLP(nn.Model):
    def __init__(self, n_features, n_classes, width=64):
        super().__init__()
        self.embed = nn.Dense(width, activation="relu", input_dim=n_features)
        self.block = nn.Dense(width, activation="relu", input_dim=width)
        self.head = nn.Dense(n_classes, input_dim=width)  # no activation: logits

    def forward(self, x):
        h = self.embed(x)
        h = h + self.block(h)  # the residual connection
        return self.head(h)


nd.manual_seed(0)
x, y = datasets.make_spirals(n_samples=900, n_classes=3, noise=0.05, seed=0)
x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, stratify=y,
                                                         random_state=0)

model = ResidualMLP(n_features=2, n_classes=3)
model.compile(optimizer=optim.Adam(lr=0.01),
              loss=losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
history = model.fit(x_train, y_train, batch_size=32, epochs=15 if QUICK else 100, verbose=0)

print(f"parameters: {sum(p.size for p in model.parameters())}")
print(f"final training loss {history.history['loss'][-1]:.4f}")
test_loss, test_accuracy = model.evaluate(x_test, y_test)
print(f"test accuracy on three spirals: {test_accuracy:.3f}")
