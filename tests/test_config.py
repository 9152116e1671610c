"""Experiment files: composition, overrides, and one-line errors for malformed input."""

from __future__ import annotations

import pytest
from conftest import TINY_EXPERIMENT, run_dirs, write

from cnnlab.config import load_experiment

GOOD = TINY_EXPERIMENT


def test_fragments_base_and_overrides_compose(tmp_path):
    write(tmp_path / "models" / "mine.yaml", "family: cnn\npreset: tiny\n")
    write(tmp_path / "optim" / "fast.yaml", "name: sgd\nlr: 0.05\nargs: {momentum: 0.9}\n")
    write(tmp_path / "base.yaml", GOOD)
    child = write(
        tmp_path / "child.yaml",
        "base: base.yaml\nname: child\nmodel: mine\noptimizer: fast\ntrain: {steps: 80}\n",
    )
    experiment = load_experiment(child, ["optimizer.lr=2e-1", "train.seed=3"])  # 2e-1: a number
    assert experiment.name == "child"
    assert experiment.train.steps == 80  # deep-merged over the base
    assert experiment.train.batch_size == 32  # kept from the base
    assert experiment.train.seed == 3
    assert experiment.raw["optimizer"] == {"name": "sgd", "lr": 0.2, "args": {"momentum": 0.9}}
    assert experiment.raw["model"] == {"family": "cnn", "preset": "tiny"}


def test_fragment_replaces_rather_than_merges(tmp_path):
    write(tmp_path / "optim" / "plain.yaml", "name: sgd\nlr: 0.1\n")
    write(
        tmp_path / "base.yaml",
        GOOD.replace("{name: adam, lr: 0.003}", "{name: adam, lr: 0.003, args: {b1: 0.8}}"),
    )
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptimizer: plain\n")
    assert load_experiment(child).raw["optimizer"] == {"name": "sgd", "lr": 0.1}


def test_shipped_experiments_all_validate():
    from conftest import EXPERIMENTS

    files = [p for p in EXPERIMENTS.glob("*.yaml")] + list((EXPERIMENTS / "custom").glob("*.yaml"))
    assert files
    for path in files:
        assert load_experiment(path).name


def test_resolved_config_reloads_identically(tmp_path, tiny_experiment):
    from cnnlab.config import dump_experiment

    experiment = load_experiment(tiny_experiment, ["optimizer.lr=0.01"])
    dump_experiment(experiment, tmp_path / "config.yaml")
    again = load_experiment(tmp_path / "config.yaml")
    assert again == experiment


# Each case: file text, the line the error must point at, words the message must contain.
MALFORMED = {
    "unknown top-level key": (GOOD + "nmae: x\n", 6, ["nmae", "did you mean 'name'"]),
    "unknown train key": (
        GOOD.replace("steps: 40", "stpes: 40"),
        5,
        ["train.stpes", "did you mean 'steps'"],
    ),
    "wrong type": (GOOD.replace("steps: 40", "steps: many"), 5, ["train.steps", "integer"]),
    "out of range": (
        GOOD.replace("steps: 40", "steps: 0"),
        5,
        ["train.steps", "greater than or equal to 1"],
    ),
    "val fraction too big": (
        GOOD.replace("val_fraction: 0.1", "val_fraction: 0.9"),
        2,
        ["data.val_fraction"],
    ),
    "missing name": (GOOD.replace("name: tiny\n", ""), 1, ["name", "missing"]),
    "bad name": (GOOD.replace("name: tiny", "name: a/b"), 1, ["name", "pattern"]),
    "malformed yaml": (
        GOOD.replace("data: {source: digits,", "data: {source: [digits,"),
        2,
        ["malformed YAML"],
    ),
    "duplicate key": (GOOD + "name: again\n", 6, ["duplicate key 'name'"]),
    "missing model fragment": (
        GOOD.replace("model: {family: cnn, preset: tiny}", "model: cnn_smal"),
        3,
        ["cnn_smal", "did you mean 'cnn_small'"],
    ),
    "model not a mapping": (
        GOOD.replace("model: {family: cnn, preset: tiny}", "model: 5"),
        3,
        ["model", "mapping"],
    ),
    "unknown optimizer": (GOOD.replace("name: adam", "name: adamm"), 4, ["optimizer.name", "adam"]),
    "negative lr": (GOOD.replace("lr: 0.003", "lr: -1"), 4, ["optimizer.lr"]),
    "unknown optimizer arg": (
        GOOD.replace("lr: 0.003}", "lr: 0.003, args: {bta1: 0.9}}"),
        4,
        ["bta1", "b1"],
    ),
    "unknown augmentation": (GOOD + "augment: [hflp]\n", 6, ["augment[0]", "hflip"]),
    "augmentation probability": (GOOD + "augment: [{hflip: {p: 2}}]\n", 6, ["augment[0]", "p"]),
    "unknown layer": (
        GOOD.replace("{family: cnn, preset: tiny}", "{layers: [conv2d]}"),
        3,
        ["model.layers[0]", "conv"],
    ),
    "unknown family": (GOOD.replace("family: cnn", "family: resnt"), 3, ["resnt", "resnet"]),
    "cadence vs steps_per_call": (
        GOOD.replace("log_every_steps: 10", "log_every_steps: 15"),
        5,
        ["multiple of steps_per_call"],
    ),
    "not a mapping": ("- name: tiny\n", 1, ["mapping"]),
    "missing base": ("base: nowhere.yaml\n" + GOOD, 1, ["base", "not found"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_experiment_is_one_line_error(case, tmp_path, cli, isolated_runs):
    text, line, words = MALFORMED[case]
    path = write(tmp_path / "exp.yaml", text)
    result = cli("train", path, expect=2)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in result.output + result.stderr
    assert f"exp.yaml:{line}" in message, message
    for word in words:
        assert word in message, (word, message)
    assert run_dirs(isolated_runs) == []


def test_base_cycle_is_reported(tmp_path, cli):
    write(tmp_path / "a.yaml", "base: b.yaml\n" + GOOD)
    write(tmp_path / "b.yaml", "base: a.yaml\n" + GOOD)
    result = cli("train", tmp_path / "a.yaml", expect=2)
    assert "cycle" in result.stderr


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("optimizer.lr", ["KEY=VALUE"]),
        ("train.steps=[1", ["not valid YAML"]),
        ("train.batch_sise=3", ["--set", "batch_size"]),
    ],
)
def test_bad_override_is_one_line_error(assignment, words, tiny_experiment, cli, isolated_runs):
    result = cli("train", tiny_experiment, "--set", assignment, expect=2)
    for word in words:
        assert word in result.stderr
    assert run_dirs(isolated_runs) == []


def test_missing_experiment_file(cli):
    result = cli("train", "no/such/file.yaml", expect=2)
    assert "experiment file not found" in result.stderr
