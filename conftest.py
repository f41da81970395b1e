"""Collection rules shared by tests/ and the docstring examples in nanodl/.

``--doctest-modules`` imports every module under nanodl/; the CuPy kernel table
needs CuPy and a GPU at import, so it is left out where they are missing, and so are
the modules whose examples need an optional package (onnx, onnxruntime, scikit-learn).
"""
import importlib.util

from nanodl.backend.cuda import cuda_status



def _installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


collect_ignore = [] if cuda_status() is None else ["nanodl/backend/kernels_cupy.py"]
OPTIONAL = {"nanodl/onnx.py": ("onnx", "onnxruntime"), "nanodl/sklearn.py": ("sklearn",)}
collect_ignore += [path for path, packages in OPTIONAL.items()
                   if not all(_installed(package) for package in packages)]
