"""Worker for test_distributed.py: rank 1 fails while rank 0 waits in a collective.

Without ``init()``'s abort-on-exception hook, rank 0 would wait in the barrier forever.
"""
import nanodl.distributed as dist

dist.init()
if dist.rank() == 1:
    raise RuntimeError("rank 1 failed on purpose")
dist.barrier()
print("rank 0 got past the barrier")  # never printed
