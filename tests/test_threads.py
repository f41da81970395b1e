"""The thread policy (nanodl.backend.threads): which operations get one thread, who wins.

No timing here (speed belongs to benchmarks/bench_busy.py): these tests check the
decisions, that thread counts are restored, that the user's environment wins, that
nothing breaks without threadpoolctl, and the OpenMP cap when libgomp came first.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd
from nanodl import backend, nn
from nanodl.backend import threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_policy(monkeypatch):
    """The policy re-resolved from the environment inside the test, and again after it."""
    monkeypatch.setattr(threads, "_blas_resolved", False)
    monkeypatch.setattr(threads, "_enabled", True)
    yield threads
    threads._blas_resolved = False  # the next use resolves the real environment again


@pytest.fixture
def two_blas_threads(fresh_policy):
    """BLAS set to two threads for the test (a policy decision must be observable)."""
    if fresh_policy.blas_threads() is None:
        pytest.skip(f"BLAS threads not controllable here: {fresh_policy.info()['blas']}")
    get, set_ = fresh_policy._blas
    before = get()
    set_(2)
    yield fresh_policy
    set_(before)


def test_small_gemms_get_one_thread_large_ones_the_default(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0), raising=False)
    assert threads.gemm(32, 64, 10) is threads.UNCHANGED          # OpenBLAS is serial anyway
    assert threads.gemm(32, 128, 128) is threads.SERIAL_BLAS      # 524K multiply-adds
    assert threads.gemm(64, 128, 256) is threads.SERIAL_BLAS      # 2.1M
    assert threads.gemm(64, 784, 512) is threads.SERIAL_BLAS      # 26M
    assert threads.gemm(256, 784, 512) is threads.PARALLEL_BLAS   # 103M: two threads pay,
    assert not hasattr(threads, "machine_busy")                   # whatever the load


# ---------------------------------------------------------------- results never depend on it
def seeded_fit(epochs=2):
    """A seeded 784-input fit whose products cross every policy size: 100x784x512 (40M
    multiply-adds: the library's count), 58x784x512 (23M: one thread; the old policy gave
    it two on a quiet machine) and 8x784x512 (3.2M: one thread; the old policy gave it
    two in a worker thread). OpenBLAS gives other bits for each on one thread and on two."""
    from nanodl import random as nd_random
    rng = np.random.default_rng(0)
    x = rng.standard_normal((158, 784)).astype(np.float32)
    y = rng.integers(0, 10, 158)
    with nd_random.using(np.random.default_rng(1)):  # a generator of this thread's own
        model = nn.Sequential([nn.Dense(512, activation="relu", input_dim=784),
                               nn.Dense(10, activation="softmax")])
        model.compile(optimizer=nd.optim.Adam(lr=1e-3), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=100, epochs=epochs, verbose=0)
        model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
    return np.concatenate([w.ravel() for w in model.get_weights()])


def in_thread(function):
    result = {}
    worker = threading.Thread(target=lambda: result.update(value=function()))
    worker.start()
    worker.join(120)
    return result["value"]


def test_a_worker_thread_fits_the_main_threads_bits(two_blas_threads):
    main = seeded_fit()
    np.testing.assert_array_equal(in_thread(seeded_fit), main)
    assert threads.blas_threads() == 2


def test_two_fits_in_parallel_threads_give_their_serial_bits(two_blas_threads):
    serial = seeded_fit()
    results = []
    workers = [threading.Thread(target=lambda: results.append(seeded_fit())) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert len(results) == 2
    for result in results:
        np.testing.assert_array_equal(result, serial)


def test_the_load_average_changes_nothing(two_blas_threads, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    time.sleep(0.6)
    quiet = seeded_fit()
    time.sleep(0.6)  # past any cached reading of the load
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0), raising=False)
    np.testing.assert_array_equal(seeded_fit(), quiet)


BURN = ("import time\nend = time.monotonic() + {limit}\nx = 0\n"
        "while time.monotonic() < end:\n    x += 1\n")


def test_a_fit_beside_busy_processes_gives_the_quiet_bits(two_blas_threads):
    quiet = seeded_fit()
    busy = [subprocess.Popen([sys.executable, "-c", BURN.format(limit=60)]) for _ in range(3)]
    try:  # each stops by itself after 60 s whatever happens; killed as soon as the fit is done
        time.sleep(0.5)
        beside_busy = seeded_fit()
    finally:
        for process in busy:
            process.kill()
        for process in busy:
            process.wait(30)
    np.testing.assert_array_equal(beside_busy, quiet)


HASH_SCRIPT = """
import hashlib, json, sys
if sys.argv[1] == "scipy first":
    import scipy.linalg
import nanodl, numpy as np
sys.path.insert(0, {tests!r})
if sys.argv[1] == "scipy after":
    import scipy.linalg
