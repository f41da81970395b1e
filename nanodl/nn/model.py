"""``Model`` (a Module with Keras' compile/fit/evaluate/predict) and ``Sequential``.

``fit`` reads top to bottom; ``docs/training.md`` walks through it piece by piece.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn
>>> nd.manual_seed(0)
>>> model = nn.Sequential([nn.Dense(8, activation='tanh'), nn.Dense(1)])
>>> model.compile(optimizer='sgd', loss='mse')
>>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
>>> history = model.fit(x, 2 * x, epochs=3, verbose=0)
>>> sorted(history.history), len(history.epoch)
(['loss', 'lr'], 3)
"""
import contextlib
import math
import threading
import weakref

import numpy as np

from .. import archive
from ..modelfile import save_model
from .. import callbacks as callbacks_module
from .. import losses as losses_module
from .. import optim
from ..autograd import no_grad
from ..backend import to_device, to_host
from ..data import batch_slices
from ..diagnostics.summary import summary as layer_summary
from ..tensor import Tensor, as_array, get_default_dtype
from .checks import compile_config, input_error, wanted_features, warn_missing_activation
from .layers import Dense, Embedding
from .lr_finder import find_lr as _find_lr
from .metrics import METRICS, EpochTotals, add_batch, metric_specs
from .module import Module, ModuleList
from .plan import LOCAL_FIT, _Plan, captured_step, fuse_logits
from .prepare import (_check_batch_size, _check_epochs, _samples, fit_callbacks, predict_inputs,
                      prepare, prepare_fit)

__all__ = ["Model", "Sequential", "METRICS", "EpochTotals", "fuse_logits"]

# One lock per model, held by each training step and by ``save`` (a save from another
# thread writes one step's weights, never a mix); beside the model, so a model pickles.
_STATE_LOCKS = weakref.WeakKeyDictionary()


def _state_lock(model):
    lock = _STATE_LOCKS.get(model)
    return lock if lock is not None else _STATE_LOCKS.setdefault(model, threading.RLock())


