"""Timing helpers shared by the benchmarks: alternating rounds, medians and spread, the machine,
and tables for the terminal and for a markdown results file."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cnnlab.environment import configure

configure()  # the XLA flags a cnnlab run has, for every contender of a benchmark alike


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


def alternate(
    runners: dict[str, Callable[[], Any]], rounds: int, pause_s: float = 0.2
) -> dict[str, list[Any]]:
    """Call each runner once per round and collect what it returns (e.g. images per second).

    The order rotates from round to round, so that on a shared machine a slow spell, or the
    after-effects of the previous contender (caches, spinning worker threads), land on each
    contender alike. A short pause lets the previous contender's threads go idle."""
    names = list(runners)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause_s)
            results[name].append(runners[name]())
    return results


QUIET_LOAD = 1.0  # one-minute load average above which a 2-core machine is not quiet


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `run()` (which blocks until its result is ready) over `repeats`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_average() -> float:
    """The one-minute load average (0 where the system does not tell)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


class LoadWatch:
    """The load average before and after a measurement, and whether it counts: on a loaded
    machine PyTorch's threads suffer more than XLA's, so a ratio taken under load is not a
    result (it once made 0.85x read 1.78x)."""

    def __init__(self, limit: float = QUIET_LOAD):
        """Reads the load as the measurement starts; `stop()` (or leaving a `with`) at its end."""
        self.limit = limit
        self.before = self.after = load_average()
        if self.before > self.limit:
            print(
                f"warning: load average {self.before:.2f} > {self.limit}: other work is running; "
                "this measurement will be marked as not a result",
                flush=True,
            )

    def __enter__(self) -> LoadWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.after = load_average()

    @property
    def quiet(self) -> bool:
        """Nothing else ran when the measurement started. (The load after it counts the
        benchmark's own threads, about one per core, so it is reported, not judged.)"""
        return self.before <= self.limit

    def line(self) -> str:
        verdict = "quiet" if self.quiet else f"LOADED (above {self.limit}): not a result"
        return (
            f"load average {self.before:.2f} before, {self.after:.2f} after (the benchmark's own "
            f"threads included): {verdict}"
        )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """The facts a reader needs to compare two results: cores, CPU, library versions."""
    facts = {"cores": str(os.cpu_count()), "cpu": cpu_model(), "python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            facts[package] = "not installed"
    return facts


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def append_section(
    path: Path,
    title: str,
    load: LoadWatch,
    note: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> None:
    """Append `## title, <when>` to a markdown results file, marked when the machine was
    loaded, with the load averages, `note` and the table."""
    import datetime

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    marked = "" if load.quiet else " (LOADED: not a result)"
    lines = [f"## {title}, {when}{marked}", "", load.line() + ".", "", note, ""]
    lines += [markdown_table(headers, rows), ""]
    with path.open("a") as out:
        out.write("\n" + "\n".join(lines))


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table when rich is there, else aligned plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
        print(title)
        for row in (headers, *rows):
            print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(Console().width, 150)).print(table)
