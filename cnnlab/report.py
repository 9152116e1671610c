"""What the commands print: the training progress bar and result tables (rich)."""

from __future__ import annotations

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
    return table


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
        confusion.add_row(f"{index} {name}", *cells)
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
