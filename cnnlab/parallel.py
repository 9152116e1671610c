"""Several trials in one compiled program: `jax.vmap` over their stacked states.

Trials stack when they build the same program and differ only in numbers the step uses as
values: learning rate, optimizer arguments, weight decay, schedule and augmentation parameters,
label smoothing, and the seed (which only changes the initial state and the validation split).
Those numbers become traced inputs, one per trial; every trial still writes its own run folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from cnnlab.config import Experiment, dump_experiment
from cnnlab.train import (
    Stopwatch,
    TrainLoop,
    build_trainer,
    on_cpu,
    prepare,
    to_device,
    train_compiler_options,
)

Path_ = tuple  # a dotted key as a tuple: ("optimizer", "args", "momentum")


def flatten(value, prefix: Path_ = ()) -> dict[Path_, object]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in flatten(item, (*prefix, key)).items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in flatten(item, (*prefix, i)).items()
        }
    return {prefix: value}


def _traceable(path: Path_) -> bool:
    """Keys whose values the training step only computes with."""
    head = path[:2]
    return (
        head in {("optimizer", "lr"), ("optimizer", "weight_decay"), ("optimizer", "clip_norm")}
        or head in {("optimizer", "ema_decay"), ("train", "label_smoothing")}
        or (len(path) == 3 and head in {("optimizer", "args"), ("optimizer", "schedule")})
        or (len(path) == 4 and path[0] == "augment")
    )


def differences(experiments: Sequence[Experiment]) -> tuple[dict[Path_, list], str | None]:
    """The keys whose values differ between the experiments, and why they cannot share one
    program (None when they can)."""
    flat = [flatten(experiment.raw) for experiment in experiments]
    keys = set().union(*flat)
    differing: dict[Path_, list] = {}
    for key in sorted(keys, key=str):
        values = [f.get(key, "<missing>") for f in flat]
        if all(v == values[0] for v in values):
            continue
        dotted = ".".join(map(str, key))
        if key == ("train", "seed"):
            continue  # changes the initial state and the validation split only: both are stacked
        if not _traceable(key):
            return {}, f"they differ in {dotted}, which changes the program"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return {}, f"{dotted} is not a number in every trial"
        differing[key] = values
    return differing, None


def substitute(experiment: Experiment, path: Path_, value) -> Experiment:
    """The experiment with the number at `path` replaced (by a traced value)."""
    section = path[0]
    if section == "train":
        return dataclasses.replace(
            experiment, train=experiment.train.model_copy(update={path[1]: value})
        )
    if section == "augment":
        specs = list(experiment.augment)
        specs[path[1]] = specs[path[1]].model_copy(update={path[3]: value})
        return dataclasses.replace(experiment, augment=tuple(specs))
    optimizer = experiment.optimizer
    if path[1] == "args":
        optimizer = optimizer.model_copy(update={"args": {**optimizer.args, path[2]: value}})
    elif path[1] == "schedule":
        optimizer = optimizer.model_copy(
            update={"schedule": optimizer.schedule.model_copy(update={path[2]: value})}
        )
    else:
        optimizer = optimizer.model_copy(update={path[1]: value})
    return dataclasses.replace(experiment, optimizer=optimizer)


def train_stacked(
    experiments: Sequence[Experiment], run_dirs: Sequence[Path], log: Callable[[str], None] = print
) -> list[dict]:
    """Train the experiments together in one vmapped program; returns their summaries.

    Raises ValueError (before any folder is written) when they cannot be stacked."""
    differing, reason = differences(experiments)
    if reason:
        raise ValueError(reason)
    prepared = [prepare(experiment) for experiment in experiments]
    started = time.perf_counter()
    if len({len(p.train) for p in prepared}) > 1:
        raise ValueError("their training splits differ in size")
    base = experiments[0]
    cfg = base.train
    keys = list(differing)
    values = {key: np.asarray(v, dtype=np.float32) for key, v in differing.items()}
    states = _stack(
        [p.trainer.init(e.train.seed) for p, e in zip(prepared, experiments, strict=True)]
    )
    data = _stack([to_device(p.train) for p in prepared])

    def trainer_for(numbers):
        experiment = base
        for key in keys:
            experiment = substitute(experiment, key, numbers[key])
        return build_trainer(experiment, prepared[0].train, prepared[0].dataset.num_classes)

    def make_program(count):
        def run(states, data, numbers):
            def one(state, split, trial_numbers):
                trainer = trainer_for(trial_numbers)
                unroll = count if on_cpu() else 1
                body = lambda s, _: trainer.train_step(s, split)  # noqa: E731
                return jax.lax.scan(body, state, None, length=count, unroll=unroll)

            return jax.vmap(one)(states, data, numbers)

        jitted = jax.jit(run, donate_argnums=0, compiler_options=train_compiler_options())
        return jitted.lower(states, data, values).compile()

    try:  # compiles, or fails, before any folder exists
        first = make_program(min(cfg.steps_per_call, cfg.steps))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError) as error:
        raise ValueError(
            f"a swept value steers Python code in the step ({type(error).__name__})"
        ) from None
    compile_seconds = time.perf_counter() - started
    log(f"compiled {len(experiments)} stacked trials in {compile_seconds:.1f} s")
    loops = []
    for experiment, prep, run_dir in zip(experiments, prepared, run_dirs, strict=True):
        run_dir.mkdir(parents=True, exist_ok=False)
        dump_experiment(experiment, run_dir / "config.yaml")
        loop = TrainLoop(experiment, prep, run_dir)
        loop.diagnostics = False  # one extra compiled program per trial would outweigh the gain
        loop.start()
        loops.append(loop)
    try:
        return _drive(loops, states, data, values, make_program, first, cfg, compile_seconds)
    finally:
        for loop in loops:
            loop.close()


def _stack(trees):
    return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *trees)


def _slice(tree, index: int):
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _drive(loops, states, data, values, make_program, first, cfg, compile_seconds) -> list[dict]:
    programs = {min(cfg.steps_per_call, cfg.steps): first}

    def program(count):
        if count not in programs:
            programs[count] = make_program(count)
        return programs[count]

    step = 0
    clock, last_step, pending = Stopwatch(), step, []
    status = ["completed"] * len(loops)
    stopped_at = [cfg.steps] * len(loops)
    while step < cfg.steps:
        count = min(cfg.steps_per_call, cfg.steps - step)
        states, metrics = program(count)(states, data, values)
        pending.append(metrics)
        step += count
        final = step == cfg.steps
        if step % cfg.log_every_steps == 0 or final:
            host = jax.device_get(pending)
            images_per_sec = (step - last_step) * loops[0].trainer.batch_size / clock.lap()
            with clock.paused():
                for index, loop in enumerate(loops):
                    if status[index] == "completed":
                        trial_values = [{k: v[index] for k, v in m.items()} for m in host]
                        state = _slice(states, index)
                        loop.log_train(
                            step,
                            state,
                            _slice(data, index),
                            trial_values,
                            images_per_sec,
                            clock.total(),
                        )
                        if loop.failure:
                            status[index], stopped_at[index] = "diverged", step
            pending, last_step = [], step
        if step % cfg.eval_every_steps == 0 or final:
            with clock.paused():
                for index, loop in enumerate(loops):
                    if status[index] == "completed":
                        state = _slice(states, index)
                        improved = loop.evaluate(step, state, clock.total())
                        loop.checkpoints.save("latest", step, state)
                        if loop.plateaued(improved):
                            status[index], stopped_at[index] = "early_stopped", step
        if all(s != "completed" for s in status):
            break
    return [
        loop.summarise(min(done, step), trial_status, clock.total(), compile_seconds)
        for loop, done, trial_status in zip(loops, stopped_at, status, strict=True)
    ]


def group_trials(
    experiments: Sequence[Experiment], limit: int
) -> tuple[list[list[int]], list[str]]:
    """Indices of experiments grouped for stacking (at most `limit` each, in order), and the
    reasons why some could not join a group."""
    groups: list[list[int]] = []
    reasons: list[str] = []
    for index, experiment in enumerate(experiments):
        for group in groups:
            if len(group) < limit:
                _, reason = differences([experiments[group[0]], experiment])
                if reason is None:
                    group.append(index)
                    break
        else:
            _, reason = (
                differences([experiments[groups[0][0]], experiment]) if groups else (None, None)
            )
            if reason:
                reasons.append(f"{experiment.name} #{index + 1} runs in another group: {reason}")
            groups.append([index])
    return groups, reasons


def parallel_trainer(limit: int, log: Callable[[str], None] = print):
    """A sweep trainer (see cnnlab.sweep.TrialTrainer) that stacks up to `limit` compatible
    trials per program and trains the rest one after another, saying why."""
    from cnnlab.sweep.runner import train_trial

    def train_jobs(jobs, progress=None) -> None:
        groups, reasons = group_trials([trial.experiment for trial, _ in jobs], limit)
        for reason in reasons:
            log(f"not stacked: {reason}")
        for group in groups:
            members = [jobs[i] for i in group]
            if len(members) > 1:
                log(
                    f"training {len(members)} trials together: "
                    + ", ".join(t.label for t, _ in members)
                )
                for _, run_dir in members:
                    if run_dir.exists():
                        shutil.rmtree(run_dir)
                try:
                    train_stacked([t.experiment for t, _ in members], [d for _, d in members], log)
                    continue
                except ValueError as reason:
                    log(f"not stacked: {reason}; training them one after another")
            for trial, run_dir in members:
                if train_trial(trial, run_dir, progress).get("status") == "interrupted":
                    raise KeyboardInterrupt

    return train_jobs