class Model(Module):
    """A Module with Keras' training loop; subclass it and write ``forward``."""

    # Class defaults, so a subclass that forgets super().__init__() still works.
    optimizer = None          # set by compile
    loss = None               # name or callable, as given to compile
    stop_training = False     # a callback sets it to end fit after the current epoch
    history = None            # the History of the last fit
    _metric_specs = ()        # (label, name or callable) per compiled metric
    _compile_config = None    # compile settings by name, saved with the model
    _plan_cache = None        # (key, _Plan) of the last fit/evaluate
    _target_device = None     # where lazily built layers go (set by to())
    _data_parallel = None     # the optimizer's fit_strategy() during a data-parallel fit
    _builds_itself = True     # its layers build on the first batch (Module.__call__ calls no build)
    epochs_trained = 0        # epochs fit has completed (saved with the model)
    # What fit records about itself: no step reads it (a captured step's signature skips it).
    _bookkeeping = frozenset({"history", "stop_training", "epochs_trained", "_resume_epoch",
                              "_plan_cache", "_data_parallel", "_compile_config"})

    # ------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss="mse", metrics=None):
        """Choose the optimizer (name or instance), the loss (name or callable) and metrics."""
        optimizer = optim.get(optimizer)
        losses_module.get(loss)  # validates a name
        specs = metric_specs(metrics)
        self.optimizer, self.loss, self._metric_specs = optimizer, loss, specs
        self._plan_cache = None
        self._compile_config = compile_config(optimizer, loss, specs)
        warn_missing_activation(self, loss)

    def _require_compiled(self, what):
        if self.optimizer is None:
            raise RuntimeError(f"{what}: call compile(optimizer, loss, metrics) first")

    # ------------------------------------------------------------ building
    def _device(self):
        return next((param.device for param in self.parameters()), self._target_device or "cpu")

    def _float_dtype(self):
        return next((param.dtype for param in self.parameters()), get_default_dtype())

    def _input_dtype(self, dtype):
        """What inputs of ``dtype`` are cast to: the float dtype, or indices for an Embedding."""
        indices = np.dtype(dtype).kind in "iu" and self._takes_indices()
        return np.dtype(dtype) if indices else self._float_dtype()

    def _takes_indices(self):
        return False

    @contextlib.contextmanager
    def _mode(self, training):
        """Run a block in training or eval mode, then restore every module's own mode."""
        saved = [(module, module.training) for module in self.modules()]
        self.train(training)
        try:
            yield
        finally:
            for module, mode in saved:
                module.__dict__["training"] = mode

    def _build_on(self, x_sample):
        """Run two samples through the model (eval mode, no graph): builds lazy layers."""
        x = as_array(x_sample, what="x")[:2]
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.dtype.kind != "f":
            x = x.astype(self._input_dtype(x.dtype))
        x = to_device(x, self._device())
        try:
            with self._mode(False), no_grad():
                out = self.forward(Tensor(x))
        except ValueError as error:  # name the layer and the user's shape, not this probe's
            raise input_error(self, np.shape(x_sample), x, error, "fit") from None
        self._input_shape = tuple(x.shape[1:])
        return out

    def build(self, input_shape):
        """Build every layer for inputs of ``input_shape`` (with or without the batch axis None)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self._build_on(np.zeros((1,) + shape, dtype=self._input_dtype(np.dtype(np.int64))))
        return self

    def _logits_head(self):
        """``(layers before, last Dense)`` when the output is a Dense (see ``fuse_logits``)."""
        return None

    def to(self, device):
        super().to(device)
        self._target_device = device
        optimizer = self.optimizer
        if optimizer is not None and optimizer.params is not None:
            optimizer.load_state_dict(optimizer.state_dict())  # its state follows the parameters
        self._plan_cache = None
        return self

    def _plan(self, x, y):
        head = self._logits_head()
        key = (tuple(x.shape[1:]), tuple(y.shape[1:]), len(self.parameters()),
               head is not None and bool(head[1].__dict__.get("_forward_hooks")))
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, _Plan(self, x, y))
        return self._plan_cache[1]

    # ------------------------------------------------------------ fit
    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, validation_data=None,
            validation_split=0.0, shuffle=True, callbacks=None, class_weight=None,
            sample_weight=None, capture="auto", initial_epoch=0):
        """Train for ``epochs`` passes over ``(x, y)``; returns the ``callbacks.History``.

        Loss (with the weight penalties) and metrics are per-sample averages over the epoch;
        ``validation_split`` holds out the *last* fraction, before shuffling (Keras). ``capture``:
        train through a captured step (docs/capture.md). See docs/training.md.
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size, "fit")
        _check_epochs(epochs)
        _check_epochs(initial_epoch, "initial_epoch")
        verbose = callbacks_module.resolve_verbose(verbose)
        plan, (x, y, weight), validation = prepare_fit(
            self, x, y, sample_weight, class_weight, validation_data, validation_split)
        verbose, validation = self._start_data_parallel(plan, verbose, validation, dict(
            x=x, y=y, weight=weight, batch_size=batch_size, epochs=epochs, shuffle=shuffle))
        batch_size = plan.fit_batch_size(batch_size, self._samples_per_epoch(len(x)))
        steps = math.ceil(self._samples_per_epoch(len(x)) / batch_size)
        self.stop_training, self.history = False, callbacks_module.History()
        callbacks = fit_callbacks(self, callbacks, verbose, epochs, steps)
        logs = {}
        train_step = self._train_step
        if plan.capturable(capture, self._data_parallel is None and
                           type(self)._train_step is Model._train_step):
            train_step = captured_step(plan) or train_step
        self._resume_epoch = initial_epoch  # callbacks.BackupAndRestore may move it on
        with self._mode(True):
            callbacks.on_train_begin({})
            for epoch in range(self._resume_epoch, epochs):
                callbacks.on_epoch_begin(epoch, {})
                lr = float(self.optimizer.lr)  # after the schedulers of on_epoch_begin
                logs = self._fit_epoch(plan, x, y, weight, batch_size, shuffle, callbacks,
                                       train_step)
                if validation is not None:
                    val_logs = self._evaluate_arrays(plan, *validation, batch_size, reduce=True)
                    logs.update({"val_" + key: value for key, value in val_logs.items()})
                logs["lr"] = lr
                self.epochs_trained = epoch + 1
                callbacks.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            callbacks.on_train_end(logs)
        return self.history

    def _start_data_parallel(self, plan, verbose, validation, settings):
        """Start the optimizer's ``fit_strategy()``, if any; returns ``(verbose, validation)``."""
        strategy = getattr(plan.optimizer, "fit_strategy", None)
        self._data_parallel = parallel = strategy() if strategy is not None else None
        if parallel is None:
            return verbose, validation
        parallel.begin(self, plan, validation=validation, **settings)
        if validation is not None:
            validation = parallel.validation_shard(*validation)
        return (verbose if parallel.rank == 0 else 0), validation

    def _fit_epoch(self, plan, x, y, weight, batch_size, shuffle, callbacks, train_step=None):
        """One pass in ``_epoch_order``, one ``_train_step`` per batch; returns the epoch's logs."""
        order = self._epoch_order(len(x), shuffle)
        if order is not None:
            order = to_device(order, plan.device)
            x, y = x[order], y[order]
            weight = None if weight is None else weight[order]
        totals = EpochTotals(plan.metrics)
        train_step, lock = train_step or self._train_step, _state_lock(self)
        for step, batch in enumerate(batch_slices(len(x), batch_size)):
            y_batch, w_batch = y[batch], None if weight is None else weight[batch]
            count = len(y_batch)
            callbacks.on_batch_begin(step, {"batch": step, "size": count})
            with lock:
                loss, out = train_step(plan, x[batch], y_batch, w_batch)
            add_batch(totals, plan.metrics, float(loss.data), out.data, y_batch, w_batch)
            if callbacks.wants_batch_logs:
                callbacks.on_batch_end(step, dict(totals.averages(), batch=step, size=count))
        return self._reduce_totals(totals).averages()

    def _train_step(self, plan, x, target, weight=None):
        """One training step (``_Plan.step``) for ``fit`` and ``train_on_batch``: ``(loss, out)``."""
        return plan.step(x, target, weight)

    def _epoch_order(self, n, shuffle):
        """The epoch's host index order (None: 0..n-1); data-parallel: this rank's shard."""
        return (self._data_parallel or LOCAL_FIT).epoch_order(n, shuffle)

    def _samples_per_epoch(self, n):
        """How many samples ``_epoch_order`` visits per epoch (for the step count)."""
        return (self._data_parallel or LOCAL_FIT).samples_per_epoch(n)

    def _reduce_totals(self, totals):
        """The epoch's ``EpochTotals`` over every process (one process: as it is)."""
        return (self._data_parallel or LOCAL_FIT).reduce(totals)

    def train_on_batch(self, x, y, sample_weight=None):
        """One optimizer step on one batch; returns the loss, or ``[loss, *metrics]``."""
        self._require_compiled("train_on_batch")
        plan, x, y, weight = prepare(self, x, y, sample_weight, "train_on_batch")
        with self._mode(True), _state_lock(self):
            loss, out = self._train_step(plan, x, y, weight)
        totals = EpochTotals(plan.metrics)
        add_batch(totals, plan.metrics, float(loss.data), out.data, y, weight)
        values = [float(loss.data)] + list(totals.averages().values())[1:]
        return values[0] if len(values) == 1 else values

    def find_lr(self, x, y, start_lr=1e-7, end_lr=10.0, steps=100, batch_size=32, sharpness=True):
        """A learning-rate sweep, with the loss's sharpness beside it; returns an ``LRFinder``.
        The weights and the optimizer's state are left as they were (docs/curvature.md)."""
        self._require_compiled("find_lr")
        batch_size = _check_batch_size(batch_size, "find_lr")
        x, y = _samples(x, y, "find_lr")
        return _find_lr(self, x, y, start_lr, end_lr, steps, batch_size, sharpness)

    # ------------------------------------------------------------ evaluate / predict
    def _evaluate_arrays(self, plan, x, y, weight, batch_size, reduce=False):
        """``{'loss': ..., metric: ...}`` in eval mode; ``reduce``: summed over the processes."""
        with self._mode(False), no_grad():
            totals, penalty = plan.evaluate(x, y, weight, batch_size)
        if reduce:
            totals = self._reduce_totals(totals)
        logs = totals.averages()
        logs["loss"] += penalty
        return logs

    def evaluate(self, x, y, batch_size=32, sample_weight=None, return_dict=False):
        """The loss (with weight penalties) or ``[loss, *metrics]``, per-sample (weighted) means;
        ``return_dict=True``: ``{'loss': ..., metric: ...}``."""
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size, "evaluate")
        plan, x, y, weight = prepare(self, x, y, sample_weight, "evaluate")
        logs = self._evaluate_arrays(plan, x, y, weight, batch_size)
        if return_dict:
            return logs
        results = list(logs.values())
        return results[0] if len(results) == 1 else results

    def predict(self, x, batch_size=32):
        """The model's outputs for ``x`` as a host NumPy array (eval mode, no graph)."""
        batch_size = _check_batch_size(batch_size, "predict")
        x = predict_inputs(self, x)
        if self.__dict__.get("_input_shape") is None:  # built by predicting: export needs it
            self._input_shape = tuple(x.shape[1:])
        with self._mode(False), no_grad():
            return np.concatenate([to_host(self.forward(Tensor(x[batch])).data)
                                   for batch in batch_slices(len(x), batch_size)])

    # ------------------------------------------------------------ weights and files
    def get_weights(self):
        """Host copies of every parameter and buffer, in ``state_dict`` order (Keras)."""
        return list(self.state_dict().values())

    def set_weights(self, weights):
        """Load a list from ``get_weights`` (same order and shapes)."""
        names, weights = list(self.state_dict()), list(weights)
        if len(weights) != len(names):
            raise ValueError(f"set_weights: expected {len(names)} arrays, got {len(weights)}")
        self.load_state_dict(dict(zip(names, weights)))

    def save(self, path, include_optimizer=True):
        """Architecture, weights (and the optimizer's state) in one ``.npz``, atomically; where
        ``callbacks.should_write`` (on rank 0 only). ``nanodl.load_model`` resumes from it."""
        if not callbacks_module.should_write():
            return
        with _state_lock(self):  # the weights of one step, even while another thread trains
            save_model(self, path, include_optimizer)

    def load_weights(self, path):
        """Load weights saved by ``save`` or ``nanodl.save(model.state_dict(), path)``."""
        self.load_state_dict(archive.load(path))

    def summary(self):
        """Print and return a table of layers, output shapes, parameters and FLOPs per sample."""
        return layer_summary(self)


