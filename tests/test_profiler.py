"""``nanodl.profile`` and the seams it reads (SPEC §18)."""
import threading
import warnings

import numpy as np

import nanodl as nd
from nanodl import backend


def test_a_table_watcher_sees_this_threads_kernel_lookups_only():
    """``backend.table_watchers``: the seam a profiler reads kernel calls through."""
    seen = []

    def watch(table):
        seen.append(table.name)
        return table

    ident = threading.get_ident()
    backend.table_watchers[ident] = watch
    try:
        other = threading.Thread(target=lambda: backend.kernels(np.zeros(2)))
        other.start()
        other.join(10)
        assert seen == []
        assert backend.kernels(np.zeros(2)) is backend.kernels.__globals__["_cpu_table"]
        nd.tensor([1.0, -1.0]).relu()
    finally:
        del backend.table_watchers[ident]
    assert seen == [backend.get_kernels()] * 2


# ---------------------------------------------------------------- helpers
import pytest  # noqa: E402

from nanodl import autograd, nn  # noqa: E402
from nanodl.autograd import Function, mode  # noqa: E402
from nanodl.diagnostics import costs  # noqa: E402
from nanodl.diagnostics.profiler import profile as profile_class  # noqa: E402
from nanodl.ops.registry import REGISTRY, draw_inputs  # noqa: E402

KEYS = {"op", "calls", "forward_ms", "backward_ms", "flops", "bytes", "gflops", "gbps",
        "pct_gemm_peak", "pct_copy_peak"}


def op_classes():
    """Every Function nanodl.ops defines (the op registry's nodes and their helpers)."""
    found, stack = set(), [Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("nanodl.ops.") and not sub.__name__.startswith("_"):
                found.add(sub.__name__)
    return found


def mlp(seed=0):
    nd.manual_seed(seed)
    model = nn.Sequential([nn.Dense(32, activation="relu", input_dim=16), nn.Dense(32, activation="tanh"),
                           nn.Dense(4, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.build((16,)).train_on_batch(*batch())  # the first call plans: a forward of its own
    return model


def batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 16)).astype(np.float32), rng.integers(0, 4, n)


# ---------------------------------------------------------------- counts for every op
def test_every_op_and_every_kernel_has_a_count():
    counted = set(costs.PER_ELEMENT) | {"MatMul", "Einsum", "Linear", "SoftmaxCrossEntropy"}
    assert op_classes() <= counted, f"ops without a count: {op_classes() - counted}"
    for name in nd.backend.table.NAMES:
        activation = name.rpartition("_")[0]
        assert name in costs.UPDATES or name in ("linear_forward", "linear_backward") or \
            name.startswith("softmax_xent_") or activation in costs.ACTIVATION_FLOPS, name
    assert set(costs.ACTIVATION_FLOPS) == set(nd.backend.activations.LINEAR_ACTIVATIONS) | {"softmax"}


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda spec: spec.name)
def test_every_registered_op_is_profiled_with_flops_and_bytes(spec):
    arrays = draw_inputs(spec, spec.cases[0], np.random.default_rng(0))
    tensors = [nd.tensor(a, requires_grad=True) for a in arrays]
    with nd.profile() as prof:
        out = spec.fn(*tensors)
        out.sum().backward()
    rows = {row["op"]: row for row in prof.rows}
    assert rows and all(set(row) == KEYS for row in rows.values())
    assert rows["Sum"]["flops"] >= out.size  # the sum added above (and the op's own)
    for name, row in rows.items():
        assert row["calls"] >= 1 and row["forward_ms"] >= 0 and row["backward_ms"] >= 0
        assert isinstance(row["flops"], int) and isinstance(row["bytes"], int)
        free = costs.PER_ELEMENT.get(name, (1,))[:2] == (0, 0)  # moves, compares and selects
        assert row["flops"] > 0 or free, (name, row)
        assert row["bytes"] > 0 or name in ("Reshape", "Transpose", "Squeeze", "ExpandDims", "GetItem")
    assert prof.total_ms == pytest.approx(sum(r["forward_ms"] + r["backward_ms"] for r in prof.rows))


def test_counts_of_a_product_an_elementwise_op_and_a_view():
    a = nd.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    b = nd.tensor(np.ones((4, 5), np.float32), requires_grad=True)
    with nd.profile() as prof:
        product = a @ b
        (product * 2.0).reshape(-1).sum().backward()
    rows = {row["op"]: row for row in prof.rows}
    assert rows["MatMul"]["flops"] == 3 * (2 * 3 * 4 * 5)    # forward, and both gradients
    # forward: a, b read, the product written; backward: its gradient, a and b read, two written
    assert rows["MatMul"]["bytes"] == 4 * (12 + 20 + 15) + 4 * (15 + 12 + 20 + 12 + 20)
    assert rows["Mul"]["flops"] == 15 + 2 * 15  # forward; two products in its backward
    assert rows["Reshape"]["flops"] == 0 and rows["Reshape"]["bytes"] == 0  # views move nothing


def test_forward_and_backward_are_timed_apart_and_rates_follow():
    model = mlp()
    x, y = batch()
    with nd.profile() as prof:
        model.predict(x)
    assert all(row["backward_ms"] == 0 for row in prof.rows)
    with nd.profile() as prof:
        model.train_on_batch(x, y)
    linear = next(row for row in prof.rows if row["op"] == "Linear")
    assert linear["calls"] == 3 and linear["forward_ms"] > 0 and linear["backward_ms"] > 0
    seconds = (linear["forward_ms"] + linear["backward_ms"]) / 1e3
    assert linear["gflops"] == pytest.approx(linear["flops"] / seconds / 1e9)
    rates = nd.diagnostics.profiler.machine_rates()
    assert linear["pct_gemm_peak"] == pytest.approx(100 * linear["gflops"] * 1e9 / rates["gemm"])
    assert linear["pct_copy_peak"] == pytest.approx(100 * linear["gbps"] * 1e9 / rates["copy"])
    update = next(row for row in prof.rows if row["op"] == "adam_step")
    assert update["calls"] == 6 and update["backward_ms"] == 0
    assert update["bytes"] == 7 * 4 * model.count_params()
    times = [row["forward_ms"] + row["backward_ms"] for row in prof.rows]
    assert times == sorted(times, reverse=True)


def test_table_prints_and_returns_the_rows(capsys):
    x, y = batch()
    model = mlp()
    with nd.profile() as prof:
        model.train_on_batch(x, y)
    text = prof.table(sort_by="calls")
    assert capsys.readouterr().out.strip() == text.strip()
    names = [line.split()[0] for line in text.splitlines()[2:2 + len(prof.rows)]]
    assert names[0] == "adam_step" and set(names) == {row["op"] for row in prof.rows}
    assert "GEMM" in text and "copy" in text
    by_layer = prof.table(by="layer")
    assert "layers.1 (Dense)" in by_layer
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="speed")


