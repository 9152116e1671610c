"""Learning-rate range test: raise the rate exponentially over a few hundred steps from a fresh
model, watch the loss, and suggest a rate a step below where the loss bottoms out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import Experiment, with_settings
from cnnlab.errors import UserError
from cnnlab.loop import run
from cnnlab.step import device_numbers, to_device
from cnnlab.training import setup


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
    schedule = {"name": "exponential", "decay_rate": max_lr / min_lr, "transition_steps": steps}
    settings = {"optimizer.lr": min_lr, "optimizer.schedule": schedule, "train.steps": steps}
    # A log every call: the loss is watched as it goes.
    per_call = experiment.train.steps_per_call
    settings["train.log_every_steps"] = settings["train.eval_every_steps"] = per_call
    return with_settings(experiment, settings, "lr-find")


def smooth(values: np.ndarray, beta: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (the first values are not pulled to 0)."""
    out, average = np.empty_like(values), 0.0
    for index, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out[index] = average / (1 - beta ** (index + 1))
    return out


class RangeRecord:
    """Keeps every step's loss and rate; ends the test once the loss has blown up."""

    def __init__(self):
        self.last_train: dict = {}
        self.last_val: dict = {}
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def log(self, step, series, layers, images_per_sec, wall):
        self.losses.extend(series["loss"].tolist())
        self.lrs.extend(series["lr"].tolist())
        if not np.isfinite(self.losses[-1]):
            return "diverged"
        smoothed = smooth(np.array(self.losses))
        return "diverged" if smoothed[-1] > 4 * smoothed.min() else None  # larger only worse

    def evaluate(self, step, state, wall, final):
        return None


def lr_find(
    experiment: Experiment, *, min_lr: float = 1e-6, max_lr: float = 10.0, steps: int = 200
) -> RangeTest:
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min-lr {min_lr} and --max-lr {max_lr}: need 0 < min-lr < max-lr")
    probe = range_experiment(experiment, min_lr, max_lr, steps)
    built = setup(probe)
    data = to_device(built.train.images, built.train.labels)
    record = RangeRecord()
    numbers = device_numbers(built.numbers)
    run(built.program, built.initial_state(), data, numbers, [record], built.cadence())
    losses, lrs = np.array(record.losses), np.array(record.lrs)
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
