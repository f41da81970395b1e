"""Is my network learning? Four sick runs, each diagnosed and cured (docs/diagnosing.md).

1. underfitting: a linear model on three interleaved spirals; cured by capacity.
2. overfitting: a big MLP on 200 digits, 30% of them mislabelled; cured by more data.
3. diverging: SGD with a learning rate of 10; cured by a smaller one.
4. dead ReLUs: raw 0..16 pixels and a large step kill every hidden unit; cured by
   scaling the inputs to [0, 1].

    python examples/diagnose.py
"""
import numpy as np

import nanodl as nd
from nanodl import datasets, nn, optim


def mlp(inputs, hidden, classes):
    nd.manual_seed(0)  # every run starts from the same draws
    model = nn.Sequential()
    for units in hidden:
        model.add(nn.Dense(units, activation="relu", **({} if len(model) else {"input_dim": inputs})))
    model.add(nn.Dense(classes, activation="softmax", **({} if hidden else {"input_dim": inputs})))
    return model


VERDICTS = []  # every run's verdict, in order


def run(title, model, optimizer, x, y, epochs, **fit):
    """Train ``model`` (weights already drawn), print the verdict on its curves, return both."""
    model.compile(optimizer, "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=epochs, batch_size=fit.pop("batch_size", 32), verbose=0, **fit)
    verdict = history.diagnose()
    print(f"{title:<44} {verdict.verdict:<13} epoch={verdict.epoch}")
    VERDICTS.append(verdict.verdict)
    return model, verdict


def main():
    digits_x, digits_y = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits_x))
    digits_x, digits_y = digits_x[order], digits_y[order]
    held_out = (digits_x[1400:1700], digits_y[1400:1700])

    print("1. underfitting")
    x, y = datasets.make_spirals(600, n_classes=3, noise=0.05, seed=0)
    shuffled = np.random.default_rng(0).permutation(len(x))  # validation_split takes the last 20%
    x, y = x[shuffled], y[shuffled]
    _, sick = run("   linear model on spirals", mlp(2, [], 3), optim.Adam(lr=0.01), x, y, 20,
                  validation_split=0.2)
    print("  ", sick)
    run("   cured: two hidden layers of 64, 80 epochs", mlp(2, [64, 64], 3), optim.Adam(lr=0.003),
        x, y, 80, validation_split=0.2)

    print("2. overfitting")
    noisy = digits_y.copy()  # 30% of the labels wrong, as real labels often are
    rng = np.random.default_rng(1)
    wrong = rng.random(len(noisy)) < 0.3
    noisy[wrong] = rng.integers(0, 10, wrong.sum())
    _, sick = run("   128-128 MLP on 200 noisy digits", mlp(64, [128, 128], 10), optim.Adam(lr=0.003),
                  digits_x[:200], noisy[:200], 40, batch_size=20, validation_data=held_out)
    print("  ", sick)
    run("   cured: 1400 noisy digits", mlp(64, [128, 128], 10), optim.Adam(lr=0.003),
        digits_x[:1400], noisy[:1400], 10, batch_size=20, validation_data=held_out)

    print("3. diverging")
    _, sick = run("   SGD, learning rate 10", mlp(64, [64], 10), optim.SGD(lr=10.0),
                  digits_x[:1000], digits_y[:1000], 3)
    print("  ", sick)
    run("   cured: learning rate 0.1", mlp(64, [64], 10), optim.SGD(lr=0.1), digits_x[:1000],
        digits_y[:1000], 3)

    print("4. dead ReLUs")
    raw = digits_x * 16  # the pixels as they come, 0..16
    model, verdict = run("   raw pixels, SGD 0.5", mlp(64, [64, 64], 10), optim.SGD(lr=0.5),
                         raw[:1000], digits_y[:1000], 2)
    report = nd.diagnose(model, raw, digits_y, batch_size=256)
    dead = [row["dead_fraction"] for row in report.layers if row["dead_fraction"] is not None]
    print(f"   nd.diagnose: dead ReLU units per layer {[f'{d:.0%}' for d in dead]}")
    print("  ", next(w for w in report.warnings if "dead" in w))
    model, verdict = run("   cured: pixels scaled to [0, 1]", mlp(64, [64, 64], 10), optim.SGD(lr=0.5),
                         digits_x[:1000], digits_y[:1000], 2)
    report = nd.diagnose(model, digits_x, digits_y, batch_size=256)
    dead = [row["dead_fraction"] for row in report.layers if row["dead_fraction"] is not None]
    print(f"   nd.diagnose: dead ReLU units per layer {[f'{d:.0%}' for d in dead]}, "
          f"warnings: {report.warnings or 'none'}")
    print(f"sick: {', '.join(VERDICTS[0::2])}; cured: {', '.join(VERDICTS[1::2])}")


if __name__ == "__main__":
    main()
