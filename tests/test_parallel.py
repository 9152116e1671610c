"""Trials stacked in one vmapped program match the same trials trained alone."""

from __future__ import annotations

import json

import jax
import numpy as np
from conftest import TINY_EXPERIMENT, interrupt_when, write

import cnnlab
from cnnlab import load_experiment
from cnnlab.hyper import first_difference
from cnnlab.parallel import group_trials, train_stacked
from cnnlab.runs import read_metrics

SHORT = TINY_EXPERIMENT.replace("steps: 40", "steps: 20")


def latest_params(run):
    return jax.tree.leaves(cnnlab.open_run(run).restore("latest").state.params)


def test_stacked_trials_match_trials_trained_alone(tmp_path):
    path = write(tmp_path / "short.yaml", SHORT + "augment: [{noise: {std: 0.05}}]\n")
    settings = [("0.003", "0", "0.05"), ("0.01", "1", "0.1")]
    experiments = [
        load_experiment(
            path,
            [f"optimizer.lr={lr}", f"train.seed={seed}", f"augment=[{{noise: {{std: {std}}}}}]"],
        )
        for lr, seed, std in settings
    ]
    stacked = [tmp_path / f"stacked{i}" for i in range(2)]
    summaries = train_stacked(experiments, stacked, log=lambda message: None)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    for index, experiment in enumerate(experiments):
        alone = cnnlab.train(experiment, run_dir=tmp_path / f"alone{index}").path
        together, single = read_metrics(stacked[index]), read_metrics(alone)
        assert [(r["step"], r["split"]) for r in together] == [
            (r["step"], r["split"]) for r in single
        ]
        np.testing.assert_allclose(
            [r["loss"] for r in together], [r["loss"] for r in single], rtol=1e-5
        )
        # Vmapped convolutions sum in another order; Adam divides by the root of a tiny second
        # moment, so a parameter with near-zero gradients can move ~1e-6 from that alone (a
        # mixed-up trial would be off by orders of magnitude more).
        for a, b in zip(latest_params(stacked[index]), latest_params(alone), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_trials_that_change_the_program_are_not_stacked(tmp_path):
    path = write(tmp_path / "short.yaml", SHORT)
    same = [load_experiment(path, [f"optimizer.lr={lr}"]) for lr in (0.1, 0.2, 0.3)]
    other = load_experiment(path, ["model={family: mlp, preset: tiny}"])
    assert first_difference(same[0], same[1]) is None
    assert first_difference(same[0], same[2]) is None
    assert first_difference(same[0], other) == "model.family"
    groups, reasons = group_trials([*same, other], limit=2)
    assert groups == [[0, 1], [2], [3]]
    assert any("model.family" in reason for reason in reasons)


def test_sweep_with_parallel_trains_trials_together(tmp_path, cli):
    write(tmp_path / "short.yaml", SHORT)
    sweep = write(
        tmp_path / "lr.yaml", "base: short.yaml\ngrid:\n  optimizer.lr: [0.003, 0.01]\nseeds: [0]\n"
    )
    result = cli("sweep", sweep, "--parallel", "2")
    assert "training 2 trials together" in result.stdout
    folder = next((tmp_path / "runs").glob("*sweep*"))
    statuses = [json.loads(p.read_text())["status"] for p in folder.rglob("summary.json")]
    assert statuses == ["completed", "completed"]


def test_interrupted_stacked_trials_resume_from_their_checkpoints(tmp_path, cli, isolated_runs):
    write(tmp_path / "short.yaml", SHORT)
    sweep = write(
        tmp_path / "lr.yaml",
        "base: short.yaml\ngrid:\n  optimizer.lr: [0.003, 0.01]\nseeds: [0]\n"
        "set: {train.steps: 400, train.eval_every_steps: 20}\n",
    )

    def trials():
        return sorted(isolated_runs.glob("*/trials/*"))

    def both_training() -> bool:
        found = trials()
        return len(found) == 2 and all(
            any(row["step"] >= 40 for row in read_metrics(t)) for t in found
        )

    env = {"CNNLAB_RUNS_DIR": str(isolated_runs)}
    assert interrupt_when(["sweep", sweep, "--parallel", "2"], both_training, env) == 130
    summaries = [json.loads((t / "summary.json").read_text()) for t in trials()]
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]
    kept = [
        [row for row in read_metrics(t) if row["step"] <= s["steps"]]
        for t, s in zip(trials(), summaries, strict=True)
    ]

    result = cli("sweep", sweep, "--parallel", "2")

    assert "continuing 2 trials together" in result.stdout
    for trial, before in zip(trials(), kept, strict=True):
        rows = read_metrics(trial)
        assert rows[: len(before)] == before  # resumed from the checkpoint, not retrained
        assert [r["step"] for r in rows if r["split"] == "train"] == list(range(10, 401, 10))
        assert json.loads((trial / "summary.json").read_text())["status"] == "completed"


def test_trials_differing_in_dropout_and_noise_rates_stack_and_match_alone(tmp_path):
    model = "model: {layers: [flatten, {dense: 32}, relu, {noise: 0.1}, {dropout: 0.2}, dense]}\n"
    path = write(
        tmp_path / "drop.yaml", SHORT.replace("model: {family: cnn, preset: tiny}\n", model)
    )
    settings = [("0.2", "0.1"), ("0.5", "0.3")]
    experiments = [
        load_experiment(
            path,
            [
                f"model.layers=[flatten, {{dense: 32}}, relu, {{noise: {std}}}, {{dropout: {rate}}}, dense]"
            ],
        )
        for rate, std in settings
    ]
    assert first_difference(experiments[0], experiments[1]) is None  # numbers in the state
    stacked = [tmp_path / f"stacked{i}" for i in range(2)]
    summaries = train_stacked(experiments, stacked, log=lambda message: None)
    assert [s["status"] for s in summaries][0].startswith("completed")
    losses = []
    for index, experiment in enumerate(experiments):
        alone = cnnlab.train(experiment, run_dir=tmp_path / f"alone{index}").path
        together, single = read_metrics(stacked[index]), read_metrics(alone)
        np.testing.assert_allclose(
            [r["loss"] for r in together], [r["loss"] for r in single], rtol=1e-5
        )
        losses.append([r["loss"] for r in single if r["split"] == "train"])
    assert losses[0] != losses[1]  # the two rates really trained differently
