"""Hostile input at every kernel of every table: the same answer, or the same clear error.

Hypothesis draws a valid call of each kernel (shapes with empty and 0-d arrays, both
float dtypes, every option) and then one mutation of it: a wrong dtype (integers,
float16, bool, complex, the other float), a layout (Fortran order, strided, negative
strides, read-only), NaN or inf in an input, an out-of-range class label, an array
swapped for None, a list, a scalar or bytes, or a scalar argument swapped for a
string, None, NaN, inf or a complex number. Every CPU table must then give the NumPy
twin's answer to rounding, or raise the same ``TypeError``/``ValueError`` with the same
message, which names the kernel. Never a crash: the calls run in a subprocess
(``kernel_fuzz_worker.py``), so a segfault or a hang fails the test that caused it.
The CuPy table joins in (in this process) where a GPU is present.
"""
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanodl as nd
from kernel_cases import LABEL_DTYPES, NAMES, fuzz_call, fuzz_verdict
from nanodl.backend import activations

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 60
# Cases per kernel: ~5 s for all of them at the default; NANODL_FUZZ_EXAMPLES=2000 for a long hunt.
EXAMPLES = int(os.environ.get("NANODL_FUZZ_EXAMPLES", 100))

MUTATIONS = st.one_of(
    st.just(("none", 0, "")),
    st.tuples(st.just("dtype"), st.integers(0, 9),
              st.sampled_from(["int32", "int64", "uint8", "float16", "bool", "complex64",
                               "complex128", "float32", "float64"])),
    st.tuples(st.just("layout"), st.integers(0, 9),
              st.sampled_from(["F", "strided", "negative", "readonly"])),
    st.tuples(st.just("nonfinite"), st.integers(0, 99), st.sampled_from(["nan", "inf", "-inf"])),
    st.tuples(st.just("label"), st.integers(0, 99),
              st.sampled_from([-1, -7, 3, 9, 10, 2 ** 31, 2 ** 40, -2 ** 40])),
    st.tuples(st.just("swap"), st.integers(0, 9), st.sampled_from(["none", "list", "scalar", "bytes"])),
    st.tuples(st.just("scalar"), st.integers(0, 9),
              st.sampled_from(["str", "none", "nan", "inf", "complex"])),
)

CASES = st.fixed_dictionaries({
    "seed": st.integers(0, 2 ** 32 - 1),
    "dims": st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)),
    "dtype": st.sampled_from(["float32", "float64"]),
    "opts": st.fixed_dictionaries({
        "ndim": st.integers(0, 3),
        "bias": st.booleans(),
        "activation": st.sampled_from(activations.LINEAR_ACTIVATIONS + ("swish",)),
        "need": st.tuples(st.booleans(), st.booleans(), st.booleans()),
        "sparse": st.booleans(),
        "label_dtype": st.sampled_from([np.dtype(d).name for d in LABEL_DTYPES]),
        "weight_decay": st.sampled_from([0.0, 0.01]),
        "momentum": st.sampled_from([0.0, 0.9]),
        "flag_a": st.booleans(),
        "flag_b": st.booleans(),
        "step": st.integers(1, 20),
    }),
    "mutation": MUTATIONS,
})


class Worker:
    """The subprocess that runs the cases on the CPU tables; restarted after a crash."""

    def __init__(self):
        self.process = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, str(HERE / "kernel_fuzz_worker.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
        self.tables = self._read()["ready"]

    def _read(self):
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            code = self.process.wait()
            stderr = self.process.stderr.read()[-2000:]
            self.process = None
            raise AssertionError(f"the kernel worker died or hung (exit code {code}): {stderr}")
        return json.loads(line)

    def verdict(self, case):
        if self.process is None:
            self.start()
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        return self._read()["why"]

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=TIMEOUT_S)
            self.process = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    w.start()
    yield w
    w.close()


def test_the_worker_runs_every_cpu_table(worker):
    assert worker.tables[0] == "numpy"
    assert ("native" in worker.tables) == nd.backend.native_available()


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=CASES)
def test_hostile_input_gets_the_same_answer_or_the_same_clear_error(worker, name, case):
    case = dict(case, name=name)
    why = worker.verdict(case)
    assert not why, f"{why}\ncase: {json.dumps(case)}"


def test_the_mutations_reach_the_kernels():
    """The fuzzer is not vacuous: its mutations do produce each kind of error."""
    from nanodl.backend import kernels_numpy
    base = {"seed": 0, "dims": (3, 4, 2), "dtype": "float32",
            "opts": {"ndim": 2, "bias": True, "activation": "relu", "need": (True, True, True),
                     "sparse": True, "label_dtype": "int64", "weight_decay": 0.0, "momentum": 0.9,
                     "flag_a": False, "flag_b": True, "step": 1}}
    expect = [("softmax_xent_forward", ("label", 1, -1), ValueError, "out of range"),
              ("relu_forward", ("dtype", 0, "int64"), TypeError, "int64"),
              ("sgd_step", ("layout", 0, "readonly"), ValueError, "writeable"),
              ("adam_step", ("scalar", 0, "str"), TypeError, "real number"),
              ("linear_backward", ("swap", 0, "bytes"), TypeError, "float32 or all float64")]
    for name, mutation, error, words in expect:
        args, kwargs, _ = fuzz_call(dict(base, name=name, mutation=mutation))
        with pytest.raises(error, match=f"{name}:.*{words}"):
            getattr(kernels_numpy.TABLE, name)(*args, **kwargs)


@pytest.mark.skipif(not nd.cuda_available(), reason="needs CuPy and a GPU")
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES.filter(lambda c: c["mutation"][0] in ("none", "dtype", "nonfinite", "label")))
def test_the_gpu_table_agrees_with_the_numpy_twin(name, case):  # pragma: no cover - GPU only
    """The same cases on the GPU: arrays moved there first (host arrays are refused by contract)."""
    from nanodl.backend import gpu_table, kernels_numpy
    cp = nd.backend.array_module(nd.zeros(1, device="cuda"))
    gpu = gpu_table()

    class OnDevice:  # the GPU table, fed the case's arrays moved to the device and back
        name = "cupy"

        def __getattr__(self, kernel):
            def call(*args, **kwargs):
                move = lambda a: cp.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
                dev_args = [move(a) for a in args]
                dev_kwargs = {k: move(v) for k, v in kwargs.items()}
                result = getattr(gpu, kernel)(*dev_args, **dev_kwargs)
                for i, a in enumerate(args):  # in-place updates come back to the host arrays
                    if isinstance(a, np.ndarray) and a.flags.writeable:
                        a[...] = cp.asnumpy(dev_args[i])
                for k, v in kwargs.items():
                    if isinstance(v, np.ndarray) and v.flags.writeable:
                        v[...] = cp.asnumpy(dev_kwargs[k])
                back = lambda r: cp.asnumpy(r) if r is not None else None  # noqa: E731
                return tuple(back(r) for r in result) if isinstance(result, tuple) else \
                    (None if result is None else back(result))
            return call

    why = fuzz_verdict(dict(case, name=name), [kernels_numpy.TABLE, OnDevice()])
    assert not why, f"{why}\ncase: {json.dumps(dict(case, name=name))}"
