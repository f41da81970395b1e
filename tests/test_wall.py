"""The core imports no wing (issue 18, item 1): the wings plug into seams.

``nn.model`` took its step from ``nanodl.capture`` and its data-parallel strategy and
rank from ``nanodl.distributed``; ``callbacks`` asked ``distributed`` whether to print.
Now the core declares the seams (``nn.model.register_capture``, an optimizer's
``fit_strategy()``, ``callbacks.register_writer``) and the wings fill them.
"""
import io

import numpy as np

from nanodl import callbacks, nn, optim
from test_imports import import_graph

WINGS = ("nanodl.capture", "nanodl.distributed", "nanodl.onnx", "nanodl.sklearn", "nanodl.cli")
# the core as issue 18 names it, and the file format beside it
WALLED = ("nanodl.tensor", "nanodl.autograd", "nanodl.ops", "nanodl.backend", "nanodl.nn",
          "nanodl.optim", "nanodl.losses", "nanodl.callbacks", "nanodl.data", "nanodl.io",
          "nanodl.gradcheck", "nanodl.archive", "nanodl.modelfile", "nanodl.functional",
          "nanodl.regularizers", "nanodl.random")


def test_the_core_imports_no_wing():
    graph = import_graph()
    crossing = {module: sorted(name for name in top | late if name.startswith(WINGS))
                for module, (top, late) in graph.items() if module.startswith(WALLED)}
    assert not {module: names for module, names in crossing.items() if names}


def test_a_registered_writer_silences_printing_and_saving(tmp_path, monkeypatch):
    # what distributed registers on ranks other than 0
    monkeypatch.setattr(callbacks.base, "_writer", [lambda: False])
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    model = nn.Sequential([nn.Dense(1, input_dim=3)])
    model.compile(optimizer=optim.SGD(lr=0.1), loss="mse")
    stream = io.StringIO()
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[
        callbacks.ProgressBar(2, stream=stream), callbacks.CSVLogger(tmp_path / "log.csv")])
    model.save(tmp_path / "model.npz")
    assert stream.getvalue() == "" and not list(tmp_path.iterdir())
    callbacks.register_writer(lambda: True)
    model.save(tmp_path / "model.npz")
    assert (tmp_path / "model.npz").exists() and callbacks.should_write()


def test_distributed_registers_its_rank_as_the_writer():
    import nanodl.distributed as dist
    assert callbacks.base._writer[0] is dist._is_rank_zero and callbacks.should_write()
