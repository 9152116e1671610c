"""Evaluate a run's checkpoint on its test (or validation) split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.config import load_experiment
from cnnlab.errors import UserError
from cnnlab.runs import Checkpoints, write_json
from cnnlab.train import prepare, scores


@dataclass
class Evaluation:
    split: str
    checkpoint: str
    step: int
    examples: int
    top1: float
    top5: float | None  # only with more than 5 classes
    loss: float
    class_names: list[str]
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    # The most confident mistakes, surest first: {index, true, predicted, probability}.
    mistakes: list[dict] = field(default_factory=list)


def restore_run(run_dir: Path, checkpoint: str = "best"):
    """The run's experiment rebuilt from its config.yaml and its state from a checkpoint.
    `best` falls back to `latest` for runs without a validation split."""
    if checkpoint not in ("best", "latest"):
        raise UserError(f"--checkpoint {checkpoint}: choose best or latest")
    if not (run_dir / "checkpoints").is_dir():  # checked first: opening them would create them
        raise UserError(f"run {run_dir} has no checkpoint yet (it stopped before its first eval)")
    experiment = load_experiment(run_dir / "config.yaml")
    prepared = prepare(experiment)
    checkpoints = Checkpoints(run_dir)
    try:
        kind = checkpoint if checkpoints.step(checkpoint) is not None else "latest"
        if checkpoints.step(kind) is None:
            raise UserError(
                f"run {run_dir} has no checkpoint yet (it stopped before its first eval)"
            )
        state = checkpoints.restore(kind, prepared.trainer.init(experiment.train.seed))
    finally:
        checkpoints.close()
    return experiment, prepared, state, kind


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: str = "best") -> Evaluation:
    """Top-1, top-5, per-class accuracy and confusion matrix; saved as eval_<split>.json."""
    if split not in ("test", "val"):
        raise UserError(f"--split {split}: choose test or val")
    _, prepared, state, kind = restore_run(run_dir, checkpoint)
    data = prepared.dataset.test if split == "test" else prepared.val
    if not len(data):
        raise UserError(f"the {split} split of run {run_dir.name} is empty")
    logits = prepared.trainer.logits(state, data.images)
    evaluation = summarize(logits, data.labels, prepared.dataset.class_names)
    evaluation = Evaluation(split=split, checkpoint=kind, step=int(state.step), **evaluation)
    write_json(run_dir / f"eval_{split}.json", asdict(evaluation))
    return evaluation


def summarize(logits: np.ndarray, labels: np.ndarray, class_names) -> dict:
    classes = len(class_names)
    predicted = logits.argmax(-1)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    top5 = None
    if classes > 5:
        best5 = np.argsort(-logits, axis=-1)[:, :5]
        top5 = float((best5 == labels[:, None]).any(-1).mean())
    overall = scores(logits, labels)
    return {
        "examples": len(labels),
        "top1": overall["accuracy"],
        "top5": top5,
        "loss": overall["loss"],
        "class_names": list(class_names),
        "per_class": [round(float(x), 6) for x in per_class],
        "confusion": confusion.tolist(),
        "mistakes": confident_mistakes(logits, labels),
    }


def confident_mistakes(logits: np.ndarray, labels: np.ndarray, count: int = 24) -> list[dict]:
    """The wrong predictions made with the highest probability, surest first."""
    shifted = logits - logits.max(-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    predicted = logits.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    surest = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    return [
        {
            "index": int(i),
            "true": int(labels[i]),
            "predicted": int(predicted[i]),
            "probability": round(float(probabilities[i, predicted[i]]), 4),
        }
        for i in surest
    ]


def split_images(run_dir: Path, split: str) -> np.ndarray:
    """The uint8 images of a run's test or validation split, in the order `evaluate_run` used
    (a mistake's `index` points into them)."""
    from cnnlab.data.dataset import split_validation
    from cnnlab.train import load_data

    experiment = load_experiment(run_dir / "config.yaml")
    dataset = load_data(experiment)
    if split == "test":
        return dataset.test.images
    _, val = split_validation(dataset.train, experiment.data.val_fraction, experiment.train.seed)
    return val.images
