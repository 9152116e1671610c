"""Past runs: list them, show one, compare several (config differences and results).

A run folder may be damaged (a crash, a full disk, a hand edit): such a run is listed with
what is wrong in its status, and never stops the others from being listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cnnlab.errors import UserError
from cnnlab.files import DamagedFile
from cnnlab.runs import checkpoint_steps, read_json, read_metrics, runs_dir

STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
STAMP_LENGTH = len("2026-01-01_00-00-00")
MISSING = "—"


@dataclass(frozen=True)
class RunInfo:
    """One line of the runs table: what a run folder says about itself."""

    path: Path
    name: str
    started: datetime | None
    status: str
    dataset: str
    model: str
    steps: int | None
    wall_seconds: float | None
    best_val_accuracy: float | None
    test_accuracy: float | None
    diagnosis: str | None = None  # the cause id in summary.json
    config: dict | None = None


def read_config(run_dir: Path) -> dict:
    """The run's resolved config.yaml as plain data ({} when unreadable)."""
    from cnnlab.config import read_yaml, to_plain

    try:
        config = to_plain(read_yaml(run_dir / "config.yaml"))
    except UserError:
        return {}
    return config if isinstance(config, dict) else {}


def _number(value: Any) -> float | None:
    """A number from a run file, or None when it holds something else."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value if ok else None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def started_at(run_dir: Path) -> datetime | None:
    """The start time written in the folder name (`2026-11-22_14-03-11_name`)."""
    try:
        return datetime.strptime(run_dir.name[:STAMP_LENGTH], STAMP_FORMAT)
    except ValueError:
        return None


def model_label(model: Any) -> str:
    """`cnn/tiny`, `7 layers`, `net.py:Net`: the model of a config in a few characters."""
    if not isinstance(model, dict):
        return str(model) if model else MISSING
    if "family" in model:
        text = f"{model['family']}/{model.get('preset', 'default')}"
        changed = [key for key in model if key not in ("family", "preset")]
        return text + (f" ({', '.join(changed)} changed)" if changed else "")
    if "layers" in model:
        return f"{len(model['layers'] or [])} layers"
    if "python" in model:
        file, _, name = str(model["python"]).partition(":")
        return Path(file).name + (f":{name}" if name else "")
    return MISSING


def best_val_accuracy(summary: dict, metrics: list[dict]) -> float | None:
    best = _mapping(summary.get("best"))
    if _number(best.get("val_accuracy")) is not None:
        return best["val_accuracy"]
    values = [row["accuracy"] for row in metrics if row.get("split") == "val"]
    return max(values) if values else None


def unfinished_status(run_dir: Path, metrics: list[dict]) -> str:
    """A run without a summary: still running or stopped, and whether it can be resumed from a
    complete checkpoint (half-written ones do not count)."""
    if not metrics:
        return "no metrics"
    steps = checkpoint_steps(run_dir, "latest")
    kept = f"checkpoint at step {steps[-1]}" if steps else "no complete checkpoint"
    return f"running or stopped; {kept}"


def run_info(run_dir: Path) -> RunInfo:
    """What a run folder holds, read from config.yaml, summary.json, metrics and eval_test.json;
    a run still in progress (no summary yet) is described from its metrics, and a damaged one
    says what is damaged in its status."""
    try:
        return _run_info(run_dir)
    except DamagedFile as error:
        return _damaged_info(run_dir, error)


def _damaged_info(run_dir: Path, error: DamagedFile) -> RunInfo:
    config = read_config(run_dir)
    return RunInfo(
        path=run_dir,
        name=str(config.get("name") or run_dir.name),
        started=started_at(run_dir),
        status=f"damaged: {error.path.name} {error.reason}",
        dataset=str(_mapping(config.get("data")).get("source") or MISSING),
        model=model_label(config.get("model")),
        steps=None,
        wall_seconds=None,
        best_val_accuracy=None,
        test_accuracy=None,
    )


def _run_info(run_dir: Path) -> RunInfo:
    config = read_config(run_dir)
    summary = read_json(run_dir / "summary.json")
    metrics = [] if summary.get("best") else read_metrics(run_dir)
    last = metrics[-1] if metrics else {}
    test = read_json(run_dir / "eval_test.json")
    data = _mapping(config.get("data"))
    status = summary.get("status")
    return RunInfo(
        path=run_dir,
        name=str(config.get("name") or summary.get("name") or run_dir.name),
        started=started_at(run_dir),
        status=str(status) if status else unfinished_status(run_dir, metrics),
        dataset=str(_mapping(summary.get("dataset")).get("name") or data.get("source") or MISSING),
        model=model_label(config.get("model")),
        steps=_number(summary.get("steps", last.get("step"))),
        wall_seconds=_number(summary.get("wall_seconds", last.get("wall_time"))),
        best_val_accuracy=best_val_accuracy(summary, metrics),
        test_accuracy=_number(test.get("top1")),
        diagnosis=(summary.get("diagnosis") or {}).get("cause"),
        config=config,
    )


def find_runs(pattern: str | None = None, root: Path | None = None) -> list[Path]:
    """Run folders under the runs folder, newest first; `pattern` keeps names containing it."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    if pattern:
        folders = [p for p in folders if pattern.lower() in p.name.lower()]

    def age(path: Path) -> tuple:
        started = started_at(path)
        return (started or datetime.min, (path / "config.yaml").stat().st_mtime_ns, path.name)

    return sorted(folders, key=age, reverse=True)