def test_ops_belong_to_the_innermost_layer_running_their_forward():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Dense(8, activation="tanh", input_dim=8)

        def forward(self, x):
            return self.inner(x) * 0.5

    class Net(nn.Model):
        def __init__(self):
            super().__init__()
            self.first = nn.Dense(8, input_dim=4)
            self.block = Block()
            self.head = nn.Dense(3, input_dim=8)

        def forward(self, x):
            x = x.reshape(x.shape[0], -1)           # the model's own op
            return self.head(self.block(self.first(x)))

    net = Net()
    net.compile("sgd", "mse")
    x, y = np.ones((5, 4), np.float32), np.zeros((5, 3), np.float32)
    net.train_on_batch(x, y)
    with nd.profile() as prof:
        net.train_on_batch(x, y)
    layers = {row["layer"]: row for row in prof.by_layer()}
    assert set(layers) == {"Net", "first (Dense)", "block.inner (Dense)", "block (Block)",
                           "head (Dense)", "(loss)", "(optimizer)"}
    assert layers["block (Block)"]["flops"] == 5 * 8 + 2 * 5 * 8  # its Mul, forward and backward
    assert layers["block.inner (Dense)"]["backward_ms"] > 0       # the backward follows the forward
    assert all(set(row) == KEYS - {"op"} | {"layer"} for row in layers.values())
    assert sum(r["calls"] for r in layers.values()) == sum(r["calls"] for r in prof.rows)


@pytest.mark.parametrize("capture", [False, True])
def test_fit_runs_its_eager_step_in_a_profile_so_every_op_shows(capture):
    model = mlp()
    x, y = batch(128)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, capture=capture)
    with nd.profile() as prof:
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, capture=capture)
    rows = {row["op"]: row for row in prof.rows}
    assert rows["Linear"]["calls"] == 3 * 2 and rows["adam_step"]["calls"] == 6 * 2
    assert rows["SoftmaxCrossEntropy"]["backward_ms"] > 0


