"""A run's life: an experiment built against its data, a run folder started or resumed and
trained through the loop, and a run restored from its folder alone (no dataset needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import Experiment, check_batch_size, dump_experiment, load_experiment
from cnnlab.data import load_dataset
from cnnlab.data.dataset import Dataset, Split, split_validation
from cnnlab.errors import SpecError, UserError
from cnnlab.hyper import experiment_numbers
from cnnlab.loop import Cadence, run
from cnnlab.mesh import DataMesh, data_mesh
from cnnlab.models import build_model
from cnnlab.plots import plot_curves
from cnnlab.prediction import brightness
from cnnlab.processes import shared_path, wait_for_writer, writes
from cnnlab.record import RunRecord
from cnnlab.runs import Checkpoints, create_run_dir, read_json, read_metrics, write_json
from cnnlab.step import (
    Program,
    TrainState,
    channel_stats,
    compile_run,
    device_numbers,
    init_state,
    to_device,
    unit_stats,
)

WHITENING_SAMPLE = 5000  # training images that parameters computed from data (whitening) see


def load_data(experiment: Experiment, splits: tuple[str, ...] = ("train", "test")) -> Dataset:
    """The experiment's data (of a cached dataset, only `splits` are read)."""
    data = experiment.data
    try:
        return load_dataset(data.source, path=data.path, data_dir=data.data_dir, splits=splits)
    except SpecError as error:
        raise experiment.user_error(error.within("data")) from None


def build_program(
    experiment: Experiment,
    image_shape: tuple[int, int, int],
    num_classes: int,
    num_examples: int,
    *,
    augment: bool = True,
    steps: int | None = None,
    mesh: DataMesh | None = None,
) -> Program:
    """The step's program for this experiment and data shape, on one device or `mesh`; a shape
    that does not fit is an error here, at the experiment's file:line."""
    try:
        model = build_model(experiment.model, image_shape, num_classes)
    except SpecError as error:
        raise experiment.user_error(error.within("model")) from None
    cfg = experiment.train
    program = Program(
        model=model,
        optimizer=experiment.optimizer,
        augment=experiment.augment if augment else (),
        image_shape=tuple(int(n) for n in image_shape),
        num_classes=num_classes,
        num_examples=num_examples,
        batch_size=min(cfg.batch_size, num_examples),
        total_steps=steps or cfg.steps,
        precision=cfg.precision,
        test_time_flip=cfg.test_time_flip,
        test_time_shift=cfg.test_time_shift,
        mesh=mesh,
    )
    try:
        program.check()
    except SpecError as error:
        raise experiment.user_error(error.within("augment")) from None
    return program


@dataclass(frozen=True)
class Setup:
    """An experiment built against its data: everything that can fail on bad input is done."""

    experiment: Experiment
    dataset: Dataset
    train: Split
    val: Split
    program: Program

    @property
    def numbers(self) -> dict:
        return experiment_numbers(self.experiment)

    def dataset_info(self) -> dict:
        """What restoring the run needs to know of its data, written beside its config."""
        return {
            "name": self.dataset.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.dataset.test),
            "image_shape": list(self.dataset.image_shape),
            "classes": list(self.dataset.class_names),
            "brightness": brightness(self.train.images),
        }

    def initial_state(self, program: Program | None = None) -> TrainState:
        """The state before the first step (on `program`, for trials sharing one)."""
        norm = (
            channel_stats(self.train.images)
            if self.experiment.data.normalize
            else unit_stats(self.dataset.image_shape[-1])
        )
        sample = self.train.images[:WHITENING_SAMPLE]
        seed = self.experiment.train.seed
        program = program or self.program
        numbers = device_numbers(self.numbers, program.mesh)
        return init_state(program, seed, norm, numbers, sample)

    def cadence(self) -> Cadence:
        cfg = self.experiment.train
        return Cadence(cfg.steps, cfg.steps_per_call, cfg.log_every_steps, cfg.eval_every_steps)


def setup(experiment: Experiment, *, split_batch: bool = True) -> Setup:
    """Load the data, carve the validation split and build the program: with `split_batch`,
    on the mesh of `train.devices` (stacked trials choose their own, see cnnlab.parallel)."""
    dataset = load_data(experiment)
    train, val = split_validation(
        dataset.train, experiment.data.val_fraction, experiment.train.seed
    )
    check_batch_size(experiment, len(train))
    cfg = experiment.train
    mesh = training_mesh(experiment, min(cfg.batch_size, len(train))) if split_batch else None
    program = build_program(
        experiment, dataset.image_shape, dataset.num_classes, len(train), mesh=mesh
    )
    return Setup(experiment, dataset, train, val, program)


