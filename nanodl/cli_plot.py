"""Training curves for ``nanodl train --plot``: loss and accuracy, train and validation,
side by side in one PNG (needs matplotlib, the ``[plot]`` extra).

>>> from types import SimpleNamespace
>>> import os, tempfile
>>> history = SimpleNamespace(epoch=[0, 1], history={"loss": [0.9, 0.5], "accuracy": [0.6, 0.8]})
>>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
>>> plot_history(history, path) in (True, False)  # False without matplotlib
True
"""

PLOT_HINT = ("--plot needs matplotlib, which is not installed; get it with "
             "`pip install 'nanodl[plot]'` or `pip install matplotlib`")


def _import_pyplot():
    """``(pyplot, MaxNLocator)`` on the non-interactive Agg backend, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    return plt, MaxNLocator


def plot_history(history, path):
    """Save loss and accuracy curves (train and validation) as a PNG; False without matplotlib."""
    imported = _import_pyplot()
    if imported is None:
        return False
    plt, MaxNLocator = imported
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [epoch + 1 for epoch in history.epoch]
    for axis, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in history.history:
                axis.plot(epochs, history.history[prefix + key], label=label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(key)
        axis.set_title(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
