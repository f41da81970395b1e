"""nanodl.gradcheck, nd.detect_anomaly and nanodl.viz.

Wrong backwards of every common kind (a factor, a sign, a broadcast reduction, one
element) must fail ``gradcheck`` and be found by ``locate`` among a dozen nodes;
correct ops, the whole registry (``audit``) and models must pass; kinks must be
avoided by the audit and explained when hit.
"""
import importlib.util
import re
import warnings

import numpy as np
import pytest

import nanodl as nd
from helpers import Cube
import nanodl.functional as F
from nanodl import autograd, backend
from nanodl.gradcheck import (GradcheckError, GradcheckPrecisionWarning, GradcheckReport, audit,
                              check_model, gradcheck, locate, report)
from nanodl.ops.registry import BY_NAME, REGISTRY, draw_inputs
from nanodl import cli


def main(argv):
    """``nanodl gradcheck ARGV`` (the command lives in the CLI, a wing: the core never imports it)."""
    return cli.main(["gradcheck", *argv])

from helpers import KERNEL_TABLES

RNG = np.random.default_rng(1234)


def leaf(*shape, low=-1.0, high=1.0, name=None, rng=RNG):
    t = nd.Tensor(rng.uniform(low, high, size=shape), requires_grad=True)
    t.name = name
    return t


# ------------------------------------------------------------------ deliberately wrong ops
class CubeWrongFactor(Cube):
    def backward(self, grad):
        (x,) = self.saved_tensors
        return 2 * x ** 2 * grad


class SinWrongSign(nd.Function):
    def forward(self, x):
        self.save_for_backward(x)
        return np.sin(x)

    def backward(self, grad):
        (x,) = self.saved_tensors
        return -np.cos(x) * grad


class AddBiasWrongReduction(nd.Function):
    """x (N, C) + b (C,); the bias gradient is averaged over the batch instead of summed."""

    def forward(self, x, b):
        return x + b

    def backward(self, grad):
        return grad, grad.mean(axis=0)


