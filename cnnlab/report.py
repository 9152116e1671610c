"""What the commands print: the training progress bar and result tables (rich)."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class TrainProgress:
    """A progress bar with step, loss, accuracy and throughput, refreshed at log intervals."""

    def __init__(self, console: Console, total_steps: int, first_step: int = 0):
        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task(
            "train", total=total_steps, completed=first_step, stats="compiling"
        )

    def __enter__(self) -> TrainProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def warn(self, message: str) -> None:
        self._bar.console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def update(self, step: int, train: dict, val: dict) -> None:
        stats = ""
        if train:
            stats = f"loss {train['loss']:.4f} acc {train['accuracy']:.3f} {train['images_per_sec']:,.0f} img/s"
        if val:
            stats += f" | val acc {val['accuracy']:.4f}"
        self._bar.update(self._task, completed=step, stats=stats)


def summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary['name']}: {summary['status']}", show_header=False)
    final_train, final_val, best = (
        summary["final"]["train"],
        summary["final"]["val"],
        summary["best"],
    )
    table.add_row("steps", f"{summary['steps']} of {summary['steps_planned']}")
    if final_train:
        table.add_row(
            "train loss / accuracy", f"{final_train['loss']:.4f} / {final_train['accuracy']:.4f}"
        )
    if final_val:
        table.add_row(
            "val loss / accuracy", f"{final_val['loss']:.4f} / {final_val['accuracy']:.4f}"
        )
    if best:
        table.add_row("best val accuracy", f"{best['val_accuracy']:.4f} at step {best['step']}")
    table.add_row(
        "wall time",
        f"{summary['wall_seconds']:.1f} s (+{summary['compile_seconds']:.1f} s compile)",
    )
    table.add_row("device", f"{summary['device']['platform']} ({summary['device']['kind']})")
    if "mesh" in summary:
        table.add_row("mesh", mesh_line(summary["mesh"]))
    return table


def mesh_line(info: dict) -> str:
    """One line for tables: '4 devices, cpu (cpu), 1 process, 16 images per device'."""
    devices = f"{info['devices']} device{'s' if info['devices'] != 1 else ''}"
    processes = f"{info['processes']} process{'es' if info['processes'] != 1 else ''}"
    line = f"{devices}, {', '.join(info['kinds'])}, {processes}"
    if "trials_per_device" in info:
        trials = info["trials_per_device"]
        line += f", {trials} stacked trial{'s' if trials != 1 else ''} per device"
    if "per_device_batch" in info:
        line += f", {info['per_device_batch']} images per device"
    return line


def evaluation_tables(evaluation) -> Group:
    head = Table(
        title=f"{evaluation.split} split, {evaluation.checkpoint} checkpoint (step {evaluation.step})"
    )
    head.add_column("examples", justify="right")
    head.add_column("top-1", justify="right")
    if evaluation.top5 is not None:
        head.add_column("top-5", justify="right")
    head.add_column("loss", justify="right")
    row = [str(evaluation.examples), f"{evaluation.top1:.2%}"]
    if evaluation.top5 is not None:
        row.append(f"{evaluation.top5:.2%}")
    head.add_row(*row, f"{evaluation.loss:.4f}")

    names = evaluation.class_names
    per_class = Table(title="per class")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    for name, accuracy in zip(names, evaluation.per_class, strict=False):
        per_class.add_row(name, f"{accuracy:.2%}")

    confusion = Table(title="confusion (rows: true, columns: predicted)")
    confusion.add_column("")
    for index in range(len(names)):
        confusion.add_column(str(index), justify="right")
    for index, (name, counts) in enumerate(zip(names, evaluation.confusion, strict=False)):
        cells = [
            f"[bold]{c}[/]" if j == index else (str(c) if c else "[dim]0[/]")
            for j, c in enumerate(counts)
        ]
        confusion.add_row(name if name == str(index) else f"{index} {name}", *cells)
    return Group(head, per_class, confusion)


def overfit_verdict(result) -> str:
    first, last = result.losses[0][1], result.losses[-1][1]
    if result.memorised:
        return (
            f"[green]PASS[/]: memorised {result.samples} samples (100% accuracy) at step {result.step}; "
            f"loss {first:.3f} -> {last:.4f}"
        )
    return (
        f"[red]FAIL[/]: {result.accuracy:.0%} of {result.samples} samples after {result.steps_run} steps; "
        f"loss {first:.3f} -> {last:.4f}"
    )


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 12) -> str:
    """A tiny log-scale trend line: norms span orders of magnitude."""
    if not values:
        return ""
    count = min(width, len(values))
    picks = [values[round(i * (len(values) - 1) / max(count - 1, 1))] for i in range(count)]
    logs = [math.log10(max(v, 1e-30)) for v in picks]
    low, high = min(logs), max(logs)
    span = (high - low) or 1.0
    return "".join(_BARS[round((x - low) / span * (len(_BARS) - 1))] for x in logs)


def diagnostics_table(rows: list[dict]) -> Table:
    """Per layer: the latest parameter norm and mean, gradient norm and update ratio, and the
    gradient norm's trend over the run."""
    layers: dict[str, list[dict]] = {}
    for row in rows:
        layers.setdefault(row["layer"], []).append(row)
    last_step = max((row["step"] for row in rows), default=0)
    table = Table(title=f"per-layer diagnostics at step {last_step}")
    for column in (
        "layer",
        "param norm",
        "param mean",
        "grad norm",
        "update/param",
        "grad norm trend",
    ):
        table.add_column(
            column, justify="left" if column in ("layer", "grad norm trend") else "right"
        )
    for layer, history in layers.items():
        latest = history[-1]
        if "grad_norm" not in latest:
            continue
        table.add_row(
            layer,
            f"{latest['param_norm']:.3g}",
            f"{latest['param_mean']:+.2e}",
            f"{latest['grad_norm']:.3g}",
            f"{latest['update_ratio']:.2e}",
            sparkline([h["grad_norm"] for h in history]),
        )
    dead = layers.get("model", [])
    if dead:
        table.caption = f"dead ReLU units: {dead[-1]['dead_relu']:.1%} (trend {sparkline([d['dead_relu'] + 1e-6 for d in dead])})"
    return table
