"""A training script for tests/test_resume.py, run in processes of its own.

    python tests/resume_worker.py MODE NAMES EPOCHS FOLDER [DIE_AT_EPOCH]

NAMES are comma-separated keys of OPTIMIZERS; every file goes to FOLDER. MODE:
``full`` trains EPOCHS epochs uninterrupted (weights to ``NAME-full.npz``);
``first`` trains EPOCHS epochs and ``model.save``s ``NAME-model.npz``; ``resume``
loads that file with ``nanodl.load_model`` and trains on to EPOCHS with
``initial_epoch`` (weights to ``NAME-resume.npz``); ``backup`` trains a model with
dropout under ``callbacks.BackupAndRestore`` (weights and the epochs it ran to
``NAME-backup.npz``), and with DIE_AT_EPOCH kills itself with SIGKILL in the middle
of that epoch (a real kill -9: nothing is cleaned up).

The data and the model are seeded, and ``shuffle=False`` (except under the backup,
which keeps the random generator), so two runs see the same batches. A ReduceLROnPlateau (on the
training loss, every epoch counted as no improvement) halves the rate after the
first epoch and then sits at its floor: the lowered rate is what must survive.
"""
import os
import signal
import sys

import numpy as np

import nanodl as nd
from nanodl import callbacks, nn, optim

OPTIMIZERS = {  # name: (optimizer, its starting rate)
    "sgd": (lambda: optim.SGD(lr=0.05), 0.05),
    "sgd_momentum": (lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), 0.05),
    "adam": (lambda: optim.Adam(lr=0.01, amsgrad=True), 0.01),
    "adamw": (lambda: optim.AdamW(learning_rate=0.01), 0.01),
    "adagrad": (lambda: optim.Adagrad(lr=0.05, lr_decay=0.01), 0.05),
    "rmsprop": (lambda: optim.RMSprop(lr=0.005, momentum=0.5, centered=True), 0.005),
}


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    return x, y


def model(name, dropout=0.0):
    """A seeded model; dropout draws random numbers, which only a backup restores."""
    nd.manual_seed(0)
    layers = [nn.Dense(16, activation="tanh", input_dim=5), nn.Dense(2, activation="softmax")]
    if dropout:
        layers.insert(1, nn.Dropout(dropout))
    net = nn.Sequential(layers)
    net.compile(optimizer=OPTIMIZERS[name][0](), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    return net


def plateau(name):
    """Every epoch is 'no improvement': the rate halves after the first epoch, then sits
    at its floor (so a fresh callback in the resumed process does the same)."""
    return callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9,
                                       min_lr=OPTIMIZERS[name][1] / 2)


class DieMidEpoch(callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.die_at = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.epoch == self.die_at and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(net, name, x, y, epochs, initial_epoch=0, extra=(), shuffle=False):
    return net.fit(x, y, batch_size=16, epochs=epochs, initial_epoch=initial_epoch, shuffle=shuffle,
                   verbose=0, callbacks=[plateau(name), *extra])


def run(mode, name, epochs, folder, die_at=None):
    x, y = data()
    path = os.path.join(folder, f"{name}-{mode}.npz")
    if mode == "full":
        net = model(name)
        fit(net, name, x, y, epochs)
        nd.save(net.state_dict(), path)
    elif mode == "first":
        net = model(name)
        fit(net, name, x, y, epochs)
        net.save(os.path.join(folder, f"{name}-model.npz"))
    elif mode == "resume":
        net = nd.load_model(os.path.join(folder, f"{name}-model.npz"))
        state = {"lr_at_load": np.float64(net.optimizer.lr), "epochs_at_load": net.epochs_trained}
        fit(net, name, x, y, epochs, initial_epoch=net.epochs_trained)
        nd.save(dict(net.state_dict(), **state), path)
    elif mode == "backup":
        net = model(name, dropout=0.2)
        extra = [callbacks.BackupAndRestore(os.path.join(folder, f"{name}-backup"))]
        if die_at is not None:
            extra.append(DieMidEpoch(die_at))
        history = fit(net, name, x, y, epochs, extra=extra, shuffle=True)  # the backup keeps
        # nanodl's random generator too, so even shuffled epochs and dropout resume exactly
        nd.save(dict(net.state_dict(), epochs_run=np.array(history.epoch)), path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def main(argv):
    """``MODE NAMES EPOCHS FOLDER [DIE_AT_EPOCH]``: NAMES comma-separated; files in FOLDER."""
    die_at = int(argv[4]) if len(argv) > 4 else None
    for name in argv[1].split(","):
        run(argv[0], name, int(argv[2]), argv[3], die_at)


if __name__ == "__main__":
    main(sys.argv[1:])