class ScaleOneWrongElement(nd.Function):
    """2 * x, with one element of the gradient off."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad):
        out = 2 * grad
        out.reshape(-1)[5] *= 1.5
        return out


def deep_graph(bad, x, w, b):
    """A graph of ~14 nodes with ``bad(h, b)`` (h: a (4, 3) tensor) in the middle."""
    h = (x @ w + b).tanh()             # MatMul, Add, Tanh
    h = h * 0.5 + 0.1                  # Mul, Add
    h = h.sigmoid()                    # Sigmoid
    h = bad(h, b)                      # the culprit
    h = h.exp() * h                    # Exp, Mul
    h = h.log_softmax(axis=-1)         # LogSoftmax
    h = (h ** 2).mean(axis=0)          # Pow, Mean
    return h.sum() + b.sum()           # Sum, Sum, Add


def deep_inputs():
    rng = np.random.default_rng(7)
    return leaf(4, 5, rng=rng, name="x"), leaf(5, 3, rng=rng, name="w"), leaf(3, rng=rng, name="b")


BAD_OPS = {
    "factor": ("CubeWrongFactor", lambda h, b: CubeWrongFactor.apply(h)),
    "sign": ("SinWrongSign", lambda h, b: SinWrongSign.apply(h)),
    "broadcast_reduction": ("AddBiasWrongReduction", lambda h, b: AddBiasWrongReduction.apply(h, b)),
    "one_element": ("ScaleOneWrongElement", lambda h, b: ScaleOneWrongElement.apply(h)),
}
CUBE = lambda h, b: Cube.apply(h)


# ------------------------------------------------------------------ correct ops pass
@pytest.mark.parametrize("name", ["add", "mul", "matmul", "softmax", "linear", "max", "getitem_repeat"])
def test_registry_ops_pass(name):
    spec = BY_NAME[name]
    for shapes in spec.cases:
        arrays = draw_inputs(spec, shapes, np.random.default_rng(0))
        tensors = [nd.Tensor(a, requires_grad=True) for a in arrays]
        assert gradcheck(spec.fn, *tensors, spec=spec)


def test_composite_and_custom_op_pass():
    x, w, b = deep_inputs()
    assert gradcheck(lambda x, w, b: deep_graph(CUBE, x, w, b), x, w, b)
    assert gradcheck(lambda x, w, b: deep_graph(CUBE, x, w, b), x, w, b, full=True)


def test_non_tensor_and_constant_inputs_pass_through():
    x = leaf(3, 4)
    const = nd.Tensor(RNG.standard_normal((3, 4)))   # no grad: not a row
    result = report(lambda a, c, axis: (a * c).sum(axis=axis), x, const, 1)
    assert len(result) == 1 and result.passed


# ------------------------------------------------------------------ wrong backwards fail
@pytest.mark.parametrize("kind", sorted(BAD_OPS))
def test_wrong_backward_fails_and_is_located(kind):
    name, bad = BAD_OPS[kind]
    x, w, b = deep_inputs()
    fn = lambda x, w, b: deep_graph(bad, x, w, b)
    assert gradcheck(fn, x, w, b, raise_exception=False) is False
    with pytest.raises(GradcheckError):
        gradcheck(fn, x, w, b)
    found = locate(fn, x, w, b)
    assert found is not None and found.name == name
    assert isinstance(found.node, nd.Function) and 10 <= found.total <= 20
    assert name in str(found)
    assert locate(lambda x, w, b: deep_graph(CUBE, x, w, b), x, w, b) is None


def test_wrong_broadcast_reduction_names_the_bias():
    x, b = leaf(6, 3), leaf(3, name="b")
    result = report(lambda x, b: AddBiasWrongReduction.apply(x, b).tanh(), x, b)
    assert [row.passed for row in result] == [True, False]
    assert result[1].max_rel_err == pytest.approx(1 - 1 / 6, rel=1e-4)


def test_one_wrong_element_is_the_worst_element():
    x = leaf(3, 4)
    result = report(lambda t: ScaleOneWrongElement.apply(t), x, full=True)
    row = result[0]
    assert not row.passed and row.method == "jacobian"
    assert row.worst_index == ((1, 1), (1, 1))        # flat element 5 of a (3, 4) array
    assert (row.numerical, row.analytic) == (pytest.approx(2.0), pytest.approx(3.0))


def test_failure_message_names_input_element_values_and_errors():
    x, w = leaf(3, 4, name="x"), leaf(4, 2, name="weights")
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x, w: CubeWrongFactor.apply(x @ w), x, w)
    message = str(info.value)
    for fragment in ("input 0 'x'", "input 1 'weights'", "worst element", "numerical", "analytic",
                     "max abs error", "max rel error", "d out["):
        assert fragment in message, fragment
    assert re.search(r"max rel error 0\.33", message)   # 2/3 of the right value: 1/3 off


def test_big_layer_screen_is_fast_and_bisection_finds_one_bad_element():
    rng = np.random.default_rng(0)
    x = nd.Tensor(rng.standard_normal((32, 300)))
    w = nd.Tensor(rng.standard_normal((300, 300)) * 0.05, requires_grad=True)

    class OneBadWeight(nd.Function):
        def forward(self, x, w):
            self.save_for_backward(x, w)
            return x @ w

        def backward(self, grad):
            x, w = self.saved_tensors
            grad_w = x.T @ grad
            grad_w[123, 45] *= 1.2
            return grad @ w.T, grad_w

    assert gradcheck(lambda w: F.linear(x, w, activation="tanh"), w)
    result = report(lambda w: OneBadWeight.apply(x, w).tanh(), w)
    assert not result.passed
    assert result[0].method == "bisection" and result[0].worst_index == (123, 45)


# ------------------------------------------------------------------ float32
def test_float32_inputs_warn_and_are_checked_in_float64():
    x = nd.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    assert x.dtype == np.float32
    with pytest.warns(GradcheckPrecisionWarning, match="float64 copy"):
        assert gradcheck(lambda t: (t * t).exp().sum(), x)
    with pytest.warns(GradcheckPrecisionWarning):
        assert not gradcheck(lambda t: CubeWrongFactor.apply(t), x, raise_exception=False)
    assert x.dtype == np.float32 and x.grad is None          # the caller's tensor is untouched


# ------------------------------------------------------------------ non-differentiable points
def test_audit_avoids_kinks():
    result = audit(ops=["relu", "leaky_relu", "abs", "max", "min", "max_all", "maximum", "clip",
                        "linear_relu", "elu"])
    assert result.passed, result.message()


def test_relu_at_zero_is_reported_as_non_differentiable():
    x = nd.Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    result = report(lambda t: (t * 3).relu(), x)
    assert not result.passed and result[0].status == "non-diff"
    assert "relu at 0 is not differentiable" in result[0].note
    assert "within 1e-05 of 0" in result[0].note
    with pytest.raises(GradcheckError, match="relu at 0"):
        gradcheck(lambda t: t.relu(), x)


def test_spec_hint_and_other_kinks_are_named():
    spec = BY_NAME["clip"]                                             # clip(a, -0.5, 0.7)
    x = nd.Tensor(np.array([0.7, 0.0]), requires_grad=True)           # on the upper bound
    result = report(spec.fn, x, spec="clip")
    assert result[0].status == "non-diff"
    assert "clip's inputs lie within 0 of a kink" in result[0].note
    assert "clip at its bounds is not differentiable" in result[0].note
    y = nd.Tensor(np.array([0.3, 0.0]), requires_grad=True)
    assert "leaky_relu at 0" in report(lambda t: t.leaky_relu(0.1), y, spec=BY_NAME["leaky_relu"])[0].note


def test_kinks_whose_convention_matches_central_differences_pass():
    # max shares a tie equally and abs has slope 0 at 0: both equal the central difference
    tie = nd.Tensor(np.array([[1.0, 1.0, -2.0]]), requires_grad=True)
    assert gradcheck(lambda t: t.max(axis=-1), tie, full=True)
    assert gradcheck(lambda t: t.abs(), nd.Tensor(np.array([0.0, 1.0]), requires_grad=True), full=True)


def test_locate_skips_a_kink_instead_of_blaming_it():
    x = nd.Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    assert locate(lambda t: (t.relu() * 2).sum(), x) is None
    found = locate(lambda t: CubeWrongFactor.apply(t.relu() + 1), x)
    assert found.name == "CubeWrongFactor" and any("relu at 0" in note for note in found.skipped)


# ------------------------------------------------------------------ report, audit, CLI
def test_report_rows_and_columns():
    x, w = leaf(2, 3, name="x"), leaf(3, 4)
    result = report(lambda x, w: (x @ w).tanh(), x, w)
    assert isinstance(result, GradcheckReport) and len(result) == 2 and result.passed
    assert result.headers == ["input", "shape", "max abs err", "max rel err", "check", "passed"]
    assert [row.name for row in result] == ["input 0 'x'", "input 1"]
    assert [row.shape for row in result] == [(2, 3), (3, 4)]
    lines = str(result).splitlines()
    assert lines[0].split()[:2] == ["input", "shape"] and len(lines) == 4
    assert all(row.max_abs_err < 1e-6 for row in result)


def test_function_attributes_mirror_the_module():
    assert gradcheck.report is report and gradcheck.audit is audit and gradcheck.locate is locate


def test_the_module_is_callable_and_is_what_both_imports_give():
    import nanodl.gradcheck as module
    from nanodl import gradcheck as imported
    x = leaf(2, 3)
    assert imported is module and gradcheck is module            # one object, two spellings
    assert module(lambda t: (t * t).tanh(), x) is True
    assert module.report(lambda t: t.exp(), x).passed
    with pytest.raises(GradcheckError, match="input 0"):
        module(lambda t: CubeWrongFactor.apply(t), x)
    assert module(lambda t: CubeWrongFactor.apply(t), x, raise_exception=False) is False
    from nanodl.gradcheck import checks                         # the function itself: no
    assert not hasattr(checks.gradcheck, "report")              # attributes patched onto it


def test_kinks_are_read_from_the_op_registry():
    from nanodl import ops
    from nanodl.ops.registry import NODE_KINKS
    for name, kink in NODE_KINKS.items():                      # each names a real node class
        assert issubclass(getattr(ops, name), autograd.Function), name
        assert kink.what and kink.point
    x = nd.Tensor(np.array([-1.0, 0.0, 1.0]), requires_grad=True)
    note = report(lambda t: ops.relu(t) * 2, x, full=True)[0].note
    assert note.startswith("non-differentiable point: " + NODE_KINKS["ReLU"].what)


def test_a_broken_kink_rule_is_an_error_not_a_silent_note(monkeypatch):
    from nanodl.ops.registry import NODE_KINKS, NodeKink

    def broken(node, arrays):
        raise ZeroDivisionError("kink rule broke")
    monkeypatch.setitem(NODE_KINKS, "ReLU", NodeKink("relu at 0", "0", broken))
    x = nd.Tensor(np.array([-1.0, 0.0, 1.0]), requires_grad=True)
    with pytest.raises(ZeroDivisionError, match="kink rule broke"):
        report(lambda t: t.relu(), x, full=True)


@pytest.mark.parametrize("table", KERNEL_TABLES)
def test_audit_covers_the_whole_registry_and_passes(table):
    result = audit(kernels=table)
    assert len(result) == len(REGISTRY)
    assert [row.name for row in result] == [spec.name for spec in REGISTRY]
    assert result.passed, result.message()
    assert backend.get_kernels() in ("native", "numpy")


def test_audit_float32_compares_with_float64():
    result = audit(dtype="float32", kernels="numpy")
    assert result.passed, result.message()
    assert "f32 fwd err" in result.headers
    assert all(row.extra["forward_err"] < 1e-5 for row in result)


def test_audit_catches_a_broken_op(monkeypatch):
    from nanodl.ops.elementwise import Exp
    monkeypatch.setattr(Exp, "backward", lambda self, grad: grad * self.saved_tensors[0] * 1.01)
    result = audit(ops=["exp", "add"])
    assert {row.name: row.passed for row in result} == {"exp": False, "add": True}
    assert "exp" in result.message()
    assert main(["--ops", "exp"]) == 1


def test_main_prints_the_table(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "op" in out and "max abs err" in out and "pass" in out
    assert all(spec.name in out for spec in REGISTRY)
    assert main(["--dtype", "float32", "--kernels", "numpy"]) == 0
    assert main(["--ops", "no_such_op"]) == 2


# ------------------------------------------------------------------ check_model
needs_nn = pytest.mark.skipif(importlib.util.find_spec("nanodl.nn") is None, reason="nanodl.nn missing")


@needs_nn
def test_check_model_one_row_per_parameter():
    from nanodl import nn
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(6, activation="tanh", input_dim=4), nn.Dense(3)])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    model(nd.tensor(x))                                                # build every layer
    y = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    mse = lambda pred, target: ((pred - target) ** 2).mean()
    with pytest.warns(GradcheckPrecisionWarning):
        result = check_model(model, mse, x, y)
    assert [row.name for row in result] == list(before)
    assert result.headers[0] == "parameter" and result.passed
    for name, p in model.named_parameters():           # restored: same values, dtype, no grad
        assert p.dtype == np.float32 and p.grad is None
        np.testing.assert_array_equal(p.data, before[name])


@needs_nn
def test_check_model_finds_the_broken_parameter():
    from nanodl import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.random.default_rng(0).standard_normal((4, 3)))
            self.v = nn.Parameter(np.random.default_rng(1).standard_normal((3,)))

        def forward(self, x):
            return CubeWrongFactor.apply(x @ self.w) + self.v

    mse = lambda pred, target: ((pred - target) ** 2).mean()
    x = np.random.default_rng(2).standard_normal((5, 4))
    result = check_model(Net(), mse, x, np.zeros((5, 3)))
    assert [(row.name, row.passed) for row in result] == [("w", False), ("v", True)]


# ------------------------------------------------------------------ anomaly detection
def test_anomaly_names_the_op_that_makes_a_nan_in_the_forward():
    x = nd.Tensor(np.linspace(0.5, 2.0, 6).reshape(2, 3), requires_grad=True)
    with pytest.raises(FloatingPointError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with nd.detect_anomaly():
            h = (x * 2 + 1).tanh()        # Mul, Add, Tanh
            h = h - 1.5                   # Sub: negative values, still finite
            h = h.log()                   # Log: NaN born here
            h = (h.exp() * 3).sum(axis=0).sqrt().mean()
    message = str(info.value)
    assert "Log produced nan" in message and "(2, 3)" in message
    assert "test_gradcheck.py" in message                      # the line that called it
    assert not autograd.forward_hooks and not autograd.backward_hooks


def test_anomaly_names_the_backward_that_makes_an_inf():
    x = nd.Tensor(np.array([0.0, 1.0, 4.0]), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with nd.detect_anomaly():
            y = ((x * 1.0).sqrt() * 2).sum()                   # all finite going forward
            with pytest.raises(FloatingPointError, match=r"Sqrt\.backward turned a finite gradient into inf"):
                y.backward()


def test_anomaly_is_quiet_on_finite_graphs_and_off_outside():
    x = nd.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with nd.detect_anomaly():
        with nd.detect_anomaly():                               # nesting is fine
            (x.log() * x).sum().backward()
    assert x.grad is not None and not autograd.forward_hooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(nd.tensor([-1.0]).log().item())        # outside: no check


# ------------------------------------------------------------------ viz
NODE_LINE = re.compile(r"^\s*(\w+)\s*\[label=\"([^\"]*)\"")
EDGE_LINE = re.compile(r"^\s*(\w+)\s*->\s*(\w+);")


def test_dot_has_one_node_per_op_and_leaf():
    x, w, b = deep_inputs()
    out = deep_graph(CUBE, x, w, b)
    dot = nd.viz.to_dot(out)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    nodes = [NODE_LINE.match(line).groups() for line in dot.splitlines() if NODE_LINE.match(line)]
    edges = [EDGE_LINE.match(line).groups() for line in dot.splitlines() if EDGE_LINE.match(line)]
    ops = autograd.topological_order(out.grad_fn)
    op_nodes = [n for n in nodes if n[0].startswith("op")]
    assert len(op_nodes) == len(ops)
    assert sorted(label.split("\\n")[0] for _, label in op_nodes) == sorted(op.name for op in ops)
    leaf_ids = {id(t) for op in ops for t in op.inputs if t.grad_fn is None}
    assert len(nodes) - len(op_nodes) == len(leaf_ids)
    assert len(edges) == sum(len(op.inputs) for op in ops)
    known = {key for key, _ in nodes}
    assert all(a in known and b in known for a, b in edges)
    assert "x\\n(4, 5)\\nrequires_grad" in dot


def test_print_graph_indents_a_tree(capsys):
    x = nd.Tensor(np.ones((2, 3)), requires_grad=True)
    x.name = "x"
    y = x.exp()
    nd.viz.print_graph((y * y).sum())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Sum ()" and lines[1] == "  Mul (2, 3)"
    assert lines[2] == "    Exp (2, 3)" and lines[3] == "      x (2, 3) requires_grad"
    assert lines[4] == "    Exp (2, 3) (shown above)"


# ------------------------------------------------------------------ second order
class CubeVjp(Cube):
    def vjp(self, grad, x):
        return 3 * x * x * grad


class CubeVjpDetached(Cube):
    """Right first derivative, but half of it is a constant: the second derivative is off."""

    def vjp(self, grad, x):
        return 3 * x * x.detach() * grad


class CubeVjpWrongValue(Cube):
    """A vjp whose value disagrees with its own backward (consistent with its own derivative)."""

    def vjp(self, grad, x):
        return 3.3 * x * x * grad


WRONG_VJPS = {
    "detached": ("CubeVjpDetached", lambda h, b: CubeVjpDetached.apply(h)),
    "wrong_value": ("CubeVjpWrongValue", lambda h, b: CubeVjpWrongValue.apply(h)),
}


def test_gradgradcheck_passes_for_smooth_functions():
    from nanodl.gradcheck import gradgradcheck
    x, w, b = deep_inputs()
    assert gradgradcheck(lambda x, w, b: deep_graph(lambda h, b: CubeVjp.apply(h), x, w, b), x, w, b)
    assert gradgradcheck(lambda w: F.linear(x, w, b, activation="tanh"), w)   # a vector output
    weights = np.random.default_rng(3).standard_normal((4, 3))
    assert gradgradcheck(lambda w: F.linear(x, w, b, activation="gelu"), w, grad_outputs=weights)


@pytest.mark.parametrize("kind", sorted(WRONG_VJPS))
def test_gradgradcheck_catches_a_wrong_vjp_and_locate_names_it(kind):
    from nanodl.gradcheck import gradgrad_report, gradgradcheck
    name, bad = WRONG_VJPS[kind]
    x, w, b = deep_inputs()
    fn = lambda x, w, b: deep_graph(bad, x, w, b)
    assert gradcheck(fn, x, w, b)                       # first order is right
    assert locate(fn, x, w, b) is None                  # ... so is every backward
    with pytest.raises(GradcheckError, match="gradgradcheck failed for"):
        gradgradcheck(fn, x, w, b)
    failed = [row.name for row in gradgrad_report(fn, x, w, b) if not row.passed]
    assert failed == (["first derivatives: vjp vs backward"] if kind == "wrong_value" else
                      [row for row in failed if row.startswith("input")]) and failed
    located = locate(fn, x, w, b, order=2)
    assert located is not None and located.name == name and located.derivative == "vjp"
    assert located.position == 6 and located.total == 15          # after MatMul ... Sigmoid
    assert f"{name} (op 7 of 15 in forward order): its vjp disagrees" in str(located)


def test_locate_order_2_skips_a_function_without_vjp():
    x, w, b = deep_inputs()
    assert locate(lambda x, w, b: deep_graph(CUBE, x, w, b), x, w, b, order=2) is None
    located = locate(lambda x, w, b: deep_graph(CUBE, x, w, b) * CubeVjpDetached.apply(b).sum(),
                     x, w, b, order=2)
    assert located.name == "CubeVjpDetached"
    assert any(note.startswith("Cube: it has no vjp") for note in located.skipped)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        locate(lambda t: t.exp(), x, order=3)


def test_gradgradcheck_refuses_grad_outputs_of_the_wrong_shape():
    from nanodl.gradcheck import gradgradcheck
    with pytest.raises(ValueError, match=r"grad_outputs has shape \(2,\), fn's output has shape \(3,\)"):
        gradgradcheck(lambda t: t.tanh(), leaf(3), grad_outputs=np.ones(2))


def test_the_callable_module_has_gradgradcheck():
    import nanodl.gradcheck as module
    assert module.gradgradcheck(lambda t: (t ** 3).sum(), leaf(4))


def test_audit_order_2_covers_the_whole_registry_and_passes(kernel_table):
    result = audit(order=2)
    assert [row.name for row in result] == [spec.name for spec in REGISTRY]
    assert result.passed, result.message()
    assert "2nd order" in result.headers and "order 2" in result.footer
    assert all(row.extra["second_status"] == "ok" for row in result)
    assert "2nd order" not in audit(ops=["exp"]).headers                 # order=1 stays as it was
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        audit(order=3)


def test_audit_order_2_catches_a_broken_vjp(monkeypatch, capsys):
    from nanodl.ops.elementwise import Exp
    monkeypatch.setattr(Exp, "vjp", lambda self, grad, x: grad * x.exp().detach())
    result = audit(ops=["exp", "tanh"], order=2)
    assert {row.name: row.passed for row in result} == {"exp": False, "tanh": True}
    exp = result[0]
    assert exp.extra["second_status"] == "FAIL" and exp.max_abs_err < 1e-6   # first order is fine
    assert exp.note.startswith("gradgradcheck failed for input 0")
    assert audit(ops=["exp"]).passed                                          # order 1 cannot see it
    assert main(["--ops", "exp", "--order", "2"]) == 1
    out = capsys.readouterr().out
    assert "2nd order" in out and "FAIL" in out and "gradgradcheck failed" in out
    assert main(["--ops", "exp", "--order", "3"]) == 2


# ------------------------------------------------------------------ losses at their critical points
def test_audit_checks_each_loss_at_its_critical_points(kernel_table):
    critical = [spec.name for spec in REGISTRY if spec.critical_points]
    assert {"mse", "huber", "bce_logits"} <= set(critical)
    result = audit(ops=critical)
    assert result.passed, result.message()
    assert "kink pts" in result.headers
    for row, spec in zip(result, [BY_NAME[name] for name in critical]):
        assert row.extra["critical"] == f"{len(spec.critical_points)} ok"
    assert audit(ops=["exp"]).headers == audit(ops=["add"]).headers        # no column without points


def test_the_old_composed_bce_with_logits_fails_at_logit_0(monkeypatch):
    """Issue 9's bug: max(z, 0) - z t + log1p(exp(-|z|)) gives dL/dz = -t at z = 0, not 0.5 - t."""
    import dataclasses
    from nanodl import ops
    from nanodl.gradcheck import op_audit
    spec = BY_NAME["bce_logits"]
    labels = spec.derivative(np.zeros((2, 3)))[0] * -6 + 0.5             # the entry's targets t
    composed = lambda z: (ops.relu(z) - z * nd.tensor(labels) + ops.softplus(-z.abs())).mean()
    monkeypatch.setattr(op_audit, "REGISTRY", (dataclasses.replace(spec, fn=composed),))
    result = audit(ops=["bce_logits"])
    (row,) = result
    assert not row.passed and row.extra["critical"] == "1 FAIL"
    random_cases = [case for case in row.extra["details"] if not case.critical]
    assert all(r.passed for case in random_cases for r in case.rows)    # away from 0 it is right
    assert "input 0 at a critical point" in row.note and "the analytic derivative is" in row.note
