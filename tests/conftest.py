"""Shared fixtures: an isolated runs folder, the real CLI, small experiment files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

EXPERIMENTS = REPO / "experiments"

# One compilation cache for the whole session (set before jax is imported): tests that compile
# the same program share it.
_JAX_CACHE = tempfile.mkdtemp(prefix="cnnlab-test-jax-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch) -> Path:
    """Every test writes runs (and caches) under its own tmp folder."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(runs))
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return runs


class Cli:
    def __init__(self):
        from cnnlab.cli import app

        self.app = app
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0):
        result = self.runner.invoke(self.app, [str(a) for a in args])
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"cnnlab {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
            )
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


TINY_EXPERIMENT = """\
name: tiny
data: {source: digits, val_fraction: 0.1}
model: {family: cnn, preset: tiny}
optimizer: {name: adam, lr: 0.003}
train: {steps: 40, batch_size: 32, eval_every_steps: 20, log_every_steps: 10, steps_per_call: 10, seed: 0}
"""


@pytest.fixture
def tiny_experiment(tmp_path) -> Path:
    return write(tmp_path / "tiny.yaml", TINY_EXPERIMENT)


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.glob("*") if p.is_dir()) if runs.exists() else []


DIGITS = EXPERIMENTS / "digits.yaml"
SHORT = ("--set", "train.steps=20", "--set", "train.eval_every_steps=10")
SHORT += ("--set", "train.log_every_steps=10")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short digits run (SHORT), trained once per test module; tests work on copies."""
    root = tmp_path_factory.mktemp("trained")
    result = CliRunner().invoke(
        Cli().app, ["train", str(DIGITS), *SHORT], env={"CNNLAB_RUNS_DIR": str(root)}
    )
    assert result.exit_code == 0, result.output
    (run,) = run_dirs(root)
    return run


def interrupt_when(args: list[str], ready, env: dict, timeout: float = 300) -> int:
    """Run `cnnlab ARGS` in a subprocess, send it one SIGINT (Ctrl-C) as soon as `ready()` is
    true, and return its exit code."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *map(str, args)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"ended before it was interrupted: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready within {timeout} s")
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
