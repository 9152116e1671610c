"""A sweep's results: trials read back, settings ranked, CSV files, the plot and the table."""

from __future__ import annotations

import csv
import math
import os
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.runs import read_json
from cnnlab.sweeps.spec import METRICS, Param, Setting, Sweep, Trial, format_value, yaml_text

# ---------------------------------------------------------------------------------------------
# Results

# Run statuses that end a trial for good (an interrupted one trains again on resume).
FINISHED = {"completed", "completed_not_learning", "early_stopped", "diverged"}
SCORED = ("completed", "completed_not_learning", "early_stopped")  # statuses with a metric


def trial_dir(sweep_dir: Path, trial: Trial) -> Path:
    return sweep_dir / "trials" / trial.id


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    run_dir: Path
    status: str  # completed, interrupted, or missing
    summary: dict = field(repr=False)
    score: float | None


@dataclass(frozen=True)
class SettingResult:
    setting: Setting
    scores: tuple[float, ...]  # one per finished seed
    seeds_total: int

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None below two seeds)."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None


@dataclass(frozen=True)
class SweepResult:
    sweep: Sweep
    folder: Path
    trials: tuple[TrialResult, ...]
    settings: tuple[SettingResult, ...]  # best first; settings without a finished seed last
    trained: tuple[str, ...]  # ids of the trials this call set out to train

    @property
    def complete(self) -> bool:
        return all(r.status in FINISHED for r in self.trials)

    @property
    def table(self) -> list[dict]:
        """The ranked settings as rows: rank, the swept values, the metric's mean and std over
        seeds, and how many seeds finished."""
        return [
            {
                "rank": rank if s.scores else None,
                **s.setting.values,
                "mean": s.mean,
                "std": s.std,
                "seeds": f"{len(s.scores)}/{s.seeds_total}",
            }
            for rank, s in enumerate(self.settings, 1)
        ]

    @property
    def best(self) -> SettingResult | None:
        first = self.settings[0] if self.settings else None
        return first if first is not None and first.scores else None


def metric_value(summary: dict, metric: str) -> float | None:
    node: Any = summary
    for part in METRICS[metric][0]:
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) else None


def collect_results(
    sweep: Sweep, folder: Path, trained: Sequence[tuple[Trial, Path]] = ()
) -> SweepResult:
    """Read every trial's summary in `folder` and rank the settings by the sweep's metric."""
    trials = []
    for trial in sweep.trials:
        run_dir = trial_dir(folder, trial)
        summary = read_json(run_dir / "summary.json")
        status = summary.get("status", "interrupted" if run_dir.exists() else "missing")
        score = metric_value(summary, sweep.metric) if status in SCORED else None
        trials.append(TrialResult(trial, run_dir, status, summary, score))
    settings = [
        SettingResult(
            setting,
            tuple(r.score for r in trials if r.trial.setting == setting and r.score is not None),
            len(sweep.seeds),
        )
        for setting in sweep.settings
    ]
    settings.sort(key=lambda s: _rank_key(s, sweep.higher_is_better))
    return SweepResult(
        sweep, folder, tuple(trials), tuple(settings), tuple(t.id for t, _ in trained)
    )


def _rank_key(result: SettingResult, higher_is_better: bool) -> tuple:
    mean = result.mean
    if mean is None or not math.isfinite(mean):
        return (1, 0.0)
    return (0, -mean if higher_is_better else mean)


def write_results(result: SweepResult) -> None:
    """sweep.csv (trials), sweep_settings.csv (ranked settings) and sweep.png."""
    write_trials_csv(result, result.folder / "sweep.csv")
    write_settings_csv(result, result.folder / "sweep_settings.csv")
    plot_sweep(result, result.folder / "sweep.png")


def write_trials_csv(result: SweepResult, path: Path) -> None:
    keys = [p.key for p in result.sweep.params]
    columns = ["trial", "setting", "seed", *keys, "status", *METRICS, "steps", "wall_seconds"]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for r in result.trials:
            values = [_csv_value(r.trial.setting.values.get(key)) for key in keys]
            metrics = [metric_value(r.summary, m) for m in METRICS]
            writer.writerow(
                [r.trial.id, r.trial.setting.id, r.trial.seed, *values, r.status, *metrics]
                + [r.summary.get("steps"), r.summary.get("wall_seconds")]
            )


def write_settings_csv(result: SweepResult, path: Path) -> None:
    keys = [p.key for p in result.sweep.params]
    metric = result.sweep.metric
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["rank", "setting", *keys, f"{metric}_mean", f"{metric}_std", "seeds", "seeds_total"]
        )
        for rank, s in enumerate(result.settings, 1):
            values = [_csv_value(s.setting.values.get(key)) for key in keys]
            row = [rank if s.scores else "", s.setting.id, *values, s.mean, s.std]
            writer.writerow(row + [len(s.scores), s.seeds_total])


