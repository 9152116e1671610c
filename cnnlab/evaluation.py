"""Evaluate a run's checkpoint on its test (or validation) split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Split, split_validation
from cnnlab.errors import UserError
from cnnlab.runs import write_json
from cnnlab.step import logits, scores
from cnnlab.training import Restored, load_data, restore


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


def split_images(restored: Restored, split: str) -> Split:
    """The run's `test` split, or the `val` split carved again from the training data with the
    run's seed; a data source that is gone is a one-line error naming it."""
    experiment = restored.experiment
    dataset = load_data(experiment, splits=("test",) if split == "test" else ("train",))
    if split == "test":
        return dataset.test
    _, val = split_validation(dataset.train, experiment.data.val_fraction, experiment.train.seed)
    return val


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: str = "best") -> Evaluation:
    """Top-1, top-5, per-class accuracy and confusion matrix; saved as eval_<split>.json."""
    if split not in ("test", "val"):
        raise UserError(f"--split {split}: choose test or val")
    restored = restore(run_dir, checkpoint)
    data = split_images(restored, split)
    if not len(data):
        raise UserError(f"the {split} split of run {run_dir.name} is empty")
    found = logits(restored.program, restored.state, data.images)
    evaluation = summarize(found, data.labels, restored.class_names)
    evaluation = Evaluation(
        split=split, checkpoint=restored.checkpoint, step=restored.step, **evaluation
    )
    write_json(run_dir / f"eval_{split}.json", asdict(evaluation))
    from cnnlab.plots import plot_mistakes

    names = evaluation.class_names
    plot_mistakes(data.images, evaluation.mistakes, names, run_dir / f"mistakes_{split}.png")
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
