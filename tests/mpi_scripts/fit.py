"""Worker for test_distributed.py: data-parallel ``Model.fit`` on 2 ranks.

Run as ``mpirun -n 2 python tests/mpi_scripts/fit.py OUT_DIR``. Every rank also trains
the single-process reference (a plain optimizer, batch 2 x 16 = 32, the same seed), so
the test can compare each rank's result with what one process would have done.
"""
import contextlib
import io
import os
import sys

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import callbacks, nn, optim

from _common import write_results

rank, size = dist.rank(), dist.size()
out_dir = sys.argv[1]
results = {"rank": rank, "size": size}
nd.set_default_dtype("float64")

data_rng = np.random.default_rng(3)
x = data_rng.standard_normal((70, 6))          # 70 = 2 x 35: two shards of 35 (16 + 16 + 3)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
x_val = data_rng.standard_normal((21, 6))      # odd: shards of 11 and 10
y_val = (x_val[:, 0] + 0.5 * x_val[:, 1] > 0).astype(np.int64) + (x_val[:, 2] > 1)
EPOCHS, LOCAL_BATCH = 5, 16


def build(seed, layers=None):
    nd.manual_seed(seed)
    return nn.Sequential(layers or [nn.Dense(12, activation="tanh", input_dim=6),
                                    nn.Dense(3, activation="softmax")])


def flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def spread(values):
    """The largest difference of ``values`` between this rank and the ranks' mean."""
    return float(np.abs(dist.allreduce(values, op="mean") - values).max())


# ---------------------------------------------------------------- 2 x 16 == 1 x 32
optimizers = {"sgd_momentum": lambda: optim.SGD(lr=0.1, momentum=0.9),
              "adam": lambda: optim.Adam(lr=0.01),
              "adam_weighted": lambda: optim.Adam(lr=0.01)}  # with sample weights
weights = data_rng.uniform(0.1, 2.0, len(x))
for name, factory in optimizers.items():
    options = {"sample_weight": weights} if name == "adam_weighted" else {}
    reference = build(11)
    reference.compile(optimizer=factory(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = reference.fit(x, y, batch_size=LOCAL_BATCH * size, epochs=EPOCHS, verbose=0,
                             validation_data=(x_val, y_val), **options).history
    model = build(11 + rank)  # rank 1 starts elsewhere: fit broadcasts rank 0's parameters
    model.compile(optimizer=dist.DistributedOptimizer(factory()),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=LOCAL_BATCH, epochs=EPOCHS, verbose=0,
                        validation_data=(x_val, y_val), **options)
    results[f"{name}/parameter_error"] = float(np.abs(flat_weights(model) - flat_weights(reference)).max())
    results[f"{name}/history_error"] = max(
        float(np.abs(np.subtract(history.history[key], expected[key])).max()) for key in expected)
    results[f"{name}/history"] = history.history
    results[f"{name}/epochs"] = history.epoch
    results[f"{name}/steps"] = model.optimizer.step_count
    results[f"{name}/rank_spread"] = spread(flat_weights(model))

# ---------------------------------------------------------------- callbacks agree
model = build(21 + rank)
model.compile(optimizer=dist.DistributedOptimizer(optim.SGD(lr=0.05)),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
stopper = callbacks.EarlyStopping(monitor="loss", min_delta=0.02, patience=1)
plateau = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=0.05)
checkpoints = callbacks.ModelCheckpoint(os.path.join(out_dir, f"ckpt-rank{rank}-{{epoch}}.npz"),
                                        monitor="loss")
csv_path = os.path.join(out_dir, f"log-rank{rank}.csv")
stdout, stderr = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    history = model.fit(x, y, batch_size=8, epochs=40, verbose=2, validation_split=0.2,
                        callbacks=[stopper, plateau, checkpoints, callbacks.CSVLogger(csv_path)])
    stopper.verbose = 1
    stopper.on_train_end()  # prints "early stopping" (on rank 0 only)
    model.save(os.path.join(out_dir, f"model-rank{rank}.npz"))
results["early/history"] = history.history
results["early/stopped_epoch"] = stopper.stopped_epoch
results["early/stdout"] = stdout.getvalue()
results["early/stderr"] = stderr.getvalue()
results["early/rank_spread"] = spread(flat_weights(model))
dist.barrier()  # rank 0 has written everything before anyone looks
results["files"] = sorted(os.listdir(out_dir))
results["final_weights"] = flat_weights(model).tolist()

# ---------------------------------------------------------------- dropout and BatchNorm
model = build(31, [nn.Dense(16, activation="relu", input_dim=6), nn.Dropout(0.5),
                   nn.BatchNorm(), nn.Dense(3, activation="softmax")])
model.compile(optimizer=dist.DistributedOptimizer(optim.Adam(lr=0.01)),
              loss="sparse_categorical_crossentropy")
model.fit(x, y, batch_size=LOCAL_BATCH, epochs=2, verbose=0)
results["dropout/next_draw"] = float(nd.random.generator().random())  # streams differ by rank
parameters = np.concatenate([p.data.ravel() for p in model.parameters()])
buffers = np.concatenate([b.ravel() for b in model.buffers()])
results["batchnorm/parameter_spread"] = spread(parameters)
results["batchnorm/buffer_spread"] = spread(buffers)  # statistics stay per rank

# ---------------------------------------------------------------- too few samples
try:
    model.fit(x[:1], y[:1], batch_size=4, epochs=1, verbose=0)
    results["too_few"] = None
except ValueError as error:
    results["too_few"] = str(error)

write_results(results)