def test_nothing_is_left_behind_and_other_threads_are_not_recorded():
    a = nd.tensor(np.ones(4), requires_grad=True)
    with nd.profile() as prof:
        worker = threading.Thread(target=lambda: (a * 3).sum().backward())
        worker.start()
        worker.join(10)
        outer = a.exp()
        with nd.profile() as inner:
            a.log()
    assert not mode.forward_hooks and not mode.backward_hooks and not mode.forward_pre_hooks
    assert not mode.backward_pre_hooks and not backend.table_watchers
    assert [row["op"] for row in prof.rows] == ["Exp", "Log"] or \
        sorted(row["op"] for row in prof.rows) == ["Exp", "Log"]
    assert [row["op"] for row in inner.rows] == ["Log"]
    assert "_profile_layer" not in (a * 2).grad_fn.__dict__  # no work outside the block
    assert outer.grad_fn is not None and prof.wall_ms > 0
    with pytest.raises(RuntimeError, match="entered already"):
        with prof:
            pass


def test_every_kernel_called_directly_is_a_row_of_its_own():
    import kernel_cases
    table = nd.backend.kernels(np.zeros(1))
    opts = dict(ndim=2, bias=True, activation="relu", need=(True, True, True), sparse=True,
                label_dtype=np.int64, weight_decay=0.0, momentum=0.9, flag_a=False, flag_b=False,
                step=1)
    rng = np.random.default_rng(0)
    with nd.profile() as prof:
        for name in nd.backend.table.NAMES:
            args, kwargs, _ = kernel_cases.build(name, rng, (4, 3, 5), np.float32, opts)
            getattr(nd.backend.kernels(args[0]), name)(*args, **kwargs)
    rows = {row["op"]: row for row in prof.rows}
    assert set(rows) == set(nd.backend.table.NAMES)
    assert all(row["calls"] == 1 and row["bytes"] > 0 for row in rows.values())
    assert all(row["flops"] > 0 for name, row in rows.items() if not name.startswith("relu"))
    assert rows["linear_forward"]["flops"] == 2 * 4 * 3 * 5  # the bias in the sums, relu free
    assert table is nd.backend.kernels(np.zeros(1))  # the plain table again


def test_machine_rates_are_measured_once():
    first = nd.diagnostics.profiler.machine_rates()
    import time
    start = time.perf_counter()
    assert nd.diagnostics.profiler.machine_rates() == first
    assert time.perf_counter() - start < 0.01
    assert isinstance(profile_class(), nd.profile)


# ---------------------------------------------------------------- model.summary()
def test_summary_of_a_subclassed_model_has_real_shapes_and_flops_per_sample(capsys):
    class Net(nn.Model):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Dense(16, activation="relu")
            self.blocks = nn.ModuleList([nn.Dense(8, activation="tanh"), nn.Dropout(0.5)])
            self.out = nn.Dense(3, activation="softmax")

        def forward(self, x):
            x = self.hidden(x.reshape(x.shape[0], -1))
            for block in self.blocks:
                x = block(x)
            return self.out(x)

    net = Net()
    before = net.summary()
    assert "?" in before and "build" in before  # not built: no input shape to run
    net.build((2, 3))
    text = net.summary()
    assert capsys.readouterr().out.strip().endswith(text.strip())
    lines = {line.split(" (")[0]: line.split() for line in text.splitlines() if "(" in line}
    assert lines["hidden"][3:] == ["16)", "112", f"{2 * 6 * 16:,}"]  # relu: a compare, free
    assert lines["blocks.0"][3:] == ["8)", "136", f"{2 * 16 * 8 + 8:,}"]  # tanh: 1 per unit
    assert lines["blocks.1"][3:] == ["8)", "0", "0"]  # dropout in eval mode: nothing
    assert lines["out"][3:] == ["3)", "27", f"{2 * 8 * 3 + 4 * 3:,}"]  # softmax: 4 per unit
    assert "?" not in text
    assert f"FLOPs per sample: {192 + 264 + 60:,}" in text  # the reshape is a view: 0
    assert net.training  # summary ran in eval mode and restored the mode


def test_summary_leaves_no_hooks_and_counts_flops_per_sample_not_per_batch():
    model = nn.Sequential([nn.Dense(10, activation="sigmoid", input_dim=5)])
    model.summary()
    assert not model.layers[0].__dict__.get("_forward_hooks")
    assert "FLOPs per sample: 130" in model.summary()  # 2*5*10 (the bias in the sums) + 3*10 sigmoid


def test_summary_of_a_model_built_by_predict():
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, activation="relu"), nn.Dense(3)])
    model.predict(np.ones((2, 5), np.float32))
    text = model.summary()
    assert "?" not in text and "(None, 8)" in text and "(None, 3)" in text
    assert "FLOPs per sample: 128" in text  # 2*5*8 + 2*8*3


