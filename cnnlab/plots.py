"""PNG plots of runs: training curves, confusion matrices, several runs overlaid.

matplotlib is imported inside the functions (Agg backend, no display needed), so importing this
module costs nothing until a plot is drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import UserError
from cnnlab.runs import read_metrics

CURVES_FILE = "curves.png"
TRAIN_STYLE = "-"
VAL_STYLE = "--"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """A run's metrics as arrays: {'train'|'val': {'step', 'loss', 'accuracy'}}, sorted by step."""
    rows = read_metrics(run_dir)
    out = {}
    for split in ("train", "val"):
        chosen = sorted((r for r in rows if r.get("split") == split), key=lambda r: r["step"])
        out[split] = {
            key: np.array([r[key] for r in chosen], dtype=float)
            for key in ("step", "loss", "accuracy")
        }
    if not len(out["train"]["step"]) and not len(out["val"]["step"]):
        raise UserError(
            f"run {run_dir.name} has no metrics yet (metrics.jsonl is empty or missing)"
        )
    return out


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def plot_curves(run_dir: Path, path: Path | None = None) -> Path:
    """Loss and accuracy against step, training (solid) against validation (dashed), with the
    gap between training and validation accuracy shaded; written to `curves.png` in the run."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    data = curves(run_dir)
    train, val = data["train"], data["val"]
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axes, key in ((loss_axes, "loss"), (acc_axes, "accuracy")):
        if len(train["step"]):
            axes.plot(train["step"], train[key], TRAIN_STYLE, color="C0", label="training")
        if len(val["step"]):
            axes.plot(
                val["step"],
                val[key],
                VAL_STYLE,
                marker="o",
                markersize=3,
                color="C1",
                label="validation",
            )
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
    _scale_axes(loss_axes, acc_axes, [train["loss"], val["loss"]], _chance(run_dir))
    if len(train["step"]) and len(val["step"]):
        _shade_gap(acc_axes, train, val)
        best = int(np.argmax(val["accuracy"]))
        acc_axes.axvline(
            val["step"][best],
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"best val {val['accuracy'][best]:.3f}",
        )
    loss_axes.set_title("loss")
    acc_axes.set_title("accuracy")
    for axes in (loss_axes, acc_axes):  # below the axes: a legend never hides a curve
        axes.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False
        )
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    return _save(figure, path or run_dir / CURVES_FILE)


def _chance(run_dir: Path) -> float | None:
    """The accuracy of a model that ignores its input, as the run's summary records it."""
    from cnnlab.runs import read_json

    return read_json(Path(run_dir) / "summary.json").get("chance_accuracy")


def _scale_axes(loss_axes, acc_axes, losses: Sequence[np.ndarray], chance: float | None) -> None:
    """A log loss axis when the loss spans more than two orders of magnitude (else a spike
    flattens the rest into a line); accuracy from 0 to 1, with the chance level drawn, so that
    noise at chance does not look like swings."""
    values = np.concatenate([np.asarray(v, float) for v in losses]) if losses else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() > 100:
        loss_axes.set_yscale("log")
        loss_axes.set_ylabel("loss (log scale)")
    acc_axes.set_ylim(0, 1.02)
    if chance is not None:
        acc_axes.axhline(
            chance, color="black", linestyle="-.", linewidth=1, label=f"chance {chance:.3f}"
        )


def _shade_gap(axes, train: dict, val: dict) -> None:
    """Shade training accuracy above validation accuracy (overfitting) in red, below in green."""
    steps = val["step"]
    train_at_val = np.interp(steps, train["step"], train["accuracy"])
    above = train_at_val >= val["accuracy"]
    axes.fill_between(
        steps,
        val["accuracy"],
        train_at_val,
        where=above,
        interpolate=True,
        color="tab:red",
        alpha=0.18,
        label="train above val (gap)",
    )
    axes.fill_between(
        steps,
        val["accuracy"],
        train_at_val,
        where=~above,
        interpolate=True,
        color="tab:green",
        alpha=0.12,
    )


def plot_confusion(evaluation: Any, path: Path) -> Path:
    """A heatmap of a confusion matrix (rows: true class, columns: predicted), coloured by the
    share of each true class and labelled with counts; `evaluation` is an `Evaluation` or the
    dict saved as eval_<split>.json."""
    plt = _pyplot()
    if dataclasses.is_dataclass(evaluation):
        evaluation = dataclasses.asdict(evaluation)
    counts = np.asarray(evaluation["confusion"], dtype=np.int64)
    names = list(evaluation["class_names"])
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(4 + 0.45 * len(names), 30)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names, rotation=90 if max(map(len, names), default=0) > 3 else 0)
    axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(names) <= 30:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(
                    column, row, str(count), ha="center", va="center", color=colour, fontsize=8
                )
    title = "confusion"
    if "split" in evaluation:
        title += f": {evaluation['split']} split, top-1 {evaluation.get('top1', 0):.2%}"
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_compare(run_dirs: Sequence[Path], path: Path) -> Path:
    """Loss and accuracy curves of several runs on shared axes: one colour per run, training
    solid, validation dashed."""
    plt = _pyplot()
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(12, 4.6))
    names = run_labels(run_dirs)
    losses = []
    for index, run_dir in enumerate(run_dirs):
        data = curves(Path(run_dir))
        colour = f"C{index % 10}"
        for split, style in (("train", TRAIN_STYLE), ("val", VAL_STYLE)):
            series = data[split]
            if not len(series["step"]):
                continue
            label = f"{names[index]} ({split})"
            loss_axes.plot(series["step"], series["loss"], style, color=colour, label=label)
            losses.append(series["loss"])
            acc_axes.plot(series["step"], series["accuracy"], style, color=colour, label=label)
    for axes, key in ((loss_axes, "loss"), (acc_axes, "accuracy")):
        axes.set_title(key)
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
    _scale_axes(loss_axes, acc_axes, losses, _chance(run_dirs[0]) if run_dirs else None)
    handles, labels = acc_axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle("solid: training, dashed: validation")
    rows = (len(labels) + 1) // 2
    figure.tight_layout(rect=(0, min(0.06 * rows, 0.5), 1, 1))
    return _save(figure, path)


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run named by the settings that differ between the runs (`lr=0.001`), else by its
    folder name."""
    from cnnlab.history import config_differences, read_config, show_value

    differences = config_differences([read_config(Path(d)) for d in run_dirs])
    keys = [k for k in differences if k != "name"][:3]
    if not keys:
        return [Path(d).name for d in run_dirs]
    return [
        ", ".join(f"{k.rsplit('.', 1)[-1]}={show_value(differences[k][i])}" for k in keys)
        for i in range(len(run_dirs))
    ]


def plot_mistakes(images: np.ndarray, mistakes: Sequence[dict], class_names, path: Path) -> Path:
    """A grid of the most confident mistakes: each image with its true and predicted class and
    the probability given to the wrong one. `mistakes`: {index, true, predicted, probability}."""
    plt = _pyplot()
    count = max(len(mistakes), 1)
    columns = min(8, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, mistake in zip(axes.flat, mistakes, strict=False):
        image = images[mistake["index"]]
        grey = image.shape[-1] == 1
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(
            f"true {class_names[mistake['true']]}\nsaid {class_names[mistake['predicted']]} "
            f"{mistake['probability']:.0%}",
            fontsize=7,
        )
    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    figure.suptitle("most confident mistakes")
    figure.tight_layout()
    return _save(figure, path)
