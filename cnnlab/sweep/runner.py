"""Running a sweep: its folder, which trials are left, and training them (also resumed)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab.errors import UserError
from cnnlab.runs import create_run_dir, read_json, runs_dir, write_json
from cnnlab.sweep.results import FINISHED, SweepResult, collect_results, trial_dir, write_results
from cnnlab.sweep.spec import Sweep, Trial, digest


def check_buildable(sweep: Sweep) -> None:
    """Build the model, optimizer and augmentation of every distinct setting against its data,
    so that a shape that does not fit fails before anything trains."""
    from cnnlab.train import build_trainer, load_data

    datasets: dict[str, Any] = {}
    checked: set[str] = set()
    for trial in sweep.trials:
        raw = trial.experiment.raw
        data_key = digest(raw.get("data"), 16)
        parts = {k: v for k, v in raw.items() if k not in ("name", "train")}
        build_key = digest([parts, trial.experiment.train.steps], 16)
        if build_key in checked:
            continue
        checked.add(build_key)
        if data_key not in datasets:
            datasets[data_key] = load_data(trial.experiment)
        dataset = datasets[data_key]
        sample = dataset.train.take(np.arange(min(len(dataset.train), 8)))
        build_trainer(trial.experiment, sample, dataset.num_classes)


# ---------------------------------------------------------------------------------------------
# Running: the sweep folder, trials to train, the trainer


Progress = Callable[[Trial], contextlib.AbstractContextManager]
# Trains the given (trial, run folder) pairs, leaving a finished run in each folder; a future
# trainer may train a group of compatible trials together.
TrialTrainer = Callable[[Sequence[tuple[Trial, Path]], Progress | None], None]


def train_trial(trial: Trial, run_dir: Path, progress: Progress | None = None) -> dict:
    """Train one trial from scratch into `run_dir` (a partial run there is deleted first)."""
    from cnnlab.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    with progress(trial) if progress else contextlib.nullcontext() as bar:
        return train(trial.experiment, run_dir=run_dir, progress=bar).summary


def train_in_turn(jobs: Sequence[tuple[Trial, Path]], progress: Progress | None = None) -> None:
    """The default trainer: one trial after another. A run stopped by Ctrl-C stops the sweep."""
    for trial, run_dir in jobs:
        summary = train_trial(trial, run_dir, progress)
        if summary.get("status") == "interrupted":
            raise KeyboardInterrupt


def trial_finished(trial: Trial, run_dir: Path) -> bool:
    """Whether `run_dir` holds a completed run of exactly this trial's experiment."""
    if read_json(run_dir / "summary.json").get("status") not in FINISHED:
        return False
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())
    if trained != yaml.safe_load(yaml.safe_dump(trial.experiment.raw)):
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
    (folder / "sweep.yaml").write_text(sweep.text)
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
    trainer: TrialTrainer = train_in_turn,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SweepResult:
    """Train the sweep's unfinished trials and write its results (also when interrupted).

    Every trial is checked before the folder is chosen or anything trains; `trainer` gets the
    (trial, run folder) pairs still to train.
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
        trainer(pending, progress)
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
