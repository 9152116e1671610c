"""Bad input and faults, one case per problem: each ends as one `error:` line naming what is wrong
(exit 2, or 1 for a write that fails mid-run), no traceback, and no run folder left behind; a
damaged run is listed as damaged and never stops the others from being listed."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, SHORT, run_dirs, write
from PIL import Image

EXPERIMENT = "name: x\ndata: {source: digits}\n"  # a model is added by each case


def one_error(result, *needles: str, code: int = 2) -> str:
    """The result is exit `code` with exactly one `error:` line holding every needle."""
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run(trained, isolated_runs) -> Path:
    """A fresh copy of the trained run in this test's runs folder."""
    return Path(shutil.copytree(trained, isolated_runs / trained.name))


# ---------------------------------------------------------------------------------------------
# Experiment files: any bytes, bombs and bounds are one line before any work


def alias_chain(levels: int, indent: str, anchor: str, item: str) -> str:
    """`levels` anchors, each a list of ten aliases of the one before: 10**levels values."""
    lines = [f"{indent}- &{anchor}0 {item}"]
    for level in range(1, levels):
        aliases = ", ".join([f"*{anchor}{level - 1}"] * 10)
        lines.append(f"{indent}- &{anchor}{level} " + item.replace("ITEMS", aliases))
    return "\n".join(lines) + "\n"


def python_model(tmp_path: Path, body: str, signature: str = "rngs") -> Path:
    return write(
        tmp_path / "net.py",
        "from flax import nnx\n"
        f"{body}\n"
        "class Net(nnx.Module):\n"
        f"    def __init__(self, in_shape, num_classes, {signature}):\n"
        "        self.out = nnx.Linear(64, num_classes, rngs=rngs)\n"
        "    def __call__(self, x):\n"
        "        return self.out(x.reshape(x.shape[0], -1))\n",
    )


