"""Every example runs as ``python examples/NAME.py`` and exits 0.

``NANODL_EXAMPLE_QUICK=1`` makes the examples cut their epochs, so the whole file
stays well under a minute.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ALL_EXAMPLES = sorted(path.name for path in EXAMPLES.glob("*.py"))

# a fragment each example's output must contain (examples not listed only need to exit 0)
EXPECTED = {
    "xor.py": "training accuracy",
    "digits_mlp.py": "predictions match",
    "subclassed_model.py": "test accuracy",
    "gan_2d.py": "mean radius",
    "sharpness.py": "x 2/lr at step",
    "per_sample.py": "precision at k=",
    "dp_sgd.py": "DP-SGD, noise sigma=",
    "diagnose.py": "sick: underfitting, overfitting, diverging, diverging; cured: ok, ok, ok, ok",
}


def test_the_tutorial_examples_exist():
    assert set(EXPECTED) <= set(ALL_EXAMPLES)


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_runs(name, tmp_path):
    env = dict(os.environ, NANODL_EXAMPLE_QUICK="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert EXPECTED.get(name, "") in result.stdout
    assert list(tmp_path.iterdir()) == []  # examples leave no files behind
