"""Running a sweep: its folder, which trials are left, and training them (also resumed)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import read_yaml, to_plain
from cnnlab.errors import UserError
from cnnlab.files import DamagedFile, write_text
from cnnlab.runs import create_run_dir, read_json, runs_dir, write_json
from cnnlab.sweeps.results import FINISHED, SweepResult, collect_results, trial_dir, write_results
from cnnlab.sweeps.spec import Sweep, Trial, digest


def check_buildable(sweep: Sweep) -> None:
    """Build the model, optimizer and augmentation of every distinct setting against its data,
    so that a shape that does not fit fails before anything trains."""
    from cnnlab.training import build_program, load_data

    datasets: dict[str, Any] = {}
    checked: set[str] = set()
    for trial in sweep.trials:
        experiment = trial.experiment
        data_key = digest(experiment.raw.get("data"), 16)
        parts = {k: v for k, v in experiment.raw.items() if k not in ("name", "train")}
        build_key = digest([parts, experiment.train.steps], 16)
        if build_key in checked:
            continue
        checked.add(build_key)
        if data_key not in datasets:
            datasets[data_key] = load_data(experiment)
        dataset = datasets[data_key]
        build_program(experiment, dataset.image_shape, dataset.num_classes, len(dataset.train))


# ---------------------------------------------------------------------------------------------
# Running: the sweep folder, trials to train, the trainer


Progress = Callable[[Trial], contextlib.AbstractContextManager]
Jobs = Sequence[tuple[Trial, Path]]  # trials to train, each with its run folder


def _same_config(trial: Trial, run_dir: Path) -> bool:
    """Whether the run in `run_dir` was trained from exactly this trial's experiment (a damaged
    config.yaml is not: the trial trains again)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return False
    try:
        trained = to_plain(read_yaml(config))
    except DamagedFile:
        return False
    return trained == yaml.safe_load(yaml.safe_dump(trial.experiment.raw))


def can_resume(trial: Trial, run_dir: Path) -> bool:
    """Whether `run_dir` holds an interrupted run of exactly this trial with a checkpoint."""
    latest = run_dir / "checkpoints" / "latest"
    has_checkpoint = latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())
    return has_checkpoint and _same_config(trial, run_dir)


def _fresh(run_dir: Path) -> Path:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def train_trial(trial: Trial, run_dir: Path, progress: Progress | None = None) -> dict:
    """Train one trial into `run_dir`: continued from its checkpoint when an interrupted run of
    the same trial is there, else from scratch (anything else there is deleted first)."""
    from cnnlab.training import train

    resume = can_resume(trial, run_dir)
    with progress(trial) if progress else contextlib.nullcontext() as bar:
        if resume:
            return train(trial.experiment, resume=run_dir, progress=bar).summary
        return train(trial.experiment, run_dir=_fresh(run_dir), progress=bar).summary


def train_jobs(
    jobs: Jobs, parallel: int = 1, progress: Progress | None = None, log=lambda message: None
) -> None:
    """Train the trials: up to `parallel` that share a program together in one stacked
    program, the others one after another (saying why). Ctrl-C stops the sweep after each
    trial in training has saved its checkpoint and summary."""
    from cnnlab.parallel import group_trials

    groups, reasons = group_trials([trial.experiment for trial, _ in jobs], parallel)
    for reason in reasons if parallel > 1 else []:
        log(f"not stacked: {reason}")
    for group in groups:
        members = [jobs[i] for i in group]
        if len(members) > 1 and _train_together(members, progress, log):
            continue
        for trial, run_dir in members:
            if train_trial(trial, run_dir, progress).get("status") == "interrupted":
                raise KeyboardInterrupt


def _train_together(members: Jobs, progress: Progress | None, log) -> bool:
    """Train a group stacked; False (nothing written) when it cannot stack after all."""
    from cnnlab.parallel import train_stacked

    resume = all(can_resume(trial, run_dir) for trial, run_dir in members)
    verb = "continuing" if resume else "training"
    log(f"{verb} {len(members)} trials together: " + ", ".join(t.label for t, _ in members))
    run_dirs = [run_dir if resume else _fresh(run_dir) for _, run_dir in members]
    experiments = [trial.experiment for trial, _ in members]
    try:
        with progress(members[0][0]) if progress else contextlib.nullcontext() as bar:
            summaries = train_stacked(experiments, run_dirs, resume=resume, log=log, progress=bar)
    except ValueError as reason:
        log(f"not stacked: {reason}; training them one after another")
        return False
    if any(summary.get("status") == "interrupted" for summary in summaries):
        raise KeyboardInterrupt
    return True


