"""``nd.profile()``: where a block's time goes, op by op, forward and backward apart.

>>> import numpy as np, nanodl as nd
>>> from nanodl import nn
>>> model = nn.Sequential([nn.Dense(64, activation='relu', input_dim=32), nn.Dense(10, activation='softmax')])
>>> model.compile('adam', 'sparse_categorical_crossentropy')
>>> x, y = np.ones((256, 32), np.float32), np.arange(256) % 10
>>> model.build((32,)).train_on_batch(x, y) > 0     # built: no build forward in the block
True
>>> with nd.profile() as prof:
...     loss = model.train_on_batch(x, y)
>>> sorted(row['op'] for row in prof.rows)
['Linear', 'SoftmaxCrossEntropy', 'adam_step']
>>> [row['layer'] for row in prof.by_layer()]
['layers.0 (Dense)', 'layers.1 (Dense)', '(loss)', '(optimizer)']
>>> linear = next(row for row in prof.rows if row['op'] == 'Linear')
>>> gemms = 2 * 256 * (2 * 32 * 64 + 3 * 64 * 10)  # the first layer needs no input gradient
>>> linear['calls'], linear['flops'] == gemms + 256 * (64 + 10)  # and the bias gradients' sums
(2, True)

The engine's hooks (``autograd.forward_pre_hooks`` and friends) and a timed view of the
kernel table (``backend.table_watchers``) are set only inside the block: no cost outside.
An op's time excludes the ops inside it; its layer is the innermost ``nn`` layer running.
The block records its own thread; a captured step runs eagerly. See docs/profiling.md.
"""
import sys
import timeit
from threading import get_ident
from time import perf_counter

import numpy as np

from .. import autograd, backend
from ..backend import threads
from ..losses import Loss
from ..optim import Optimizer
from . import costs

__all__ = ["profile", "profile_step", "machine_rates"]

LOSS, OPTIMIZER, NO_LAYER = "(loss)", "(optimizer)", "(no layer)"
SORT_KEYS = ("time", "forward_ms", "backward_ms", "calls", "flops", "bytes", "gflops", "gbps")
_LOSS_FILE = sys.modules[Loss.__module__].__file__
_code_kinds = {}  # code object -> LOSS, OPTIMIZER, 'layer' or None: what its frames run
_rates = {}


def machine_rates():
    """This machine's float32 matrix-multiply rate (FLOP/s, 512^3 products) and memory-copy
    rate (bytes/s, read + written, 32 MB copies), measured once per process (~0.1-0.2 s).

    >>> rates = machine_rates()
    >>> rates['gemm'] > 1e8 and rates['copy'] > 1e8
    True
    """
    if not _rates:
        size = 512
        a = np.ones((size, size), np.float32)
        product = np.empty_like(a)
        source = np.ones(8 << 20, np.float32)  # 32 MB: past the caches
        copy = np.empty_like(source)
        seconds = []
        for scope in (threads.SERIAL_BLAS, threads.UNCHANGED):  # one BLAS thread, then all:
            with scope:  # on a busy machine one thread is the faster (nanodl's policy knows)
                seconds.append(_best(lambda: np.matmul(a, a, out=product), repeats=10))
        _rates["gemm"] = 2 * size ** 3 / min(seconds)
        _rates["copy"] = 2 * source.nbytes / _best(lambda: np.copyto(copy, source))
    return dict(_rates)


def profile_step(model, x, y, warmup=2):
    """The profile of one training step of the compiled ``model``, after ``warmup`` ones."""
    for _ in range(warmup):
        model.train_on_batch(x, y)
    with profile() as prof:
        model.train_on_batch(x, y)
    return prof


def _best(run, repeats=5):
    run()  # first touch, thread pools awake
    return min(timeit.repeat(run, repeat=repeats, number=1))


def _is_layer(obj):
    """An ``nn.Module``, by its protocol (``nn`` imports this module)."""
    kind = type(obj)
    return hasattr(kind, "named_modules") and hasattr(kind, "forward") and \
        "_modules" in getattr(obj, "__dict__", ())


def _kind(frame):
    code = frame.f_code
    if code.co_filename == _LOSS_FILE:
        return LOSS
    if not code.co_argcount or code.co_varnames[0] != "self":
        return None
    owner = frame.f_locals.get("self")
    if isinstance(owner, Loss):
        return LOSS
    if isinstance(owner, Optimizer):
        return OPTIMIZER
    return "layer" if _is_layer(owner) else None


def _accumulate(totals, key, values):
    """Add ``values`` (calls, forward s, backward s, flops, bytes) into ``totals[key]``."""
    total = totals.setdefault(key, [0, 0.0, 0.0, 0, 0])
    for index, value in enumerate(values):
        total[index] += value


def _synchronize(array):
    if type(array) is not np.ndarray and backend.is_device_array(array):
        from ..backend.cuda import require_cupy
        require_cupy().cuda.get_current_stream().synchronize()


