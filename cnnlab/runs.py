"""Run folders: `runs/<YYYY-MM-DD_HH-MM-SS>_<name>/` with config, metrics, checkpoints, summary."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from cnnlab.errors import UserError

METRIC_COLUMNS = ("step", "split", "loss", "accuracy", "lr", "images_per_sec", "wall_time")


def runs_dir() -> Path:
    """Where runs go: $CNNLAB_RUNS_DIR, else ./runs."""
    from cnnlab.environment import runs_dir as configured

    return configured()


def create_run_dir(name: str, root: Path | None = None) -> Path:
    """A new, empty run folder; two runs started in the same second get distinct names."""
    root = root or runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}"
    for attempt in range(1000):
        path = root / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            path.mkdir()  # atomic: fails if another run took the name first
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot create a run folder under {root}: too many runs named {stem}")


def find_run(reference: str, root: Path | None = None) -> Path:
    """A run folder from a path, `latest`, or a (part of a) run name: the newest match wins."""
    path = Path(reference)
    if (path / "config.yaml").is_file():
        return path
    root = root or runs_dir()
    runs = sorted(
        (p for p in root.glob("*") if (p / "config.yaml").is_file()), key=lambda p: p.name
    )
    matches = runs if reference == "latest" else [p for p in runs if reference in p.name]
    if not matches:
        raise UserError(
            f"no run matches '{reference}' in {root}/ (give a run folder, a name, or 'latest')"
        )
    return matches[-1]


class MetricsWriter:
    """Appends rows to metrics.jsonl, metrics.csv and TensorBoard event files, and per-layer
    statistics to diagnostics.jsonl; flushed per row so a crash loses nothing written."""

    def __init__(self, run_dir: Path, purge_after: int = 0):
        from tensorboardX import SummaryWriter

        self.jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.diagnostics = open(run_dir / "diagnostics.jsonl", "a")  # noqa: SIM115
        csv_path = run_dir / "metrics.csv"
        fresh = not csv_path.exists() or csv_path.stat().st_size == 0
        self.csv_file = open(csv_path, "a", newline="")  # noqa: SIM115
        self.csv = csv.DictWriter(self.csv_file, fieldnames=METRIC_COLUMNS)
        if fresh:
            self.csv.writeheader()
        # On resume, TensorBoard drops its events after the checkpoint's step.
        self.events = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=purge_after + 1 if purge_after else None
        )

    def write(self, **row: Any) -> None:
        row = {key: row.get(key) for key in METRIC_COLUMNS}
        self.jsonl.write(json.dumps(row) + "\n")
        self.csv.writerow(row)
        self.jsonl.flush()
        self.csv_file.flush()
        for key in ("loss", "accuracy", "lr", "images_per_sec"):
            if row.get(key) is not None:
                tag = f"{key}/{row['split']}" if key in ("loss", "accuracy") else key
                self.events.add_scalar(tag, row[key], row["step"])
        self.events.flush()

    def write_diagnostics(self, step: int, stats: dict) -> None:
        """One row per layer: {step, layer, param_norm, param_mean, grad_norm, update_ratio}."""
        model = stats.get("_model", {})
        for layer, values in stats.items():
            if layer == "_model":
                continue
            row = {"step": step, "layer": layer}
            row.update({key: float(value) for key, value in values.items() if key != "finite"})
            self.diagnostics.write(json.dumps(row) + "\n")
            self.events.add_scalar(f"grad_norm/{layer}", row["grad_norm"], step)
            self.events.add_scalar(f"update_ratio/{layer}", row["update_ratio"], step)
        if "dead_relu" in model:
            dead = float(model["dead_relu"])
            self.diagnostics.write(
                json.dumps({"step": step, "layer": "model", "dead_relu": dead}) + "\n"
            )
            self.events.add_scalar("dead_relu", dead, step)
        self.diagnostics.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()
        self.diagnostics.close()
        self.events.close()


def rewrite_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Replace the metric files with `rows` (resume: drop what came after the checkpoint)."""
    last = max((row["step"] for row in rows), default=0)
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, run_dir / "metrics.jsonl")
    with open(run_dir / "metrics.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(run_dir / "metrics.csv.tmp", run_dir / "metrics.csv")
    diagnostics = run_dir / "diagnostics.jsonl"
    if diagnostics.exists():
        kept = [
            line
            for line in diagnostics.read_text().splitlines()
            if json.loads(line)["step"] <= last
        ]
        (run_dir / "diagnostics.jsonl.tmp").write_text("".join(line + "\n" for line in kept))
        os.replace(run_dir / "diagnostics.jsonl.tmp", diagnostics)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; none if it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


class Checkpoints:
    """`checkpoints/latest` and `checkpoints/best`, one step kept in each (orbax, atomic). With
    several processes every one of them calls each method; orbax coordinates the writing."""

    def __init__(self, run_dir: Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.root = (run_dir / "checkpoints").resolve()
        self._managers = {
            kind: ocp.CheckpointManager(self.root / kind, options=self._options(kind))
            for kind in ("latest", "best")
        }

    def _options(self, kind: str):
        # With several processes the two managers save the same steps: their barriers need
        # names of their own, or one manager's barrier is taken for the other's.
        processes = self._ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)
        return self._ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, multiprocessing_options=processes
        )

    def save(self, kind: str, step: int, state: Any) -> None:
        manager = self._managers[kind]
        if manager.latest_step() == step:
            return
        manager.save(step, args=self._ocp.args.StandardSave(state))

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than `step` (a resumed run will write its own)."""
        for manager in self._managers.values():
            for newer in [s for s in manager.all_steps() if s > step]:
                manager.delete(newer)

    def step(self, kind: str) -> int | None:
        return self._managers[kind].latest_step()

    def restore(self, kind: str, like: Any) -> Any:
        """Restore into the structure of `like` (a state of the same experiment)."""
        import jax

        manager = self._managers[kind]
        step = manager.latest_step()
        if step is None:
            raise UserError(f"no '{kind}' checkpoint in {self.root}")
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        try:
            return manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        except Exception as error:  # orbax raises many types for damaged or foreign files
            raise UserError(
                f"checkpoint {self.root / kind / str(step)} cannot be read ({type(error).__name__}): "
                "it is damaged or from another experiment"
            ) from None

    def close(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()
            manager.close()
