"""One plateau counter (issue 18, item 6): ``optim.lr_scheduler.Plateau`` counts the
epochs without improvement for the scheduler, for the Keras ``ReduceLROnPlateau``
callback (an adapter of the scheduler) and for ``EarlyStopping``.

The callbacks keep Keras' semantics exactly: here they are driven side by side with
the rules as Keras writes them, over random loss curves.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from nanodl import callbacks, nn, optim
from nanodl.optim.lr_scheduler import Plateau


def keras_reduce_lr(values, factor, patience, cooldown, min_delta, min_lr, lr=1.0):
    """Keras' ReduceLROnPlateau, 'min' mode: the learning rate after each epoch."""
    best, wait, counter, lrs = math.inf, 0, 0, []
    for value in values:
        if counter > 0:
            counter -= 1
            wait = 0
        if value < best - min_delta:
            best, wait = value, 0
        elif counter == 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_lr):
                lr = max(lr * factor, min_lr)
                counter, wait = cooldown, 0
        lrs.append(lr)
    return lrs


def keras_early_stopping(values, patience, min_delta, baseline=None):
    """Keras' EarlyStopping, 'min' mode: the epoch it stops at, or None."""
    best, wait = math.inf, 0
    for epoch, value in enumerate(values):
        wait += 1
        if value + min_delta < best:
            best = value
            if baseline is None or value + min_delta < baseline:
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch
    return None


def curves(count=60, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        steps = rng.choice([0.0, 0.01, 0.1, -0.05], size=int(rng.integers(5, 25)))
        yield np.round(1.0 - np.cumsum(steps), 3).tolist(), rng


def test_the_reduce_lr_callback_adapts_the_scheduler_with_keras_semantics():
    for values, rng in curves():
        patience, cooldown = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        min_delta, min_lr = float(rng.choice([0.0, 0.02, 0.2])), float(rng.choice([0.0, 0.1]))
        reduce = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=patience,
                                             cooldown=cooldown, min_delta=min_delta, min_lr=min_lr)
        model = SimpleNamespace(optimizer=SimpleNamespace(lr=1.0))
        reduce.set_model(model)
        reduce.on_train_begin({})
        lrs = []
        for epoch, value in enumerate(values):
            reduce.on_epoch_end(epoch, {"loss": value})
            lrs.append(model.optimizer.lr)
        assert lrs == keras_reduce_lr(values, 0.5, patience, cooldown, min_delta, min_lr), \
            (values, patience, cooldown, min_delta, min_lr)
    assert isinstance(reduce.scheduler, optim.lr_scheduler.ReduceLROnPlateau)


def test_early_stopping_counts_with_the_same_counter():
    for values, rng in curves(seed=1):
        patience, min_delta = int(rng.integers(0, 4)), float(rng.choice([0.0, 0.0625, 0.25]))
        baseline = [None, 0.9][int(rng.integers(0, 2))]
        stopper = callbacks.EarlyStopping(monitor="loss", patience=patience, min_delta=min_delta,
                                          baseline=baseline)
        model = SimpleNamespace(stop_training=False)
        stopper.set_model(model)
        stopper.on_train_begin({})
        stopped = None
        for epoch, value in enumerate(values):
            stopper.on_epoch_end(epoch, {"loss": value})
            if model.stop_training:
                stopped = epoch
                break
        assert stopped == keras_early_stopping(values, patience, min_delta, baseline)
    assert isinstance(stopper.plateau, Plateau)


def test_the_scheduler_is_a_plateau_and_its_state_stays_numbers():
    opt = optim.SGD(nn.Dense(2, input_dim=2).parameters(), lr=1.0)
    scheduler = optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    assert isinstance(scheduler, Plateau)
    for value in (1.0, 1.0, 1.0):
        scheduler.step(value)
    assert opt.lr == 0.5 and scheduler.num_bad_epochs == 0
    assert all(isinstance(v, (int, float, str, list)) for v in scheduler.state_dict().values())


def test_a_restored_callback_continues_counting():
    # BackupAndRestore saves and sets these attributes by name
    first = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2)
    model = SimpleNamespace(optimizer=SimpleNamespace(lr=1.0))
    first.set_model(model)
    for epoch, value in enumerate([1.0, 1.0, 1.0]):
        first.on_epoch_end(epoch, {"loss": value})
    state = {name: getattr(first, name) for name in first._state_attributes}
    second = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2)
    second.set_model(model)
    for name, value in state.items():
        setattr(second, name, value)
    for epoch, value in enumerate([1.0, 1.0, 1.0], start=3):
        second.on_epoch_end(epoch, {"loss": value})
    assert model.optimizer.lr == pytest.approx(0.25)