def list_runs(pattern: str | None = None, root: Path | None = None) -> list[RunInfo]:
    """`RunInfo` of every run (newest first) whose folder name contains `pattern`."""
    return [run_info(path) for path in find_runs(pattern, root)]


def percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2%}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


SETTING_COLUMNS = 5  # at most this many differing settings get a column


def setting_label(key: str) -> str:
    """'optimizer.lr' -> 'opt.lr': short headers that still say where a key lives."""
    return key.replace("optimizer.", "opt.", 1)


def differing_settings(infos: Sequence[RunInfo]) -> dict[str, list[Any]]:
    """The config keys whose values differ across the runs (the name and data paths aside)."""
    if len(infos) < 2:
        return {}
    differences = config_differences([info.config or {} for info in infos])
    skip = ("name", "data.path", "data.data_dir", "model")  # the model column says the model
    return {k: v for k, v in differences.items() if not k.startswith(skip)}


def status_text(status: str, diagnosis: str | None) -> str:
    colour = {"completed": "green", "early_stopped": "green", "interrupted": "yellow"}.get(
        status, "red"
    )
    cause = f" ({diagnosis})" if diagnosis else ""
    return f"[{colour}]{status}[/]{cause}"


def runs_table(infos: Sequence[RunInfo], title: str = "runs") -> Table:
    """The runs as a rich table, one row each, in the order given: status and diagnosis, and a
    column for each setting that differs across them."""
    settings = differing_settings(infos)
    shown = list(settings)[:SETTING_COLUMNS]
    hidden = len(settings) - len(shown)
    caption = "newest first; val: best validation accuracy; test: top-1 of `cnnlab eval`"
    if hidden:
        caption += f"; {hidden} more differing settings: `cnnlab compare`"
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    table.add_column("data")
    table.add_column("model", overflow="fold")
    for key in shown:
        table.add_column(setting_label(key), justify="right", overflow="fold")
    for header in ("steps", "time", "val", "test"):
        table.add_column(header, justify="right", no_wrap=True)
    for index, info in enumerate(infos):
        table.add_row(
            info.path.name,
            status_text(info.status, info.diagnosis),
            info.dataset,
            info.model,
            *(show_value(settings[key][index]) for key in shown),
            MISSING if info.steps is None else str(info.steps),
            duration(info.wall_seconds),
            percent(info.best_val_accuracy),
            percent(info.test_accuracy),
        )
    return table


