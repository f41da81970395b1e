"""Module.register_forward_hook: arguments, order, removal, replacement, no reference cycles."""
import gc
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import nanodl as nd
from nanodl import nn

ROOT = Path(__file__).resolve().parent.parent


def test_hook_gets_module_positional_inputs_and_output():
    layer = nn.Dense(3, input_dim=2)
    calls = []
    layer.register_forward_hook(lambda module, inputs, output: calls.append((module, inputs, output)))
    x = nd.tensor([[1.0, 2.0]])
    out = layer(x)
    ((module, inputs, output),) = calls
    assert module is layer and output is out
    assert isinstance(inputs, tuple) and len(inputs) == 1 and inputs[0] is x


def test_array_inputs_reach_the_hook_as_the_tensor_forward_saw():
    layer = nn.ReLU()
    seen = []
    layer.register_forward_hook(lambda m, inputs, out: seen.append(inputs))
    layer(np.array([[-1.0, 2.0]], np.float32))
    assert isinstance(seen[0][0], nd.Tensor)
    np.testing.assert_array_equal(seen[0][0].data, [[-1.0, 2.0]])


def test_hooks_run_in_registration_order_and_remove_detaches_only_one():
    layer = nn.Tanh()
    order = []
    first = layer.register_forward_hook(lambda *a: order.append("first"))
    layer.register_forward_hook(lambda *a: order.append("second"))
    layer(nd.ones((1, 2)))
    first.remove()
    first.remove()  # twice is harmless
    layer(nd.ones((1, 2)))
    assert order == ["first", "second", "second"]


def test_handle_as_context_manager():
    layer, seen = nn.ReLU(), []
    with layer.register_forward_hook(lambda *a: seen.append(1)):
        layer(nd.ones((1, 2)))
    layer(nd.ones((1, 2)))
    assert seen == [1]


def test_a_hook_returning_a_value_replaces_the_output():
    layer = nn.ReLU()
    layer.register_forward_hook(lambda m, inputs, out: out * 2)
    np.testing.assert_array_equal(layer(nd.tensor([[-1.0, 3.0]])).data, [[0.0, 6.0]])


def test_non_callable_hook_raises_type_error():
    with pytest.raises(TypeError, match="register_forward_hook"):
        nn.ReLU().register_forward_hook("not a function")


def test_hooks_make_no_reference_cycles():
    gc.collect()
    gc.disable()
    try:
        model = nn.Sequential([nn.Dense(4, activation="relu", input_dim=3), nn.Dense(2)])
        handles = [layer.register_forward_hook(lambda m, i, o: None) for layer in model.layers]
        model(nd.ones((2, 3)))
        model_ref, layer_ref = weakref.ref(model), weakref.ref(model.layers[0])
        del model
        assert model_ref() is None and layer_ref() is None  # freed by reference counting alone
        for handle in handles:
            handle.remove()  # the module is gone: nothing to do, no error
    finally:
        gc.enable()


def test_hooks_on_layers_run_during_fit_and_predict():
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, activation="relu", input_dim=3), nn.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    modes = []
    handle = model.layers[0].register_forward_hook(lambda m, i, out: modes.append((m.training, out.shape)))
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    model.fit(x, x[:, :1], batch_size=10, epochs=2, verbose=0)
    assert modes.count((True, (10, 8))) == 4  # one call per training batch (2 epochs x 2 batches)
    model.predict(x, batch_size=20)
    assert modes[-1] == (False, (20, 8))
    handle.remove()
    count = len(modes)
    model.predict(x)
    assert len(modes) == count


@pytest.mark.parametrize("capture", [False, True])
def test_a_hook_on_a_softmax_head_sees_probabilities_in_fit(capture):
    """fit trains a softmax head through the fused loss on logits; a hook on the head
    turns that off, so the hook fires every batch and sees what the layer returns."""
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(8, activation="relu", input_dim=3),
                           nn.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)).astype(np.float32), rng.integers(0, 4, 20)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)  # fused, and the plan is cached
    seen = []
    handle = model.layers[1].register_forward_hook(lambda m, i, out: seen.append(out.data.copy()))
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, capture=capture)
    batches = [out for out in seen if len(out) == 10]  # fit may also probe a few rows
    assert len(batches) == 4
    for out in batches:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        assert (out >= 0).all()
    handle.remove()
    count = len(seen)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert len(seen) == count


def test_activation_stats_example_runs():
    env = dict(os.environ, NANODL_EXAMPLE_QUICK="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "activation_stats.py")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    dead = [int(v) for v in re.findall(r"dead units: (\d+)%", result.stdout)]
    saturated = [int(v) for v in re.findall(r"saturated: (\d+)%", result.stdout)]
    assert dead and saturated
    assert max(dead) >= 10  # the too-large learning rate kills ReLUs ...
    assert max(saturated) >= 90 and min(saturated) <= 10  # ... and pins tanh at +-1
