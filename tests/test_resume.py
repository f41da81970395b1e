"""Keeping work (SPEC §16): training stopped and continued in a new process ends where
an uninterrupted run does, for every optimizer and with a scheduler in play; a fit
killed mid-epoch (a real SIGKILL) and run again with BackupAndRestore does too.

The runs are separate processes (``tests/resume_worker.py``), so nothing survives in
memory: only what the files hold.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import nanodl as nd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "resume_worker.py")
NAMES = ["sgd", "sgd_momentum", "adam", "adamw", "adagrad", "rmsprop"]
STARTING_LR = {"sgd": 0.05, "sgd_momentum": 0.05, "adam": 0.01, "adamw": 0.01, "adagrad": 0.05,
               "rmsprop": 0.005}


def worker(*args, check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def max_relative_difference(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-12))) for k in b)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Each optimizer: 4 epochs uninterrupted; 2 epochs, save, and in a third process
    load and train epochs 2 and 3."""
    folder = tmp_path_factory.mktemp("resume")
    names = ",".join(NAMES)
    worker("full", names, 4, folder)
    worker("first", names, 2, folder)
    worker("resume", names, 4, folder)
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_save_load_and_continue_equals_an_uninterrupted_fit(resumed, name):
    full = nd.load(resumed / f"{name}-full.npz")
    continued = nd.load(resumed / f"{name}-resume.npz")
    assert int(continued.pop("epochs_at_load")) == 2
    # ReduceLROnPlateau halved the rate after the first epoch: the loaded model has it
    assert float(continued.pop("lr_at_load")) == pytest.approx(STARTING_LR[name] / 2, rel=1e-12)
    for key, value in full.items():
        np.testing.assert_allclose(continued[key], value, rtol=1e-6, atol=0, err_msg=key)
    print(f"{name}: max relative difference {max_relative_difference(continued, full):.2e}")


def test_without_the_optimizer_state_the_continuation_differs(tmp_path):
    """The check above can fail: a model saved without its optimizer state (Adam's
    moments, step counts, the lowered rate) continues elsewhere."""
    worker("full", "adam", 4, tmp_path)
    worker("first", "adam", 2, tmp_path)
    model_path = tmp_path / "adam-model.npz"
    model = nd.load_model(model_path)
    model.save(model_path, include_optimizer=False)
    worker("resume", "adam", 4, tmp_path)
    full, continued = nd.load(tmp_path / "adam-full.npz"), nd.load(tmp_path / "adam-resume.npz")
    assert float(continued["lr_at_load"]) == pytest.approx(0.01)  # the compiled rate, not the lowered
    assert max_relative_difference({k: continued[k] for k in full}, full) > 1e-3


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_a_killed_fit_resumed_by_backup_and_restore_ends_where_an_uninterrupted_one_does(
        tmp_path, name):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    worker("backup", name, 5, reference)
    assert not (reference / f"{name}-backup").exists()  # a finished fit deletes its backup
    killed = worker("backup", name, 5, interrupted, 3, check=False)
    assert killed.returncode == -9  # SIGKILL, in the middle of epoch 3
    assert (interrupted / f"{name}-backup" / "backup.npz").exists()
    assert not (interrupted / f"{name}-backup.npz").exists()
    worker("backup", name, 5, interrupted)  # the same fit again
    rerun = nd.load(interrupted / f"{name}-backup.npz")
    assert rerun.pop("epochs_run").tolist() == [3, 4]  # continued after the last whole epoch
    expected = nd.load(reference / f"{name}-backup.npz")
    assert expected.pop("epochs_run").tolist() == [0, 1, 2, 3, 4]
    for key, value in expected.items():
        np.testing.assert_allclose(rerun[key], value, rtol=1e-6, atol=0, err_msg=key)
    assert not (interrupted / f"{name}-backup").exists()


class Interrupt(Exception):
    pass


def test_backup_and_restore_keeps_the_other_callbacks_state(tmp_path):
    """An exception mid-epoch, then the same fit again: the plateau's counters and early
    stopping's best come back with the weights, so the rerun decides as the whole run."""
    from nanodl import callbacks, nn, optim

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)

    def run(interrupt_at=None):
        nd.manual_seed(0)
        model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=3), nn.Dense(1)])
        model.compile(optimizer=optim.Adam(lr=0.05), loss="mse")
        plateau = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1,
                                              min_delta=0.2)
        stop = callbacks.EarlyStopping(monitor="loss", min_delta=0.05, patience=2)

        class Breaker(callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == interrupt_at:
                    raise Interrupt

        history = model.fit(x, y, epochs=12, batch_size=16, verbose=0, callbacks=[
            callbacks.BackupAndRestore(tmp_path / "backup"), plateau, stop, Breaker()])
        return model, history

    whole, whole_history = run()
    with pytest.raises(Interrupt):
        run(interrupt_at=4)
    assert (tmp_path / "backup" / "backup.npz").exists()
    resumed, history = run()
    # the whole run: the rate halves after epochs 3 and 4, early stopping ends it at 5
    assert whole_history.epoch == [0, 1, 2, 3, 4, 5]
    assert whole_history.history["lr"][3:] == [0.05, 0.025, 0.0125]
    assert history.epoch == [4, 5]  # went on after the last whole epoch, stopped alike
    assert history.history["lr"] == whole_history.history["lr"][4:]
    for key, value in whole.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key], value, rtol=1e-6)


def test_a_backup_of_another_model_is_refused(tmp_path):
    from nanodl import callbacks, nn
    x, y = np.ones((8, 2), np.float32), np.zeros(8, np.float32)
    small = nn.Sequential([nn.Dense(1, input_dim=2)])
    small.compile(optimizer="sgd", loss="mse")
    small.fit(x, y, epochs=1, verbose=0,
              callbacks=[callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    other = nn.Sequential([nn.Dense(3, input_dim=2), nn.Dense(1)])
    other.compile(optimizer="sgd", loss="mse")
    with pytest.raises((KeyError, ValueError)):
        other.fit(x, y, epochs=2, verbose=0, callbacks=[callbacks.BackupAndRestore(tmp_path)])
