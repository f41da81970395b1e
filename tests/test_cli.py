"""The command line (SPEC §12), called in-process through ``nanodl.cli.main``."""
import os
import re
import sys
import types

import numpy as np
import pytest

import nanodl as nd
from nanodl import backend, cli


def reported_accuracy(output):
    match = re.search(r"test accuracy: (\d\.\d{4})", output)
    assert match, output
    return float(match.group(1))


def test_train_xor(capsys):
    assert cli.main(["train", "--dataset", "xor", "--epochs", "3", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert 0.0 <= reported_accuracy(out) <= 1.0
    assert "wall time:" in out


def test_train_digits_short_run(capsys):
    assert cli.main(["train", "--epochs", "3", "--verbose", "0", "--hidden", "64",
                     "--dropout", "0.1", "--l2", "1e-4", "--kernels", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and reported_accuracy(out) > 0.8


@pytest.mark.parametrize("dataset", ["moons", "spirals"])
def test_train_other_datasets(dataset, capsys):
    assert cli.main(["train", "--dataset", dataset, "--epochs", "2", "--verbose", "0",
                     "--hidden", "16", "--optimizer", "sgd", "--lr", "0.1", "--activation", "tanh"]) == 0
    reported_accuracy(capsys.readouterr().out)


def test_train_restores_the_kernel_choice(capsys):
    before = backend.get_kernels()
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1", "--verbose", "0",
                     "--kernels", "numpy"]) == 0
    assert backend.get_kernels() == before


def test_save_writes_a_loadable_model(tmp_path, capsys):
    path = tmp_path / "xor.npz"
    assert cli.main(["train", "--dataset", "xor", "--epochs", "2", "--verbose", "0", "--hidden", "8",
                     "--save", str(path)]) == 0
    model = nd.load_model(path)
    predictions = model.predict(np.zeros((5, 2), dtype=np.float32))
    assert predictions.shape == (5, 2)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_save_to_a_missing_folder_is_a_clean_error(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "model.npz"
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1", "--verbose", "0",
                     "--save", str(target)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "Traceback" not in err


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert cli.main(["train", "--dataset", "xor", "--epochs", "2", "--verbose", "0",
                     "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_a_path_writes_the_default_png(tmp_path, capsys, monkeypatch):
    """The README's ``nanodl train --plot`` (before: "expected one argument")."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1", "--verbose", "0", "--plot"]) == 0
    assert (tmp_path / cli.DEFAULT_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    path = tmp_path / "curves.png"
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1", "--verbose", "0",
                     "--plot", str(path)]) == 2
    captured = capsys.readouterr()
    assert "pip install 'nanodl[plot]'" in captured.err and "pip install matplotlib" in captured.err
    assert not path.exists()
    assert "test accuracy" not in captured.out  # it did not train first


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert nd.__version__ in out and np.__version__ in out
    kernels_line = next(line for line in out.splitlines() if line.startswith("kernels:"))
    assert ("not built" in kernels_line) != backend.native_available()
    assert f"selected: {backend.get_kernels()}" in kernels_line
    assert "BLAS" in out and "threads:" in out and "CUDA:" in out


def test_cuda_without_a_gpu_is_a_clean_error(capsys):
    if nd.cuda_available():
        pytest.skip("a GPU is present")
    assert cli.main(["train", "--dataset", "xor", "--device", "cuda", "--verbose", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda is not available" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_native_kernels_when_not_built(capsys):
    if backend.native_available():
        pytest.skip("the native extension is built")
    assert cli.main(["train", "--dataset", "xor", "--kernels", "native", "--verbose", "0"]) == 2
    assert "not built" in capsys.readouterr().err


def test_mnist_needs_data_dir(capsys):
    assert cli.main(["train", "--dataset", "mnist"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def write_idx(path, array):
    """An IDX file (unsigned bytes): magic 0x0000080N (N dimensions), big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 30, size=(count, 28, 28))
        images[np.arange(count), labels, :] = 255  # the label is the bright row: learnable
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "2",
                     "--hidden", "32", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "60 train / 20 test" in out
    reported_accuracy(out)


def test_mnist_with_a_missing_folder(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "cifar"], "invalid choice"),
    (["train", "--hidden", "128,x"], "comma-separated"),
    (["train", "--epochs", "0"], ">= 1"),
    (["train", "--dropout", "1.5"], "[0, 1)"),
    (["train", "--verbose", "3"], "invalid choice"),
    (["train", "--optimizer", "nadam"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_help_exits_0(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--data-dir" in capsys.readouterr().out


def test_gradcheck_passes_its_options_to_the_audit(monkeypatch, capsys):
    from nanodl import backend, gradcheck
    received = []

    def fake_audit(**options):
        received.append(dict(options, kernels=backend.get_kernels()))
        return gradcheck.GradcheckReport([gradcheck.GradcheckRow("exp", (3,), passed=False)])
    monkeypatch.setattr(gradcheck, "audit", fake_audit)
    before = backend.get_kernels()
    assert cli.main(["gradcheck", "--dtype", "float32", "--kernels", "numpy", "--ops", "exp"]) == 1
    assert received == [{"dtype": "float32", "device": "cpu", "seed": 0, "ops": ["exp"],
                         "order": 1, "kernels": "numpy"}]
    assert backend.get_kernels() == before and "exp" in capsys.readouterr().out


def test_gradcheck_runs_the_audit(capsys):
    assert cli.main(["gradcheck", "--ops", "exp,relu"]) == 0
    out = capsys.readouterr().out
    assert "exp" in out and "relu" in out


def test_bench_output(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_mlp.py").write_text("def main(argv):\n    print('mlp', argv)\n    return 0\n")
    (tmp_path / "bench_kernels.py").write_text(  # the real ones return their rows
        "def main(argv):\n    print('kernels', argv)\n    return [{'kernel': 'relu'}]\n")
    monkeypatch.setattr(cli, "BENCHMARKS_DIR", tmp_path)
    assert cli.main(["bench", "--quick", "--configs", "tiny,small"]) == 0
    assert capsys.readouterr().out.splitlines() == ["kernels ['--quick']",
                                                    "mlp ['--quick', '--configs', 'tiny,small']"]
    assert cli.main(["bench", "--mlp-only"]) == 0
    assert capsys.readouterr().out == "mlp []\n"
    assert cli.main(["bench", "--kernels-only", "--mlp-only"]) == 2
    assert cli.main(["bench", "--repeats", "3", "--size", "1000", "--no-torch", "--markdown"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "kernels ['--repeats', '3', '--size', '1000']",
        "mlp ['--repeats', '3', '--no-torch', '--markdown']"]


def test_bench_reports_a_benchmark_usage_error(tmp_path, monkeypatch):
    (tmp_path / "bench_mlp.py").write_text("def main(argv):\n    raise SystemExit(2)\n")
    monkeypatch.setattr(cli, "BENCHMARKS_DIR", tmp_path)
    assert cli.main(["bench", "--mlp-only", "--configs", "nope"]) == 2


def test_bench_without_the_benchmarks_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "BENCHMARKS_DIR", tmp_path / "missing")
    assert cli.main(["bench", "--quick"]) == 1
    assert "source" in capsys.readouterr().err


def test_plot_is_written_atomically(tmp_path, monkeypatch):
    """A plot that fails half-way leaves the earlier file as it was and no temporary
    file (before: savefig wrote straight over the target)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from nanodl.cli_plot import plot_history

    def broken(self, target, **options):  # writes half a file, then the disk is full
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as handle:
                handle.write(b"partial")
        else:
            target.write(b"partial")
        raise OSError(28, "No space left on device")

    target = tmp_path / "curves.png"
    target.write_bytes(b"earlier plot")
    monkeypatch.setattr(Figure, "savefig", broken)
    history = types.SimpleNamespace(epoch=[0, 1], history={"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]})
    with pytest.raises(OSError, match="No space left"):
        plot_history(history, target)
    assert target.read_bytes() == b"earlier plot"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["curves.png"]