BAD_EXPERIMENTS = {
    "binary": (b"\xff\xfe\x00\x81garbage\x00", "not UTF-8 text"),
    "control character": (EXPERIMENT + "model: cnn_small\nx: a\x07b\n", "control character 0x07"),
    "complex key": (EXPERIMENT + "? [a, b]\n: 1\n", "a key must be a name or a number"),
    "nesting 3000 deep": ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 64"),
    "impossible date": (EXPERIMENT + "model: cnn_small\nx: 2020-13-45\n", "month must be in"),
    "alias bomb in model.args": (
        EXPERIMENT
        + "model:\n  python: NET:Net\n  args:\n    width:\n"
        + alias_chain(9, "      ", "a", "[ITEMS]").replace("[ITEMS]", "[x]", 1),
        "expands to more than",
    ),
    "alias bomb of residual layers": (
        EXPERIMENT
        + "model:\n  layers:\n"
        + alias_chain(9, "    ", "r", "{residual: [ITEMS]}").replace("[ITEMS]", "[relu]", 1),
        "expands to more than",
    ),
    "repeat 10^8": (
        EXPERIMENT + "model: {layers: [{repeat: 100000000, layers: [relu]}, dense]}\n",
        "100,000,000 layers",
    ),
    "seed beyond 2^32": (
        EXPERIMENT + "model: cnn_small\ntrain: {seed: 99999999999999999999}\n",
        "train.seed",
    ),
    "steps 1e12": (EXPERIMENT + "model: cnn_small\ntrain: {steps: 1e12}\n", "train.steps"),
    "steps true": (EXPERIMENT + "model: cnn_small\ntrain: {steps: true}\n", "whole number"),
    "infinite rate": (
        EXPERIMENT + "model: cnn_small\noptimizer: {name: adam, lr: .inf}\n",
        "finite",
    ),
    "fragment path": (EXPERIMENT + "model: ../digits\n", "not a fragment name"),
    "model exits at import": (
        EXPERIMENT + "model: {python: EXIT}\n",
        "importing it failed: SystemExit",
    ),
    "model interrupts at import": (
        EXPERIMENT + "model: {python: INTERRUPT}\n",
        "importing it failed: KeyboardInterrupt",
    ),
    "args to a model without arguments": (
        EXPERIMENT + "model: {python: 'NET:Net', args: {width: 3}}\n",
        "takes no arguments",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPERIMENTS, ids=list(BAD_EXPERIMENTS))
def test_bad_experiment_is_one_line_and_no_run(case, cli, tmp_path, isolated_runs):
    content, needle = BAD_EXPERIMENTS[case]
    net = python_model(tmp_path, "")
    exits = write(tmp_path / "exits.py", "raise SystemExit(0)\n")
    interrupts = write(tmp_path / "interrupts.py", "raise KeyboardInterrupt\n")
    if isinstance(content, str):
        content = content.replace("NET", str(net)).replace("EXIT", str(exits))
        content = content.replace("INTERRUPT", str(interrupts)).encode()
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    one_error(cli("train", path, expect=None), needle)
    assert time.monotonic() - started < 60  # a bomb is refused, not expanded
    assert run_dirs(isolated_runs) == []


SET_MESSAGES = {
    "model.layers[0].conv=3": "list items cannot be set one by one",
    "train.steps.=5": "'train.steps.' is not a dotted key",
    "a..b=1": "not a dotted key",
}


@pytest.mark.parametrize("assignment", SET_MESSAGES)
def test_set_keys_that_cannot_be_followed(assignment, cli, isolated_runs):
    one_error(cli("train", DIGITS, "--set", assignment, expect=None), SET_MESSAGES[assignment])
    assert run_dirs(isolated_runs) == []


def test_batch_larger_than_the_training_split_is_refused_with_numbers(cli, isolated_runs):
    result = cli("train", DIGITS, *SHORT, "--set", "train.batch_size=100000", expect=None)
    one_error(result, "train.batch_size", "100000", "training split (1295 images")
    assert run_dirs(isolated_runs) == []


# ---------------------------------------------------------------------------------------------
# Sweep files


def sweep_file(tmp_path: Path, body: str) -> Path:
    return write(tmp_path / "s.yaml", f"base: {DIGITS}\n{body}")


BIG_GRID = "grid:\n" + "".join(
    f"  {key}: [{', '.join(str(0.001 * (i + 1)) for i in range(10))}]\n"
    for key in (
        "optimizer.lr",
        "optimizer.weight_decay",
        "optimizer.clip_norm",
        "optimizer.ema_decay",
        "train.label_smoothing",
        "data.val_fraction",
    )
)
BAD_SWEEPS = {
    "empty grid": ("grid: {}\n", "grid: empty"),
    "10^6 trials": (BIG_GRID, "1,000,000 trials"),
    "random trials 10^9": (
        "random: {trials: 1000000000, params: {optimizer.lr: {uniform: [0.001, 0.1]}}}\n",
        "--max-trials",
    ),
    "control character": ("name: a\x01\n", "control character 0x01"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS, ids=list(BAD_SWEEPS))
def test_bad_sweep_is_one_line_and_no_folder(case, cli, tmp_path, isolated_runs):
    body, needle = BAD_SWEEPS[case]
    started = time.monotonic()
    one_error(cli("sweep", sweep_file(tmp_path, body), expect=None), needle)
    assert time.monotonic() - started < 30
    assert run_dirs(isolated_runs) == []


def test_max_trials_allows_a_bigger_sweep(cli, tmp_path):
    from cnnlab.sweeps import load_sweep

    path = sweep_file(tmp_path, "grid: {optimizer.lr: [0.001, 0.002, 0.003]}\n")
    with pytest.raises(Exception, match="--max-trials 3"):
        load_sweep(path, max_trials=2)
    assert len(load_sweep(path, max_trials=3).trials) == 3


# ---------------------------------------------------------------------------------------------
# Damaged run files: listed as damaged, or one line naming the file

TORN = '{"step": 30, "spl'
DAMAGED_RUNS = [
    # file, content (None: a torn last line appended), command, exit, text expected
    ("summary.json", "garbage{", "runs", 0, "damaged: summary.json"),
    ("summary.json", "", "runs", 0, "damaged: summary.json empty"),
    ("summary.json", "[1, 2]", "runs", 0, "damaged: summary.json a JSON list"),
    ("summary.json", "garbage{", "show", 0, "summary.json"),
    ("summary.json", "[1, 2]", "show", 0, "damaged"),
    ("summary.json", '{"name": 1, "final": 3}', "show", 0, "summary.json is damaged"),
    ("summary.json", "garbage{", "diagnostics", 2, "summary.json is damaged"),
    ("eval_test.json", "garbage", "runs", 0, "damaged: eval_test.json"),
    ("metrics.jsonl", None, "plot", 0, "curves:"),
    ("metrics.jsonl", None, "show", 0, "run folder"),
    ("metrics.jsonl", "garbage\n{}\n", "plot", 2, "metrics.jsonl:1 is damaged"),
    ("metrics.jsonl", '{"step": "x", "split": "train", "loss": [1]}\n', "plot", 2, "step is 'x'"),
    ("diagnostics.jsonl", None, "diagnostics", 0, "per-layer diagnostics"),
    ("diagnostics.jsonl", '{"step": 1, "layer": []}\n', "diagnostics", 2, "diagnostics.jsonl"),
    ("config.yaml", "name: a\x07\n", "eval", 2, "control character 0x07"),
]


@pytest.mark.parametrize(
    "name, content, command, code, needle",
    DAMAGED_RUNS,
    ids=[f"{n}={c!r:.10}-{cmd}" for n, c, cmd, _, _ in DAMAGED_RUNS],
)
def test_damaged_run_file(name, content, command, code, needle, cli, run):
    path = run / name
    path.write_text(path.read_text() + TORN if content is None else content)
    args = [command] if command == "runs" else [command, run]
    result = cli(*args, expect=None)
    if code == 2:
        one_error(result, needle, str(run))
        return
    output = result.stdout + result.stderr
    assert result.exit_code == 0 and "Traceback" not in output, output
    assert needle in output.replace("\n", " ") or needle in result.stdout, output
    if content is None and command != "show":  # show reads no metrics of a finished run
        assert "note:" in result.stderr and "cut short" in result.stderr


def test_a_damaged_run_does_not_hide_the_others(cli, run, trained, isolated_runs):
    good = shutil.copytree(trained, isolated_runs / "2000-01-01_00-00-00_good")
    (run / "summary.json").write_text("garbage")
    (run / "metrics.jsonl").write_text("garbage\n")
    listing = cli("runs").stdout
    assert "damaged" in listing and good.name in listing
    compare = cli("compare", run, good, "--no-plot")
    assert "damaged" in compare.stdout


def damage_checkpoints(run: Path, how: str) -> None:
    for kind in ("best", "latest"):
        step = run / "checkpoints" / kind / "20"
        if how == "metadata":
            (step / "_CHECKPOINT_METADATA").write_text("garbage")
        elif how == "manifest":
            for manifest in step.rglob("manifest.ocdbt"):
                manifest.write_bytes(b"garbage")
        else:  # cut every data file in half, as a crash mid-copy would
            for data in (p for p in step.rglob("d/*") if p.is_file()):
                data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


@pytest.mark.parametrize("how", ["metadata", "manifest", "truncated data"])
@pytest.mark.parametrize("command", ["eval", "train --resume"])
def test_damaged_checkpoint_is_one_line_without_library_noise(how, command, cli, run):
    """The right error, not inside a flood: orbax's and absl's lines go to the run's log."""
    damage_checkpoints(run, how)
    if command == "train --resume":
        config = run / "config.yaml"
        config.write_text(config.read_text().replace("steps: 20", "steps: 30"))
        (run / "summary.json").unlink()
    result = cli(*command.split(), run, expect=None)
    output = result.stdout + result.stderr
    assert "ERROR:absl" not in output and "Event loop is closed" not in output, output
    if result.exit_code != 0:  # orbax reads some damage fine; what it cannot read is one line
        one_error(result, "checkpoint", "cannot be read")
        assert len(result.stderr.splitlines()) <= 2, result.stderr


def test_library_noise_stays_off_the_terminal(run):
    """In a real process absl and orbax print to stderr unless routed: a garbage checkpoint
    metadata file made them print ERROR lines around cnnlab's output."""
    damage_checkpoints(run, "metadata")
    env = {**os.environ, "CNNLAB_RUNS_DIR": str(run.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "eval", str(run)], env=env, capture_output=True, text=True
    )
    assert "ERROR:absl" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 2), done.stderr
    assert len(done.stderr.splitlines()) <= 1, done.stderr


def test_orphan_checkpoint_folders_are_not_checkpoints(cli, run):
    """A full disk leaves `<step>.orbax-checkpoint-tmp` folders: never counted, cleaned on save."""
    from cnnlab.runs import Checkpoints, checkpoint_steps

    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "latest")
    (run / "checkpoints" / "latest" / "40.orbax-checkpoint-tmp" / "default").mkdir(parents=True)
    assert checkpoint_steps(run, "latest") == []
    assert "no complete checkpoint" in cli("runs").stdout
    checkpoints = Checkpoints(run)
    checkpoints.save("latest", 50, {"w": np.zeros(3)})
    checkpoints.close()
    assert not list(run.glob("checkpoints/*/*orbax-checkpoint-tmp*"))
    assert checkpoint_steps(run, "latest") == [50]


