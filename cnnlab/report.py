"""What the commands print: the training progress bar and result tables (rich)."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.markup import escape
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


def diagnosis_lines(diagnosis, *, failing: bool = True) -> list[str]:
    """A `Diagnosis` (or its dict in summary.json) as printed lines: cause and what was seen,
    the fix, and the other causes that apply. Nothing for None."""
    if diagnosis is None:
        return []
    if not isinstance(diagnosis, dict):
        diagnosis = diagnosis.to_dict()
    head = "[bold]diagnosis[/]" if failing else "[yellow]note[/]"
    lines = [
        f"{head} {escape('[' + diagnosis['cause'] + ']')}: {escape(diagnosis['message'])}",
        f"[bold]fix:[/] {escape(diagnosis['fix'])}",
    ]
    if diagnosis.get("also"):
        lines.append(f"also: {', '.join(diagnosis['also'])}")
    return lines


def steps_line(summary: dict) -> str:
    """Steps taken; a diverged run says the step it diverged at, once."""
    if summary.get("diverged_at") is not None:
        return f"diverged at step {summary['diverged_at']} of {summary['steps_planned']}"
    return f"{summary['steps']} of {summary['steps_planned']}"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary['name']}: {summary['status']}", show_header=False)
    final_train, final_val, best = (
        summary["final"]["train"],
        summary["final"]["val"],
        summary["best"],
    )
    table.add_row("steps", steps_line(summary))
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
    diagnosis = summary.get("diagnosis")
    if summary.get("chance_accuracy") is not None and final_val:
        table.add_row(
            "chance accuracy", f"{summary['chance_accuracy']:.4f} (majority class or 1/classes)"
        )
    if diagnosis:
        table.add_row("diagnosis", f"{diagnosis['cause']}: {diagnosis['message']}")
        table.add_row("fix", diagnosis["fix"])
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
    # A loss is never below zero; rounding makes -0.0000 of a tiny float error.
    first, last = result.losses[0][1], max(result.losses[-1][1], 0.0) + 0.0
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
    logs = [math.log10(max(v, 1e-30)) if math.isfinite(v) else None for v in picks]
    finite = [x for x in logs if x is not None] or [0.0]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(  # an overflowed value is drawn as "!"
        "!" if x is None else _BARS[round((x - low) / span * (len(_BARS) - 1))] for x in logs
    )


# Healthy per-step update/parameter ratio: about 1e-3; outside these bounds a layer barely
# trains (below) or is rewritten each step (above).
UPDATE_RATIO_RANGE = (1e-5, 1e-1)
DEAD_LIMIT = 0.5  # more dead units than this in a layer is marked


def _layer_key(name: str) -> tuple:
    from cnnlab.diagnosis import layer_order

    return layer_order(name)


def _marked(text: str, bad: bool) -> str:
    return f"[bold red]{text} ![/]" if bad else text


def diagnostics_table(
    rows: list[dict], names: dict[str, str] | None = None, order: list[str] | None = None
) -> Table:
    """Per layer, in forward order: the latest parameter norm, gradient norm, update ratio
    (healthy range in the header, values outside it marked) and dead units, and the gradient
    norm's trend over the run. `names` maps a layer's number to its description
    ('3' -> '3 conv 3x3, 32'); `order` lists layers in forward order where their names do not
    tell it (a Python model's parameter names)."""
    names = names or {}
    position = {layer: index for index, layer in enumerate(order or ())}
    layers: dict[str, list[dict]] = {}
    for row in rows:
        layers.setdefault(str(row["layer"]), []).append(row)
    last_step = max((row["step"] for row in rows), default=0)
    low, high = UPDATE_RATIO_RANGE
    table = Table(title=f"per-layer diagnostics at step {last_step}, in forward order")
    headers = (
        ("layer", "left"),
        ("param norm", "right"),
        ("param mean", "right"),
        ("grad norm", "right"),
        ("update/param", "right"),
        ("dead", "right"),
        ("grad norm trend", "left"),
    )
    for header, justify in headers:
        table.add_column(header, justify=justify)
    for layer in sorted(layers, key=lambda n: (position.get(n, len(position)), _layer_key(n))):
        history = layers[layer]
        latest = history[-1]
        if "grad_norm" not in latest:
            continue
        ratio, grad = latest["update_ratio"], latest["grad_norm"]
        dead = next((h["dead_fraction"] for h in reversed(history) if "dead_fraction" in h), None)
        table.add_row(
            names.get(layer, layer),
            f"{latest['param_norm']:.3g}",
            f"{latest['param_mean']:+.2e}",
            _marked(f"{grad:.3g}", not math.isfinite(grad) or grad == 0),
            _marked(f"{ratio:.2e}", not (low <= ratio <= high)),
            "—" if dead is None else _marked(f"{dead:.0%}", dead > DEAD_LIMIT),
            sparkline([h["grad_norm"] for h in history]),
        )
    healthy = (
        f"healthy: update/param {low:.0e}..{high:.0e} (about 1e-3), dead units below "
        f"{DEAD_LIMIT:.0%}; ! marks values outside"
    )
    dead = layers.get("model", [])
    if dead:
        last = dead[-1]["dead_relu"]
        table.caption = (
            f"dead ReLU units, all layers: {_marked(f'{last:.1%}', last > DEAD_LIMIT)} "
            f"(trend {sparkline([d['dead_relu'] + 1e-6 for d in dead])})\n{healthy}"
        )
    else:
        table.caption = healthy
    return table


def layer_names(summary) -> dict[str, str]:
    """'3' -> '3 conv 3x3, 32': the layer rows of a `ModelSummary` as names for the table."""
    return {row.name: f"{row.name} {row.kind} {row.detail}".strip() for row in summary.rows}
