"""Several trials in one compiled program: `vmap` over their stacked states, data and numbers.

Trials stack when one program trains them all (`cnnlab.hyper.structure`): they differ only in
numbers the step takes as data (learning rate, optimizer arguments, schedule numbers, weight
decay, augmentation strengths, label smoothing) and in their seeds. Every trial keeps its own
run folder, record, checkpoints and summary, and resumes from its checkpoint like any run.

On several devices the trial axis is split over a `data` mesh (cnnlab.mesh.trial_mesh): each
device trains whole trials, and N trials on N devices are one program with no communication.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp

from cnnlab.config import Experiment
from cnnlab.errors import SpecError
from cnnlab.hyper import first_difference
from cnnlab.loop import run
from cnnlab.mesh import describe, trial_mesh
from cnnlab.plots import plot_curves
from cnnlab.record import RunRecord
from cnnlab.report import mesh_line
from cnnlab.runs import read_metrics
from cnnlab.step import compile_run, device_numbers, placed, to_device
from cnnlab.training import Setup, setup, start_run_dir


def stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def group_trials(
    experiments: Sequence[Experiment], limit: int
) -> tuple[list[list[int]], list[str]]:
    """Indices of experiments grouped for stacking (at most `limit` each, in order), and the
    reasons why some could not join the first group."""
    groups: list[list[int]] = []
    reasons: list[str] = []
    for index, experiment in enumerate(experiments):
        for group in groups:
            if len(group) < limit and first_difference(experiments[group[0]], experiment) is None:
                group.append(index)
                break
        else:
            if groups:
                section = first_difference(experiments[groups[0][0]], experiment)
                if section is not None:
                    reasons.append(
                        f"{experiment.name} #{index + 1} runs in another group: they differ in "
                        f"{section}, which changes the program"
                    )
            groups.append([index])
    return groups, reasons


def train_stacked(
    experiments: Sequence[Experiment],
    run_dirs: Sequence[Path],
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress=None,
) -> list[dict]:
    """Train the experiments together in one vmapped program, each into its run folder (with
    `resume`, from the folders' latest checkpoints); returns their summaries.

    Raises ValueError, before any folder is written, when they cannot be stacked."""
    for experiment in experiments[1:]:
        section = first_difference(experiments[0], experiment)
        if section is not None:
            raise ValueError(f"they differ in {section}, which changes the program")
    built = [setup(experiment, split_batch=False) for experiment in experiments]
    if len({len(b.train) for b in built}) > 1:
        raise ValueError("their training splits differ in size")
    try:
        mesh = trial_mesh(len(experiments), experiments[0].train.devices)
    except SpecError as error:  # more devices asked for than there are
        raise experiments[0].user_error(error) from None
    # One program for all (the others only checked their specs), on the trials' mesh.
    program = replace(built[0].program, mesh=mesh, compiled={})
    layout = describe(mesh, program.batch_size, trials=len(experiments))
    # Each from its own program: a dropout rate or noise strength lives in its model state.
    states = [b.initial_state() for b in built]
    data = placed(mesh, stack([to_device(b.train.images, b.train.labels) for b in built]), True)
    numbers = placed(mesh, stack([device_numbers(b.numbers) for b in built]), True)
    records: list[RunRecord] = []
    try:
        if resume:
            records = [_record(b, program, d, layout) for b, d in zip(built, run_dirs, strict=True)]
            states = [r.resume(s) for r, s in zip(records, states, strict=True)]
            if len({r.first_step for r in records}) > 1:
                raise ValueError("their checkpoints are at different steps")
        state = placed(mesh, stack(states), split=True)
        cfg, first = experiments[0].train, records[0].first_step if records else 0
        compile_seconds = compile_run(
            program, state, data, numbers, first, cfg.steps, cfg.steps_per_call, stacked=True
        )
        log(
            f"compiled {len(experiments)} stacked trials in {compile_seconds:.1f} s, "
            f"on {mesh_line(layout)}"
        )
        if not resume:
            records = [
                _record(b, program, start_run_dir(b, None, d), layout)
                for b, d in zip(built, run_dirs, strict=True)
            ]
        for record in records:
            record.start()
        offset = max(r.wall_offset for r in records)
        cadence = built[0].cadence()
        _, outcomes = run(
            program, state, data, numbers, records, cadence,
            stacked=True, progress=progress, wall_offset=offset,
        )  # fmt: skip
        summaries = [
            r.summarise(o.step, o.status, o.wall_seconds, compile_seconds)
            for r, o in zip(records, outcomes, strict=True)
        ]
    finally:
        for record in records:
            record.close()
    for record in records:
        if read_metrics(record.run_dir):
            plot_curves(record.run_dir)
    return summaries


def _record(built: Setup, program, run_dir: Path, layout: dict) -> RunRecord:
    return RunRecord(built, program, run_dir, stacked=True, layout=layout)