class Sequential(Model):
    """A stack of layers, each feeding the next.

    >>> from nanodl import nn
    >>> model = nn.Sequential([nn.Dense(4, activation='relu', input_dim=3)])
    >>> model.add(nn.Dense(2, activation='softmax'))
    >>> len(model), type(model[1]).__name__
    (2, 'Dense')
    """

    def __init__(self, layers=None):
        super().__init__()
        self.layers = ModuleList()
        try:
            layers = list(layers or [])
        except TypeError:
            raise TypeError(f"Sequential: layers must be a list of layers, "
                            f"got {type(layers).__name__}") from None
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.add: expected a layer (nn.Module), got {type(layer).__name__}")
        self.layers.append(layer)
        self._plan_cache = None

    def pop(self):
        """Remove and return the last layer."""
        if not len(self.layers):
            raise IndexError("Sequential.pop: there are no layers")
        *kept, last = self.layers
        self.layers = ModuleList(kept)
        self._plan_cache = None
        return last

    def forward(self, x):
        for layer in self.layers._modules.values():
            x = layer(x)
        return x

    def _takes_indices(self):
        return len(self.layers) > 0 and isinstance(self.layers[0], Embedding)

    def _logits_head(self):
        layers = list(self.layers)
        return (layers[:-1], layers[-1]) if layers and isinstance(layers[-1], Dense) else None

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(list(self.layers)[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _input_features(self):
        shape = self.__dict__.get("_input_shape")
        if shape is None and len(self.layers):
            features = wanted_features(self.layers[0])
            shape = None if features is None else (features,)
        return shape
