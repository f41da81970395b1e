"""Worker for test_distributed.py: ranks that do not run the same fit fail together.

Run as ``mpirun -n 2 python tests/mpi_scripts/mismatch.py OUT_DIR``. Each case makes the
ranks differ in one thing; both ranks must raise ValueError before the first step,
naming the difference and both values, and stay in step for the next case.
"""
import sys

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import nn, optim

from _common import write_results

rank = dist.rank()
results = {"rank": rank}
data = np.random.default_rng(0).standard_normal((100, 4))
labels = (data[:, 0] > 0).astype(np.int64)


def fit(optimizer=lambda: optim.Adam(lr=0.01), samples=100, batch_size=16, epochs=2,
        dtype="float32", shuffle=True, validation=None):
    nd.set_default_dtype(dtype)
    try:
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=4),
                               nn.Dense(2, activation="softmax")])
    finally:
        nd.set_default_dtype("float32")
    model.compile(optimizer=dist.DistributedOptimizer(optimizer()),
                  loss="sparse_categorical_crossentropy")
    model.fit(data[:samples].astype(dtype), labels[:samples], batch_size=batch_size, epochs=epochs,
              shuffle=shuffle, verbose=0, validation_split=validation or 0.0)
    return model


CASES = {  # name: fit arguments on rank 0, on rank 1
    "optimizer": ({}, {"optimizer": lambda: optim.SGD(lr=0.01)}),
    "learning rate": ({}, {"optimizer": lambda: optim.Adam(lr=0.001)}),
    "samples": ({"shuffle": False}, {"samples": 96, "shuffle": False}),
    "batch size": ({}, {"batch_size": 32}),
    "dtype": ({}, {"dtype": "float64"}),
    "epochs": ({}, {"epochs": 3}),
    "validation": ({}, {"validation": 0.2}),
}
for name, arguments in CASES.items():
    try:
        fit(**arguments[rank])
        results[name] = None
    except ValueError as error:
        results[name] = str(error)
model = fit()  # the ranks are still in step: an agreeing fit trains
weights = np.concatenate([w.ravel() for w in model.get_weights()])
results["agreeing_spread"] = float(np.abs(dist.allreduce(weights, op="mean") - weights).max())
write_results(results)
