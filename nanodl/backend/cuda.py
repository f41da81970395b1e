"""The one place where CuPy is imported (lazily, on first use of ``'cuda'``); it imports
nothing else from nanodl."""
_cupy = None
_status = "unchecked"


def cuda_status():
    """None when CuPy and a GPU are usable, else a sentence saying what is missing."""
    global _cupy, _status
    if _status != "unchecked":
        return _status
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        _status = (f"CuPy is not installed ({exc.__class__.__name__}: {exc}); install the wheel that "
                   "matches your CUDA, e.g. `pip install cupy-cuda12x` (CUDA 12) or `pip install "
                   "cupy-cuda13x` (CUDA 13), or `pip install nanodl[cuda]`")
        return _status
    count, detail = 0, ""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        detail = f" ({exc})"
    if count < 1:
        _status = f"CuPy is installed but no NVIDIA GPU is visible{detail}"
    else:
        _cupy, _status = cupy, None
    return _status


def require_cupy():
    """The cupy module, or RuntimeError saying whether CuPy or the GPU is missing."""
    status = cuda_status()
    if status is not None:
        raise RuntimeError(f"device 'cuda' is not available: {status}")
    return _cupy
