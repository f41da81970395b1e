"""Device handling that runs everywhere, GPU or not: clear errors when 'cuda' is missing,
and CuPy never imported by ``import nanodl``.

CuPy's absence, and CuPy without a GPU, are simulated by replacing the ``cupy`` module
and resetting the cached status in ``nanodl.backend.cuda``.
"""
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd
from nanodl.backend import cuda as nd_cuda

ROOT = Path(__file__).resolve().parent.parent


def _fresh_status(monkeypatch, cupy_module):
    """Make nanodl look for CuPy again, finding ``cupy_module`` (None: not installed)."""
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)
    monkeypatch.setattr(nd_cuda, "_status", "unchecked")
    monkeypatch.setattr(nd_cuda, "_cupy", None)
    monkeypatch.delitem(sys.modules, "nanodl.backend.kernels_cupy", raising=False)


def _fake_cupy(device_count):
    """A stand-in ``cupy`` whose runtime reports ``device_count`` GPUs (or raises it)."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def _every_way_to_ask_for_cuda():
    t = nd.tensor([1.0, 2.0])
    return {
        "Tensor.to": lambda: t.to("cuda"),
        "Tensor.cuda": lambda: t.cuda(),
        "tensor(device=)": lambda: nd.tensor([1.0], device="cuda"),
        "zeros(device=)": lambda: nd.zeros(3, device="cuda"),
        "kernels_cupy": lambda: importlib.import_module("nanodl.backend.kernels_cupy"),
    }


@pytest.mark.parametrize("way", sorted(_every_way_to_ask_for_cuda()))
def test_cuda_without_cupy_says_cupy_is_missing_and_how_to_install(monkeypatch, way):
    _fresh_status(monkeypatch, None)  # `import cupy` now raises ImportError
    assert nd.cuda_available() is False
    with pytest.raises(RuntimeError) as info:
        _every_way_to_ask_for_cuda()[way]()
    message = str(info.value)
    assert "cuda" in message and "CuPy is not installed" in message
    assert "pip install cupy-cuda12x" in message


@pytest.mark.parametrize("way", sorted(_every_way_to_ask_for_cuda()))
def test_cupy_without_gpu_says_no_gpu(monkeypatch, way):
    _fresh_status(monkeypatch, _fake_cupy(0))
    assert nd.cuda_available() is False
    with pytest.raises(RuntimeError) as info:
        _every_way_to_ask_for_cuda()[way]()
    message = str(info.value)
    assert "no NVIDIA GPU" in message and "not installed" not in message


def test_broken_driver_is_reported_as_no_gpu_with_the_reason(monkeypatch):
    _fresh_status(monkeypatch, _fake_cupy(RuntimeError("cudaErrorInsufficientDriver")))
    assert nd.cuda_available() is False
    status = nd_cuda.cuda_status()
    assert "no NVIDIA GPU" in status and "cudaErrorInsufficientDriver" in status
    with pytest.raises(RuntimeError, match="cudaErrorInsufficientDriver"):
        nd.tensor([1.0]).cuda()


def test_status_is_checked_once(monkeypatch):
    calls = []
    fake = _fake_cupy(0)
    fake.cuda.runtime.getDeviceCount = lambda: calls.append(1) or 0
    _fresh_status(monkeypatch, fake)
    for _ in range(3):
        nd.cuda_available()
    assert len(calls) == 1


def test_cuda_available_is_false_without_a_gpu():
    if nd_cuda.cuda_status() is None:
        pytest.skip("a GPU is present on this machine")
    assert nd.cuda_available() is False
    with pytest.raises(RuntimeError, match="cuda"):
        nd.tensor([1.0]).to("cuda")


def test_unknown_device_is_a_value_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="cpu, cuda"):
        nd.tensor([1.0]).to("tpu")
    with pytest.raises(ValueError, match="cpu, cuda"):
        nd.tensor([1.0], device="gpu")


def test_cpu_is_the_default_device_and_to_cpu_is_a_no_op():
    t = nd.tensor([1.0, 2.0])
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)
    assert t.to("cpu") is t and t.cpu() is t
    assert nd.backend.device_of(np.float32(1.0)) == "cpu"
    assert nd.backend.to_device(np.float32(1.0), "cpu") == np.float32(1.0)
    assert nd.backend.array_module(t) is np and nd.backend.array_module(np.zeros(2)) is np


def test_import_nanodl_does_not_import_cupy():
    """CuPy is imported lazily, the first time 'cuda' is asked for, and only then."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import nanodl\n"
        "for info in pkgutil.walk_packages(nanodl.__path__, 'nanodl.'):\n"
        "    if info.name.endswith(('kernels_cupy', '__main__')):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except Exception:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m == 'cupy' or m.startswith(('cupy.', 'cupyx'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


class _FakeDeviceArray:
    """Quacks like a CuPy array for the host/device helpers: an interface and .get()."""
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<f8", "data": (0, False), "version": 3}

    def get(self):
        return np.array([1.0, 2.0])


def test_one_host_device_helper():
    host = np.array([3.0, 4.0])
    assert nd.backend.is_device_array(_FakeDeviceArray())
    assert not nd.backend.is_device_array(host)
    assert not nd.backend.is_device_array(np.float32(1.0)) and not nd.backend.is_device_array([1.0])
    assert nd.backend.to_host(host) is host                    # no copy unless asked
    copied = nd.backend.to_host(host, copy=True)
    assert copied is not host and copied.tolist() == [3.0, 4.0]
    assert nd.backend.to_host(_FakeDeviceArray()).tolist() == [1.0, 2.0]
    assert nd.backend.to_host([1, 2]).tolist() == [1, 2]
    assert nd.backend.device_of(_FakeDeviceArray()) == "cuda" and nd.backend.device_of([1.0]) == "cpu"


def test_no_hand_written_device_checks_outside_the_backend():
    """Every 'is this a GPU array' and host copy goes through nanodl.backend's helpers."""
    offenders = []
    for path in sorted((ROOT / "nanodl").rglob("*.py")):
        if path.parent.name == "backend":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "__cuda_array_interface__" in line or ".get()" in line or "asnumpy" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_cuda_module_imports_no_other_part_of_nanodl():
    """backend.cuda only finds CuPy; the CuPy table imports it, never the reverse (no cycle)."""
    import ast
    tree = ast.parse((ROOT / "nanodl" / "backend" / "cuda.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(node, ast.Import) and node.names[0].name == "cupy" for node in imports)
