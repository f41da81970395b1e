"""Data-parallel training over MPI (``import nanodl.distributed as dist``), as ChainerMN and Horovod.

Every process (a *rank*) holds a full copy of the model and trains on its own share of
each batch; before every update the ranks average their gradients with MPI's
allreduce, so they all apply the same update and stay identical. Start the same
script on N processes with ``mpirun -n N python train.py``; on one process (no
``mpirun``) it is a *world of one* and runs unchanged, without mpi4py.

* ``init()`` joins the MPI world (``rank()``, ``size()``, the collectives and
  ``DistributedOptimizer`` call it for you); ``is_initialized()`` says whether it ran.
* ``allreduce(array, op='sum'|'mean')`` and ``broadcast(array, root=0)`` return new
  arrays; ``barrier()`` waits for every rank. They move NumPy buffers (CuPy arrays
  are staged through the host), never pickled objects.
* ``DistributedOptimizer(optimizer)`` wraps any ``optim.Optimizer``: one flat
  allreduce of all gradients before each step (averaged), parameters broadcast from
  rank 0 at the first step and whenever the parameter set changes. Given to
  ``Model.compile``, it makes ``fit`` data-parallel (see ``docs/distributed.md``).

Before its first step a data-parallel ``fit`` checks that every rank runs the same fit
(model, dtypes, optimizer and its hyper-parameters, loss, batch size, data size,
epochs): one small collective, and a ``ValueError`` on every rank naming the first
difference and both values. No collective nanodl makes waits forever: each gives up
after ``timeout()`` seconds (300 unless ``set_timeout`` or the environment variable
``NANODL_MPI_TIMEOUT`` says otherwise) with a ``TimeoutError``, and an uncaught
exception on one rank ends the job on every rank. So a rank that leaves ``fit`` early
or never calls it makes the others fail within that time instead of hanging.

mpi4py is imported only when a process started by ``mpirun`` with more than one rank
calls ``init()``; importing nanodl never imports it.

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
