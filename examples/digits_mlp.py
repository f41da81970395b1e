"""Handwritten digits (8x8 pixels, shipped with nanodl) classified by an MLP.

Shows the Keras-style workflow: compile, fit with a validation split and callbacks,
evaluate on held-out data, predict, and save/load the model.

Run: python examples/digits_mlp.py
"""
import os
import tempfile

import numpy as np

import nanodl as nd
from nanodl import callbacks, data, datasets, nn

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast

nd.manual_seed(0)
x, y = datasets.load_digits()  # x: (1797, 64) float32 in [0, 1], y: labels 0..9
x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, stratify=y,
                                                         random_state=0)

model = nn.Sequential([
    nn.Dense(128, activation="relu", input_dim=64),
    nn.Dropout(0.1),
    nn.Dense(64, activation="relu"),
    nn.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()

stop_early = callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
history = model.fit(x_train, y_train, batch_size=32, epochs=3 if QUICK else 30,
                    validation_split=0.1, callbacks=[stop_early], verbose=2)

test_loss, test_accuracy = model.evaluate(x_test, y_test)
print(f"test accuracy: {test_accuracy:.4f} after {len(history.epoch)} epochs")

probabilities = model.predict(x_test[:8])
print("predicted:", probabilities.argmax(axis=1).tolist())
print("actual:   ", y_test[:8].tolist())

with tempfile.TemporaryDirectory() as folder:  # save and load back: same predictions
    path = os.path.join(folder, "digits.npz")
    model.save(path)
    restored = nd.load_model(path)
    assert np.allclose(restored.predict(x_test[:8]), probabilities, atol=1e-6)
    print(f"saved and reloaded {path}: predictions match")
