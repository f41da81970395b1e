"""The ``nanodl`` command line: ``train``, ``profile``, ``info``, ``gradcheck`` and ``bench``.

``main(argv)`` returns the exit status (0 success, 1 failure, 2 bad usage), so it
can be called in-process: ``main(["train", "--dataset", "xor", "--epochs", "3"])``.
``python -m nanodl`` and the installed ``nanodl`` script both run it.
"""
import argparse
import contextlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .cli_plot import PLOT_HINT, plot_history

DATASETS = ("digits", "moons", "spirals", "xor", "mnist")
KERNEL_CHOICES = ("native", "numpy")
DEVICE_CHOICES = ("cpu", "cuda")
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
DEFAULT_PLOT = "training_curves.png"

# Defaults for the options left unset (digits reach >= 97% test accuracy in 30 epochs).
DATASET_DEFAULTS = {
    "digits": {"epochs": 30},
    "moons": {"n_samples": 1000, "noise": 0.2, "epochs": 30},
    "spirals": {"n_samples": 1500, "noise": 0.05, "epochs": 60, "lr": 3e-3},
    "xor": {"n_samples": 1000, "epochs": 30},
    "mnist": {"epochs": 10},
}


class UsageError(Exception):
    """A problem with the options or the environment: reported on one line, exit status 2."""


