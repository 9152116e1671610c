"""What the page lists and shows about runs and sweeps, read from their folders as plain data
(JSON-ready dicts). Nothing here loads a model; see `probe` for that."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cnnlab.history import config_differences, find_runs, read_config, run_info, show_value
from cnnlab.runs import read_json, read_jsonl, read_metrics
from cnnlab.ui.paths import contained, relative_name

NOT_SETTINGS = ("name",)  # differs between runs without being a setting worth showing


def list_runs(root: Path) -> list[dict]:
    """Every run (newest first) with the settings in which it differs from the other runs."""
    folders = [path for path in find_runs(root=root) if contained(root, path)]
    configs = [read_config(path) for path in folders]
    differences = {
        key: values
        for key, values in config_differences(configs).items()
        if key.split(".")[0] not in NOT_SETTINGS
    }
    return [
        _run_row(root, path, {key: show_value(values[i]) for key, values in differences.items()})
        for i, path in enumerate(folders)
    ]


def _run_row(root: Path, path: Path, settings: dict) -> dict:
    info = run_info(path)
    return {
        "id": relative_name(root, path),
        "name": info.name,
        "started": info.started.isoformat(sep=" ") if info.started else None,
        "status": info.status,
        "dataset": info.dataset,
        "model": info.model,
        "steps": info.steps,
        "wall_seconds": info.wall_seconds,
        "best_val": info.best_val_accuracy,
        "test": info.test_accuracy,
        "settings": settings,
    }


def run_detail(root: Path, path: Path) -> dict:
    """One run: status, config text, curves, per-layer diagnostics, evaluations."""
    summary = read_json(path / "summary.json")
    return {
        "id": relative_name(root, path),
        "info": _run_row(root, path, {}),
        "running": not summary,  # no summary.json yet: training (or stopped hard)
        "config": (path / "config.yaml").read_text(),
        "summary": summary,
        "metrics": read_metrics(path),
        "diagnostics": last_diagnostics(read_jsonl(path / "diagnostics.jsonl")),
        "evaluations": {
            split: read_json(path / f"eval_{split}.json")
            for split in ("test", "val")
            if (path / f"eval_{split}.json").is_file()
        },
        "has_checkpoint": (path / "checkpoints").is_dir(),
    }


def last_diagnostics(rows: list[dict]) -> dict:
    """The per-layer statistics of the last logged step, and the dead-ReLU fraction."""
    if not rows:
        return {"step": None, "layers": [], "dead_relu": None}
    step = max(row["step"] for row in rows)
    latest = [row for row in rows if row["step"] == step]
    layers = [row for row in latest if row.get("layer") != "model"]
    dead = next((row.get("dead_relu") for row in latest if row.get("layer") == "model"), None)
    return {"step": step, "layers": layers, "dead_relu": dead}


# -- sweeps ----------------------------------------------------------------------------------


def list_sweeps(root: Path) -> list[dict]:
    """Sweep folders (newest first) with their name, metric and number of trials."""
    if not root.is_dir():
        return []
    found = (p for p in root.iterdir() if (p / "sweep.json").is_file() and contained(root, p))
    folders = sorted(found, reverse=True)
    return [_sweep_row(root, path) for path in folders]


def _sweep_row(root: Path, path: Path) -> dict:
    record = read_json(path / "sweep.json")
    return {
        "id": relative_name(root, path),
        "name": record.get("name", path.name),
        "metric": record.get("metric"),
        "trials": len(record.get("trials") or []),
        "finished": (path / "sweep_settings.csv").is_file(),
    }


def sweep_detail(root: Path, path: Path) -> dict:
    """The ranked settings (sweep_settings.csv) and the trials (sweep.csv) with their run ids."""
    trials = _csv_rows(path / "sweep.csv")
    for trial in trials:
        folder = path / "trials" / str(trial.get("trial", ""))
        trial["run"] = relative_name(root, folder) if (folder / "config.yaml").is_file() else None
    return {
        **_sweep_row(root, path),
        "settings": _csv_rows(path / "sweep_settings.csv"),
        "trials": trials,
    }


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
