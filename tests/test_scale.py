"""Training on several devices and several processes gives the single-device result.

XLA pretends to have several CPU devices (--xla_force_host_platform_device_count), and two
processes on 127.0.0.1 talk through JAX's CPU collectives; each case runs in subprocesses,
because the device count is fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from conftest import REPO, TINY_EXPERIMENT, run_dirs, write

import cnnlab
from cnnlab.runs import read_metrics

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def python(script: str, env: dict, timeout: float = 240) -> str:
    """Run `script` in a fresh interpreter with `env` added; its stdout, or a failure."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def assert_same_metrics(rows: list[dict], reference: list[dict]) -> None:
    """The same rows (step, split) with losses and accuracies within 1e-5 relative."""
    assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in reference]
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(
            [r[key] for r in rows], [r[key] for r in reference], rtol=1e-5, err_msg=key
        )


def test_four_devices_train_as_one(tmp_path):
    """Per-step losses, final parameters and validation metrics of a 4-device run equal those of
    a 1-device run with the same global batch and seed; the batch really is split."""
    path = write(tmp_path / "tiny.yaml", TINY_EXPERIMENT)
    out = python(
        f"""
        import json, jax, numpy as np, cnnlab
        from cnnlab.errors import UserError
        from cnnlab.training import training_mesh
        runs = {{}}
        for devices in (1, 4):
            experiment = cnnlab.load_experiment({str(path)!r}, [
                f"train.devices={{devices}}", "train.steps=50", "train.steps_per_call=1",
                "train.log_every_steps=1", "train.eval_every_steps=25",
            ])
            run = cnnlab.train(experiment, run_dir={str(tmp_path)!r} + f"/d{{devices}}")
            params = jax.tree.leaves(run.restore("latest").state.params)
            np.savez({str(tmp_path)!r} + f"/params{{devices}}.npz", *map(np.asarray, params))
            runs[devices] = run.summary["mesh"]
        # The compiled step splits the batch: each device's images are 8 of the 32,
        # and the gradients are summed across devices.
        from cnnlab.step import device_numbers, steps_program, to_device
        from cnnlab.training import setup
        built = setup(experiment)
        mesh = built.program.mesh
        data = to_device(built.train.images, built.train.labels, mesh)
        numbers = device_numbers(built.numbers, mesh)
        text = steps_program(built.program, 1, built.initial_state(), data, numbers).as_text()
        runs["split"] = "all-reduce" in text and "f32[8,8,8,1]" in text and "[32,8,8," not in text
        try:
            training_mesh(cnnlab.load_experiment({str(path)!r}, ["train.batch_size=30"]), 30)
        except UserError as error:
            runs["error"] = str(error)
        print(json.dumps(runs))
        """,
        FOUR_DEVICES,
    )
    meshes = json.loads(out.strip().splitlines()[-1])
    assert meshes["split"]
    assert meshes["1"]["devices"] == 1 and meshes["1"]["per_device_batch"] == 32
    assert meshes["4"] == {
        "devices": 4,
        "kinds": ["cpu (cpu)"],
        "processes": 1,
        "per_device_batch": 8,
    }
    error = meshes["error"]  # located where the batch size was written, naming both numbers
    assert error.startswith("--set train.batch_size=30: train.batch_size:"), error
    assert "batch of 30" in error and "4 devices" in error
    one, four = read_metrics(tmp_path / "d1"), read_metrics(tmp_path / "d4")
    assert len([r for r in four if r["split"] == "train"]) == 50
    assert_same_metrics(four, one)
    assert [r for r in four if r["split"] == "val"][-1]["accuracy"] == [
        r for r in one if r["split"] == "val"
    ][-1]["accuracy"]
    with np.load(tmp_path / "params1.npz") as a, np.load(tmp_path / "params4.npz") as b:
        for name in a.files:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_processes(args: list[str], env: dict, count: int = 2) -> list[subprocess.Popen]:
    """`cnnlab train ARGS` as `count` processes of one run on 127.0.0.1."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "cnnlab", "train", *args]
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count)]
            + ["--process-id", str(index)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]


def wait_until(ready, processes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a process ended early: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"not ready within {timeout} s"
        time.sleep(0.05)


def finish(processes, timeout: float = 240) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr


def latest_checkpoint(run: Path) -> int:
    folder = run / "checkpoints" / "latest"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=0)


def test_two_processes_train_one_run_and_resume_after_both_die(tmp_path, isolated_runs):
    """Two processes write one run folder whose metrics equal a single-process run's; killed
    (kill -9) mid-run, both continue it with --resume and still match it."""
    path = write(
        tmp_path / "tiny.yaml",
        TINY_EXPERIMENT.replace("steps: 40", "steps: 300"),
    )
    env = {"CNNLAB_RUNS_DIR": str(isolated_runs)}
    processes = start_processes([str(path)], env)
    try:
        wait_until(
            lambda: run_dirs(isolated_runs) and latest_checkpoint(run_dirs(isolated_runs)[0]) >= 40,
            processes,
        )
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    (run,) = run_dirs(isolated_runs)
    assert not (run / "summary.json").exists(), "it finished before it was killed"
    before = latest_checkpoint(run)

    finish(start_processes(["--resume", str(run)], env))

    assert run_dirs(isolated_runs) == [run]  # exactly one run folder, continued
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["mesh"]["processes"] == 2
    alone = cnnlab.train(cnnlab.load_experiment(path), run_dir=tmp_path / "alone").path
    rows = read_metrics(run)
    assert_same_metrics(rows, read_metrics(alone))
    assert before < 300 and [r["step"] for r in rows if r["split"] == "train"] == list(
        range(10, 301, 10)
    )


def test_a_dead_process_ends_the_other_with_one_line(tmp_path, isolated_runs):
    path = write(tmp_path / "tiny.yaml", TINY_EXPERIMENT.replace("steps: 40", "steps: 100000"))
    processes = start_processes([str(path)], {"CNNLAB_RUNS_DIR": str(isolated_runs)})
    survivor, victim = processes
    try:
        wait_until(
            lambda: run_dirs(isolated_runs) and read_metrics(run_dirs(isolated_runs)[0]), processes
        )
        victim.send_signal(signal.SIGKILL)
        started = time.monotonic()
        _, stderr = survivor.communicate(timeout=90)
        seconds = time.monotonic() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert survivor.returncode != 0
    assert seconds < 60
    assert len(lines) == 1 and lines[0].startswith("error: process 0 stopped"), stderr


def test_sweep_parallel_four_splits_trials_over_four_devices(tmp_path):
    """Four stacked trials on four devices, one per device, each equal to the trial alone."""
    write(tmp_path / "short.yaml", TINY_EXPERIMENT.replace("steps: 40", "steps: 20"))
    sweep = write(
        tmp_path / "lr.yaml",
        "base: short.yaml\ngrid:\n  optimizer.lr: [0.003, 0.01]\nseeds: [0, 1]\n",
    )
    out = python(
        f"""
        from typer.testing import CliRunner
        from cnnlab.cli import app
        result = CliRunner().invoke(app, ["sweep", {str(sweep)!r}, "--parallel", "4"])
        print(result.stdout)
        assert result.exit_code == 0, result.stdout
        """,
        {**FOUR_DEVICES, "CNNLAB_RUNS_DIR": str(tmp_path / "runs"), "COLUMNS": "200"},
    )
    assert "4 devices, cpu (cpu), 1 process" in out and "1 stacked trial per device" in out, out
    trials = sorted((tmp_path / "runs").glob("*/trials/*"))
    assert len(trials) == 4
    for trial in trials:
        alone = cnnlab.train(
            cnnlab.load_experiment(trial / "config.yaml"), run_dir=tmp_path / f"alone-{trial.name}"
        ).path
        assert_same_metrics(read_metrics(trial), read_metrics(alone))
        assert json.loads((trial / "summary.json").read_text())["mesh"]["trials_per_device"] == 1
