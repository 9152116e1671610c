"""Runs as a lab notebook: resume after kill -9, reproducibility, early stopping, damaged
checkpoints, TensorBoard events and curves."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from conftest import TINY_EXPERIMENT, run_dirs, write
from PIL import Image

import cnnlab
from cnnlab.config import experiment_from_tree
from cnnlab.hyper import experiment_numbers
from cnnlab.runs import Checkpoints, read_metrics
from cnnlab.step import (
    EpochOrders,
    device_numbers,
    epoch_order,
    init_state,
    logits,
    steps_program,
    to_device,
)
from cnnlab.training import setup

LONGER = TINY_EXPERIMENT.replace("steps: 40", "steps: 120")


def final_params(run: Path):
    return cnnlab.open_run(run).restore("latest").state


def comparable(rows: list[dict]) -> list[tuple]:
    """Metric rows without the timing columns, which differ between runs."""
    return [(r["step"], r["split"], r["loss"], r["accuracy"], r["lr"]) for r in rows]


def wait_for_step(
    run_root: Path, step: int, process: subprocess.Popen, timeout: float = 240
) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"training ended before it could be killed: {process.stderr.read()[-2000:]}"
            )
        for run in run_dirs(run_root):
            if any(row["step"] >= step for row in read_metrics(run)):
                return run
        time.sleep(0.05)
    raise AssertionError(f"no metrics at step {step} within {timeout} s")


def test_resume_after_kill_9_matches_an_uninterrupted_run_bitwise(
    tmp_path, cli, isolated_runs, monkeypatch
):
    path = write(tmp_path / "longer.yaml", LONGER)
    killed_root = tmp_path / "killed"
    env = {**os.environ, "CNNLAB_RUNS_DIR": str(killed_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        run = wait_for_step(killed_root, random.Random(1129).choice([30, 50, 70, 90]), process)
    finally:
        process.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
        process.wait()
    assert not (run / "summary.json").exists()

    cli("train", "--resume", run)
    cli("train", path)  # the same experiment and seed, uninterrupted, under isolated_runs
    clean = run_dirs(isolated_runs)[0]

    resumed_rows, clean_rows = read_metrics(run), read_metrics(clean)
    assert [r["step"] for r in resumed_rows if r["split"] == "train"] == list(range(10, 121, 10))
    assert [r["step"] for r in resumed_rows if r["split"] == "val"] == list(range(20, 121, 20))
    assert comparable(resumed_rows) == comparable(clean_rows)
    resumed, uninterrupted = final_params(run), final_params(clean)
    assert int(resumed.step) == int(uninterrupted.step) == 120
    for a, b in zip(
        jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params), strict=True
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_two_runs_with_one_seed_are_identical(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment)
    cli("train", tiny_experiment)
    first, second = run_dirs(isolated_runs)
    assert comparable(read_metrics(first)) == comparable(read_metrics(second))


def test_early_stopping_on_a_plateau_keeps_the_best_checkpoint(tiny_experiment, cli, isolated_runs):
    plateau = "train.early_stop={patience_evals: 1, min_delta: 0.5}"
    cli("train", tiny_experiment, "--set", plateau, "--set", "train.eval_every_steps=10")
    run = run_dirs(isolated_runs)[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["steps"] == 20
    assert Checkpoints(run).step("best") == summary["best"]["step"]


def test_damaged_checkpoint_is_a_clean_error(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment)
    run = run_dirs(isolated_runs)[0]
    for file in (run / "checkpoints" / "latest").rglob("*"):
        if file.is_file() and file.stat().st_size > 0 and "METADATA" not in file.name:
            file.write_bytes(b"\0" * file.stat().st_size)
    result = cli("eval", run, "--checkpoint", "latest", expect=2)
    assert (
        "cannot be read" in result.stderr and "damaged or from another experiment" in result.stderr
    )


def test_resuming_with_another_experiment_is_a_clean_error(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment, "--set", "train.steps=20")
    run = run_dirs(isolated_runs)[0]
    config = (run / "config.yaml").read_text().replace("family: cnn", "family: mlp")
    (run / "config.yaml").write_text(config)
    result = cli("train", "--resume", run, expect=2)
    assert "damaged or from another experiment" in result.stderr


def test_runs_write_tensorboard_events_and_curves(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment)
    run = run_dirs(isolated_runs)[0]
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (
        events
        and b"loss/train" in events[0].read_bytes()
        and b"accuracy/val" in events[0].read_bytes()
    )
    with Image.open(run / "curves.png") as picture:
        assert picture.size[0] > 300


def test_batch_norm_statistics_survive_a_checkpoint_round_trip(tiny_experiment, cli, isolated_runs):
    batch_norm = "model={family: resnet, preset: tiny, norm: batch}"
    cli("train", tiny_experiment, "--set", batch_norm, "--set", "train.steps=20")
    run = run_dirs(isolated_runs)[0]
    restored_run = cnnlab.open_run(run).restore("latest")
    program, restored = restored_run.program, restored_run.state
    numbers = device_numbers(experiment_numbers(restored_run.experiment))
    fresh = init_state(program, 0, np.asarray(restored.norm), numbers)
    statistics = jax.tree.leaves(restored.model_state)
    assert statistics, "a batch-norm model keeps running statistics in its state"
    moved = [
        not np.allclose(a, b)
        for a, b in zip(statistics, jax.tree.leaves(fresh.model_state), strict=True)
    ]
    assert any(moved), "training updated the running statistics, and the checkpoint kept them"
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    assert not np.allclose(
        logits(program, restored, images),
        logits(program, fresh._replace(params=restored.params), images),
    )


def test_resume_refuses_changes_and_finished_runs(tiny_experiment, cli, isolated_runs):
    cli("train", tiny_experiment, "--set", "train.steps=20")
    run = run_dirs(isolated_runs)[0]
    changed = cli("train", "--resume", run, "--set", "train.steps=60", expect=2)
    assert "--set cannot change a run being resumed" in changed.stderr
    finished = cli("train", "--resume", run, expect=2)
    assert "already finished its 20 steps" in finished.stderr
    assert json.loads((run / "summary.json").read_text())["wall_seconds"] > 0


def test_a_run_is_the_same_whatever_the_length_of_its_calls():
    """Epochs of 3 steps: calls of 4 start mid-epoch and cross one or two epoch starts."""
    tree = yaml.safe_load(TINY_EXPERIMENT)
    tree["train"]["batch_size"] = 400
    built = setup(experiment_from_tree(tree))
    assert built.program.steps_per_epoch == 3
    data = to_device(built.train.images, built.train.labels)
    numbers = device_numbers(built.numbers)

    def train(per_call: int, steps: int = 8):
        state, losses = built.initial_state(), []
        orders = EpochOrders(built.program, state)
        for count in [per_call] * (steps // per_call) + [steps % per_call] * (steps % per_call > 0):
            call = steps_program(built.program, count, state, data, numbers)
            upcoming = orders.upcoming(len(losses), count)
            state, metrics = call(state, upcoming, data, numbers, np.bool_(False))
            losses += list(np.asarray(metrics["loss"]))
        return state, losses

    (one, one_losses), (four, four_losses), (five, five_losses) = map(train, (1, 4, 5))
    assert one_losses == four_losses == five_losses
    assert len(set(one_losses)) == 8
    for other in (four, five):
        kept = lambda s: (s.step, s.params, s.model_state, s.opt_state, s.order)  # noqa: E731
        for a, b in zip(jax.tree.leaves(kept(one)), jax.tree.leaves(kept(other)), strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_state_frozen_by_a_non_finite_step_keeps_replaying_the_failing_epoch():
    """A non-finite step at an epoch's start freezes the state. The host counts the next calls
    as later steps (it reads no metrics between logs); they still replay the failing epoch's
    batch, whose statistics name the layer at fault."""
    tree = yaml.safe_load(TINY_EXPERIMENT)
    tree["train"]["batch_size"] = 400
    built = setup(experiment_from_tree(tree))
    program = built.program
    assert program.steps_per_epoch == 3
    data = to_device(built.train.images, built.train.labels)
    numbers = device_numbers(built.numbers)
    state = built.initial_state()
    orders = EpochOrders(program, state)
    words = np.asarray(jax.random.key_data(state.key))
    call = steps_program(program, 1, state, data, numbers)
    for step in range(3):
        state, _ = call(state, orders.upcoming(step, 1), data, numbers, np.bool_(False))
    poisoned = state._replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
    frozen, metrics = call(poisoned, orders.upcoming(3, 1), data, numbers, np.bool_(False))
    assert not bool(metrics["finite"][0]) and int(frozen.step) == 3
    for step in (4, 5, 6):  # the host's count moves on into epochs 1 and 2
        frozen, metrics = call(frozen, orders.upcoming(step, 1), data, numbers, np.bool_(True))
        assert int(frozen.step) == 3
        np.testing.assert_array_equal(frozen.order, epoch_order(words, 1, program.num_examples))
