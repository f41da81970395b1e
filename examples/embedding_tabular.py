"""A categorical column learned with ``nn.Embedding``, next to the same column as a number.

A small table: two numeric columns (the two moons) and one categorical column, the
``store`` (12 stores) where each sample was recorded. In half of the stores the label
is flipped, and which half is arbitrary: the store's number says nothing by its size.
An ``Embedding`` gives every store its own learned vector, so the network can tell
the stores apart; fed as a single number the store is much harder to use.

The model keeps every column in one float matrix and casts the categorical column
to integers in ``forward``, the usual way to mix numeric and categorical inputs.

Run: python examples/embedding_tabular.py
"""
import os

import numpy as np

import nanodl as nd
from nanodl import data, datasets, nn, optim

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast
N_STORES = 12


def make_table(n_samples, seed):
    """``x`` = [moon_x, moon_y, store], ``y`` = the moon's label, flipped in some stores."""
    points, labels = datasets.make_moons(n_samples, noise=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    store = rng.integers(0, N_STORES, size=n_samples)
    flipped_stores = np.array([1, 2, 4, 7, 8, 11])  # no pattern in the numbers on purpose
    labels = np.where(np.isin(store, flipped_stores), 1 - labels, labels)
    table = np.column_stack([points, store]).astype(np.float32)
    return table, labels


class TabularModel(nn.Model):
    """Numeric columns and an embedded categorical column, joined, then an MLP."""

    def __init__(self, n_numeric, n_categories, embedding_dim=4, width=32):
        super().__init__()
        self.store = nn.Embedding(n_categories, embedding_dim)
        self.hidden = nn.Dense(width, activation="relu", input_dim=n_numeric + embedding_dim)
        self.hidden2 = nn.Dense(width, activation="relu", input_dim=width)
        self.out = nn.Dense(2, activation="softmax", input_dim=width)

    def forward(self, x):
        numeric = x[:, :-1]
        codes = x[:, -1].astype("int64")  # the store column, back to integer indices
        joined = nd.concatenate([numeric, self.store(codes)], axis=1)
        return self.out(self.hidden2(self.hidden(joined)))


def plain_mlp(n_inputs, width=32):
    """The baseline: the store number is just one more numeric input (scaled to [0, 1])."""
    return nn.Sequential([nn.Dense(width, activation="relu", input_dim=n_inputs),
                          nn.Dense(width, activation="relu"), nn.Dense(2, activation="softmax")])


def train(model, x_train, y_train, x_test, y_test, epochs):
    model.compile(optimizer=optim.Adam(lr=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    return model.evaluate(x_test, y_test)[1]


nd.manual_seed(0)
x, y = make_table(1200 if QUICK else 3000, seed=0)
x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, stratify=y,
                                                         random_state=0)
epochs = 25 if QUICK else 60

embedded = TabularModel(n_numeric=2, n_categories=N_STORES)
embedded_accuracy = train(embedded, x_train, y_train, x_test, y_test, epochs)

scaled = np.array([1, 1, 1.0 / (N_STORES - 1)], dtype=np.float32)
baseline_accuracy = train(plain_mlp(3), x_train * scaled, y_train, x_test * scaled, y_test, epochs)

print(f"stores: {N_STORES}, training rows: {len(x_train)}, test rows: {len(x_test)}")
print(f"test accuracy with the store as a number: {baseline_accuracy:.3f}")
print(f"test accuracy with the embedding: {embedded_accuracy:.3f}")
table = embedded.store.embeddings.numpy()
print(f"learned store vectors: {table.shape}; the two groups of stores sit apart:")
for group, stores in (("flipped", [1, 2, 4, 7, 8, 11]), ("kept", [0, 3, 5, 6, 9, 10])):
    mean = ", ".join(f"{value:+.2f}" for value in table[stores].mean(axis=0))
    print(f"  {group:>7} stores, mean vector [{mean}]")
