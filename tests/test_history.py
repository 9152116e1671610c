"""Listing, showing, comparing and plotting runs, on real run folders trained once per module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_EXPERIMENT, Cli, write
from PIL import Image

from cnnlab.history import config_differences, flatten, list_runs
from cnnlab.plots import plot_confusion, plot_curves
from cnnlab.runs import MetricsWriter

FAST_TRAIN = (
    "train: {steps: 6, batch_size: 32, eval_every_steps: 2, log_every_steps: 2, "
    "steps_per_call: 2, seed: 0}\n"
)


def experiment_text(name: str, lr: float) -> str:
    lines = [line for line in TINY_EXPERIMENT.splitlines() if not line.startswith("train:")]
    text = "\n".join(lines).replace("name: tiny", f"name: {name}")
    return text.replace("lr: 0.003", f"lr: {lr}") + "\n" + FAST_TRAIN


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two runs of the tiny experiment that differ only in name and learning rate; the older one
    is evaluated on its test split."""
    folder = tmp_path_factory.mktemp("history")
    runs = folder / "runs"
    cli = Cli()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_RUNS_DIR", str(runs))
        patch.setenv("CNNLAB_CACHE_DIR", str(folder / "cache"))
        for name, lr in (("alpha", 0.003), ("beta", 0.01)):
            cli("train", write(folder / f"{name}.yaml", experiment_text(name, lr)))
        made = {p.name.rsplit("_", 1)[-1]: p for p in runs.iterdir()}
        cli("eval", made["alpha"])
    return made


@pytest.fixture
def runs_root(trained, monkeypatch) -> Path:
    root = trained["alpha"].parent
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(root))
    return root


def test_runs_lists_newest_first_with_results(cli, runs_root, trained):
    out = cli("runs").stdout
    alpha, beta = trained["alpha"].name, trained["beta"].name
    assert beta in out and alpha in out
    assert out.index(beta) < out.index(alpha)
    alpha_line = next(line for line in out.splitlines() if alpha in line)
    assert "digits" in alpha_line and "cnn/tiny" in alpha_line
    assert alpha_line.count("%") == 2  # best validation and test accuracy
    beta_line = next(line for line in out.splitlines() if beta in line)
    assert beta_line.count("%") == 1  # not evaluated: no test accuracy


def test_runs_filters_by_part_of_the_name(cli, runs_root, trained):
    out = cli("runs", "alph").stdout
    assert trained["alpha"].name in out
    assert trained["beta"].name not in out
    assert "no runs matching 'gamma'" in cli("runs", "gamma").stdout


def test_runs_describes_a_run_without_summary_from_its_metrics(cli, isolated_runs, trained):
    unfinished = isolated_runs / "2026-01-02_03-04-05_unfinished"
    unfinished.mkdir(parents=True)
    shutil.copy(trained["alpha"] / "config.yaml", unfinished / "config.yaml")
    writer = MetricsWriter(unfinished)
    writer.write(step=10, split="train", loss=2.0, accuracy=0.25, wall_time=1.5)
    writer.write(step=10, split="val", loss=1.9, accuracy=0.375, wall_time=1.6)
    writer.close()
    (info,) = list_runs()
    assert (info.steps, info.best_val_accuracy, info.test_accuracy) == (10, 0.375, None)
    out = cli("runs").stdout
    assert "running or stopped" in out and "37.50%" in out


def test_show_prints_config_and_results(cli, runs_root, trained):
    out = cli("show", "alpha").stdout
    assert "lr: 0.003" in out and "preset: tiny" in out
    assert "best val accuracy" in out
    assert "evaluations" in out and "test" in out
    out = cli("show", "beta").stdout
    assert "lr: 0.01" in out and "not evaluated yet" in out


def test_show_unknown_run_is_one_line_error(cli, runs_root):
    result = cli("show", "gamma", expect=2)
    assert "no run matches 'gamma'" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_shows_differing_keys_and_writes_png(cli, runs_root, trained, tmp_path):
    picture = tmp_path / "cmp.png"
    out = cli("compare", "alpha", "beta", "--out", picture).stdout
    lr_line = next(line for line in out.splitlines() if "optimizer.lr" in line)
    assert "0.003" in lr_line and "0.01" in lr_line
    assert "name" in out and "train.steps" not in out  # only what differs
    assert "best val acc" in out and "test acc" in out
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300


def test_compare_needs_two_distinct_runs(cli, runs_root):
    result = cli("compare", "alpha", "alpha", "--no-plot", expect=2)
    assert "at least two different runs" in result.stderr


def test_plot_curves_writes_png_in_the_run(trained):
    path = plot_curves(trained["beta"])
    assert path == trained["beta"] / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300


def test_plot_confusion_writes_png(tmp_path):
    evaluation = {
        "split": "test",
        "top1": 0.5,
        "class_names": ["cat", "dog", "bird"],
        "confusion": [[5, 1, 0], [2, 3, 1], [0, 0, 6]],
    }
    path = plot_confusion(evaluation, tmp_path / "confusion.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 300


def test_eval_saves_confusion_plot(trained):
    assert (trained["alpha"] / "confusion_test.png").is_file()


def test_flatten_and_differences_reach_into_lists():
    one = {"model": {"layers": [{"conv": 8}, "relu"]}, "train": {"steps": 5}}
    two = {"model": {"layers": [{"conv": 16}, "relu", "flatten"]}, "train": {"steps": 5}}
    assert flatten(one) == {"model.layers[0].conv": 8, "model.layers[1]": "relu", "train.steps": 5}
    differences = config_differences([one, two])
    assert list(differences) == ["model.layers[0].conv", "model.layers[2]"]
    assert differences["model.layers[0].conv"] == [8, 16]