def _csv_value(value: Any) -> Any:
    return yaml_text(value) if isinstance(value, (dict, list)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_sweep(result: SweepResult, path: Path) -> Path | None:
    """The metric against each swept parameter (mean and std over seeds, each seed faint);
    nothing is drawn when nothing was swept or nothing finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = result.sweep.params
    scored = [s for s in result.settings if s.scores]
    if not params or not scored:
        return None
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, param in zip(axes.flat, params, strict=False):
        _plot_param(ax, param, scored, result.sweep.metric)
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    figure.suptitle(f"sweep {result.sweep.name}: {result.sweep.metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_param(ax, param: Param, scored: list[SettingResult], metric: str) -> None:
    values = [s.setting.values[param.key] for s in scored]
    numeric = all(_is_number(v) for v in values)
    if numeric:
        xs = [float(v) for v in values]
    else:
        names = sorted({format_value(v) for v in values})
        xs = [names.index(format_value(v)) for v in values]
        ax.set_xticks(range(len(names)), names)
    for x, s in zip(xs, scored, strict=True):
        ax.scatter([x] * len(s.scores), s.scores, color="tab:blue", alpha=0.25, s=12)
    ax.errorbar(
        xs,
        [s.mean for s in scored],
        yerr=[s.std or 0.0 for s in scored],
        fmt="o",
        color="tab:blue",
        capsize=3,
    )
    if numeric and param.log and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(param.key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def best_command(result: SweepResult) -> str | None:
    """`cnnlab train BASE --set ...` for the best setting (with the sweep's `set:` overrides)."""
    best = result.best
    if best is None:
        return None
    base = result.sweep.base
    relative = os.path.relpath(base)
    shown = relative if not relative.startswith("..") else str(base)
    assignments = {**result.sweep.fixed, **best.setting.values}
    sets = " ".join(f"--set {shlex.quote(f'{k}={yaml_text(v)}')}" for k, v in assignments.items())
    return f"cnnlab train {shlex.quote(shown)} {sets}".strip()


def validation_size(result: SweepResult) -> int | None:
    """Validation examples of the trials (they share one data split)."""
    for r in result.trials:
        size = (r.summary.get("dataset") or {}).get("val")
        if size:
            return int(size)
    return None


def separation(result: SweepResult) -> str | None:
    """Whether the best setting beats the next beyond seed noise: their means must differ by
    more than twice the standard error of the difference (over seeds)."""
    scored = [s for s in result.settings if s.scores]
    if len(scored) < 2:
        return None
    best, second = scored[0], scored[1]
    gap = abs(best.mean - second.mean)
    name = ", ".join(f"{k}={format_value(v)}" for k, v in best.setting.values.items())
    other = ", ".join(f"{k}={format_value(v)}" for k, v in second.setting.values.items())
    if best.std is None or second.std is None:
        return f"best {name} vs next {other}: one seed each, seed noise unknown; add seeds"
    error = math.sqrt(best.std**2 / len(best.scores) + second.std**2 / len(second.scores))
    if gap <= 2 * error:
        return (
            f"tied within noise; add seeds: {name} and {other} differ by {gap:.4f}, "
            f"within twice the seed noise of the difference ({2 * error:.4f})"
        )
    return f"{name} is ahead of {other} by {gap:.4f}, beyond seed noise ({2 * error:.4f})"


def sweep_verdict(result: SweepResult) -> list[str]:
    """What the table can and cannot tell: the separation of the best setting and, for an
    accuracy, the size of one validation example."""
    lines = [line for line in (separation(result),) if line]
    size = validation_size(result)
    if size and "accuracy" in result.sweep.metric:
        lines.append(
            f"one of the {size} validation examples is worth {100 / size:.2f} accuracy points"
        )
    return lines


def sweep_table(result: SweepResult):
    """A rich table: one row per setting, best first, the metric's mean ± std over seeds, with
    what the ranking can tell in its caption."""
    from rich.table import Table

    sweep = result.sweep
    better = "higher" if sweep.higher_is_better else "lower"
    table = Table(
        title=f"sweep {sweep.name}: {sweep.metric} ({better} is better)",
        caption="\n".join(sweep_verdict(result)) or None,
    )
    table.add_column("#", justify="right")
    for param in sweep.params:
        table.add_column(param.key, justify="right")
    table.add_column(sweep.metric, justify="right")
    table.add_column("seeds", justify="right")
    for rank, s in enumerate(result.settings, 1):
        values = [format_value(s.setting.values[p.key]) for p in sweep.params]
        if s.mean is None:
            score = "-"
        elif s.std is None:
            score = f"{s.mean:.4f}"
        else:
            score = f"{s.mean:.4f} ± {s.std:.4f}"
        seeds = f"{len(s.scores)}/{s.seeds_total}"
        table.add_row(str(rank) if s.scores else "", *values, score, seeds)
    return table


def show_sweep(folder: Path):
    """A finished (or stopped) sweep's table again, read from its folder: ranked from the trial
    summaries when its sweep file still gives the same trials, else from sweep_settings.csv."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from cnnlab.sweeps.spec import load_sweep

    record = read_json(folder / "sweep.json")
    header = Text(f"sweep folder: {folder}", style="bold")
    try:
        sweep = load_sweep(record["file"])
        if sweep.fingerprint() == record.get("fingerprint"):
            result = collect_results(sweep, folder)
            command = best_command(result)
            return Group(header, sweep_table(result), Text(f"best: {command}" if command else ""))
    except Exception:  # the sweep file moved or changed: the CSV written at the end still holds
        pass
    table = Table(title=f"sweep {record.get('name', folder.name)} (from sweep_settings.csv)")
    with open(folder / "sweep_settings.csv", newline="") as file:
        rows = list(csv.reader(file))
    for column in rows[0] if rows else []:
        table.add_column(column, justify="right")
    for row in rows[1:]:
        table.add_row(*row)
    return Group(header, table)
