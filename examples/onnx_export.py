"""Ship a trained model to ONNX and check that onnxruntime computes the same numbers.

Trains a digits classifier (Dense, BatchNorm, Dropout, LayerNorm, softmax), saves it,
loads it back, exports the loaded model with ``nanodl.onnx.export``, checks the file
with ``onnx.checker`` and runs it with onnxruntime. Then it measures, for every layer
type on its own, the largest relative difference between onnxruntime and
``model.predict`` (float32; elements with |value| >= 1e-3, where a relative error is
meaningful) and the largest absolute one.

Needs the onnx extra (``pip install 'nanodl[onnx]'``); without it the script says so
and exits.

Run: python examples/onnx_export.py
"""
import os
import tempfile

import numpy as np

import nanodl as nd
from nanodl import data, datasets, nn

QUICK = os.environ.get("NANODL_EXAMPLE_QUICK") == "1"  # the test suite sets it to run fast

try:
    import onnx
    import onnxruntime
except ImportError:
    print("this example needs onnx and onnxruntime: pip install 'nanodl[onnx]'")
    raise SystemExit(0)


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def errors(expected, got):
    """(largest relative error where |expected| >= 1e-3, largest absolute error)."""
    meaningful = np.abs(expected) >= 1e-3
    relative = np.abs(got - expected)[meaningful] / np.abs(expected)[meaningful]
    return float(relative.max(initial=0.0)), float(np.abs(got - expected).max())


folder = tempfile.mkdtemp()
nd.manual_seed(0)
x, y = datasets.load_digits()
x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
model = nn.Sequential([nn.Dense(64, activation="relu", input_dim=64), nn.BatchNorm(), nn.Dropout(0.1),
                       nn.Dense(32, activation="gelu"), nn.LayerNorm(), nn.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=3 if QUICK else 20, verbose=0)

model.save(os.path.join(folder, "digits.npz"))
loaded = nd.load_model(os.path.join(folder, "digits.npz"))
path = os.path.join(folder, "digits.onnx")
proto = nd.onnx.export(loaded, path)
onnx.checker.check_model(onnx.load(path), full_check=True)
print(f"exported {len(proto.graph.node)} ONNX nodes, opset {proto.opset_import[0].version}, "
      f"{os.path.getsize(path):,} bytes")

probabilities = run_onnx(path, x_test)
relative, absolute = errors(model.predict(x_test), probabilities)
accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
print(f"onnxruntime test accuracy {accuracy:.4f}, nanodl {model.evaluate(x_test, y_test)[1]:.4f}; "
      f"max relative error {relative:.1e}, max absolute error {absolute:.1e}")

# One layer type at a time, on its own (a Dense for the activations of Dense), so each line
# shows that layer's own error; BatchNorm after a training pass, so its running statistics
# are not 0 and 1.
cases = {f"Dense({name})": nn.Dense(32, activation=name, input_dim=16, bias_initializer="normal")
         for name in nd.functional.ACTIVATIONS}
cases.update({type(layer).__name__: layer for layer in
              (nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.Softmax(),
               nn.Dropout(0.3), nn.BatchNorm(momentum=0.5), nn.LayerNorm(), nn.Flatten())})
cases.update({f"Activation({name!r})": nn.Activation(name) for name in ("elu", "softplus")})
rng = np.random.default_rng(0)
print(f"{'layer':<22}{'max rel. error':>16}{'max abs. error':>16}")
case_path = os.path.join(folder, "case.onnx")
for name, layer in cases.items():
    nd.manual_seed(1)
    case = nn.Sequential([layer]).build((None, 4, 4) if name == "Flatten" else (None, 16))
    sample = (3 * rng.standard_normal((256,) + case._input_shape) + 1).astype(np.float32)
    if name == "BatchNorm":
        with case._mode(True):
            case(sample)  # one training pass moves the running statistics
    nd.onnx.export(case, case_path)
    relative, absolute = errors(case.predict(sample), run_onnx(case_path, sample))
    print(f"{name:<22}{relative:>16.1e}{absolute:>16.1e}")

embedding = nn.Sequential([nn.Embedding(50, 8), nn.Flatten(), nn.Dense(4)]).build((None, 3))
indices = rng.integers(0, 50, size=(256, 3))
nd.onnx.export(embedding, case_path)
relative, absolute = errors(embedding.predict(indices), run_onnx(case_path, indices))
print(f"{'Embedding (Gather)':<22}{relative:>16.1e}{absolute:>16.1e}")

for name in os.listdir(folder):
    os.remove(os.path.join(folder, name))
os.rmdir(folder)
