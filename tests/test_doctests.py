"""Docstring examples are tests, and importing any nanodl module does nothing else.

``python -m pytest -q`` collects the ``>>>`` examples of every module in nanodl/
(``--doctest-modules`` in pyproject.toml), so a docstring cannot drift from the code.
That is only safe while importing a module has no side effects: no output, no
files, no warnings, no change to the engine's global state.
"""
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import nanodl

ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")


def test_pytest_config_runs_the_docstring_examples():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    options = config["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert {"tests", "nanodl"} <= set(options["testpaths"])


def test_docstring_examples_are_collected(request):
    """The doctest items of nanodl/ exist (collected in this very session when run whole)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                             "no:cacheprovider", "nanodl"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(collected) >= 30, result.stdout
    assert any("nanodl/io.py::nanodl.io" in line for line in collected)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _modules():
    names = [name for _, name, _ in pkgutil.walk_packages(nanodl.__path__, "nanodl.")]
    skipped = {"nanodl.__main__"}  # runs the command line, by design
    if nanodl.backend.cuda.cuda_status() is not None:
        skipped.add("nanodl.backend.kernels_cupy")  # needs CuPy and a GPU
    try:
        import sklearn  # noqa: F401
    except ImportError:
        skipped.add("nanodl.sklearn")  # imports scikit-learn, an optional extra, by design
    return [name for name in names if name not in skipped]


CHECK_IMPORTS = r"""
import importlib, os, sys, threading, warnings
warnings.simplefilter("error")
for name in sys.argv[1:]:
    files, threads = set(os.listdir(".")), threading.active_count()
    importlib.import_module(name)
    import nanodl
    assert nanodl.is_grad_enabled(), f"importing {name} changed grad mode"
    assert str(nanodl.get_default_dtype()) == "float32", f"importing {name} changed the dtype"
    assert set(os.listdir(".")) == files, f"importing {name} wrote files"
    assert threading.active_count() == threads, f"importing {name} started threads"
"""


def test_every_module_imports_without_side_effects(tmp_path):
    modules = _modules()
    assert "nanodl.io" in modules and "nanodl.nn.layers" in modules
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *modules], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", (result.stdout, result.stderr)
