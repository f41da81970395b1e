"""Worker for test_weighted.py: weighted data-parallel ``Model.fit`` on 2 ranks, and
``TerminateOnNaN`` when only one rank's batch sees the NaN.

Run as ``mpirun -n 2 python tests/mpi_scripts/fit_weighted.py OUT_DIR``. Every rank also
trains the single-process reference (batch 2 x 16 = 32, the same seed and weights).
"""
import contextlib
import io
import sys
import warnings

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import callbacks, nn, optim

from _common import write_results

rank, size = dist.rank(), dist.size()
results = {"rank": rank, "size": size}
nd.set_default_dtype("float64")

rng = np.random.default_rng(5)
x = rng.standard_normal((64, 5))               # 64 = 2 x 32: shards of 32 (16 + 16)
y = (x[:, 0] + x[:, 1] > 0.5).astype(np.int64) + (x[:, 2] > 1)
w = rng.uniform(0.2, 3.0, 64)
x_val, y_val, w_val = x[:21] + 0.1, y[:21], w[:21]


def build():
    nd.manual_seed(21)
    return nn.Sequential([nn.Dense(8, activation="tanh", input_dim=5), nn.Dense(3, activation="softmax")])


def train(optimizer, batch_size, **options):
    model = build()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=batch_size, epochs=4, verbose=0,
                        validation_data=(x_val, y_val, w_val), **options).history
    return np.concatenate([v.ravel() for v in model.get_weights()]), history


weighting = {"sample_weight": w, "class_weight": {0: 0.5, 2: 3.0}}
expected_weights, expected = train(optim.Adam(lr=0.02), 16 * size, **weighting)
weights, history = train(dist.DistributedOptimizer(optim.Adam(lr=0.02)), 16, **weighting)
results["parameter_error"] = float(np.abs(weights - expected_weights).max())
results["history_error"] = max(float(np.abs(np.subtract(history[k], expected[k])).max()) for k in expected)
results["history"] = history

# A NaN target in rank 1's first batch only (shuffle=False: rank 1 takes samples 1, 3, 5...):
# that rank's batch loss is NaN at once, rank 0's only after the averaged NaN gradient.
y_nan = y.astype(np.float64)
y_nan[1] = np.nan
model = nn.Sequential([nn.Dense(1, input_dim=5)])
model.compile(optimizer=dist.DistributedOptimizer(optim.SGD(lr=0.01)), loss="mse")
out = io.StringIO()
with warnings.catch_warnings(), contextlib.redirect_stdout(out):
    warnings.simplefilter("ignore", RuntimeWarning)
    stopped = model.fit(x, y_nan, batch_size=8, epochs=5, verbose=0, shuffle=False,
                        callbacks=[callbacks.TerminateOnNaN()])
results["nan/epochs"] = stopped.epoch
results["nan/steps"] = model.optimizer.step_count
results["nan/stdout"] = out.getvalue()
write_results(results)