def trial_finished(trial: Trial, run_dir: Path) -> bool:
    """Whether `run_dir` holds a completed run of exactly this trial's experiment (a damaged
    summary means not: the trial trains again)."""
    try:
        status = read_json(run_dir / "summary.json").get("status")
    except DamagedFile:
        return False
    if status not in FINISHED:
        return False
    if not _same_config(trial, run_dir):
        raise UserError(
            f"{run_dir} was trained with another config than the sweep file now gives trial "
            f"{trial.id}; start a new sweep folder (leave out --resume)"
        )
    return True


def open_sweep_dir(sweep: Sweep, resume: Path | None = None, new: bool = False) -> Path:
    """The folder to run in: `resume`, else the newest unfinished folder of the same trials,
    else (or with `new`) a new one. Writes sweep.yaml and sweep.json there."""
    if resume is not None:
        folder = _resumable(sweep, resume)
    else:
        folder = None if new else _newest_unfinished(sweep)
        folder = folder or create_run_dir(sweep_folder_name(sweep), runs_dir())
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    write_text(folder / "sweep.yaml", sweep.text)
    write_json(folder / "sweep.json", _sweep_record(sweep))
    return folder


def _resumable(sweep: Sweep, folder: Path) -> Path:
    record = read_json(folder / "sweep.json")
    if not record:
        raise UserError(f"--resume {folder}: not a sweep folder (it has no sweep.json)")
    if record.get("name") != sweep.name:
        raise UserError(
            f"--resume {folder}: that folder holds sweep '{record.get('name')}', not '{sweep.name}'"
        )
    return folder


def sweep_folder_name(sweep: Sweep) -> str:
    """`sweep_lr` for sweep `lr`, and `sweep_res` (not `sweep_sweep_res`) for `sweep_res`."""
    return sweep.name if sweep.name.startswith("sweep") else f"sweep_{sweep.name}"


def _newest_unfinished(sweep: Sweep) -> Path | None:
    """The newest folder of exactly these trials with some left to train; when every such
    folder is finished, the newest finished one (run again, a finished sweep shows its results
    instead of training it all over; `--new` trains afresh)."""
    root = runs_dir()
    pattern = f"*_{sweep_folder_name(sweep)}*"
    folders = sorted(root.glob(pattern), key=lambda p: p.name, reverse=True)
    fingerprint = sweep.fingerprint()
    same = [f for f in folders if read_json(f / "sweep.json").get("fingerprint") == fingerprint]
    for folder in same:
        if not all(trial_finished(t, trial_dir(folder, t)) for t in sweep.trials):
            return folder
    return same[0] if same else None


def _sweep_record(sweep: Sweep) -> dict:
    return {
        "name": sweep.name,
        "file": str(sweep.path),
        "base": str(sweep.base),
        "metric": sweep.metric,
        "fingerprint": sweep.fingerprint(),
        "params": [{"key": p.key, "source": p.source, "log": p.log} for p in sweep.params],
        "set": sweep.fixed,
        "seeds": list(sweep.seeds),
        "trials": [
            {"id": t.id, "setting": t.setting.id, "seed": t.seed, "values": t.setting.values}
            for t in sweep.trials
        ],
    }


def run_sweep(
    sweep: Sweep,
    *,
    resume: Path | None = None,
    new: bool = False,
    parallel: int = 1,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SweepResult:
    """Train the sweep's unfinished trials and write its results (also when interrupted).

    Every trial is checked before the folder is chosen or anything trains. With `parallel` > 1,
    up to that many trials that share a program train stacked (see cnnlab.parallel).
    """
    check_buildable(sweep)
    folder = open_sweep_dir(sweep, resume, new)
    jobs = [(t, trial_dir(folder, t)) for t in sweep.trials]
    pending = [(t, d) for t, d in jobs if not trial_finished(t, d)]
    log(
        f"sweep {sweep.name}: {len(sweep.settings)} settings x {len(sweep.seeds)} seeds = "
        f"{len(jobs)} trials, {len(jobs) - len(pending)} finished, {len(pending)} to train"
    )
    log(f"sweep folder: {folder}")
    try:
        train_jobs(pending, parallel, progress, log)
    except KeyboardInterrupt:
        result = collect_results(sweep, folder, pending)
        write_results(result)
        finished = sum(r.status in FINISHED for r in result.trials)
        log(
            f"stopped with {finished} of {len(jobs)} trials finished; run the same command "
            f"again to continue in {folder}"
        )
        raise
    result = collect_results(sweep, folder, pending)
    write_results(result)
    return result


def console_progress(console, sweep: Sweep) -> Progress:
    """A progress factory for run_sweep: a header line and a training bar per trial."""
    from cnnlab.report import TrainProgress

    def start(trial: Trial) -> TrainProgress:
        header = f"[bold]trial {trial.index}/{len(sweep.trials)}[/] {trial.label}"
        console.print(header, highlight=False)
        return TrainProgress(console, trial.experiment.train.steps)

    return start
