"""The spine end to end through the real CLI: overfit, train, eval, run folders, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, REPO, TINY_EXPERIMENT, run_dirs, write

import cnnlab
from cnnlab.runs import create_run_dir, read_metrics

FASHION = Path("/usr/share/datasets/fashion-mnist")
CIFAR_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_overfit_default_memorises_four_samples_quickly(cli):
    result = cli("overfit", "--samples", "4")
    assert "PASS" in result.stdout
    step = int(result.stdout.split("at step ")[1].split(";")[0])
    assert step <= 300


def test_overfit_failure_exits_nonzero(cli, tiny_experiment):
    result = cli(
        "overfit",
        tiny_experiment,
        "--samples",
        "32",
        "--max-steps",
        "10",
        "--set",
        "optimizer.lr=1e-9",
        expect=1,
    )
    assert "FAIL" in result.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One real training run of the tiny experiment, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("trained")
    path = write(root / "tiny.yaml", TINY_EXPERIMENT)
    return cnnlab.train(cnnlab.load_experiment(path), run_dir=root / "runs" / "tiny").path


def test_run_folder_holds_config_metrics_checkpoints_summary(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", "summary.json"} <= names
    assert {p.name for p in (trained_run / "checkpoints").iterdir()} == {"latest", "best"}
    rows = read_metrics(trained_run)
    assert [r["step"] for r in rows if r["split"] == "train"] == [10, 20, 30, 40]
    assert [r["step"] for r in rows if r["split"] == "val"] == [20, 40]
    for row in rows:
        assert set(row) == {
            "step",
            "split",
            "loss",
            "accuracy",
            "lr",
            "images_per_sec",
            "wall_time",
        }
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,split,loss,accuracy,lr,images_per_sec,wall_time"
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["best"]["step"] in (20, 40)
    assert summary["versions"]["jax"] and summary["device"]["platform"] == "cpu"
    assert cnnlab.open_run(trained_run).config["name"] == "tiny"


def test_eval_reports_top1_top5_per_class_and_confusion(trained_run, cli):
    result = cli("eval", trained_run)
    assert "top-1" in result.stdout and "top-5" in result.stdout and "confusion" in result.stdout
    report = json.loads((trained_run / "eval_test.json").read_text())
    assert report["examples"] == 360 and report["split"] == "test"
    assert len(report["per_class"]) == 10
    assert sum(map(sum, report["confusion"])) == 360
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    val = cli("eval", trained_run, "--split", "val", "--checkpoint", "latest")
    assert "val split, latest checkpoint (step 40)" in val.stdout


def test_eval_of_unknown_run_is_a_clean_error(cli):
    result = cli("eval", "no-such-run", expect=2)
    assert "no run matches 'no-such-run'" in result.stderr


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    folders = {create_run_dir("same", tmp_path) for _ in range(3)}
    assert len(folders) == 3


def test_ctrl_c_stops_cleanly_with_a_checkpoint(tiny_experiment, isolated_runs):
    class InterruptAtStep20:
        def update(self, step, train, val):
            if step == 20:
                os.kill(os.getpid(), signal.SIGINT)

    experiment = cnnlab.load_experiment(tiny_experiment, ["train.eval_every_steps=40"])
    run = cnnlab.train(experiment, progress=InterruptAtStep20())
    assert run.summary["status"] == "interrupted"
    assert run.summary["steps"] == 30  # the next call boundary after Ctrl-C
    assert (run.path / "checkpoints" / "latest" / "30").is_dir()
    assert [r["step"] for r in run.metrics if r["split"] == "val"] == [30]


def test_digits_reaches_97_percent_test_accuracy(cli):
    cli("train", EXPERIMENTS / "digits.yaml")
    result = cli("eval", "latest")
    report = json.loads(
        next(iter(run_dirs(Path(os.environ["CNNLAB_RUNS_DIR"]))))
        .joinpath("eval_test.json")
        .read_text()
    )
    assert report["top1"] >= 0.97, result.stdout


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_short_run_on_real_data(cli, tmp_path):
    data_dir = tmp_path / "tfds"
    cli("data", "prepare", "fashion_mnist", "--from", FASHION, "--data-dir", data_dir)
    cli(
        "train",
        EXPERIMENTS / "fashion_mnist.yaml",
        "--set",
        f"data.data_dir={data_dir}",
        "--set",
        "train.steps=200",
        "--set",
        "train.eval_every_steps=200",
    )
    run = run_dirs(Path(os.environ["CNNLAB_RUNS_DIR"]))[0]
    assert json.loads((run / "summary.json").read_text())["best"]["val_accuracy"] > 0.7


@pytest.mark.skipif(
    not CIFAR_JPEG.is_file(), reason="the CIFAR-10 JPEG copy is not beside the repository"
)
def test_cifar10_folder_experiment_trains(cli):
    cli(
        "train",
        EXPERIMENTS / "cifar10_folder.yaml",
        "--set",
        "model=resnet_tiny",
        "--set",
        "train.steps=20",
        "--set",
        "train.log_every_steps=10",
        "--set",
        "train.eval_every_steps=20",
        "--set",
        "data.val_fraction=0.02",
    )
    run = run_dirs(Path(os.environ["CNNLAB_RUNS_DIR"]))[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["image_shape"] == [32, 32, 3] and summary["steps"] == 20
    assert summary["dataset"]["classes"][0] == "airplane"
