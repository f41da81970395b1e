"""Collection rules shared by tests/ and the docstring examples in nanodl/.

``--doctest-modules`` imports every module under nanodl/; the CuPy kernel table
needs CuPy and a GPU at import, so it is left out where they are missing.
"""
from nanodl.backend.cuda import cuda_status

collect_ignore = [] if cuda_status() is None else ["nanodl/backend/kernels_cupy.py"]
