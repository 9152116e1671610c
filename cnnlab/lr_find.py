"""Learning-rate range test: raise the rate exponentially over a few hundred steps from a fresh
model, watch the loss, and suggest a rate a step below where the loss bottoms out."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import Experiment, experiment_from_tree
from cnnlab.data.dataset import split_validation
from cnnlab.errors import UserError
from cnnlab.train import build_trainer, load_data, to_device


@dataclass
class RangeTest:
    lrs: np.ndarray
    losses: np.ndarray  # raw per-step training loss
    smoothed: np.ndarray
    suggestion: float
    lowest_loss_lr: float


def range_experiment(
    experiment: Experiment, min_lr: float, max_lr: float, steps: int
) -> Experiment:
    """The same experiment with its learning rate growing from min_lr to max_lr over `steps`."""
    raw = copy.deepcopy(experiment.raw)
    raw["optimizer"] = {
        **raw.get("optimizer", {}),
        "lr": min_lr,
        "schedule": {
            "name": "exponential",
            "decay_rate": max_lr / min_lr,
            "transition_steps": steps,
        },
    }
    raw.setdefault("train", {})["steps"] = steps
    return experiment_from_tree(raw)


def smooth(values: np.ndarray, beta: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (the first values are not pulled to 0)."""
    out, average = np.empty_like(values), 0.0
    for index, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out[index] = average / (1 - beta ** (index + 1))
    return out


def lr_find(
    experiment: Experiment, *, min_lr: float = 1e-6, max_lr: float = 10.0, steps: int = 200
) -> RangeTest:
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min-lr {min_lr} and --max-lr {max_lr}: need 0 < min-lr < max-lr")
    probe = range_experiment(experiment, min_lr, max_lr, steps)
    dataset = load_data(probe)
    train, _ = split_validation(dataset.train, probe.data.val_fraction, probe.train.seed)
    trainer = build_trainer(probe, train, dataset.num_classes)
    state, data = trainer.init(probe.train.seed), to_device(train)
    losses, lrs, done = [], [], 0
    while done < steps:
        count = min(probe.train.steps_per_call, steps - done)
        state, metrics = trainer.program(count, state, data)(state, data)
        losses.extend(np.asarray(metrics["loss"]).tolist())
        lrs.extend(np.asarray(metrics["lr"]).tolist())
        done += count
        if not np.isfinite(losses[-1]):
            break
        smoothed = smooth(np.array(losses))
        if smoothed[-1] > 4 * smoothed.min():
            break  # diverged: larger rates only get worse
    losses, lrs = np.array(losses), np.array(lrs)
    keep = np.isfinite(losses)
    losses, lrs = losses[keep], lrs[keep]
    smoothed = smooth(losses)
    lowest = float(lrs[int(np.argmin(smoothed))])
    return RangeTest(lrs, losses, smoothed, suggestion=lowest / 10, lowest_loss_lr=lowest)


def plot_range_test(result: RangeTest, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    axis.plot(result.lrs, result.smoothed, label="smoothed loss")
    axis.axvline(
        result.suggestion, color="green", linestyle="--", label=f"suggested {result.suggestion:.2g}"
    )
    axis.axvline(
        result.lowest_loss_lr,
        color="grey",
        linestyle=":",
        label=f"lowest loss {result.lowest_loss_lr:.2g}",
    )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    top = np.percentile(result.losses, 95)
    axis.set_ylim(min(result.losses.min(), result.smoothed.min()) * 0.9, top * 1.1)
    axis.legend()
    axis.set_title("learning-rate range test")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