# ---------------------------------------------------------------- History.diagnose()
def history_of(loss, val_loss=None, model=None):
    history = nd.callbacks.History()
    history.history = {"loss": list(loss)}
    if val_loss is not None:
        history.history["val_loss"] = list(val_loss)
    history.epoch = list(range(len(loss)))
    history.model = model
    return history


def test_history_verdicts_from_the_curves_alone():
    diverging = history_of([0.5, 3.0, float("nan")]).diagnose()
    assert diverging.verdict == "diverging" and diverging.epoch is None
    assert "nan" in diverging.reason and "smaller learning rate" in diverging.remedy
    assert history_of([0.5, 0.4, 0.9]).diagnose().verdict == "diverging"  # ended above the start
    over = history_of([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.55, 0.7, 0.9]).diagnose()
    assert (over.verdict, over.epoch) == ("overfitting", 2)
    assert str(over) == over.reason + " " + over.remedy
    for word in ("L2", "Dropout", "early stopping", "more training data"):
        assert word in over.remedy
    # validation noise within 2 % of its lowest, or training loss rising too: not overfitting
    assert history_of([1.0, 0.1, 0.05, 0.04], [1.0, 0.1, 0.09, 0.0905]).diagnose().verdict == "ok"
    under = history_of([1.0, 0.9, 0.85, 0.8]).diagnose()  # no model: against the first epoch
    assert under.verdict == "underfitting" and "capacity" in under.remedy and "epochs" in under.remedy
    ok = history_of([1.0, 0.3, 0.1], [1.1, 0.35, 0.12]).diagnose()
    assert ok.verdict == "ok" and ok.epoch is None and ok.verdict in nd.diagnostics.curves.VERDICTS
    with pytest.raises(ValueError, match="History.diagnose"):
        nd.callbacks.History().diagnose()


def test_underfitting_is_judged_against_a_uniform_guess_of_the_models_classes():
    x, y = nd.datasets.make_spirals(300, n_classes=3, seed=0)
    nd.manual_seed(0)
    linear = nn.Sequential([nn.Dense(int(y.max()) + 1, activation="softmax", input_dim=x.shape[1])])
    linear.compile(nd.optim.Adam(lr=0.05), "sparse_categorical_crossentropy")
    verdict = linear.fit(x, y, epochs=20, batch_size=64, verbose=0).diagnose()
    assert verdict.verdict == "underfitting", verdict
    assert "uniform guess" in verdict.reason


# ---------------------------------------------------------------- nd.diagnose
def snapshot(model):
    """Everything a diagnosis must leave alone, as host copies."""
    opt = model.optimizer
    state = opt.state_dict() if opt.params is not None else None
    return ([p.data.copy() for p in model.parameters()], [b.copy() for b in model.buffers()],
            [None if p.grad is None else p.grad.copy() for p in model.parameters()],
            [m.training for m in model.modules()], opt.params, opt.step_count, state,
            model._plan_cache, nd.random.generator().bit_generator.state)


def assert_same(before, after):
    for a, b in zip(before[0] + before[1], after[0] + after[1]):
        assert np.array_equal(a, b)
    assert all((g is None and h is None) or np.array_equal(g, h) for g, h in zip(before[2], after[2]))
    assert before[3] == after[3] and before[4] is after[4] and before[5] == after[5]
    if before[6] is not None:
        for key, value in before[6].items():
            other = after[6][key]
            if key == "state":
                assert all(np.array_equal(x, y) for slot in value for x, y in zip(value[slot], other[slot]))
            else:
                assert np.array_equal(value, other)
    assert before[7] is after[7] and before[8] == after[8]


