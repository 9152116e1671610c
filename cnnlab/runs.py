"""Run folders: `runs/<YYYY-MM-DD_HH-MM-SS>_<name>/` with config, metrics, checkpoints, summary.

Run files are read through `cnnlab.files` (a torn last line is skipped, anything else damaged is
one line naming the file); a checkpoint write that fails is one line naming the folder and cause.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cnnlab import files
from cnnlab.errors import UserError
from cnnlab.files import DamagedFile, WriteError, os_reason

METRIC_COLUMNS = ("step", "split", "loss", "accuracy", "lr", "images_per_sec", "wall_time")


def runs_dir() -> Path:
    """Where runs go: $CNNLAB_RUNS_DIR, else ./runs."""
    from cnnlab.environment import runs_dir as configured

    return configured()


def check_runs_dir(root: Path | None = None) -> Path:
    """The runs folder can take a new run: checked before any work, so nothing is wasted."""
    root = root or runs_dir()
    files.check_folder_writable(root, "runs folder")
    return root


def create_run_dir(name: str, root: Path | None = None) -> Path:
    """A new, empty run folder; two runs started in the same second get distinct names."""
    root = root or runs_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the runs folder {root}: {os_reason(error)}") from None
    stem = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}"
    for attempt in range(1000):
        path = root / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            path.mkdir()  # atomic: fails if another run took the name first
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(f"cannot create a run folder in {root}: {os_reason(error)}") from None
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


def _finite_or_none(value) -> float | None:
    """JSON has no infinity or NaN: a value that overflowed is written as null."""
    number = float(value)
    return number if math.isfinite(number) else None


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

    def write_diagnostics(self, rows: list[dict]) -> None:
        """diagnostics.stats_rows: {step, layer, param_norm, param_mean, grad_norm,
        update_ratio} per layer, and {step, layer: "model", dead_relu}."""
        for row in rows:
            row = {k: v if k in ("step", "layer") else _finite_or_none(v) for k, v in row.items()}
            self.diagnostics.write(json.dumps(row) + "\n")
            for key in ("grad_norm", "update_ratio", "dead_relu"):
                if row.get(key) is not None:
                    tag = key if row["layer"] == "model" else f"{key}/{row['layer']}"
                    self.events.add_scalar(tag, row[key], row["step"])
        self.diagnostics.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()
        self.diagnostics.close()
        self.events.close()


def rewrite_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Replace the metric files with `rows` (resume: drop what came after the checkpoint)."""
    last = max((row["step"] for row in rows), default=0)
    files.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    tmp = run_dir / "metrics.csv.tmp"
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, run_dir / "metrics.csv")
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise files.write_error(run_dir / "metrics.csv", error) from None
    diagnostics = run_dir / "diagnostics.jsonl"
    if diagnostics.exists():
        kept = [row for row in read_jsonl(diagnostics) if _step(row) <= last]
        files.write_text(diagnostics, "".join(json.dumps(row) + "\n" for row in kept))


def _step(row: dict) -> float:
    step = row.get("step")
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; none if it does not exist yet (see `files.read_jsonl`)."""
    return files.read_jsonl(path)


# What a metric row must hold for plots, tables and resuming: name -> accepted types.
_NUMBER = (int, float)
_METRIC_TYPES = {"step": (int,), "split": (str,), "loss": _NUMBER, "accuracy": _NUMBER}


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, each checked to hold a step, a split, a loss and an accuracy."""
    path = run_dir / "metrics.jsonl"
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        for key, types in _METRIC_TYPES.items():
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, types):
                raise DamagedFile(path, f"row {number}: {key} is {value!r}")
    return rows


