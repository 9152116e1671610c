"""Sweeps: expansion of grids, draws and seeds, errors at the sweep file's line, resuming."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import TINY_EXPERIMENT, interrupt_when, run_dirs, write
from PIL import Image

from cnnlab.runs import read_metrics, write_json
from cnnlab.sweeps import collect_results, load_sweep, trial_dir, write_results

# Four steps in two compiled calls of two: quick to compile, and it evaluates and checkpoints.
FAST = "set: {train.steps: 4, train.steps_per_call: 2, train.log_every_steps: 2, train.eval_every_steps: 4}\n"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def base(tmp_path) -> Path:
    return write(tmp_path / "tiny.yaml", TINY_EXPERIMENT)


def sweep_file(tmp_path: Path, text: str, name: str = "s") -> Path:
    return write(tmp_path / f"{name}.yaml", "base: tiny.yaml\n" + text)


def test_grid_is_crossed_with_seeds(base, tmp_path):
    path = sweep_file(
        tmp_path,
        "grid:\n  optimizer.lr: [1e-3, 0.01]\n  train.batch_size: [16, 32]\n"
        "seeds: [0, 5]\nset: {train.steps: 20}\n",
    )
    sweep = load_sweep(path)

    assert len(sweep.settings) == 4 and sweep.seeds == (0, 5)
    assert len(sweep.trials) == 8 and len({t.id for t in sweep.trials}) == 8
    got = {
        (t.experiment.optimizer.lr, t.experiment.train.batch_size, t.experiment.train.seed)
        for t in sweep.trials
    }
    assert got == {(lr, b, s) for lr in (0.001, 0.01) for b in (16, 32) for s in (0, 5)}
    assert all(t.experiment.train.steps == 20 for t in sweep.trials)
    assert [p.key for p in sweep.params] == ["optimizer.lr", "train.batch_size"]
    assert sweep.params[0].log and not sweep.params[1].log  # a decade apart vs a factor of 2


def test_no_seeds_key_means_the_base_seed(base, tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, "grid: {optimizer.lr: [0.1, 0.2]}\n"))
    assert [t.seed for t in sweep.trials] == [0, 0]


RANDOM = """\
random:
  trials: {trials}
  seed: {seed}
  params:
    optimizer.lr: {{log_uniform: [1e-4, 1e-2]}}
    optimizer.args.b1: {{uniform: [0.8, 0.95]}}
    train.batch_size: {{int_uniform: [8, 12]}}
    model.preset: {{choice: [tiny, default]}}