# ---------------------------------------------------------------- argument parsing
def _hidden_sizes(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128,64, got {text!r}")
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


def _number(name, kind, accept, wanted):
    """An argparse type: ``kind(text)`` if ``accept`` takes it (argparse names ``name`` in errors)."""
    def parse(text):
        value = kind(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    parse.__name__ = name
    return parse


_positive_int = _number("_positive_int", int, lambda value: value >= 1, "an integer >= 1")
_rate = _number("_rate", float, lambda value: 0 <= value < 1, "in [0, 1)")
_non_negative = _number("_non_negative", float, lambda value: value >= 0, "a number >= 0")
_positive = _number("_positive", float, lambda value: value > 0, "a number > 0")


def build_parser():
    from . import __version__
    from .backend.activations import ELEMENTWISE
    from .optim import OPTIMIZERS

    parser = argparse.ArgumentParser(prog="nanodl", description="nanodl: a small neural-network engine.")
    parser.add_argument("--version", action="version", version=f"nanodl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    runtime = argparse.ArgumentParser(add_help=False)  # the options train, profile and gradcheck share
    runtime.add_argument("--seed", type=int, default=0)
    runtime.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    runtime.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                         help="CPU kernels (default: native when built, else numpy)")
    model = argparse.ArgumentParser(add_help=False)  # the options train and profile share
    model.add_argument("--dataset", choices=DATASETS, default="digits")
    model.add_argument("--data-dir", help="folder holding the four MNIST IDX files (for --dataset mnist)")
    model.add_argument("--hidden", type=_hidden_sizes, default=[128, 64], metavar="SIZES",
                       help="hidden layer sizes, comma-separated (default: 128,64)")
    model.add_argument("--activation", default="relu",
                       choices=tuple(activation.name for activation in ELEMENTWISE))
    model.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS))
    model.add_argument("--lr", type=_positive, default=None,
                       help="learning rate (default: the optimizer's own, 0.001 for adam)")
    model.add_argument("--batch-size", type=_positive_int, default=32)
    model.add_argument("--dropout", type=_rate, default=0.0, help="dropout rate after each hidden layer")
    model.add_argument("--l2", type=_non_negative, default=0.0, help="L2 penalty factor on the kernels")
    train = commands.add_parser("train", help="train an MLP (on the embedded digits by default)",
                                description="Train an MLP classifier and report its test accuracy.",
                                parents=[model, runtime])
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help="default: 30 (digits, moons, xor), 60 (spirals), 10 (mnist)")
    train.add_argument("--save", metavar="PATH", help="save the trained model (.npz) here")
    train.add_argument("--plot", metavar="PATH", nargs="?", const=DEFAULT_PLOT,
                       help=f"save the training curves as a PNG here (default: {DEFAULT_PLOT}); "
                            "needs matplotlib")
    train.add_argument("--export-onnx", metavar="PATH",
                       help="export the trained model as ONNX here (needs the onnx package)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                       help="0 silent, 1 progress bar (default), 2 one line per epoch")
    train.add_argument("--diagnose", action="store_true", help="diagnose the run at its end")
    train.set_defaults(handler=run_train)

    profile = commands.add_parser("profile", parents=[model, runtime],
                                  help="time one training step, op by op")
    profile.add_argument("--by-layer", action="store_true", help="one row per layer, not per op")
    profile.set_defaults(handler=run_profile)

    info = commands.add_parser("info", help="versions, kernels, BLAS, threads and GPU")
    info.set_defaults(handler=run_info)

    gradcheck = commands.add_parser("gradcheck", parents=[runtime],
                                    help="check every op's gradient; exit 1 on a failure")
    gradcheck.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    gradcheck.add_argument("--ops", metavar="NAMES", help="comma-separated op names (default: all)")
    gradcheck.add_argument("--order", type=int, choices=(1, 2), default=1,
                           help="2 also checks every op's second derivatives (a second-order column)")
    gradcheck.add_argument("--verbose", "-v", action="store_true", help="explain each failure")
    gradcheck.set_defaults(handler=run_gradcheck)

    bench = commands.add_parser("bench", help="run the benchmarks in benchmarks/ (source checkout)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    bench.add_argument("--configs", metavar="NAMES", help="MLP configurations, e.g. tiny,small")
    bench.add_argument("--repeats", type=_positive_int, help="timing repeats (default: the benchmark's)")
    bench.add_argument("--size", type=_positive_int, help="elements per array (kernel benchmarks)")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    bench.add_argument("--markdown", action="store_true", help="print markdown tables (MLP benchmarks)")
    which = bench.add_mutually_exclusive_group()
    which.add_argument("--kernels-only", action="store_true", help="only the kernel benchmarks")
    which.add_argument("--mlp-only", action="store_true", help="only the MLP training benchmarks")
    bench.set_defaults(handler=run_bench)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's errors, --help and --version
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args, argv[argv.index(args.command) + 1:])
    except UsageError as error:
        print(f"nanodl {args.command}: error: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- shared helpers
def _check_device(device):
    """Raise UsageError when ``device`` is 'cuda' and CuPy or the GPU is missing."""
    if device != "cuda":
        return
    from .backend.cuda import cuda_status
    reason = cuda_status()
    if reason is not None:
        raise UsageError("--device cuda is not available: " + " ".join(str(reason).split()))


@contextlib.contextmanager
def _kernels(name):
    """Run the block on the CPU kernels ``name`` (None keeps the default), then restore them."""
    from . import backend
    previous = backend.get_kernels()
    if name is not None:
        if name == "native" and not backend.native_available():
            raise UsageError("--kernels native: the compiled extension is not built; build it with "
                             "`pip install -e .` (needs a C compiler) or use --kernels numpy")
        backend.set_kernels(name)
    try:
        yield
    finally:
        backend.set_kernels(previous)


# ---------------------------------------------------------------- train
def load_dataset(args):
    """``(x_train, y_train, x_test, y_test, n_classes)`` for ``args.dataset``, scaled for training."""
    from . import data, datasets

    name, defaults = args.dataset, DATASET_DEFAULTS[args.dataset]
    if name == "mnist":
        try:
            (x_train, y_train), (x_test, y_test) = datasets.load_mnist(args.data_dir)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
        return x_train, y_train, x_test, y_test, 10  # already scaled to [0, 1]
    if name == "digits":
        x, y = datasets.load_digits()  # already scaled to [0, 1]
    elif name == "moons":
        x, y = datasets.make_moons(defaults["n_samples"], noise=defaults["noise"], seed=args.seed)
    elif name == "spirals":
        x, y = datasets.make_spirals(defaults["n_samples"], n_classes=3, noise=defaults["noise"],
                                     seed=args.seed)
    else:
        x, y = datasets.make_xor(defaults["n_samples"], seed=args.seed)
    x_train, x_test, y_train, y_test = data.train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=args.seed)
    if name != "digits":  # standardise with the training split's statistics
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return x_train, y_train, x_test, y_test, int(y.max()) + 1


def build_model(args, n_features, n_classes, ranks=1):
    """A ``Sequential`` MLP: ``Dense`` hidden layers (+ ``Dropout``) and a softmax output;
    on several MPI ranks its optimizer is wrapped in a ``DistributedOptimizer``."""
    from . import distributed, nn, optim, regularizers

    regularizer = regularizers.l2(args.l2) if args.l2 > 0 else None
    model = nn.Sequential()
    for i, units in enumerate(args.hidden):
        extra = {"input_dim": n_features} if i == 0 else {}
        model.add(nn.Dense(units, activation=args.activation, kernel_regularizer=regularizer, **extra))
        if args.dropout > 0:
            model.add(nn.Dropout(args.dropout))
    extra = {} if args.hidden else {"input_dim": n_features}
    model.add(nn.Dense(n_classes, activation="softmax", **extra))
    optimizer = optim.get(args.optimizer)
    lr = args.lr if args.lr is not None else DATASET_DEFAULTS[args.dataset].get("lr")
    if lr is not None:
        optimizer.lr = lr
    if ranks > 1:  # data-parallel: fit shards each epoch and averages the gradients
        optimizer = distributed.DistributedOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _join_mpi_world():
    """``(ranks, say)``: the world size (joined when started by ``mpirun`` with several
    ranks) and a ``print`` that only rank 0 uses."""
    from . import distributed
    try:
        distributed.init()
    except ImportError as error:  # mpirun -n 2 without mpi4py
        raise UsageError(str(error)) from None
    say = print if distributed.rank() == 0 else (lambda *args, **kwargs: None)
    return distributed.size(), say


def run_train(args, rest):
    import nanodl as nd

    started = time.perf_counter()
    ranks, say = _join_mpi_world()
    if args.dataset == "mnist" and not args.data_dir:
        raise UsageError("--dataset mnist needs --data-dir FOLDER, a folder holding the four MNIST IDX "
                         "files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                         "t10k-labels-idx1-ubyte, raw or .gz)")
    _check_device(args.device)
    if args.export_onnx and importlib.util.find_spec("onnx") is None:
        from .onnx import _INSTALL_HINT
        raise UsageError("--export-onnx: " + _INSTALL_HINT)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before training, not after
        raise UsageError(PLOT_HINT)
    with _kernels(args.kernels):
        nd.manual_seed(args.seed)
        x_train, y_train, x_test, y_test, n_classes = load_dataset(args)
        model = build_model(args, x_train.shape[1], n_classes, ranks)
        if args.device == "cuda":
            model.to("cuda")
        epochs = args.epochs or DATASET_DEFAULTS[args.dataset]["epochs"]
        parallel = f", data-parallel on {ranks} MPI ranks (batch per rank)" if ranks > 1 else ""
        say(f"nanodl train: {args.dataset} ({len(x_train)} train / {len(x_test)} test samples, "
            f"{n_classes} classes), hidden {','.join(map(str, args.hidden)) or 'none'}, "
            f"{args.optimizer} lr={model.optimizer.lr:g}, {epochs} epochs, batch {args.batch_size}"
            f"{parallel}, device {args.device}, kernels {nd.backend.get_kernels()}")
        fit_started = time.perf_counter()
        history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=epochs,
                            verbose=args.verbose, validation_split=0.1, shuffle=True)
        fit_seconds = time.perf_counter() - fit_started
        test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=256)
        say(f"test accuracy: {float(test_accuracy):.4f}  (test loss {float(test_loss):.4f})")
        if args.diagnose:  # the curves' verdict, then one batch looked at closely
            curves = history.diagnose()
            say(f"diagnosis: {curves.verdict}: {curves}\n{nd.diagnose(model, x_train, y_train)}")
        say(f"wall time: {time.perf_counter() - started:.1f} s (training {fit_seconds:.1f} s)")
        target = None
        try:
            if say is not print:  # data-parallel: rank 0 saves and plots
                return 0
            if args.save:
                target = args.save
                model.save(args.save)
                print(f"model saved to {args.save}")
            if args.plot:
                target = args.plot
                if plot_history(history, args.plot):
                    print(f"training curves saved to {args.plot}")
                else:
                    print(PLOT_HINT)
            if args.export_onnx:
                from . import onnx as onnx_export
                target = args.export_onnx
                onnx_export.export(model, args.export_onnx)
                print(f"ONNX model written to {args.export_onnx}")
        except OSError as error:  # a missing folder, no permission, a full disk
            print(f"nanodl train: error: cannot write {target}: {error.strerror or error}", file=sys.stderr)
            return 1
    return 0


