"""Gathering a run's evidence for `cnnlab.diagnosis`, and what the run's summary says of it.

The diagnosis itself is pure; this module reads what it needs from a finished training loop or
an `overfit` check: metric rows, per-layer statistics (also measured once more at
initialisation, since most causes show in the first step), the loss at initialisation, the
label counts and the model's layer kinds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from cnnlab.diagnosis import Diagnosis, Evidence, diagnose, not_learning
from cnnlab.diagnostics import layer_names, stats_rows
from cnnlab.runs import read_jsonl, read_metrics

NOT_LEARNING = "completed_not_learning"
INIT_SAMPLE = 512  # training images whose mean loss is the loss at initialisation


def model_structure(spec, image_shape, num_classes) -> tuple[tuple[str, str], ...]:
    """(name, kind) of each layer in forward order; empty for Python models (their structure
    is code) and for specs that cannot be described."""
    from cnnlab.models import describe_model

    try:
        rows = describe_model(spec, tuple(image_shape), num_classes).rows
    except Exception:  # a model that trained but cannot be described loses one check, no more
        return ()
    if any(row.kind.startswith("python") for row in rows):
        return ()
    return tuple((row.name, row.kind) for row in rows)


def python_call_order(spec, model, image_shape) -> tuple[str, ...]:
    """A Python model's layers in the order its forward pass calls them (its parameter names do
    not tell it); () for layer lists, whose names are their positions."""
    from cnnlab.diagnostics import call_order
    from cnnlab.models import PythonModelSpec

    if not isinstance(spec, PythonModelSpec):
        return ()
    try:
        return tuple(call_order(model, tuple(image_shape)))
    except Exception:  # the order sharpens two checks; a model that trained keeps the rest
        return ()


def initial_loss(program, state, images: np.ndarray, labels: np.ndarray) -> float:
    """The loss at initialisation: mean over a sample of training images, evaluation mode."""
    from cnnlab.step import logits, scores

    count = min(len(images), INIT_SAMPLE)
    return scores(logits(program, state, images[:count]), labels[:count])["loss"]


def first_step_rows(program, state, data, numbers) -> list[dict]:
    """The per-layer statistics of the first step, taken by the step itself on a copy of the
    initial state (compiled once more, one step long: only failing runs need it)."""
    import jax

    from cnnlab.step import EpochOrders, steps_program

    copy = jax.tree.map(lambda leaf: leaf.copy(), state)  # the call donates its state
    call = steps_program(program, 1, copy, data, numbers)
    upcoming = EpochOrders(program, state).upcoming(0, 1)
    _, metrics = call(copy, upcoming, data, numbers, np.bool_(True))
    return stats_rows(0, jax.device_get(metrics["layers"]), layer_names(state.params))


def label_counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    return tuple(int(c) for c in np.bincount(np.asarray(labels, np.int64), minlength=num_classes))


def _clean(value: Any):
    """JSON cannot hold inf or nan: they become None."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def diagnosis_record(found: Diagnosis | None) -> dict | None:
    return _clean(found.to_dict()) if found else None


def judge_run(record, summary: dict, built, stacked: bool = False) -> dict:
    """Status and diagnosis of a training run at its end, for its summary: a completed run
    that did not learn becomes `completed_not_learning`. `built` is the run's
    cnnlab.training.Setup; the first step's statistics are measured only for a run that
    failed, and not for stacked trials."""
    from cnnlab.step import device_numbers, to_device

    program, experiment, train = record.program, built.experiment, built.train
    classes = built.dataset.num_classes
    state = built.initial_state(program)
    rows = read_metrics(record.run_dir)
    evidence = Evidence(
        num_classes=classes,
        label_counts=label_counts(train.labels, classes),
        train=tuple(r for r in rows if r.get("split") == "train"),
        val=tuple(r for r in rows if r.get("split") == "val"),
        layers=tuple(read_jsonl(record.run_dir / "diagnostics.jsonl")),
        initial_loss=initial_loss(program, state, train.images, train.labels),
        val_size=len(built.val),
        divergence=record.divergence,
        structure=model_structure(experiment.model, built.dataset.image_shape, classes),
        order=python_call_order(experiment.model, program.model, program.image_shape),
        lr=experiment.optimizer.lr,
    )
    status = summary["status"]
    if status == "completed" and not_learning(evidence):
        status = NOT_LEARNING
    if status in ("diverged", NOT_LEARNING) and not stacked:
        data = to_device(train.images, train.labels)
        first = first_step_rows(program, state, data, device_numbers(built.numbers))
        evidence = replace(evidence, layers=tuple(first) + evidence.layers)
    return {
        "status": status,
        "diverged_at": record.divergence.step if record.divergence else None,
        "initial_loss": _clean(evidence.initial_loss),
        "chance_accuracy": evidence.baseline,
        "diagnosis": diagnosis_record(diagnose(evidence)),
    }


def overfit_diagnosis(experiment, program, subset, state, record, numbers) -> Diagnosis | None:
    """The diagnosis of an `overfit` check (cnnlab.sanity), from its loss at each check, the
    statistics of its first and last logged step, and the model's structure; None when there
    is nothing to say. `state` is the initial state."""
    from cnnlab.step import to_device

    classes = program.num_classes
    losses, accuracy = record.losses, record.result.get("accuracy", 0.0)
    first, last = [], []
    if accuracy < 1.0:  # a pass needs only the structural checks: no statistics to compute
        data = to_device(subset.images, subset.labels)
        first = first_step_rows(program, state, data, numbers)
        last = [{**row, "step": losses[-1][0]} for row in record.layers or []]
    rows = [{"step": step, "loss": loss, "accuracy": None} for step, loss in losses]
    rows[-1]["accuracy"] = accuracy
    evidence = Evidence(
        num_classes=classes,
        label_counts=label_counts(subset.labels, classes),
        train=tuple(rows),
        layers=tuple(first + last),
        initial_loss=losses[0][1],
        divergence=record.divergence,
        structure=model_structure(experiment.model, subset.images.shape[1:], classes),
        order=python_call_order(experiment.model, program.model, program.image_shape),
        lr=experiment.optimizer.lr,
        memorise=True,
    )
    return diagnose(evidence)
