"""Optimizers in real training, failure stops, per-layer diagnostics, overfit diagnoses, lr-find."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from conftest import TINY_EXPERIMENT, write
from PIL import Image

import cnnlab
from cnnlab import load_experiment, overfit
from cnnlab.diagnostics import GradientWatch, OverfitWatch
from cnnlab.optim import OPTIMIZERS, SCHEDULES

MLP = (
    TINY_EXPERIMENT.replace("{family: cnn, preset: tiny}", "{family: mlp, preset: tiny}")
    .replace("steps_per_call: 10", "steps_per_call: 5")
    .replace("log_every_steps: 10", "log_every_steps: 5")
)

SCHEDULE_ARGS = {
    "piecewise": {"boundaries": [10], "scales": [0.5]},
    "step": {"every_steps": 10},
    "exponential": {"decay_rate": 0.5, "transition_steps": 20},
    "warmup_cosine": {"warmup_steps": 5},
}
LEARNING_RATES = {"adadelta": 10.0, "lars": 20.0, "sgd": 0.1, "fromage": 0.1, "sign_sgd": 0.01}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains_the_tiny_model(name, tmp_path):
    path = write(tmp_path / "mlp.yaml", MLP)
    lr = LEARNING_RATES.get(name, 0.01)
    experiment = load_experiment(path, [f"optimizer={{name: {name}, lr: {lr}}}"])
    result = overfit(experiment, samples=16, max_steps=20)
    assert result.losses[-1][1] < 0.9 * result.losses[0][1], result.losses


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_schedule_trains_the_tiny_model(schedule, tmp_path):
    path = write(tmp_path / "mlp.yaml", MLP)
    spec = json.dumps({"name": schedule, **SCHEDULE_ARGS.get(schedule, {})})
    experiment = load_experiment(path, [f"optimizer.schedule={spec}"])
    result = overfit(experiment, samples=16, max_steps=20)
    assert result.losses[-1][1] < 0.9 * result.losses[0][1], result.losses


def test_planted_divergence_stops_naming_step_and_layer(tmp_path, cli, isolated_runs):
    # A sane rate until step 20, then an absurd one: the step-20 checkpoint must survive.
    path = write(tmp_path / "boom.yaml", TINY_EXPERIMENT)
    schedule = "optimizer={name: sgd, lr: 0.01, schedule: {name: piecewise, boundaries: [20], scales: [1.0e30]}}"
    result = cli("train", path, "--set", schedule, "--set", "train.eval_every_steps=10", expect=1)
    message = result.stderr
    assert "non-finite at step 2" in message and "first non-finite gradient in layer" in message, (
        message
    )
    assert "last finite checkpoint (step 20)" in message
    run = next(isolated_runs.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    state = cnnlab.open_run(run).restore("latest").state
    assert int(state.step) == 20
    assert all(bool(np.isfinite(leaf).all()) for leaf in jax.tree.leaves(state.params))


def test_diagnostics_are_logged_per_layer_and_shown(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment)
    run = next(isolated_runs.iterdir())
    rows = [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]
    layers = {row["layer"] for row in rows if "grad_norm" in row}
    assert len(layers) >= 3 and {row["step"] for row in rows} == {10, 20, 30, 40}
    for row in rows:
        if "grad_norm" in row:
            assert row["param_norm"] > 0 and row["grad_norm"] >= 0 and row["update_ratio"] >= 0
    shown = cli("diagnostics", run).stdout
    assert "per-layer diagnostics at step 40" in shown and "grad norm trend" in shown


CALLED_OUT_OF_ALPHABET = """\
import jax
from flax import nnx