def run_profile(args, rest):
    """One training step of ``train``'s model, op by op (``nanodl.profile``)."""
    import nanodl as nd
    _check_device(args.device)
    with _kernels(args.kernels):
        nd.manual_seed(args.seed)
        x, y, _, _, n_classes = load_dataset(args)
        model = build_model(args, x.shape[1], n_classes).to(args.device)
        prof = nd.diagnostics.profiler.profile_step(model, x[:args.batch_size], y[:args.batch_size])
        print(f"nanodl profile: one training step of train's {args.dataset} model, batch {args.batch_size}")
        prof.table(by="layer" if args.by_layer else "op")
    return 0


# ---------------------------------------------------------------- info
def _blas_lines():
    """Which BLAS NumPy was built with, from ``numpy.show_config(mode='dicts')`` when available."""
    try:
        dependencies = np.show_config(mode="dicts").get("Build Dependencies", {})
    except (TypeError, AttributeError):  # NumPy < 1.26 has no mode argument
        dependencies = {}
    lines = []
    for kind in ("blas", "lapack"):
        entry = dependencies.get(kind)
        if entry:
            name, version = entry.get("name", "unknown"), entry.get("version", "")
            lines.append(f"{kind.upper() + ':':<10}{name} {version}".rstrip())
    if not lines:
        lines.append(f"{'BLAS:':<10}unknown (see numpy.show_config())")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return lines
    for pool in threadpool_info():
        lines.append(f"{'  pool:':<10}{pool.get('internal_api')} {pool.get('version') or ''} "
                     f"({pool.get('num_threads')} threads, {pool.get('user_api')})")
    return lines


