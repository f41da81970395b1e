"""The progress bar: formatting (us/ms/s per step), live redraws on a terminal and in
a Jupyter notebook, and ``verbose='auto'``."""
import io
import re
import sys
import time
import types

import numpy as np
import pytest

import nanodl as nd
from nanodl import callbacks, nn


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Slow(callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        time.sleep(0.03)


def model_and_data(n=64):
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential([nn.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, x, y


class FakeHandle:
    def __init__(self, log, bundle):
        self.log = log
        log.append(("display", bundle["text/plain"]))

    def update(self, bundle, raw=False):
        assert raw
        self.log.append(("update", bundle["text/plain"]))


@pytest.fixture
def notebook(monkeypatch):
    """A stand-in for a Jupyter kernel process: an ``ipykernel`` module and an
    ``IPython`` whose shell has a kernel, and whose ``display`` records what it shows
    (``notebook.log``: ``('display' | 'update', text)``)."""
    shell = types.SimpleNamespace(kernel=object(), log=[])
    ipython = types.ModuleType("IPython")
    ipython.__path__ = []  # a package, so that IPython.display imports
    ipython.get_ipython = lambda: shell
    display_module = types.ModuleType("IPython.display")

    def display(bundle, raw=False, display_id=None):
        assert raw and display_id is True
        return FakeHandle(shell.log, bundle)
    display_module.display = display
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return shell


# ---------------------------------------------------------------- formatting
@pytest.mark.parametrize("seconds, text", [
    (85e-6, "85us/step"), (4e-7, "0us/step"), (999.4e-6, "999us/step"), (999.6e-6, "1ms/step"),
    (0.0123, "12ms/step"), (0.9996, "1s/step"), (2.4, "2s/step"), (75.0, "75s/step")])
def test_step_time_reads_in_us_ms_or_s(seconds, text):
    assert callbacks.format_step_time(seconds) == text


def test_sub_millisecond_steps_show_in_microseconds(monkeypatch):
    clock = iter([10.0, 10.00085])  # epoch start, epoch end: 10 steps in 0.85 ms
    monkeypatch.setattr(callbacks.progress.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    bar = callbacks.ProgressBar(1, stream=stream)
    bar.set_params({"epochs": 1, "steps": 10})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    bar.on_epoch_end(0, {"loss": 0.5, "lr": 0.1})
    assert stream.getvalue().endswith("10/10 [==============================] - 0s 85us/step - loss: 0.5000\n")


def test_fit_reports_a_time_per_step():
    model, x, y = model_and_data()
    stream = io.StringIO()
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[callbacks.ProgressBar(1, stream=stream)])
    assert re.search(r"8/8 \[=+\] - \d+s \d+(us|ms)/step - loss: ", stream.getvalue())


# ---------------------------------------------------------------- notebooks
def test_notebook_detection(monkeypatch, notebook):
    assert callbacks.in_notebook()
    notebook.kernel = None  # IPython in a terminal: a shell without a kernel
    assert not callbacks.in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")  # ipykernel imported, no IPython shell
    assert not callbacks.in_notebook()


def test_no_notebook_here_and_ipython_is_not_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not callbacks.in_notebook()
    assert "IPython" not in sys.modules


def test_in_a_notebook_the_bar_is_one_display_updated_in_place(notebook, capsys):
    model, x, y = model_and_data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=1, callbacks=[Slow()])
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # no stream of carriage returns
    kinds = [kind for kind, _ in notebook.log]
    assert kinds[0] == "display" and kinds.count("display") == 1  # one display for the fit
    assert kinds.count("update") >= 3  # redrawn live, in place
    assert any("ETA" in text for _, text in notebook.log)
    final = notebook.log[-1][1].splitlines()  # what a saved notebook keeps: a line per epoch
    assert len(final) == 2 and all(re.match(rf"Epoch {i}/2 - 8/8 \[=+\] - ", line)
                                   for i, line in enumerate(final, start=1))
    assert "\r" not in "".join(text for _, text in notebook.log)


def test_outside_a_notebook_a_pipe_gets_one_line_per_epoch(capsys):
    model, x, y = model_and_data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=1, callbacks=[Slow()])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "ETA" not in err and "\r" not in err and len(lines) == 3
    assert all(re.match(rf"Epoch {i}/3 - 8/8 \[=+\] - \d+s \d+(us|ms)/step - loss: ", line)
               for i, line in enumerate(lines, start=1))


# ---------------------------------------------------------------- verbose='auto'
def test_verbose_auto(monkeypatch, notebook):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert callbacks.resolve_verbose("auto") == 1  # a notebook
    notebook.kernel = None
    assert callbacks.resolve_verbose("auto") == 2  # stderr is a file or a pipe
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert callbacks.resolve_verbose("auto") == 1  # a terminal
    for value in (0, 1, 2):
        assert callbacks.resolve_verbose(value) == value


def test_fit_with_verbose_auto_logs_one_line_per_epoch_to_a_file(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    model, x, y = model_and_data(32)
    model.fit(x, y, epochs=2, verbose="auto")
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and all(re.match(r"Epoch \d/2 - \d+\.\d\ds - loss: ", line) for line in lines)


def test_fit_with_verbose_auto_draws_the_bar_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model, x, y = model_and_data()
    model.fit(x, y, batch_size=8, verbose="auto", callbacks=[Slow()])
    assert "ETA" in terminal.getvalue() and terminal.getvalue().startswith("Epoch 1/1\n")


@pytest.mark.parametrize("verbose", [3, -1, "yes", "1", None, 1.5])
def test_bad_verbose_raises(verbose):
    model, x, y = model_and_data(8)
    with pytest.raises(ValueError, match="verbose"):
        model.fit(x, y, verbose=verbose)


# ---------------------------------------------------------------- a real Jupyter kernel
FIT_CELL = (
    "import time, numpy as np, nanodl as nd\n"
    "from nanodl import nn, callbacks\n"
    "class Slow(callbacks.Callback):\n"
    "    def on_batch_end(self, batch, logs=None):\n"
    "        time.sleep(SLEEP)\n"
    "nd.manual_seed(0)\n"
    "x = np.random.default_rng(0).standard_normal((96, 3)).astype('float32')\n"
    "m = nn.Sequential([nn.Dense(2, activation='softmax')])\n"
    "m.compile(loss='sparse_categorical_crossentropy')\n"
    "h = m.fit(x, (x[:, 0] > 0).astype('int64'), batch_size=8, epochs=EPOCHS, verbose=1,\n"
    "          callbacks=[Slow()])\n")


def _kernel_environment(monkeypatch):
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


def test_a_saved_notebook_holds_one_line_per_epoch(monkeypatch):
    """Execute a real notebook (nbclient, an ipykernel): the fit cell's saved outputs
    are one display holding one line per epoch, however often the bar redrew."""
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _kernel_environment(monkeypatch)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(FIT_CELL.replace("EPOCHS", "3").replace("SLEEP", "0.02")),
        nbformat.v4.new_code_cell("print(len(h.epoch))")])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "display_data"
    lines = outputs[0].data["text/plain"].splitlines()
    assert len(lines) == 3 and all(re.match(rf"Epoch {i}/3 - 12/12 \[=+\] - .*loss: ", line)
                                   for i, line in enumerate(lines, start=1))
    assert notebook.cells[1].outputs[0].text == "3\n"