# ---------------------------------------------------------------------------------------------
# Sweeps


def find_sweeps(pattern: str | None = None, root: Path | None = None) -> list[Path]:
    """Sweep folders (those with sweep.json), newest first."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "sweep.json").is_file()]
    if pattern:
        folders = [p for p in folders if pattern.lower() in p.name.lower()]
    return sorted(folders, key=lambda p: p.name, reverse=True)


def sweeps_table(folders: Sequence[Path]) -> Table:
    """One row per sweep folder: trials finished, and the best setting as recorded."""
    table = Table(
        title="sweeps",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption="see one with `cnnlab show SWEEP`",
    )
    for header in ("sweep", "trials", "finished", "metric", "best"):
        table.add_column(header, justify="right" if header in ("trials", "finished") else "left")
    for folder in folders:
        record = read_json(folder / "sweep.json")
        trials = record.get("trials", [])
        done = sum(
            read_json(folder / "trials" / t["id"] / "summary.json").get("status", "")
            not in ("", "interrupted")
            for t in trials
        )
        table.add_row(
            folder.name,
            str(len(trials)),
            str(done),
            record.get("metric", MISSING),
            best_setting(folder),
        )
    return table


def best_setting(folder: Path) -> str:
    """The first ranked row of sweep_settings.csv, as 'key=value ...: mean'."""
    import csv

    try:
        with open(folder / "sweep_settings.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError:
        return MISSING
    if not rows or not rows[0].get("rank"):
        return MISSING
    first = rows[0]
    skip = {"rank", "setting", "seeds", "seeds_total"}
    values = [
        f"{k}={v}" for k, v in first.items() if k not in skip and not k.endswith(("_mean", "_std"))
    ]
    mean = next((v for k, v in first.items() if k.endswith("_mean")), "")
    return f"{' '.join(values)}: {float(mean):.4f}" if mean else " ".join(values)


# ---------------------------------------------------------------------------------------------
# One run


def evaluations(run_dir: Path) -> list[dict]:
    """The saved evaluations of a run (eval_test.json, eval_val.json), test first; a damaged one
    is left out (`show` says so)."""
    found = []
    for split in ("test", "val"):
        try:
            found.append(read_json(run_dir / f"eval_{split}.json"))
        except DamagedFile:
            continue
    return [evaluation for evaluation in found if evaluation]


def saved_evaluations_table(found: Sequence[dict]) -> Table:
    table = Table(title="evaluations")
    for column in ("split", "checkpoint", "step", "examples", "top-1", "top-5", "loss"):
        table.add_column(column, justify="left" if column in ("split", "checkpoint") else "right")
    for evaluation in found:
        table.add_row(
            evaluation.get("split", MISSING),
            evaluation.get("checkpoint", MISSING),
            str(evaluation.get("step", MISSING)),
            str(evaluation.get("examples", MISSING)),
            percent(evaluation.get("top1")),
            percent(evaluation.get("top5")),
            f"{evaluation['loss']:.4f}" if "loss" in evaluation else MISSING,
        )
    return table


def show_run(run_dir: Path) -> Group:
    """The resolved config (highlighted YAML) and the results: summary, evaluations, plots."""
    from cnnlab.report import summary_table

    parts: list[Any] = [Text(f"run folder: {run_dir}", style="bold")]
    try:
        config_text = (run_dir / "config.yaml").read_text()
    except OSError as error:
        raise UserError(f"cannot read {run_dir / 'config.yaml'}: {error.strerror}") from None
    parts.append(
        Syntax(config_text.rstrip(), "yaml", theme="ansi_dark", background_color="default")
    )
    info = run_info(run_dir)
    summary = {} if info.status.startswith("damaged") else read_json(run_dir / "summary.json")
    table = _guarded_table(summary_table, summary, "summary.json") if summary else None
    if table is not None:
        parts.append(table)
    elif info.status.startswith("damaged"):
        parts.append(Text(info.status, style="red"))
    if summary:
        if summary.get("failure"):
            parts.append(Text(f"diverged: {summary['failure']}", style="red"))
        for warning in summary.get("warnings", []):
            parts.append(Text(f"warning: {warning}", style="yellow"))
    else:
        parts.append(
            Text(
                f"no summary.json yet ({info.status}): step {info.steps}, "
                f"best val accuracy {percent(info.best_val_accuracy)}"
            )
        )
    found = evaluations(run_dir)
    if found:
        parts.append(_guarded_table(saved_evaluations_table, found, "eval_*.json"))
    else:
        parts.append(Text(f"not evaluated yet: cnnlab eval {run_dir}", style="dim"))
    pictures = sorted(run_dir.glob("*.png"))
    if pictures:
        parts.append(Text("plots: " + ", ".join(str(p) for p in pictures)))
    return Group(*parts)


def _guarded_table(make, data, name: str):
    """A table of a run file's contents, or one line saying the file holds something else
    (a hand edit, another version): showing the rest of the run matters more."""
    try:
        return make(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return Text(f"{name} is damaged ({type(error).__name__}: {error}); not shown", style="red")


# ---------------------------------------------------------------------------------------------
# Several runs


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists to dotted keys: {'a': {'b': [1]}} -> {'a.b[0]': 1}."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


_ABSENT = object()


def config_differences(configs: Sequence[dict]) -> dict[str, list[Any]]:
    """The dotted keys whose values are not the same in every config, with each config's value
    (`_ABSENT` where a config lacks the key), in first-seen key order."""
    flat = [flatten(config) for config in configs]
    keys = list(dict.fromkeys(key for one in flat for key in one))
    differences = {}
    for key in keys:
        values = [one.get(key, _ABSENT) for one in flat]
        if any(value != values[0] for value in values[1:]):
            differences[key] = values
    return differences


def show_value(value: Any) -> str:
    if value is _ABSENT:
        return MISSING
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def resolve_runs(references: Sequence[str], root: Path | None = None) -> list[Path]:
    """Distinct run folders for references (folders, parts of names, `latest`), in the order
    given; fewer than two distinct runs is an error."""
    from cnnlab.runs import find_run

    folders = list(dict.fromkeys(find_run(reference, root).resolve() for reference in references))
    if len(folders) < 2:
        raise UserError(
            f"compare needs at least two different runs; {', '.join(references)} "
            f"matched only {folders[0].name if folders else 'nothing'}"
        )
    return folders


def compare_table(run_dirs: Sequence[Path]) -> Table:
    """The config keys that differ between the runs, side by side, then their results."""
    infos = [run_info(path) for path in run_dirs]
    differences = config_differences([read_config(path) for path in run_dirs])
    table = Table(title="compare", show_lines=False)
    table.add_column("")
    for index, path in enumerate(run_dirs):
        table.add_column(f"[{index + 1}] {path.name}", justify="right", overflow="fold")
    if differences:
        for key, values in differences.items():
            table.add_row(key, *(show_value(value) for value in values))
    else:
        table.add_row("[dim]config[/]", *(["[dim]identical[/]"] * len(run_dirs)))
    table.add_section()
    rows = (
        ("best val acc", [percent(i.best_val_accuracy) for i in infos]),
        ("test acc", [percent(i.test_accuracy) for i in infos]),
        ("steps", [MISSING if i.steps is None else str(i.steps) for i in infos]),
        ("wall time", [duration(i.wall_seconds) for i in infos]),
        ("status", [i.status for i in infos]),
    )
    for label, cells in rows:
        table.add_row(f"[bold]{label}[/]", *cells)
    return table


def print_table(console: Console, table: Table) -> None:
    """Print at the console's width in a terminal, and unclipped when piped or captured, so
    `cnnlab runs | grep` sees whole rows."""
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    options = console.options.update(width=max(width, 1000))
    console.width = max(width, Measurement.get(console, options, table).maximum)
    try:
        console.print(table)
    finally:
        console.width = width
