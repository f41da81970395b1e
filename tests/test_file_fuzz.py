"""File fuzzing: a damaged model or state-dict file loads identically or raises ValueError.

Every truncation of a small saved model, and a few hundred seeded bit flips, go through
``nd.load_model`` and ``nd.load``. Nothing else is allowed: not another exception,
not a partial state dict, not a model with different weights. (The CRC of every
member and the zip's own records make "identical" the only way a damaged file can
load: a flip in a field nobody reads, such as a timestamp.)
"""
import numpy as np
import pytest

import nanodl as nd
from nanodl import nn

FLIPS = 300


def small_model():
    nd.manual_seed(0)
    model = nn.Sequential([nn.Dense(3, activation="relu", input_dim=4), nn.BatchNorm(),
                           nn.Dense(2, activation="softmax")])
    model.predict(np.ones((2, 4), np.float32))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def same_state(loaded, reference):
    return list(loaded) == list(reference) and all(
        loaded[name].dtype == reference[name].dtype and loaded[name].shape == reference[name].shape
        and np.array_equal(loaded[name], reference[name]) for name in reference)


def loaded_or_refused(path, reference, architecture):
    """'refused', 'identical', or a description of what went wrong."""
    try:
        model = nd.load_model(path)
    except ValueError:
        model = None
    except Exception as error:  # the failure this test exists to catch
        return f"load_model raised {type(error).__name__}: {error}"
    if model is not None:
        if not same_state(model.state_dict(), reference):
            return "load_model gave different weights"
        if [layer.get_config() for layer in model] != architecture:
            return "load_model gave a different architecture"
    try:
        state = nd.load(path)
    except ValueError:
        return "refused" if model is None else "load refused what load_model accepted"
    except Exception as error:
        return f"load raised {type(error).__name__}: {error}"
    return "identical" if same_state(state, reference) else "load gave a different state dict"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = small_model()
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    model.save(path)
    return path.read_bytes(), model.state_dict(), [layer.get_config() for layer in model]


class Scratch:
    """One scratch file rewritten in place (rewriting is much cheaper than re-creating)."""

    def __init__(self, path):
        self.path = path
        self.handle = open(path, "w+b")

    def holding(self, content):
        self.handle.seek(0)
        self.handle.write(content)
        self.handle.truncate()
        self.handle.flush()
        return self.path


def test_every_truncation_raises_value_error(saved, tmp_path):
    data, reference, architecture = saved
    scratch = Scratch(tmp_path / "damaged.npz")
    outcomes = {length: loaded_or_refused(scratch.holding(data[:length]), reference, architecture)
                for length in range(len(data))}
    wrong = {length: outcome for length, outcome in outcomes.items() if outcome != "refused"}
    assert not wrong, f"{len(wrong)} of {len(data)} truncations: {dict(list(wrong.items())[:5])}"
    assert loaded_or_refused(scratch.holding(data), reference, architecture) == "identical"


def test_bit_flips_load_identically_or_raise_value_error(saved, tmp_path):
    data, reference, architecture = saved
    rng = np.random.default_rng(20261201)
    scratch = Scratch(tmp_path / "damaged.npz")
    results = {}
    for _ in range(FLIPS):
        position, bit = int(rng.integers(len(data))), int(rng.integers(8))
        damaged = bytearray(data)
        damaged[position] ^= 1 << bit
        results[(position, bit)] = loaded_or_refused(scratch.holding(bytes(damaged)), reference,
                                                     architecture)
    wrong = {key: outcome for key, outcome in results.items() if outcome not in ("refused", "identical")}
    assert not wrong, f"{len(wrong)} of {FLIPS} flips (byte, bit): {dict(list(wrong.items())[:5])}"
    assert list(results.values()).count("refused") > FLIPS // 2  # the flips did damage