def training_mesh(experiment: Experiment, batch_size: int) -> DataMesh | None:
    """The mesh `train.devices` asks for; one that does not fit is an error at its file:line."""
    try:
        return data_mesh(experiment.train.devices, batch_size)
    except SpecError as error:
        raise experiment.user_error(error) from None


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


def train(
    experiment: Experiment,
    *,
    runs_root: Path | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
    progress=None,
) -> TrainResult:
    """Train `experiment` into a new run folder (or the given empty `run_dir`), or continue the run
    in `resume` from its latest checkpoint. Returns the folder and its summary."""
    built = setup(experiment)
    mesh = built.program.mesh
    state = built.initial_state()
    data = to_device(built.train.images, built.train.labels, mesh)
    numbers = device_numbers(built.numbers, mesh)
    cfg = experiment.train
    if resume is None:  # compile before the run folder exists: a failure leaves nothing behind
        compile_seconds = compile_run(
            built.program, state, data, numbers, 0, cfg.steps, cfg.steps_per_call
        )
        # Process 0 creates the folder (on a filesystem every host shares) and names it to all.
        run_dir = shared_path(start_run_dir(built, runs_root, run_dir) if writes() else None)
    record = RunRecord(built, built.program, resume or run_dir, progress)
    try:
        if resume is not None:
            state = record.resume(state)
            compile_seconds = compile_run(
                built.program,
                state,
                data,
                numbers,
                record.first_step,
                cfg.steps,
                cfg.steps_per_call,
            )
        record.start()
        state, (outcome,) = run(
            built.program, state, data, numbers, [record], built.cadence(),
            progress=progress, wall_offset=record.wall_offset,
        )  # fmt: skip
        summary = record.summarise(
            outcome.step, outcome.status, outcome.wall_seconds, compile_seconds
        )
    finally:
        record.close()
    if writes() and read_metrics(record.run_dir):
        plot_curves(record.run_dir)
    wait_for_writer("run folder complete")  # the others read summary.json next
    return TrainResult(record.run_dir, summary)


def start_run_dir(built: Setup, runs_root: Path | None, run_dir: Path | None) -> Path:
    """A new run folder (or the given one, which must not exist) with config.yaml and
    dataset.json: all that restoring the run needs beside its checkpoints."""
    if run_dir is None:
        run_dir = create_run_dir(built.experiment.name, runs_root)
    else:
        run_dir.mkdir(parents=True, exist_ok=False)
    dump_experiment(built.experiment, run_dir / "config.yaml")
    write_json(run_dir / "dataset.json", built.dataset_info())
    return run_dir


# ---------------------------------------------------------------------------------------------
# Restoring a run from its folder


@dataclass(frozen=True)
class Restored:
    """A run's experiment, program and state from one of its checkpoints."""

    run_dir: Path
    experiment: Experiment
    program: Program
    state: Any
    checkpoint: str  # which one answered: best or latest
    dataset: dict  # name, image_shape, classes, train/val/test sizes

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.dataset["image_shape"])

    @property
    def step(self) -> int:
        return int(self.state.step)


def dataset_info(run_dir: Path) -> dict:
    """The run's data as recorded in dataset.json (or, for older runs, in summary.json)."""
    info = read_json(run_dir / "dataset.json") or read_json(run_dir / "summary.json").get("dataset")
    if not info or "image_shape" not in info or "classes" not in info:
        raise UserError(
            f"run {run_dir} does not record its data shape (no dataset.json): retrain it"
        )
    return info


def restore(run_dir: Path, checkpoint: str = "best") -> Restored:
    """The run rebuilt from config.yaml, dataset.json and a checkpoint; reads no dataset.
    `best` falls back to `latest` for runs without a validation split."""
    if checkpoint not in ("best", "latest"):
        raise UserError(f"--checkpoint {checkpoint}: choose best or latest")
    if not (run_dir / "checkpoints").is_dir():  # checked first: opening them would create them
        raise UserError(f"run {run_dir} has no checkpoint yet (it stopped before its first eval)")
    experiment = load_experiment(run_dir / "config.yaml")
    info = dataset_info(run_dir)
    shape, classes = tuple(info["image_shape"]), len(info["classes"])
    program = build_program(experiment, shape, classes, int(info["train"]))
    numbers = device_numbers(experiment_numbers(experiment))
    # The checkpoint replaces every value, normalisation included: this only gives the structure.
    like = init_state(program, experiment.train.seed, np.ones((2, shape[-1]), np.float32), numbers)
    checkpoints = Checkpoints(run_dir)
    try:
        kind = checkpoint if checkpoints.step(checkpoint) is not None else "latest"
        if checkpoints.step(kind) is None:
            raise UserError(
                f"run {run_dir} has no checkpoint yet (it stopped before its first eval)"
            )
        state = checkpoints.restore(kind, like)
    finally:
        checkpoints.close()
    return Restored(run_dir, experiment, program, state, kind, info)