class profile:
    """Context manager: record every op (and optimizer update) that runs in the block.

    ``rows``: a dict per op name, slowest first (SPEC §18); ``by_layer()`` per layer;
    ``table()`` prints them; ``total_ms`` the ops' time, ``wall_ms`` the block's.
    """

    def __init__(self):
        self._stats = {}    # (op, layer key) -> [calls, forward s, backward s, flops, bytes]
        self._running = []  # [node, layer key, start, seconds of the ops run inside it]
        self._layers = {}   # layer key -> the module, while the block runs
        self._roots = {}    # id -> the outermost modules seen (they name the layers)
        self._names = None  # layer key -> name, once the block has ended
        self._tables = {}
        self._ident = None
        self.wall_ms = None

    # ------------------------------------------------------------ the block
    def __enter__(self):
        if self._ident is not None:
            raise RuntimeError("profile: this profile was entered already; use a new nd.profile()")
        self._ident = get_ident()
        for kind, hook in self._hooks():
            getattr(autograd, kind).append(hook)
        self._previous_watch = backend.table_watchers.get(self._ident)
        backend.table_watchers[self._ident] = self._watch
        self._start = perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_ms = (perf_counter() - self._start) * 1e3
        for kind, hook in self._hooks():
            getattr(autograd, kind).remove(hook)
        if self._previous_watch is None:
            del backend.table_watchers[self._ident]
        else:
            backend.table_watchers[self._ident] = self._previous_watch
        self._names = self._layer_names()
        self._layers = self._roots = None  # keep no model alive
        return False

    def _hooks(self):
        return (("forward_pre_hooks", self._before_forward), ("forward_hooks", self._after_forward),
                ("backward_pre_hooks", self._before_backward), ("backward_hooks", self._after_backward))

    # ------------------------------------------------------------ recording
    def _layer_at(self, frame):
        """The layer key of the code running at ``frame``: the innermost layer, loss or optimizer."""
        found = None
        while frame is not None:
            code = frame.f_code
            kind = _code_kinds.get(code, False)
            if kind is False:
                kind = _code_kinds[code] = _kind(frame)
            if kind == "layer":
                module = frame.f_locals["self"]
                if found is None:
                    found = id(module)
                    self._layers.setdefault(found, module)
                outer = module
            elif kind is not None and found is None:
                return kind
            frame = frame.f_back
        if found is None:
            return NO_LAYER
        self._roots.setdefault(id(outer), outer)
        return found

    def _stop(self, node):
        """Seconds since ``node``'s start, less the ops run inside it (None if it never started)."""
        end = perf_counter()
        running = self._running
        while running:
            entry = running.pop()
            if entry[0] is node:
                elapsed = end - entry[2]
                if running:
                    running[-1][3] += elapsed
                return entry[1], elapsed - entry[3]
        return None, None

    def _before_forward(self, node, args, kwargs):
        layer = self._layer_at(sys._getframe(2))
        self._running.append([node, layer, perf_counter(), 0.0])

    def _after_forward(self, node, args, kwargs, out):
        _synchronize(out)
        layer, seconds = self._stop(node)
        if seconds is None:
            return
        node.__dict__["_profile_layer"] = layer  # the layer its backward belongs to
        inputs = [arg.data for arg in args if hasattr(arg, "grad_fn")]
        flops, nbytes = costs.forward_cost(node, inputs, out)
        _accumulate(self._stats, (node.name, layer), (1, seconds, 0.0, flops, nbytes))

    def _before_backward(self, node, grad_output):
        self._running.append([node, node.__dict__.get("_profile_layer", NO_LAYER), perf_counter(), 0.0])

    def _after_backward(self, node, grad_output, grads):
        _synchronize(grad_output)
        layer, seconds = self._stop(node)
        if seconds is not None:
            flops, nbytes = costs.backward_cost(node, grad_output, grads)
            _accumulate(self._stats, (node.name, layer), (0, 0.0, seconds, flops, nbytes))

    def _watch(self, table):
        previous = self._previous_watch
        table = previous(table) if previous is not None else table
        timed = self._tables.get(id(table))
        if timed is None:
            timed = self._tables[id(table)] = _TimedTable(table, self)
        return timed

    def _kernel_call(self, kernel, method, args, kwargs):
        if self._running:  # inside an op: the op's time
            return method(*args, **kwargs)
        layer = self._layer_at(sys._getframe(2))
        start = perf_counter()
        result = method(*args, **kwargs)
        _synchronize(args[0] if args else None)
        seconds = perf_counter() - start
        flops, nbytes = costs.kernel_cost(kernel, args, kwargs, result)
        _accumulate(self._stats, (kernel, layer), (1, seconds, 0.0, flops, nbytes))
        return result

    # ------------------------------------------------------------ results
    def _layer_names(self):
        names = {}
        for root in self._roots.values():
            for path, module in root.named_modules():
                names.setdefault(id(module), f"{path} ({type(module).__name__})" if path
                                 else type(module).__name__)
        for key, module in self._layers.items():
            names.setdefault(key, type(module).__name__)
        return names

    def _grouped(self, by):
        """``{name: [calls, forward s, backward s, flops, bytes]}`` by op or by layer."""
        names = self._names if self._names is not None else self._layer_names()
        groups = {}
        for (op, layer), entry in self._stats.items():
            _accumulate(groups, op if by == "op" else names.get(layer, layer), entry)
        return groups

    def _rows(self, by, sort_by):
        if sort_by not in SORT_KEYS + ("forward", "backward", None):
            raise ValueError(f"profile.table: unknown sort_by {sort_by!r}; valid: {', '.join(SORT_KEYS)}")
        rates = machine_rates() if self._stats else {}
        rows = []
        for name, (calls, forward, backward, flops, nbytes) in self._grouped(by).items():
            seconds = forward + backward
            gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
            gbps = nbytes / seconds / 1e9 if seconds > 0 else 0.0
            rows.append({by: name, "calls": calls, "forward_ms": forward * 1e3,
                         "backward_ms": backward * 1e3, "flops": flops, "bytes": nbytes,
                         "gflops": gflops, "gbps": gbps,
                         "pct_gemm_peak": 100 * gflops * 1e9 / rates["gemm"],
                         "pct_copy_peak": 100 * gbps * 1e9 / rates["copy"]})
        if sort_by is not None:
            key = {"forward": "forward_ms", "backward": "backward_ms"}.get(sort_by, sort_by)
            rows.sort(key=lambda row: row["forward_ms"] + row["backward_ms"] if key == "time"
                      else row[key], reverse=True)
        return rows

    @property
    def rows(self):
        """One dict per op name, slowest first (forward + backward)."""
        return self._rows("op", "time")

    def by_layer(self):
        """The rows per layer (key ``'layer'``), in the order the layers first ran."""
        return self._rows("layer", None)

    def flops_of(self, module):
        """FLOPs of the ops ``module`` and its sub-layers ran in the block (forward and backward)."""
        keys = {id(sub) for _, sub in module.named_modules()}
        return sum(entry[3] for (op, layer), entry in self._stats.items() if layer in keys)

    @property
    def total_ms(self):
        """The rows' time: forward and backward of every op, milliseconds."""
        return sum(entry[1] + entry[2] for entry in self._stats.values()) * 1e3

    def table(self, sort_by="time", by="op"):
        """Print and return the rows as a table (``by='layer'``: per layer)."""
        if by not in ("op", "layer"):
            raise ValueError(f"profile.table: by must be 'op' or 'layer', got {by!r}")
        rows = self._rows(by, sort_by)
        total = self.total_ms or 1.0
        header = (f"{by:<22}{'calls':>6}{'fwd ms':>10}{'bwd ms':>10}{'share':>7}{'MFLOP':>10}"
                  f"{'MB':>9}{'GFLOP/s':>9}{'GB/s':>7}{'%GEMM':>7}{'%copy':>7}")
        lines = [header, "-" * len(header)]
        for row in rows:
            share = (row["forward_ms"] + row["backward_ms"]) / total
            lines.append(f"{row[by][:21]:<22}{row['calls']:>6}{row['forward_ms']:>10.3f}"
                         f"{row['backward_ms']:>10.3f}{share:>7.1%}{row['flops'] / 1e6:>10.2f}"
                         f"{row['bytes'] / 1e6:>9.2f}{row['gflops']:>9.2f}{row['gbps']:>7.2f}"
                         f"{row['pct_gemm_peak']:>7.1f}{row['pct_copy_peak']:>7.1f}")
        lines.append("-" * len(header))
        wall = "" if self.wall_ms is None else f" of the block's {self.wall_ms:.3f} ms"
        lines.append(f"ops: {self.total_ms:.3f} ms{wall}")
        if self._stats:
            rates = machine_rates()
            lines.append(f"this machine: GEMM {rates['gemm'] / 1e9:.1f} GFLOP/s (float32), "
                         f"copy {rates['copy'] / 1e9:.1f} GB/s")
        text = "\n".join(lines)
        print(text)
        return text


class _TimedTable:
    """A kernel table whose kernels report their calls to a profile (other names pass through)."""

    def __init__(self, table, profiler):
        self._table, self._profiler = table, profiler

    def __getattr__(self, name):
        value = getattr(self._table, name)
        if name in self._table.NAMES:
            profiler = self._profiler

            def timed(*args, **kwargs):
                return profiler._kernel_call(name, value, args, kwargs)
            timed.__name__ = name
            setattr(self, name, timed)  # found directly from now on
            return timed
        return value