def run_info(args, rest):
    import nanodl as nd
    from . import backend
    from .backend.cuda import cuda_status

    ranks, say = _join_mpi_world()  # joins only when started by mpirun with several ranks
    threads = f"{os.cpu_count()} CPUs"
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(variable):
            threads += f", {variable}={os.environ[variable]}"
    gpu = cuda_status()
    lines = [
        f"{'nanodl:':<10}{nd.__version__}",
        f"{'Python:':<10}{platform.python_version()} ({sys.executable})",
        f"{'NumPy:':<10}{np.__version__}",
        f"{'kernels:':<10}native {'built' if backend.native_available() else 'not built'}; "
        f"selected: {backend.get_kernels()}",
        *_blas_lines(),
        f"{'threads:':<10}{threads}",
        f"{'CUDA:':<10}" + ("CuPy and a GPU found" if gpu is None else " ".join(str(gpu).split())),
        *_mpi_lines(ranks),
    ]
    say("\n".join(lines))
    return 0


def _mpi_lines(ranks):
    """The MPI library and the world size (``mpirun -n 2 nanodl info`` prints once, world 2)."""
    from . import distributed
    version = distributed.library_version()
    if version is None:
        return [f"{'MPI:':<10}mpi4py not installed (for data-parallel training, "
                f"{distributed.INSTALL_HINT})"]
    import mpi4py
    started = "started by mpirun" if distributed.launched_size() is not None else "not started by mpirun"
    return [f"{'MPI:':<10}{version} (mpi4py {mpi4py.__version__})",
            f"{'world:':<10}{ranks} rank{'s' if ranks > 1 else ''} ({started})"]


# ---------------------------------------------------------------- gradcheck and bench
def run_gradcheck(args, rest):
    """Print the op audit table; exit status 1 if any op fails."""
    from . import gradcheck
    _check_device(args.device)
    ops = args.ops.split(",") if args.ops else None
    try:
        with _kernels(args.kernels):
            table = gradcheck.audit(dtype=args.dtype, device=args.device, seed=args.seed, ops=ops,
                                    order=args.order)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(table)
    if args.verbose or not table.passed:
        for row in table.failures:
            print(f"\n{row.name}: {row.note}")
    return 0 if table.passed else 1


def run_bench(args, rest):
    """Run ``benchmarks/<name>.py`` of the source checkout, each through its ``main(argv)``."""
    names = (["bench_kernels"] if args.kernels_only else
             ["bench_mlp"] if args.mlp_only else ["bench_kernels", "bench_mlp"])
    status = 0
    for name in names:
        path = BENCHMARKS_DIR / f"{name}.py"
        if not path.is_file():
            print(f"nanodl bench: {path} not found; the benchmarks live in the "
                  "source repository (benchmarks/), not in the installed package: run this command "
                  "from a source checkout (git clone, then `pip install -e .`)", file=sys.stderr)
            return 1
        spec = importlib.util.spec_from_file_location(f"nanodl_benchmarks_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        bench_argv = ["--quick"] if args.quick else []
        if args.repeats:
            bench_argv += ["--repeats", str(args.repeats)]
        if name == "bench_kernels" and args.size:
            bench_argv += ["--size", str(args.size)]
        if name == "bench_mlp":
            bench_argv += ["--configs", args.configs] if args.configs else []
            bench_argv += ["--no-torch"] if args.no_torch else []
            bench_argv += ["--markdown"] if args.markdown else []
        try:
            result = module.main(bench_argv)
        except SystemExit as exit_:  # its own argparse errors
            result = exit_.code if isinstance(exit_.code, int) else 1
        status = max(status, result if isinstance(result, int) else 0)  # None: success
    return status
