"""Each cause of the catalogue planted in a real run through the CLI, and named with its fix.

Every test asserts the cause id (in summary.json for `train`, in the printed `[cause]` for
`overfit`) and the fix, never only a symptom's wording."""

from __future__ import annotations

import json

import numpy as np
from conftest import write
from PIL import Image

SMALL = """\
name: {name}
data: {{source: digits, val_fraction: 0.2}}
model: {model}
optimizer: {{name: {optimizer}, lr: {lr}}}
train: {{steps: {steps}, batch_size: 32, eval_every_steps: 20, log_every_steps: 10, steps_per_call: 5, seed: 0}}
"""
TINY_CNN = "{family: cnn, preset: tiny}"
SIGMOID_STACK = (
    "{layers: [flatten, "
    + ", ".join(["{dense: 32}, sigmoid"] * 8)
    + ", dense], init: xavier_normal}"
)
DEEP_RESIDUAL = (
    "{layers: [flatten, {dense: 32}, "
    + ", ".join(["{residual: [{dense: 32}, relu, {dense: 32}]}"] * 10)
    + ", dense], init: he_normal}"
)
NO_RELU = "{layers: [{conv: 16}, {conv: 16}, {residual: [{conv: 16}]}, flatten, {dense: 64}, dense], init: he_normal}"
ZERO_INIT = "{layers: [{conv: 8}, relu, flatten, {dense: 32}, relu, dense], init: zeros}"
TOO_SMALL = "{layers: [{conv: 4}, relu, global_avg_pool, dense]}"


def experiment(tmp_path, name="plant", model=TINY_CNN, optimizer="adam", lr=0.003, steps=60):
    text = SMALL.format(name=name, model=model, optimizer=optimizer, lr=lr, steps=steps)
    return write(tmp_path / f"{name}.yaml", text)


def train_summary(cli, path, runs, *sets, expect=1) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    result = cli("train", path, *args, expect=expect)
    run = sorted(runs.iterdir())[-1]
    summary = json.loads((run / "summary.json").read_text())
    summary["_output"] = result.stdout + result.stderr
    return summary


def cause_of(output: str) -> str:
    return output.split("[", 1)[1].split("]", 1)[0] if "diagnosis [" in output else ""


# -- learning rate ---------------------------------------------------------------------------


def test_overfit_rate_10000x_too_high_says_lower_it(cli):
    result = cli("overfit", "digits", "--max-steps", "100", "--set", "optimizer.lr=10", expect=1)
    assert "diagnosis [lr_too_high]" in result.stdout, result.stdout
    assert "lower optimizer.lr" in result.stdout and "raise" not in result.stdout


def test_train_rate_too_high_is_not_learning_and_says_lower_it(tmp_path, cli, isolated_runs):
    summary = train_summary(cli, experiment(tmp_path, lr=10), isolated_runs)
    assert summary["status"] == "completed_not_learning"
    assert summary["diagnosis"]["cause"] == "lr_too_high"
    assert summary["diagnosis"]["fix"].startswith("lower optimizer.lr")
    assert summary["diagnosis"]["evidence"]["suggested_lr"] < 0.1
    assert "did not learn" in summary["_output"]


def test_rate_too_low_says_raise_it(tmp_path, cli, isolated_runs):
    summary = train_summary(cli, experiment(tmp_path, lr=1e-7), isolated_runs)
    assert summary["status"] == "completed_not_learning"
    assert summary["diagnosis"]["cause"] == "lr_too_low"
    assert summary["diagnosis"]["fix"].startswith("raise optimizer.lr")
    result = cli("overfit", "digits", "--max-steps", "30", "--set", "optimizer.lr=1e-9", expect=1)
    assert cause_of(result.stdout) == "lr_too_low" and "raise optimizer.lr" in result.stdout


# -- gradients -------------------------------------------------------------------------------


def test_deep_sigmoid_stack_has_vanishing_gradients(tmp_path, cli, isolated_runs):
    path = experiment(tmp_path, model=SIGMOID_STACK, optimizer="sgd", lr=0.05)
    summary = train_summary(cli, path, isolated_runs)
    assert summary["diagnosis"]["cause"] == "vanishing_gradients", summary["diagnosis"]
    assert "relu" in summary["diagnosis"]["fix"]
    assert summary["diagnosis"]["evidence"]["shrink_towards_input"] > 1e3
    # overfit's loss settles at the label entropy too; the gradients, not the labels, are named
    result = cli("overfit", path, "--max-steps", "100", expect=1)
    assert cause_of(result.stdout) == "vanishing_gradients", result.stdout


def test_deep_residual_stack_without_normalisation_explodes(tmp_path, cli, isolated_runs):
    path = experiment(tmp_path, model=DEEP_RESIDUAL, optimizer="sgd", lr=0.01)
    summary = train_summary(cli, path, isolated_runs)
    assert summary["status"] == "diverged" and summary["diverged_at"] is not None
    assert summary["diagnosis"]["cause"] == "exploding_gradients", summary["diagnosis"]
    assert (
        "batch_norm" in summary["diagnosis"]["fix"] and "clip_norm" in summary["diagnosis"]["fix"]
    )
    # The step is named once in the table, as the step the run diverged at.
    assert f"diverged at step {summary['diverged_at']}" in summary["_output"]
    assert "RuntimeWarning" not in summary["_output"]


