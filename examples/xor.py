"""XOR: the classic problem a single linear layer cannot solve, learnt by a tiny MLP.

Run: python examples/xor.py
"""
import os

import nanodl as nd
from nanodl import datasets, nn

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast

nd.manual_seed(0)
x, y = datasets.make_xor(n_samples=400, seed=0)  # points in [-1, 1]^2, label: signs differ
y = y.reshape(-1, 1).astype("float32")            # one sigmoid output -> targets of shape (N, 1)

model = nn.Sequential([
    nn.Dense(16, activation="tanh", input_dim=2),
    nn.Dense(1, activation="sigmoid"),
])
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.summary()

history = model.fit(x, y, batch_size=16, epochs=20 if QUICK else 100, verbose=0)
print(f"final loss {history.history['loss'][-1]:.4f}, "
      f"training accuracy {history.history['accuracy'][-1]:.3f}")

corners = [[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]]
for point, probability in zip(corners, model.predict(corners)[:, 0]):
    print(f"  {point} -> P(signs differ) = {probability:.3f}")
