"""The sanity check: can the model memorise a few training samples?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnnlab.config import Experiment
from cnnlab.data.dataset import Split
from cnnlab.diagnosis import Diagnosis, Divergence
from cnnlab.diagnostics import first_nonfinite
from cnnlab.evidence import overfit_diagnosis
from cnnlab.hyper import experiment_numbers
from cnnlab.loop import Cadence, run
from cnnlab.step import (
    Program,
    channel_stats,
    device_numbers,
    init_state,
    logits,
    scores,
    to_device,
    unit_stats,
)
from cnnlab.training import build_program, load_data


@dataclass
class OverfitResult:
    samples: int
    memorised: bool
    step: int | None  # the step at which every sample was classified correctly
    steps_run: int
    losses: list[tuple[int, float]]  # (step, loss) at each check
    accuracy: float
    notes: tuple[str, ...] = ()
    diagnosis: Diagnosis | None = None  # why it failed, or a note on the model's structure


class OverfitRecord:
    """Checks the samples in evaluation mode after every call; ends the loop once all are
    classified correctly or the loss is no longer finite."""

    def __init__(self, program: Program, subset: Split):
        self.program, self.subset = program, subset
        self.last_train: dict = {}
        self.last_val: dict = {}
        self.layers: list[dict] | None = None  # statistics rows of the latest logged step
        self.divergence: Divergence | None = None
        self.losses: list[tuple[int, float]] = []
        self.result: dict = {}

    def check(self, step: int, state) -> str | None:
        self.result = scores(logits(self.program, state, self.subset.images), self.subset.labels)
        self.losses.append((step, self.result["loss"]))
        if self.result["accuracy"] == 1.0:
            return "memorised"
        return None if math.isfinite(self.result["loss"]) else "diverged"

    def log(self, step, series, layers, images_per_sec, wall):
        if layers is not None:
            self.layers = layers
        if series["finite"].all():
            return None
        # The state stays at the last finite step, and the step replays the failing batch: its
        # statistics name the layer.
        step = int(series["step"][~series["finite"]][0])
        self.divergence = Divergence(step, first_nonfinite(layers) if layers else None)
        self.losses.append((step + 1, float("inf")))
        return "diverged"

    def evaluate(self, step, state, wall, final):
        return self.check(step, state)


def overfit(experiment: Experiment, samples: int, max_steps: int = 1000) -> OverfitResult:
    """Train on `samples` training examples (no augmentation, no validation) until the model
    classifies all of them correctly in evaluation mode, or `max_steps` pass."""
    dataset = load_data(experiment)
    chosen = np.random.default_rng(experiment.train.seed).permutation(len(dataset.train))[:samples]
    subset = dataset.train.take(np.sort(chosen))
    program = build_program(
        experiment, dataset.image_shape, dataset.num_classes, len(subset),
        augment=False, steps=max_steps,
    )  # fmt: skip
    numbers = device_numbers(experiment_numbers(experiment))
    norm = (
        channel_stats(subset.images)
        if experiment.data.normalize
        else unit_stats(dataset.image_shape[-1])
    )
    state = init_state(program, experiment.train.seed, norm, numbers, subset.images)
    record = OverfitRecord(program, subset)
    every = min(experiment.train.steps_per_call, max_steps)
    outcome = record.check(0, state)
    if outcome is None:
        cadence = Cadence(max_steps, every, log_every=every, eval_every=every)
        data = to_device(subset.images, subset.labels)
        _, (ending,) = run(program, state, data, numbers, [record], cadence)
        outcome = ending.status
    memorised = outcome == "memorised"
    steps_run = record.losses[-1][0]  # for a divergence, the failing step
    return OverfitResult(
        samples=len(subset),
        memorised=memorised,
        step=steps_run if memorised else None,
        steps_run=steps_run,
        losses=record.losses,
        accuracy=record.result["accuracy"],
        notes=program.model.notes,
        diagnosis=overfit_diagnosis(
            experiment,
            program,
            subset,
            init_state(program, experiment.train.seed, norm, numbers, subset.images),
            record,
            numbers,
        ),
    )