# -- the model -------------------------------------------------------------------------------


def test_no_nonlinearity_is_found_from_the_structure(tmp_path, cli):
    path = experiment(tmp_path, model=NO_RELU)
    inspected = cli("inspect", path).stdout
    assert "no nonlinearity" in inspected and "relu" in inspected
    result = cli("overfit", path, "--max-steps", "50", expect=None)
    assert "[no_nonlinearity]" in result.stdout and "put an activation" in result.stdout


SCALED = """\
import jax, jax.numpy as jnp

class Scaled:
    @staticmethod
    def init(key, input_shape, num_classes, scale=1.0):
        features = input_shape[0] * input_shape[1] * input_shape[2]
        kernel = jax.random.normal(key, (features, 64)) * jnp.sqrt(2.0 / features)
        out = jax.random.normal(key, (64, num_classes)) / 8.0
        return {"hidden": kernel, "out": out}

    @staticmethod
    def apply(params, x, *, train, key, scale=1.0):
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["hidden"])
        return (x @ params["out"]) * 40.0  # a scaled output: logits 40x too large
"""


def test_initial_loss_far_from_ln_classes(tmp_path, cli):
    write(tmp_path / "scaled.py", SCALED)
    path = experiment(tmp_path, model="{python: scaled.py:Scaled}")
    result = cli("overfit", path, "--max-steps", "20", expect=None)
    assert cause_of(result.stdout.replace("note [", "diagnosis [")) == "initial_loss_far", (
        result.stdout
    )
    assert "do not scale the output" in result.stdout


def test_dead_relus_from_zero_initialisation(tmp_path, cli, isolated_runs):
    summary = train_summary(cli, experiment(tmp_path, model=ZERO_INIT), isolated_runs)
    assert summary["diagnosis"]["cause"] == "dead_relu", summary["diagnosis"]
    assert "he_normal" in summary["diagnosis"]["fix"]


# -- the data --------------------------------------------------------------------------------


def noise_folder(root, classes=4, per_class=40, size=8):
    """Random images under random labels: nothing in an image predicts its label."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(folder / f"{index}.png")
    return root


def test_labels_the_inputs_cannot_predict(tmp_path, cli, isolated_runs):
    data = noise_folder(tmp_path / "noise")
    text = SMALL.format(name="noise", model=TINY_CNN, optimizer="adam", lr=0.01, steps=200)
    text = text.replace(
        "{source: digits, val_fraction: 0.2}",
        f"{{source: folder, path: {data}, val_fraction: 0.25}}",
    )
    summary = train_summary(cli, write(tmp_path / "noise.yaml", text), isolated_runs)
    assert summary["status"] == "completed_not_learning"
    assert summary["diagnosis"]["cause"] == "unpredictable_labels", summary["diagnosis"]
    assert "labels belong to the images" in summary["diagnosis"]["fix"]


def test_underfitting_when_the_model_is_too_small(tmp_path, cli, isolated_runs):
    path = experiment(tmp_path, model=TOO_SMALL, lr=0.01, steps=120)
    summary = train_summary(cli, path, isolated_runs, expect=None)
    assert summary["diagnosis"]["cause"] == "underfitting", summary["diagnosis"]
    assert "capacity" in summary["diagnosis"]["fix"]


def mislabelled_digits_folder(root, per_class=30, wrong=0.3):
    """Real digits with a share of the labels wrong: the true digits are learned first, then
    the wrong labels are memorised (train accuracy 100%) at the cost of validation."""
    from cnnlab.data.digits import load_digits

    train, rng = load_digits().train, np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label in range(10):
            for index in np.flatnonzero(train.labels == label)[:count]:
                name = (label + rng.integers(1, 10)) % 10 if rng.random() < wrong else label
                folder = root / split / f"c{name}"
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(train.images[index, :, :, 0], "L")
                image.save(folder / f"{label}_{index}.png")
    return root


def test_overfitting_a_small_mislabelled_training_set(tmp_path, cli, isolated_runs):
    data = mislabelled_digits_folder(tmp_path / "mislabelled")
    text = SMALL.format(
        name="memorise", model="{family: mlp}", optimizer="adam", lr=0.003, steps=200
    )
    text = text.replace(
        "{source: digits, val_fraction: 0.2}",
        f"{{source: folder, path: {data}, val_fraction: 0.3}}",
    )
    summary = train_summary(cli, write(tmp_path / "memorise.yaml", text), isolated_runs, expect=0)
    rows = [
        json.loads(line) for line in (sorted(isolated_runs.iterdir())[-1] / "metrics.jsonl").open()
    ]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    # The symptoms really planted: training memorised, validation loss climbing from its best.
    assert train[-1]["accuracy"] > 0.99
    assert val[-1]["loss"] > 1.5 * min(r["loss"] for r in val)
    assert summary["diagnosis"]["cause"] == "overfitting", summary["diagnosis"]
    assert summary["diagnosis"]["fix"].startswith("add augmentation, weight_decay or dropout")
    assert "train.early_stop" in summary["diagnosis"]["fix"]
    evidence = summary["diagnosis"]["evidence"]
    assert evidence["gap"] > 0.2 and evidence["best_val_accuracy"] > 0.5
    assert "add augmentation" in summary["_output"]
