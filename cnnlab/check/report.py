"""What `cnnlab check` prints: a table per check, the first failure's shapes, hints, speed, a
verdict; the same report as JSON; and the catalogue for `--list`."""

from __future__ import annotations

import math
from dataclasses import asdict

from rich.markup import escape
from rich.table import Table as RichTable

from cnnlab.check.catalogue import entries_by_kind
from cnnlab.check.runner import Report, Table
from cnnlab.check.timing import Speed

FORMS = {"jax": "JAX form", "numpy": "NumPy form"}


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:.2e}"


def _table(table: Table) -> RichTable:
    out = RichTable(title=table.title, title_justify="left")
    for name, justify in (("case", "left"), ("result", "left"), ("max abs err", "right"),
                          ("max rel err", "right"), ("note", "left")):  # fmt: skip
        out.add_column(name, justify=justify)
    for row in table.rows:
        result = "[green]pass[/]" if row.passed else "[red]FAIL[/]"
        out.add_row(
            escape(row.case), result, _number(row.max_abs), _number(row.max_rel), escape(row.note)
        )
    return out


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def speed_line(speed: Speed, kind: str) -> str:
    what = "one update" if kind == "optimizer" else "forward + backward"
    ref = _duration(speed.reference_s)
    if speed.ratio is None:
        return f"speed ({speed.case}, {what}): reference {ref}; yours {speed.note}"
    ratio = speed.ratio
    verdict = f"{ratio:,.1f}x slower" if ratio >= 1 else f"{1 / ratio:,.1f}x faster"
    note = f" ({speed.note})" if speed.note else ""
    return (
        f"speed ({speed.case}, {what}): yours {_duration(speed.mine_s)}, reference {ref}: "
        f"{verdict} than the reference{note}"
    )


def render(report: Report) -> list:
    """Rich renderables and markup lines, in order."""
    out: list = [
        f"check [bold]{escape(report.target)}[/] ({'optax factory' if report.kind == 'optimizer' else FORMS[report.form]}) "
        f"against [bold]{escape(report.signature)}[/]"
    ]
    out += [_table(table) for table in report.tables]
    first = next((row for table in report.tables for row in table.rows if not row.passed), None)
    if first is not None:
        out.append(f"first failing case: {escape(first.case)}; inputs {escape(first.shapes)}")
    for hint in report.hints:
        out.append(f"[yellow]hint:[/] {escape(hint.message)} (seen on: {escape(hint.case)})")
    if report.speed is not None:
        out.append(escape(speed_line(report.speed, report.kind)))
    out.append(verdict(report))
    return out


def verdict(report: Report) -> str:
    rows = [row for table in report.tables for row in table.rows]
    failed = sum(not row.passed for row in rows)
    if not failed:
        return f"[green]PASS[/]: {report.against}, all {len(rows)} checks agree with the reference"
    return f"[red]FAIL[/]: {failed} of {len(rows)} checks differ from the reference"


def to_json(report: Report) -> dict:
    speed = None
    if report.speed is not None:
        speed = {**asdict(report.speed), "ratio": report.speed.ratio}
    return {
        "target": report.target,
        "against": report.against,
        "form": report.form,
        "signature": report.signature,
        "kind": report.kind,
        "passed": report.passed,
        "checks": [
            {"title": t.title, "passed": t.passed, "rows": [_json_row(r) for r in t.rows]}
            for t in report.tables
        ],
        "hints": [asdict(hint) for hint in report.hints],
        "speed": speed,
    }


def _json_row(row) -> dict:
    data = asdict(row)
    for key in ("max_abs", "max_rel"):  # JSON has no inf
        if data[key] is not None and math.isinf(data[key]):
            data[key] = None
    return data


def catalogue_table() -> RichTable:
    table = RichTable(title="cnnlab check: the catalogue (see --template NAME for a contract)")
    table.add_column("kind")
    table.add_column("contract")
    table.add_column("what")
    for kind, entries in entries_by_kind().items():
        for entry in entries:
            table.add_row(kind[:-1], escape(entry.signature), escape(entry.summary))
    return table
