"""``ProgressBar`` and the formatting of logs and step times."""

import sys
import time

from .base import Callback, should_write


def _format_number(value):
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.4e}"


def format_logs(logs):
    """``'loss: 0.1234 - accuracy: 0.9000'``: the logs as the progress bar shows them."""
    return " - ".join(f"{key}: {_format_number(value)}" for key, value in logs.items())


def format_step_time(seconds_per_step):
    """Time per step as Keras shows it, in the largest unit that reads at least 1.

    >>> format_step_time(0.000085), format_step_time(0.0123), format_step_time(2.4)
    ('85us/step', '12ms/step', '2s/step')
    >>> format_step_time(0.0009996)  # rounds to 1000us: shown as 1ms
    '1ms/step'
    """
    for scale, unit in ((1e6, "us"), (1e3, "ms")):
        if (count := round(seconds_per_step * scale)) < 1000:
            return f"{count}{unit}/step"
    return f"{seconds_per_step:.0f}s/step"


def in_notebook():
    """True inside a Jupyter kernel (as Keras 3 checks; IPython is never imported here)."""
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


def _is_terminal(stream):
    return callable(getattr(stream, "isatty", None)) and bool(stream.isatty())


def resolve_verbose(verbose):
    """``fit``'s ``verbose``: ``'auto'`` is 1 (live bar) on a terminal or notebook, else 2."""
    if verbose == "auto":
        return 1 if _is_terminal(sys.stderr) or in_notebook() else 2
    if isinstance(verbose, str) or verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


class ProgressBar(Callback):
    """Keras' progress display; ``fit`` adds one for ``verbose`` 1 or 2.

    ``verbose=2`` prints one line per epoch; ``verbose=1`` a live bar redrawn at most every
    ``interval`` seconds on a terminal or notebook (elsewhere, a line per epoch).
    """

    width = 30
    hidden = ("lr", "batch", "size")

    def __init__(self, verbose=1, stream=None, interval=0.1):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"ProgressBar: verbose must be 1 or 2, got {verbose!r}")
        self.verbose = verbose
        self._stream = stream
        self.interval = interval

    def on_train_begin(self, logs=None):
        notebook = self._stream is None and in_notebook()
        self.stream = (sys.stdout if notebook else sys.stderr) if self._stream is None else self._stream
        self.dynamic = _is_terminal(self.stream)
        self.display = _NotebookDisplay() if notebook and self.verbose == 1 else None

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "stream"):  # used outside fit
            self.on_train_begin()
        self.epochs = self.params.get("epochs", epoch + 1)
        self.steps = max(int(self.params.get("steps", 1)), 1)
        self.title = f"Epoch {epoch + 1}/{self.epochs}"
        if self.verbose == 1 and self.dynamic:
            self._print(self.title)
        self.start = time.perf_counter()
        self.next_draw = self.start + self.interval
        self.drawn = 0

    def on_batch_end(self, batch, logs=None):
        if self.verbose != 1 or batch + 1 >= self.steps or not (self.dynamic or self.display):
            return
        now = time.perf_counter()
        if now < self.next_draw:
            return
        self.next_draw = now + self.interval
        done = batch + 1
        eta = (now - self.start) / done * (self.steps - done)
        self._live(f"{self._bar(done)} - ETA: {eta:.0f}s - {self._shown(logs)}", final=False)

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.start
        if self.verbose == 2:
            self._print(f"{self.title} - {elapsed:.2f}s - {self._shown(logs)}")
            return
        timing = f"{elapsed:.0f}s {format_step_time(elapsed / self.steps)}"
        line = f"{self._bar(self.steps)} - {timing} - {self._shown(logs)}"
        if self.display is not None or self.dynamic:
            self._live(line, final=True)
        else:
            self._print(f"{self.title} - {line}")

    def _shown(self, logs):
        return format_logs({k: v for k, v in (logs or {}).items() if k not in self.hidden})

    def _bar(self, done):
        arrow = ">" if done < self.steps else ""
        body = "=" * max(self.width * done // self.steps - len(arrow), 0) + arrow
        return f"{done:>{len(str(self.steps))}}/{self.steps} [{body:<{self.width}}]"

    def _print(self, line):
        if not should_write():  # a data-parallel run draws on rank 0 only
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def _live(self, line, final):
        if not should_write():
            return
        if self.display is not None:
            self.display.show(f"{self.title} - {line}", final)
        else:
            padding = " " * max(self.drawn - len(line), 0)
            self.stream.write("\r" + line + padding + ("\n" if final else ""))
            self.stream.flush()
            self.drawn = 0 if final else len(line)


class _NotebookDisplay:
    """One IPython display for a whole ``fit``, redrawn with ``DisplayHandle.update``."""

    def __init__(self):
        from IPython.display import display
        self._display = display
        self.lines = []
        self.handle = None

    def show(self, line, final):
        bundle = {"text/plain": "\n".join(self.lines + [line])}
        if final:
            self.lines.append(line)
        if self.handle is None:
            self.handle = self._display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)


ProgbarLogger = ProgressBar  # Keras' name
