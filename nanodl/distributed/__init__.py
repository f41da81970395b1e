"""Data-parallel training over MPI (``import nanodl.distributed as dist``), as ChainerMN and Horovod.

Every process (a *rank*) holds a full copy of the model and trains on its own share of
each batch; before every update the ranks average their gradients (MPI allreduce), so
they apply the same update and stay identical. Run ``mpirun -n N python train.py``;
without ``mpirun`` it is a *world of one* and runs unchanged, without mpi4py (which
only ``init()`` under a multi-rank ``mpirun`` imports).

* ``init()`` joins the world (``rank()``, ``size()``, the collectives and
  ``DistributedOptimizer`` call it for you); ``is_initialized()`` says whether it ran.
* ``allreduce(array, op='sum'|'mean')`` and ``broadcast(array, root=0)`` return new
  arrays; ``barrier()`` waits for every rank. They move NumPy buffers (CuPy arrays
  are staged through the host), never pickled objects.
* ``DistributedOptimizer(optimizer)`` wraps any ``optim.Optimizer``; given to
  ``Model.compile``, it makes ``fit`` data-parallel (see ``docs/distributed.md``).

Before its first step a data-parallel ``fit`` checks that every rank runs the same fit
(model, dtypes, optimizer, loss, batch size, data size, epochs) and raises a
``ValueError`` on every rank naming the first difference. No collective waits forever:
each gives up after ``timeout()`` seconds (300 unless ``set_timeout`` or
``NANODL_MPI_TIMEOUT`` says otherwise) with a ``TimeoutError``, and an uncaught
exception on one rank ends the job on every rank, so a rank that leaves ``fit`` early
makes the others fail instead of hang.

>>> import numpy as np
>>> import nanodl.distributed as dist
>>> dist.size(), dist.rank()                  # no mpirun here: a world of one
(1, 0)
>>> dist.allreduce(np.array([1.0, 2.0]), op='mean')
array([1., 2.])
"""
from .world import (DEFAULT_TIMEOUT, INSTALL_HINT, TIMEOUT_VARIABLE, _is_rank_zero, allreduce,
                    barrier, broadcast, init, is_initialized, launched_size, library_version, rank,
                    set_timeout, size, timeout)
from .optimizer import DistributedOptimizer
from .fit import DataParallelFit
from .. import callbacks as _callbacks

_callbacks.register_writer(_is_rank_zero)  # the core's seam: only rank 0 prints and writes

__all__ = ["init", "rank", "size", "is_initialized", "allreduce", "broadcast", "barrier",
           "timeout", "set_timeout", "DistributedOptimizer", "DataParallelFit", "INSTALL_HINT",
           "DEFAULT_TIMEOUT", "TIMEOUT_VARIABLE", "launched_size", "library_version", "_is_rank_zero"]