"""


def drawn(tmp_path, trials=6, seed=0, name="r"):
    sweep = load_sweep(sweep_file(tmp_path, RANDOM.format(trials=trials, seed=seed), name))
    return sweep, [s.values for s in sweep.settings]


def test_random_draws_are_seeded_and_in_range(base, tmp_path):
    sweep, values = drawn(tmp_path)

    assert len(values) == 6 and len(sweep.trials) == 6
    for v in values:
        assert 1e-4 <= v["optimizer.lr"] <= 1e-2
        assert 0.8 <= v["optimizer.args.b1"] <= 0.95
        assert v["train.batch_size"] in range(8, 13)
        assert v["model.preset"] in ("tiny", "default")
    # log-uniform: spread over both decades, not bunched at the top as uniform would be
    assert min(v["optimizer.lr"] for v in values) < 1e-3 < max(v["optimizer.lr"] for v in values)
    assert drawn(tmp_path, name="again")[1] == values
    assert drawn(tmp_path, seed=1, name="other")[1] != values
    assert drawn(tmp_path, trials=8, name="more")[1][:6] == values
    assert [p.log for p in sweep.params] == [True, False, False, False]
    lrs = {t.experiment.optimizer.lr for t in sweep.trials}
    assert lrs == {v["optimizer.lr"] for v in values}


def test_grid_is_crossed_with_random_draws(base, tmp_path):
    text = "grid: {train.batch_size: [16, 32]}\nrandom: {trials: 3, params: {optimizer.lr: {uniform: [0.001, 0.01]}}}\n"
    sweep = load_sweep(sweep_file(tmp_path, text))
    assert len(sweep.settings) == 6
    assert {s.values["train.batch_size"] for s in sweep.settings} == {16, 32}
    assert len({s.values["optimizer.lr"] for s in sweep.settings}) == 3


BAD = [
    ("grdi: {optimizer.lr: [0.1]}\n", 2, "grdi: unknown key; did you mean 'grid'?"),
    ("metric: best_val_acc\n", 2, "did you mean 'best_val_accuracy'?"),
    (
        "random:\n  trials: 2\n  params:\n    optimizer.lr: {gauss: [0, 1]}\n",
        5,
        "random.params.optimizer.lr.gauss: unknown distribution; valid:",
    ),
    (
        "random:\n  trials: 2\n  params:\n    optimizer.lr: {log_uniform: [0, 1]}\n",
        5,
        "log_uniform needs low > 0",
    ),
    (
        "random:\n  trials: 2\n  params:\n    optimizer.lr: {uniform: [0.1]}\n",
        5,
        "expected two numbers, low and high",
    ),
    (
        "grid:\n  optimizer.lr:\n    - 0.001\n    - fast\n",
        5,
        "optimizer.lr: input should be a valid number",
    ),
    ("grid:\n  optimizer.lrr: [0.1]\n", 3, ("optimizer.lrr: unknown key", "did you mean 'lr'?")),
    ("seeds: [0, 0]\n", 2, "seeds[1]: duplicate seed 0"),
    ("grid: {optimizer.lr: []}\n", 2, "expected a non-empty list"),
    ("grid: {train.seed: [1, 2]}\n", 2, "top-level `seeds:` list"),
]


@pytest.mark.parametrize(("body", "line", "message"), BAD)
def test_bad_sweep_is_one_line_at_its_line(cli, base, tmp_path, isolated_runs, body, line, message):
    path = sweep_file(tmp_path, body)

    result = cli("sweep", path, expect=2)

    error = result.stderr.strip()
    assert len(error.splitlines()) == 1
    assert f"{path}:{line}: " in error
    assert all(part in error for part in ([message] if isinstance(message, str) else message))
    assert run_dirs(isolated_runs) == []


def test_missing_sweep_file_is_one_line(cli, tmp_path):
    result = cli("sweep", tmp_path / "nope.yaml", expect=2)
    assert "sweep file not found" in result.stderr


def fake_summary(accuracy: float) -> dict:
    val = {"accuracy": accuracy, "loss": 1 - accuracy}
    return {"status": "completed", "steps": 10, "final": {"train": {}, "val": val},
            "best": {"val_accuracy": accuracy, "val_loss": 1 - accuracy, "step": 10}}  # fmt: skip


def test_results_rank_settings_by_mean_over_seeds(base, tmp_path):
    """Results come from the trial folders' summary.json files, ranked by the metric's mean."""
    sweep = load_sweep(
        sweep_file(tmp_path, "grid: {optimizer.lr: [0.1, 0.2, 0.3]}\nseeds: [0, 1]\n")
    )
    folder = tmp_path / "sweep"
    accuracy = {(0.1, 0): 0.5, (0.1, 1): 0.7, (0.2, 0): 0.9, (0.3, 0): 0.2, (0.3, 1): 0.4}
    for trial in sweep.trials:
        key = (trial.setting.values["optimizer.lr"], trial.seed)
        if key in accuracy:
            trial_dir(folder, trial).mkdir(parents=True)
            write_json(trial_dir(folder, trial) / "summary.json", fake_summary(accuracy[key]))

    result = collect_results(sweep, folder)
    write_results(result)

    ranked = [(s.setting.values["optimizer.lr"], s.mean, len(s.scores)) for s in result.settings]
    assert [lr for lr, _, _ in ranked] == [0.2, 0.1, 0.3]
    assert ranked[0][1:] == (0.9, 1) and ranked[1][1] == pytest.approx(0.6)
    assert result.settings[1].std == pytest.approx(math.sqrt(0.02))  # sample std of 0.5, 0.7
    assert result.settings[0].std is None and not result.complete
    rows = read_csv(folder / "sweep_settings.csv")
    assert [r["optimizer.lr"] for r in rows] == ["0.2", "0.1", "0.3"]
    assert rows[0]["seeds"] == "1" and rows[0]["seeds_total"] == "2"
    trials = read_csv(folder / "sweep.csv")
    assert sorted(r["status"] for r in trials) == ["completed"] * 5 + ["missing"]


def test_resume_needs_a_sweep_folder(cli, base, tmp_path):
    path = sweep_file(tmp_path, "grid: {optimizer.lr: [0.1]}\n" + FAST)
    result = cli("sweep", path, "--resume", tmp_path, expect=2)
    assert "not a sweep folder" in result.stderr


# Long enough to be interrupted while the second trial trains.
SLOW = "set: {train.steps: 400, train.eval_every_steps: 20, train.log_every_steps: 10}\n"


def logged_step(run_dir: Path) -> int:
    return max((row["step"] for row in read_metrics(run_dir)), default=0)


def test_interrupted_sweep_resumes_the_interrupted_trial_from_its_checkpoint(
    cli, base, tmp_path, isolated_runs
):
    path = sweep_file(tmp_path, "grid: {optimizer.lr: [0.001, 0.01, 0.03]}\nseeds: [0]\n" + SLOW)
    sweep = load_sweep(path)

    def second_trial_training() -> bool:
        folders = run_dirs(isolated_runs)
        return bool(folders) and logged_step(trial_dir(folders[0], sweep.trials[1])) >= 40

    env = {"CNNLAB_RUNS_DIR": str(isolated_runs)}
    assert interrupt_when(["sweep", path], second_trial_training, env) == 130

    [folder] = run_dirs(isolated_runs)
    first, second, third = (trial_dir(folder, t) for t in sweep.trials)
    assert json.loads((second / "summary.json").read_text())["status"] == "interrupted"
    assert not third.exists()
    statuses = [r["status"] for r in read_csv(folder / "sweep.csv")]
    # A few steps at lr 0.001 may not lift validation above chance: completed_not_learning.
    assert statuses[0].startswith("completed") and statuses[1:] == ["interrupted", "missing"]
    stopped_at = json.loads((second / "summary.json").read_text())["steps"]
    kept = [row for row in read_metrics(second) if row["step"] <= stopped_at]

    result = cli("sweep", path)

    assert run_dirs(isolated_runs) == [folder]
    assert "1 finished, 2 to train" in result.stdout
    resumed = read_metrics(second)
    assert resumed[: len(kept)] == kept  # the rows before the stop were kept, not retrained
    train_steps = [row["step"] for row in resumed if row["split"] == "train"]
    assert train_steps == list(range(10, 401, 10))
    rows = read_csv(folder / "sweep_settings.csv")
    assert len(rows) == 3 and all(r["seeds"] == "1" for r in rows)
    assert result.stdout.count("1/1") == 3  # the table: every setting has its seed
    best_line = next(line for line in result.stdout.splitlines() if line.startswith("best: "))
    assert best_line.startswith(f"best: cnnlab train {base} --set train.steps=400 ")
    assert best_line.endswith(f"--set optimizer.lr={rows[0]['optimizer.lr']}")
    trials = read_csv(folder / "sweep.csv")
    assert [r["status"] for r in trials] == ["completed"] * 3
    assert float(rows[0]["best_val_accuracy_mean"]) == max(
        float(r["best_val_accuracy"]) for r in trials
    )
    with Image.open(folder / "sweep.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


@pytest.mark.parametrize(("name", "trials"), [("lr", 18), ("fashion_mnist_lr", 8)])
def test_shipped_sweeps_are_valid(name, trials):
    sweep = load_sweep(name)
    assert len(sweep.trials) == trials and sweep.params[0].key == "optimizer.lr"
