"""Worker for test_distributed.py: a rank that leaves fit early, or never calls it.

Run as ``mpirun -n 2 python tests/mpi_scripts/leave.py OUT_DIR CASE`` with
``NANODL_MPI_TIMEOUT`` set low: rank 0 must give up within that time (a TimeoutError,
then the job ends) instead of waiting forever.
"""
import sys
import time

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import callbacks, nn, optim

rank, case = dist.rank(), sys.argv[2]
nd.manual_seed(0)
x = np.random.default_rng(0).standard_normal((64, 4))
y = (x[:, 0] > 0).astype(np.int64)
model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=4), nn.Dense(2, activation="softmax")])
model.compile(optimizer=dist.DistributedOptimizer(optim.Adam(lr=0.01)),
              loss="sparse_categorical_crossentropy")


class StopOnThisRank(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if rank == 1:
            self.model.stop_training = True  # rank 1 alone leaves after its first epoch


if case == "never enters" and rank == 1:
    time.sleep(1)  # rank 1 has something else to do; rank 0 waits in fit's first collective
else:
    started = time.monotonic()
    model.fit(x, y, batch_size=8, epochs=5, verbose=0,
              callbacks=[StopOnThisRank()] if case == "leaves early" else None)
    print(f"rank {rank} finished fit after {time.monotonic() - started:.1f} s", flush=True)
