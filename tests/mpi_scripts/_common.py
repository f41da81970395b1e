"""Shared by the MPI worker scripts: where to write each rank's results, and how.

Each script is started by ``mpirun -n 2`` from ``tests/test_distributed.py`` with the
output folder as its argument; every rank writes ``rank<r>.json`` (numbers and lists),
and the test reads both files and makes the assertions, so a failure is reported by
pytest with the values at fault.
"""
import json
import os
import sys


def output_path(name="rank"):
    import nanodl.distributed as dist
    folder = sys.argv[1]
    return os.path.join(folder, f"{name}{dist.rank()}.json")


def write_results(results):
    path = output_path()
    with open(path + ".tmp", "w") as handle:
        json.dump(results, handle)
    os.replace(path + ".tmp", path)
