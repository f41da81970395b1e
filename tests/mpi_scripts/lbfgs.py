"""Worker for test_distributed.py: data-parallel full-batch L-BFGS on 2 ranks.

Run as ``mpirun -n 2 python tests/mpi_scripts/lbfgs.py OUT_DIR``. Every rank also trains
the single-process reference (plain ``optim.LBFGS`` over all samples, the same seed), so
the test can compare each rank's parameters with what one process would have reached.
"""
import sys

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import nn, optim

from _common import write_results

rank, size = dist.rank(), dist.size()
results = {"rank": rank, "size": size}
nd.set_default_dtype("float64")

data_rng = np.random.default_rng(5)
x = data_rng.standard_normal((64, 5))          # 64 = 2 x 32: each rank's shard is its full batch
y = (x[:, 0] - 0.7 * x[:, 1] + 0.3 * data_rng.standard_normal(64) > 0).astype(np.int64) + (x[:, 2] > 0.8)
EPOCHS = 4


def build(seed):
    nd.manual_seed(seed)
    return nn.Sequential([nn.Dense(6, activation="tanh", input_dim=5), nn.Dense(3, activation="softmax")])


def flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


for line_search in (None, "strong_wolfe"):
    factory = lambda: optim.LBFGS(max_iter=10, line_search_fn=line_search)  # noqa: E731
    reference = build(7)
    reference.compile(optimizer=factory(), loss="sparse_categorical_crossentropy")
    expected = reference.fit(x, y, epochs=EPOCHS, verbose=0).history["loss"]
    model = build(7 + rank)  # rank 1 starts elsewhere: fit broadcasts rank 0's parameters
    model.compile(optimizer=dist.DistributedOptimizer(factory()), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=EPOCHS, verbose=0).history["loss"]
    mine, theirs = flat_weights(model), flat_weights(reference)
    name = str(line_search)
    results[f"{name}/parameter_error"] = float(np.abs(mine - theirs).max() / np.abs(theirs).max())
    results[f"{name}/loss_decrease"] = expected[0] - expected[-1]
    results[f"{name}/loss_error"] = float(np.abs(np.subtract(history, expected)).max())
    results[f"{name}/rank_spread"] = float(np.abs(dist.allreduce(mine, op="mean") - mine).max())
    results[f"{name}/func_evals"] = int(model.optimizer.state_dict().get("func_evals", -1))

write_results(results)