def test_the_bar_is_live_in_a_real_jupyter_kernel(monkeypatch):
    """The display is updated while the cell still runs (that is what makes it live),
    through update_display_data messages for one display id, never on stderr."""
    pytest.importorskip("ipykernel")
    manager_module = pytest.importorskip("jupyter_client.manager")
    _kernel_environment(monkeypatch)
    manager, client = manager_module.start_new_kernel(kernel_name="python3")
    try:
        msg_id = client.execute(FIT_CELL.replace("EPOCHS", "1").replace("SLEEP", "0.05") + "print('done')\n")
        shown, streams = [], []
        while True:
            message = client.get_iopub_msg(timeout=60)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind in ("display_data", "update_display_data"):
                shown.append((time.monotonic(), kind, content["transient"]["display_id"],
                              content["data"]["text/plain"]))
            elif kind == "stream":
                streams.append((content["name"], content["text"]))
            elif kind == "error":
                pytest.fail("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert streams == [("stdout", "done\n")]
    assert [kind for _, kind, _, _ in shown][:1] == ["display_data"]
    assert len({display_id for _, _, display_id, _ in shown}) == 1
    redraws = [when for when, _, _, text in shown if "ETA" in text]
    # drawn over time, not at the end: the 12 batches take 0.6 s, the redraws span a third of it
    assert len(redraws) >= 2 and redraws[-1] - redraws[0] > 0.2
    assert "12/12 [" in shown[-1][3]


def test_a_progress_bar_among_the_callbacks_is_the_only_one(capsys):
    model, x, y = model_and_data(32)
    stream = io.StringIO()
    model.fit(x, y, epochs=2, verbose=1, callbacks=[callbacks.ProgressBar(2, stream=stream)])
    assert capsys.readouterr().err == ""  # fit added no second bar
    assert stream.getvalue().count("Epoch") == 2
