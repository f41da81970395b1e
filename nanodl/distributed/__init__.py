"""Data-parallel training over MPI (``import nanodl.distributed as dist``), as ChainerMN and Horovod.

Every rank holds the model and trains on its share of each batch; the ranks average their
gradients before each update. Run ``mpirun -n N python train.py``; without ``mpirun`` it is a
world of one and needs no mpi4py. Collectives give up after ``timeout()`` seconds with a
``TimeoutError``. See docs/distributed.md.

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