@pytest.mark.parametrize("trained", [False, True])
def test_diagnose_leaves_the_model_bit_identical(trained):
    nd.manual_seed(1)
    model = nn.Sequential([nn.Dense(16, activation="relu", input_dim=6), nn.BatchNorm(),
                           nn.Dropout(0.3), nn.Dense(3, activation="softmax")])
    model.compile(nd.optim.Adam(lr=0.01), "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32), np.arange(40) % 3
    if trained:
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        model.parameters()[0].grad = np.full((6, 16), 0.5, np.float32)  # a grad left by the user
    model.eval() if trained else None
    before = snapshot(model)
    report = nd.diagnose(model, x, y, batch_size=16)
    assert_same(before, snapshot(model))
    assert isinstance(report, nd.Diagnosis) and str(report) == repr(report)
    assert {row["layer"] for row in report.layers} >= {"layers.0 (Dense)", "layers.3 (Dense)"}
    after_steps = model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # still trains normally
    assert np.isfinite(after_steps.history["loss"][0])


def test_diagnose_measures_the_batch_and_one_step_of_the_compiled_optimizer():
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, activation="tanh", input_dim=5), nn.Dense(4, activation="softmax")])
    model.compile(nd.optim.SGD(lr=0.1), "sparse_categorical_crossentropy")
    model.build((5,))  # else the diagnosis builds its copy's second layer from its own draws
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((50, 5)).astype(np.float32), rng.integers(0, 4, 50)
    report = nd.diagnose(model, x, y, batch_size=20)
    loss = model.evaluate(x[:20], y[:20], batch_size=20)
    assert report.loss == pytest.approx(loss, rel=1e-5) and report.baseline == pytest.approx(np.log(4))
    # the gradient and the update of the first layer, by hand: SGD moves by lr * gradient
    kernel, bias = model.parameters()[:2]
    with nd.enable_grad():
        out = model.forward(nd.tensor(x[:20]))
        value = nd.losses.sparse_categorical_crossentropy(out, y[:20])
    grads = nd.grad(value, [kernel, bias])
    norm = np.sqrt(sum(float((g.data.astype(np.float64) ** 2).sum()) for g in grads))
    weights = np.sqrt(float((kernel.data.astype(np.float64) ** 2).sum() + (bias.data ** 2).sum()))
    first = report.layers[0]
    assert first["grad_norm"] == pytest.approx(norm, rel=1e-3)
    assert first["update_ratio"] == pytest.approx(0.1 * norm / weights, rel=1e-3)
    assert first["activation"] == "tanh" and 0 <= first["saturated_fraction"] <= 1
    assert "loss on one batch" in str(report)


def test_diagnose_warns_in_plain_words():
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 3, 64)
    dead = nn.Sequential([nn.Dense(32, activation="relu", input_dim=10), nn.Dense(3, activation="softmax")])
    dead.compile("adam", "sparse_categorical_crossentropy")
    dead.layers[0].bias.data[...] = -50.0  # every unit below zero for every input
    text = " ".join(nd.diagnose(dead, x, y).warnings)
    assert "100% of layers.0 (Dense)'s ReLU units are dead" in text
    wrong = nn.Sequential([nn.Dense(3, input_dim=10)])  # no softmax, a loss on probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compile may warn about it too
        wrong.compile("sgd", "sparse_categorical_crossentropy")
    assert any("expects probabilities" in w for w in nd.diagnose(wrong, x, y).warnings)
    softmax_mse = nn.Sequential([nn.Dense(3, activation="softmax", input_dim=10)])
    softmax_mse.compile("sgd", "mse")
    assert any("cross-entropy" in w for w in nd.diagnose(softmax_mse, x, np.eye(3)[y]).warnings)
    deep = nn.Sequential([nn.Dense(32, activation="sigmoid", input_dim=10)] +
                         [nn.Dense(32, activation="sigmoid") for _ in range(8)] + [nn.Dense(3, activation="softmax")])
    deep.compile(nd.optim.SGD(lr=0.01), "sparse_categorical_crossentropy")
    assert any("vanishing gradients" in w for w in nd.diagnose(deep, x, y).warnings)
    hot = nn.Sequential([nn.Dense(16, activation="relu", input_dim=10), nn.Dense(3, activation="softmax")])
    hot.compile(nd.optim.SGD(lr=50.0), "sparse_categorical_crossentropy")
    assert any("learning rate is too large" in w for w in nd.diagnose(hot, x, y).warnings)
    with pytest.raises(RuntimeError, match="diagnose"):
        nd.diagnose(nn.Sequential([nn.Dense(2, input_dim=3)]), x[:, :3], y)


# ---------------------------------------------------------------- the command line
def test_cli_profile_prints_one_training_steps_table(capsys):
    from nanodl import cli
    assert cli.main(["profile", "--hidden", "16", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "one training step" in out and "batch 8" in out
    rows = [line.split()[0] for line in out.splitlines()[3:6]]
    assert set(rows) == {"Linear", "SoftmaxCrossEntropy", "adam_step"}
    assert cli.main(["profile", "--hidden", "16", "--by-layer"]) == 0
    assert "layers.0 (Dense)" in capsys.readouterr().out


def test_cli_train_diagnose_prints_the_verdict_and_the_batch_report(capsys):
    from nanodl import cli
    assert cli.main(["train", "--dataset", "xor", "--epochs", "3", "--hidden", "8", "--verbose", "0",
                     "--diagnose"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("diagnosis: "))
    assert line.split()[1].rstrip(":") in nd.diagnostics.curves.VERDICTS
    assert "loss on one batch" in out and "layers.0 (Dense)" in out