class OutOfOrder(nnx.Module):
    def __init__(self, in_shape, num_classes, *, rngs):
        self.z_conv = nnx.Conv(in_shape[-1], 4, kernel_size=(3, 3), rngs=rngs)
        self.m_norm = nnx.LayerNorm(4, rngs=rngs)
        self.a_dense = nnx.Linear(4, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.m_norm(jax.nn.relu(self.z_conv(x)))
        return self.a_dense(x.mean(axis=(1, 2)))
"""


def test_diagnostics_list_a_python_models_modules_in_call_order(tmp_path, cli, isolated_runs):
    write(tmp_path / "out_of_order.py", CALLED_OUT_OF_ALPHABET)
    text = TINY_EXPERIMENT.replace(
        "{family: cnn, preset: tiny}", "{python: out_of_order.py:OutOfOrder}"
    )
    cli("train", write(tmp_path / "tiny.yaml", text), expect=None)  # 40 steps: it may not learn
    shown = cli("diagnostics", "latest").stdout
    rows = [
        line
        for line in shown.splitlines()
        if "_conv" in line or "_norm" in line or "_dense" in line
    ]
    # Called z_conv, m_norm, a_dense: listed so, numbered, not alphabetically.
    assert [row.split()[1:3] for row in rows] == [
        ["0", "z_conv"],
        ["1", "m_norm"],
        ["2", "a_dense"],
    ], shown


def test_gradient_jump_warns_with_the_step():
    watch = GradientWatch()
    assert watch.check(100, 1.0) is None
    assert watch.check(200, 3.0) is None
    warning = watch.check(300, 3000.0)
    assert warning and "step 300" in warning and "1,000x" in warning


def test_overfitting_is_reported_with_its_onset():
    watch = OverfitWatch(min_gap=0.05)
    history = [(100, 0.80, 0.78), (200, 0.90, 0.85), (300, 0.97, 0.84), (400, 0.99, 0.83)]
    messages = [watch.check(step, train, val) for step, train, val in history]
    assert messages[:2] == [None, None]
    assert watch.onset == 200 and "overfitting since step 200" in messages[2]


def test_overfit_diagnoses_a_rate_too_high(tiny_experiment, cli):
    result = cli(
        "overfit",
        tiny_experiment,
        "--max-steps",
        "30",
        "--set",
        "optimizer={name: sgd, lr: 1.0e6}",
        expect=1,
    )
    assert "[lr_too_high]" in result.stdout and "lower optimizer.lr" in result.stdout


def test_overfit_diagnoses_a_rate_too_low(tiny_experiment, cli):
    result = cli(
        "overfit", tiny_experiment, "--max-steps", "30", "--set", "optimizer.lr=1.0e-9", expect=1
    )
    assert "[lr_too_low]" in result.stdout and "raise optimizer.lr" in result.stdout


def test_overfit_diagnoses_labels_the_input_cannot_explain(tmp_path, cli):
    # Identical images under four different labels: nothing in the input tells them apart.
    for split in ("train", "test"):
        for label in "abcd":
            folder = tmp_path / "same" / split / label
            folder.mkdir(parents=True)
            Image.new("L", (8, 8), 0).save(folder / "0.png")
    path = write(
        tmp_path / "same.yaml",
        TINY_EXPERIMENT.replace(
            "{source: digits, val_fraction: 0.1}",
            f"{{source: folder, path: {tmp_path / 'same'}, val_fraction: 0}}",
        ),
    )
    result = cli("overfit", path, "--max-steps", "200", "--set", "optimizer.lr=0.03", expect=1)
    assert "[unpredictable_labels]" in result.stdout, result.stdout


def test_lr_find_suggests_a_rate_and_draws_the_curve(tiny_experiment, tmp_path, cli):
    out = tmp_path / "lr.png"
    result = cli("lr-find", tiny_experiment, "--steps", "60", "--out", out)
    suggested = float(result.stdout.split("suggested lr: ")[1].split()[0])
    assert 1e-6 < suggested < 10
    with Image.open(out) as picture:
        assert picture.size[0] > 300


def test_a_momentum_divergence_names_its_step_once_and_its_layer(tmp_path, cli, isolated_runs):
    """SGD with momentum at lr 50: the gradient norm overflows before any value is NaN; the
    run still names the failing step and layer, records that step's statistics, and shows them."""
    result = cli(
        "train", "digits", "--set", "optimizer=sgd_momentum", "--set", "optimizer.lr=50",
        "--set", "train.steps=100", expect=1,
    )  # fmt: skip
    found = re.search(
        r"non-finite at step (\d+); first non-finite gradient in layer 3", result.stderr
    )
    assert found and result.stderr.count("non-finite at step") == 1, result.stderr
    run = next(isolated_runs.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == int(found[1]) and summary["status"] == "diverged"
    shown = cli("diagnostics", run).stdout
    assert "3 conv 3x3, 64" in shown and "inf !" in shown