from nanodl.backend import threads
from test_threads import seeded_fit
weights = seeded_fit(epochs=1)
print(json.dumps([hashlib.sha256(weights.tobytes()).hexdigest(), threads.info()["blas"]]))
"""


def test_fresh_processes_with_scipy_loaded_give_one_hash(tmp_path):
    """SciPy's wheel brings a second OpenBLAS: the policy controls numpy's in every process."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    script = tmp_path / "fit_hash.py"
    script.write_text(HASH_SCRIPT.format(tests=str(ROOT / "tests")))
    environ = {k: v for k, v in os.environ.items()
               if k not in threads._BLAS_ENV + ("NANODL_THREAD_POLICY",)}
    environ["PYTHONPATH"] = str(ROOT)
    seen = set()
    for variant in ("scipy first", "no scipy", "scipy after") + ("scipy first",) * 3:
        done = subprocess.run([sys.executable, str(script), variant], capture_output=True, text=True,
                              env=environ, timeout=120)
        assert done.returncode == 0, done.stderr
        seen.add(tuple(json.loads(done.stdout.strip().splitlines()[-1])))
    assert len(seen) == 1, seen  # one hash, and the same library described each time
    assert "not controlled" not in next(iter(seen))[1]


def test_the_controlled_blas_is_the_one_numpy_calls(fresh_policy):
    """The chosen library's thread-count function is the one numpy's extension resolves."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("scipy.linalg")  # SciPy's wheel loads an OpenBLAS of its own
    candidates = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                  if lib.user_api == "blas"]
    chosen = threads._numpy_blas(candidates)
    if chosen is None:
        pytest.skip("cannot tell numpy's BLAS here")
    handle = threads._numpy_handle()
    function = threads._get_threads_function(chosen)
    assert threads._address(getattr(handle, function.__name__)) == threads._address(function)
    assert chosen.filepath in threads.info()["blas"]


def test_scopes_that_want_another_count_wait_for_each_other(two_blas_threads):
    """While one thread is inside a one-thread scope, a thread wanting the library's count
    waits (it would otherwise run on a count that another thread chose)."""
    inside, release, order = threading.Event(), threading.Event(), []

    def serial():
        with threads.SERIAL_BLAS:
            inside.set()
            release.wait(10)
            order.append(("serial leaves", threads.blas_threads()))

    def parallel():
        inside.wait(10)
        with threads.PARALLEL_BLAS:
            order.append(("parallel runs", threads.blas_threads()))
    workers = [threading.Thread(target=serial), threading.Thread(target=parallel)]
    for worker in workers:
        worker.start()
    inside.wait(10)
    time.sleep(0.2)
    assert order == []  # the parallel scope is still waiting
    with threads.SERIAL_BLAS:  # the same count: enters at once, beside the first
        assert threads.blas_threads() == 1
    release.set()
    for worker in workers:
        worker.join(10)
    assert order == [("serial leaves", 1), ("parallel runs", 2)]
    assert threads.blas_threads() == 2


def test_serial_scope_sets_one_thread_and_restores(two_blas_threads):
    with threads.SERIAL_BLAS:
        assert threads.blas_threads() == 1
        with threads.SERIAL_BLAS:  # re-entrant: the inner exit does not restore early
            assert threads.blas_threads() == 1
        assert threads.blas_threads() == 1
    assert threads.blas_threads() == 2
    with pytest.raises(ZeroDivisionError):
        with threads.SERIAL_BLAS:
            1 / 0
    assert threads.blas_threads() == 2


def test_scope_only_lowers_a_users_own_limit(two_blas_threads):
    get, set_ = threads._blas
    set_(1)  # e.g. threadpoolctl.threadpool_limits(1) around nanodl code
    with threads.SERIAL_BLAS:
        assert get() == 1
    assert get() == 1  # not "restored" to some other count


def test_dense_training_restores_blas_threads(two_blas_threads):
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(128, activation="relu", input_dim=128), nn.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    model.fit(x, x[:, :1], epochs=1, batch_size=32, verbose=0)
    (nd.tensor(x, requires_grad=True) @ nd.tensor(x.T)).sum().backward()
    assert threads.blas_threads() == 2


@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS"])
def test_users_environment_wins(two_blas_threads, monkeypatch, variable):
    get, set_ = threads._blas
    monkeypatch.setenv(variable, "2")
    threads._blas_resolved = False
    with threads.SERIAL_BLAS:
        assert get() == 2  # untouched
    assert variable in threads.info()["blas"]


def test_policy_off_switch(two_blas_threads):
    with threads.disabled():
        assert threads.gemm(32, 128, 128) is threads.UNCHANGED
    assert threads.gemm(32, 128, 128) is threads.SERIAL_BLAS


def test_works_without_threadpoolctl(fresh_policy, monkeypatch, kernel_table):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    assert threads.blas_threads() is None
    assert "threadpoolctl is not installed" in threads.info()["blas"]
    x = np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32)
    w = nd.tensor(np.random.default_rng(1).standard_normal((128, 128)).astype(np.float32),
                  requires_grad=True)
    with threads.SERIAL_BLAS:  # a no-op now, not an error
        out = nd.functional.linear(nd.tensor(x), w, activation="relu")
    out.sum().backward()
    np.testing.assert_allclose(out.data, np.maximum(x @ w.data, 0), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- OpenMP
def _probe(prelude, env=None):
    """threads.info() and the kernels' thread count in a fresh process after ``prelude``."""
    code = (f"{prelude}\nimport json, nanodl\nfrom nanodl.backend import threads, _optim\n"
            "print(json.dumps(dict(threads.info(), kernel_threads=_optim.kernel_threads())))")
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NANODL_THREAD_POLICY")}
    environ.update(PYTHONPATH=str(ROOT), **(env or {}))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environ, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