def read_diagnostics(run_dir: Path) -> list[dict]:
    """diagnostics.jsonl's rows, each checked to name its step and layer and hold numbers
    (null where a value overflowed: a diverging step's statistics)."""
    path = run_dir / "diagnostics.jsonl"
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        wrong = [
            key
            for key, value in row.items()
            if (key == "layer" and not isinstance(value, str))
            or (key == "step" and not isinstance(value, int))
            or (
                key not in ("layer", "step")
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, _NUMBER))
            )
        ]
        if wrong or "step" not in row or "layer" not in row:
            raise DamagedFile(path, f"row {number} is not a step's statistics of a layer")
        row.update({key: math.inf for key, value in row.items() if value is None})
    return rows


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    files.write_json(path, data)


def read_json(path: Path) -> dict:
    """A run or sweep JSON file as a mapping ({} when absent; damaged is a one-line error)."""
    return files.read_json(path)


TMP_SUFFIX = ".orbax-checkpoint-tmp"


def checkpoint_steps(run_dir: Path, kind: str) -> list[int]:
    """Steps of the complete checkpoints of `kind`, without opening orbax: a step folder exists
    only once orbax renamed its temporary folder, so half-written ones are never counted."""
    folder = run_dir / "checkpoints" / kind
    try:
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


def remove_orphan_checkpoints(root: Path) -> None:
    """Delete the temporary folders of checkpoints that never completed (a crash, a full disk)."""
    for tmp in root.glob(f"*/*{TMP_SUFFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


class Checkpoints:
    """`checkpoints/latest` and `checkpoints/best`, one step kept in each (orbax, atomic). With
    several processes every one of them calls each method; orbax coordinates the writing."""

    def __init__(self, run_dir: Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.root = (run_dir / "checkpoints").resolve()
        self._cleaned = False
        self._failed = False  # a save failed: its temporary folder is removed on close
        try:
            self._managers = {
                kind: ocp.CheckpointManager(self.root / kind, options=self._options(kind))
                for kind in ("latest", "best")
            }
        except OSError as error:
            raise files.write_error(self.root, error) from None

    def _options(self, kind: str):
        # With several processes the two managers save the same steps: their barriers need
        # names of their own, or one manager's barrier is taken for the other's.
        processes = self._ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)
        return self._ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, multiprocessing_options=processes
        )

    def save(self, kind: str, step: int, state: Any) -> None:
        """Save `state` as the `kind` checkpoint at `step`; a failed write (now, or the previous
        one finishing in the background) is a `WriteError` naming the folder and its cause."""
        if not self._cleaned:  # only a writer cleans: a reader may run beside a training run
            remove_orphan_checkpoints(self.root)
            self._cleaned = True
        manager = self._managers[kind]
        if manager.latest_step() == step:
            return
        try:
            manager.save(step, args=self._ocp.args.StandardSave(state))
        except Exception as error:  # orbax wraps the OSError in its own types
            self._failed = True
            raise self._write_error(kind, error) from None

    def _write_error(self, kind: str, error: BaseException) -> WriteError:
        cause = _os_error_in(error)
        reason = os_reason(cause) if cause else _known_reason(str(error))
        return WriteError(f"cannot write checkpoint {self.root / kind}: {reason}")

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
        """Wait for writes in flight and close; every manager is closed even if one failed."""
        failure = None
        for kind, manager in self._managers.items():
            try:
                manager.wait_until_finished()
                manager.close()
            except Exception as error:  # a background write that failed
                failure = failure or self._write_error(kind, error)
        if failure or self._failed:
            remove_orphan_checkpoints(self.root)  # nothing is in flight any more
        if failure:
            raise failure


def _known_reason(text: str) -> str:
    """The operating system's reason inside a message of tensorstore's (which names no errno):
    'No space left on device' rather than three lines about OCDBT manifests."""
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO, errno.ENOTDIR):
        if os.strerror(code) in text:
            return os.strerror(code)
    if "RESOURCE_EXHAUSTED" in text:
        return os.strerror(errno.ENOSPC)
    return (text.splitlines() or ["unknown error"])[0][:200]


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError behind an error (orbax and asyncio wrap it once or twice)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