def test_resume_skips_a_torn_metrics_line_with_a_note(cli, run):
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("steps: 20", "steps: 30"))
    (run / "summary.json").unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + TORN)
    result = cli("train", "--resume", run)
    assert "cut short" in result.stderr
    assert all(line.endswith("}") for line in (run / "metrics.jsonl").read_text().splitlines())


def test_sweep_resume_with_damaged_sweep_json(cli, tmp_path):
    folder = tmp_path / "sweep_folder"
    write(folder / "sweep.json", "garbage")
    result = cli("sweep", sweep_file(tmp_path, "seeds: [0]\n"), "--resume", folder, expect=None)
    one_error(result, "sweep.json is damaged")


# ---------------------------------------------------------------------------------------------
# Writes: checked before work, one line when they fail


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A read-only folder (a read-only bind mount: permission bits do not stop root)."""
    folder, target = tmp_path / "rw", tmp_path / "ro"
    folder.mkdir()
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", folder, target], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only folder here: {mounted.stderr.decode().strip()}")
    yield target
    subprocess.run(["umount", target], check=False)


def test_read_only_runs_folder(cli, read_only, run, monkeypatch):
    shutil.copytree(run, read_only.parent / "rw" / run.name)
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(read_only))
    frozen = read_only / run.name
    for args in (
        ("train", DIGITS, *SHORT),
        ("eval", frozen),
        ("plot", frozen),
        ("train", "--resume", frozen),
        ("sweep", sweep_file(read_only.parent, "seeds: [0]\n")),
    ):
        one_error(cli(*args, expect=None), "not writable: Read-only file system")


def test_runs_dir_that_is_a_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(write(tmp_path / "afile", "x")))
    one_error(cli("train", DIGITS, *SHORT, expect=None), "is a file, not a folder")


BAD_OUTPUTS = [
    ("lr-find", "/nonexistent/dir/x.png", "folder /nonexistent/dir does not exist"),
    ("augment", "/nonexistent/x.png", "folder /nonexistent does not exist"),
    ("augment", "x.txt", "must end in .png"),
]


@pytest.mark.parametrize("command, out, needle", BAD_OUTPUTS)
def test_bad_output_path_is_refused_before_work(command, out, needle, cli):
    started = time.monotonic()
    one_error(cli(command, DIGITS, "--out", out, expect=None), needle)
    assert time.monotonic() - started < 30


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", folder], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", folder], check=False)


def test_disk_full_is_one_line_and_no_checkpoint_is_claimed(cli, tiny_disk, monkeypatch):
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(tiny_disk))
    result = cli("train", DIGITS, *SHORT, expect=None)
    one_error(result, "No space left on device", code=1)
    assert len(result.stderr.splitlines()) <= 3, result.stderr  # the error and how to continue
    (run,) = run_dirs(tiny_disk)
    listing = cli("runs").stdout
    assert "checkpoint at step" not in listing or any(
        p.name.isdigit() for p in run.glob("checkpoints/latest/*")
    )


# ---------------------------------------------------------------------------------------------
# Data


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    for split in ("train", "test"):
        for label, count in classes.items():
            for index in range(count):
                path = root / split / label / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), index * 30, np.uint8)).save(path)
    return root


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_one_class_folder_dataset_is_refused(cli, tmp_path, isolated_runs):
    folder = image_folder(tmp_path / "cats", {"cat": 3})
    args = ("--set", "data.source=folder", "--set", f"data.path={folder}")
    one_error(cli("train", DIGITS, *SHORT, *args, expect=None), "one class (cat)")
    assert run_dirs(isolated_runs) == []


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\x89PNG\r\n\x1a\nnot really", "train/dog/bad.png"),
        (bomb_png(40000, 40000), "40000x40000 pixels"),
    ],
    ids=["damaged", "bomb"],
)
def test_bad_image_in_folder_dataset_is_named(content, needle, cli, tmp_path):
    folder = image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (folder / "train" / "dog" / "bad.png").write_bytes(content)
    args = ("--set", "data.source=folder", "--set", f"data.path={folder}")
    line = one_error(cli("inspect", DIGITS, *args, expect=None), needle)
    assert "BytesIO" not in line


def test_predict_refuses_an_image_bomb(cli, run, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(40000, 40000))
    one_error(cli("predict", run, bomb, expect=None), "40000x40000 pixels", str(bomb))


def truncated_tarball(path: Path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = os.urandom(100_000)
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def mnist_files(folder: Path, cut: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        blob = gzip.compress(os.urandom(20_000))
        (folder / name).write_bytes(blob[: len(blob) // 2] if cut else blob)
    return folder


def prepare_cases(tmp_path: Path) -> dict:
    readme = str(Path(__file__).resolve().parent.parent / "README.md")
    return {
        "truncated .gz": (
            ["mnist", "--from", mnist_files(tmp_path / "mnist", cut=True)],
            "train-images-idx3-ubyte.gz: it ends early",
        ),
        "garbage tar.gz": (
            ["cifar10", "--from", write(tmp_path / "c" / "cifar-10-binary.tar.gz", "garbage" * 99)],
            "cifar-10-binary.tar.gz",
        ),
        "truncated tar.gz": (
            ["cifar10", "--from", truncated_tarball(tmp_path / "t" / "cifar-10-binary.tar.gz")],
            "cifar-10-binary.tar.gz",
        ),
        "--from a file": (["mnist", "--from", readme], "a file; give the folder"),
        "--mirror not a URL": (["mnist", "--mirror", "not-a-url"], "not a URL"),
        "--checksums missing": (
            ["mnist", "--checksums", "/nonexistent", "--mirror", "http://127.0.0.1:9/"],
            "--checksums /nonexistent: no such file",
        ),
    }


@pytest.mark.parametrize("case", list(prepare_cases(Path("/x"))))
def test_data_prepare_bad_input(case, cli, tmp_path):
    args, needle = prepare_cases(tmp_path)[case]
    if case in ("garbage tar.gz", "truncated tar.gz"):
        args = [args[0], args[1], Path(args[2]).parent]
    result = cli("data", "prepare", *args, "--data-dir", tmp_path / "tfds", expect=None)
    one_error(result, needle)
    assert "Downloading and preparing" not in result.stdout


# ---------------------------------------------------------------------------------------------
# Exit codes of a real process


def test_ctrl_c_exits_130_with_the_resume_command(tmp_path):
    env = {**os.environ, "CNNLAB_RUNS_DIR": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "cnnlab", "train", str(DIGITS)]
    command += ["--set", "train.steps=1000000", "--set", "train.log_every_steps=10"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in (tmp_path / "runs").glob("*/metrics.jsonl")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert b"continue with: cnnlab train --resume" in stdout + stderr
    assert b"Traceback" not in stdout + stderr