needs_native = pytest.mark.skipif(not backend.native_available(), reason="native kernels not built")
GOMP_FIRST = "import ctypes; ctypes.CDLL('libgomp.so.1')  # as torch does when imported first"


def _has_libgomp():
    import ctypes
    try:
        ctypes.CDLL("libgomp.so.1")
        return True
    except OSError:
        return False


@needs_native
def test_nanodl_loading_libgomp_gets_the_short_spin_and_all_threads():
    info = _probe("")
    if info["openmp_runtime"] != "libgomp":
        pytest.skip("the kernels are not built against libgomp")
    assert info["openmp_loaded_before_nanodl"] is False and info["openmp_short_spin"] is True
    assert info["openmp_kernel_cap"] is None
    assert info["kernel_threads"] == (os.cpu_count() or 1) or info["kernel_threads"] >= 1


@needs_native
@pytest.mark.skipif(not _has_libgomp(), reason="no libgomp.so.1 on this system")
def test_libgomp_loaded_first_caps_the_kernels_at_one_thread():
    info = _probe(GOMP_FIRST)
    assert info["openmp_loaded_before_nanodl"] is True and info["openmp_short_spin"] is False
    assert info["openmp_kernel_cap"] == 1 and info["kernel_threads"] == 1


@needs_native
@pytest.mark.skipif(not _has_libgomp(), reason="no libgomp.so.1 on this system")
@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "2"}, {"GOMP_SPINCOUNT": "1000"},
                                 {"NANODL_THREAD_POLICY": "off"}])
def test_users_openmp_choice_wins_over_the_cap(env):
    info = _probe(GOMP_FIRST, env)
    assert info["openmp_kernel_cap"] is None
    if "OMP_NUM_THREADS" in env:
        assert info["kernel_threads"] == 2


@needs_native
def test_torch_first_caps_the_kernels():
    pytest.importorskip("torch")
    info = _probe("import torch")
    if info["openmp_runtime"] == "libgomp" and info["openmp_loaded_before_nanodl"]:
        assert info["openmp_kernel_cap"] == 1 and info["kernel_threads"] == 1


@needs_native
def test_capped_kernels_give_the_same_bits():
    """The cap changes how many threads run a loop, never what it computes (raw csrc calls)."""
    from nanodl.backend import _activations, _linear, _optim, _xent
    modules = (_activations, _linear, _optim, _xent)
    act_tanh, act_gelu = 4, 5  # the ACT_* codes of csrc/elementwise.pxd
    rng = np.random.default_rng(0)
    n = 300_000  # above every parallel threshold
    grad = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((600, 500)).astype(np.float32)
    bias = rng.standard_normal(500).astype(np.float32)
    results, seen_threads = [], []
    previous = threads._openmp["kernel_cap"] or 0
    try:
        for cap in (0, 1):
            for module in modules:
                module.set_thread_cap(cap)
            seen_threads.append(_optim.kernel_threads())
            param = np.linspace(-1, 1, n, dtype=np.float32)
            buf = np.zeros_like(param)
            _optim.sgd_step(param, grad, buf, 0.1, 0.9, False, 0.0)
            tanh = np.empty(x.size, np.float32)
            _activations.forward(act_tanh, x.ravel(), tanh, 0.0)
            gelu = np.empty_like(x)
            _linear.bias_act(act_gelu, x.copy(), bias, gelu, 0.0)
            results.append((param, buf, tanh, gelu))
    finally:
        for module in modules:
            module.set_thread_cap(previous)
    assert seen_threads[1] == 1
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)


def test_random_using_is_per_thread():
    """A thread inside random.using draws from its generator; another thread, meanwhile,
    from the global one (the old sklearn code swapped the global generator instead)."""
    import threading
    from nanodl import random as nd_random
    entered, checked = threading.Event(), threading.Event()
    own = np.random.default_rng(0)
    seen = {}

    def inside():
        with nd_random.using(own):
            seen["inside"] = nd_random.generator()
            entered.set()
            checked.wait(5)
        seen["after"] = nd_random.generator()
    thread = threading.Thread(target=inside)
    thread.start()
    entered.wait(5)
    seen["other thread"] = nd_random.generator()
    checked.set()
    thread.join()
    assert seen["inside"] is own
    assert seen["other thread"] is nd_random.generator() and seen["other thread"] is not own
    assert seen["after"] is not own and not nd_random._thread_generators
    with pytest.raises(TypeError, match="using: expected a numpy.random.Generator, got int"):
        with nd_random.using(3):
            pass
