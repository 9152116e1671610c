"""Gathering a run's evidence for `cnnlab.diagnosis`, and what the run's summary says of it.

The diagnosis itself is pure; this module reads what it needs from a finished training loop or
an `overfit` check: metric rows, per-layer statistics (also measured once more at
initialisation, since most causes show in the first step), the loss at initialisation, the
label counts and the model's layer kinds.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from cnnlab.diagnosis import Diagnosis, Divergence, Evidence, diagnose, not_learning
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


def stats_rows(step: int, stats: dict) -> list[dict]:
    """`Trainer.diagnose` output as diagnostics.jsonl rows."""
    rows = []
    for layer, values in stats.items():
        if layer == "_model":
            if "dead_relu" in values:
                rows.append(
                    {"step": step, "layer": "model", "dead_relu": float(values["dead_relu"])}
                )
            continue
        row = {"step": step, "layer": layer}
        row.update({key: float(value) for key, value in values.items() if key != "finite"})
        rows.append(row)
    return rows


def at_initialisation(trainer, seed: int, images: np.ndarray, labels: np.ndarray, data=None):
    """The loss at initialisation (mean over a sample of training images, evaluation mode) and,
    given the device data, the per-layer statistics of the first step (step 0)."""
    from cnnlab.train import scores

    state = trainer.init(seed)
    count = min(len(images), INIT_SAMPLE)
    loss = scores(trainer.logits(state, images[:count]), labels[:count])["loss"]
    rows = stats_rows(0, trainer.diagnose(state, data)) if data is not None else []
    return loss, rows


def label_counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    return tuple(int(c) for c in np.bincount(np.asarray(labels, np.int64), minlength=num_classes))


_DIVERGED = re.compile(
    r"non-finite at step (\d+)(?:; first non-finite gradient in layer (\S+?)[;.]?\s)?"
)


def parse_divergence(failure: str | None) -> Divergence | None:
    """The step and layer a divergence message names."""
    found = _DIVERGED.search(failure or "")
    return Divergence(int(found.group(1)), found.group(2)) if found else None


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


def judge_run(loop, summary: dict) -> dict:
    """Status and diagnosis of a training run at its end, for its summary: a completed run
    that did not learn becomes `completed_not_learning`."""
    prepared, experiment = loop.prepared, loop.experiment
    train = prepared.train
    classes = prepared.dataset.num_classes
    data = None
    if loop.diagnostics:  # the statistics program exists already; parallel trials skip it
        from cnnlab.train import to_device

        data = to_device(train)
    initial_loss, first = at_initialisation(
        loop.trainer, experiment.train.seed, train.images, train.labels, data
    )
    rows = read_metrics(loop.run_dir)
    divergence = parse_divergence(summary.get("failure"))
    evidence = Evidence(
        num_classes=classes,
        label_counts=label_counts(train.labels, classes),
        train=tuple(r for r in rows if r.get("split") == "train"),
        val=tuple(r for r in rows if r.get("split") == "val"),
        layers=tuple(first + read_jsonl(loop.run_dir / "diagnostics.jsonl")),
        initial_loss=initial_loss,
        val_size=len(prepared.val),
        divergence=divergence,
        structure=model_structure(experiment.model, prepared.dataset.image_shape, classes),
        lr=experiment.optimizer.lr,
    )
    status = summary["status"]
    if status == "completed" and not_learning(evidence):
        status = NOT_LEARNING
    return {
        "status": status,
        "diverged_at": divergence.step if divergence else None,
        "initial_loss": _clean(initial_loss),
        "chance_accuracy": evidence.baseline,
        "diagnosis": diagnosis_record(diagnose(evidence)),
    }


def overfit_diagnosis(
    experiment, trainer, subset, data, losses, accuracy: float, steps: int, state
):
    """The diagnosis of an `overfit` check, from its loss at each check, the statistics of its
    first and last step, and the model's structure; None when there is nothing to say."""
    from cnnlab.diagnostics import first_nonfinite

    classes = trainer.num_classes
    first, last, divergence = [], [], None
    if accuracy < 1.0:  # a pass needs only the structural checks: no statistics to compute
        _, first = at_initialisation(
            trainer, experiment.train.seed, subset.images, subset.labels, data
        )
        stats = trainer.diagnose(state, data) if steps else {}
        last = stats_rows(steps, stats)
        if not np.isfinite(losses[-1][1]):
            divergence = Divergence(losses[-1][0], first_nonfinite(stats))
    rows = [{"step": step, "loss": loss, "accuracy": None} for step, loss in losses]
    rows[-1]["accuracy"] = accuracy
    evidence = Evidence(
        num_classes=classes,
        label_counts=label_counts(subset.labels, classes),
        train=tuple(rows),
        layers=tuple(first + last),
        initial_loss=losses[0][1],
        divergence=divergence,
        structure=model_structure(experiment.model, subset.images.shape[1:], classes),
        lr=experiment.optimizer.lr,
        memorise=True,
    )
    return diagnose(evidence)
