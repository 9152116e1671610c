"""What a run folder records while the loop trains: metric rows, per-layer statistics,
checkpoints, the watchers' warnings, validation and early stopping, and the summary.

With several processes every one keeps the same record (they compute the same values), and
process 0 alone writes its files; checkpoints are saved by all of them together (orbax)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import jax

from cnnlab.diagnosis import Divergence
from cnnlab.diagnostics import GradientWatch, OverfitWatch, first_nonfinite
from cnnlab.errors import UserError
from cnnlab.evidence import judge_run
from cnnlab.files import note
from cnnlab.mesh import describe
from cnnlab.processes import writes
from cnnlab.runs import Checkpoints, MetricsWriter, read_metrics, rewrite_metrics, write_json
from cnnlab.step import Program, logits, scores


class RunRecord:
    """One trial's run folder, fed by the loop (see cnnlab.loop.Record)."""

    def __init__(
        self, built, program: Program, run_dir: Path, progress=None, stacked=False, layout=None
    ):
        """`built`: the experiment set up against its data (cnnlab.training.Setup); `program`:
        the one it trains on (shared by stacked trials); `layout`: where it trains
        (cnnlab.mesh.describe), given by stacked trials."""
        self.built, self.program, self.run_dir = built, program, run_dir
        self.experiment, self.val = built.experiment, built.val
        self.progress, self.stacked = progress, stacked
        self.cfg = self.experiment.train
        self.layout = layout or describe(program.mesh, program.batch_size)
        self.checkpoints = Checkpoints(run_dir)
        self.metrics: MetricsWriter | None = None
        self.best: dict | None = None
        self.last_train: dict = {}
        self.last_val: dict = {}
        self.warnings: list[str] = []
        self.failure: str | None = None
        self.divergence: Divergence | None = None
        self.gradients = GradientWatch()
        self.overfitting = OverfitWatch()
        self.plateau = 0  # evaluations since validation accuracy last improved by min_delta
        self.first_step = 0
        self.wall_offset = 0.0

    # -- resume -----------------------------------------------------------------------------

    def resume(self, like):
        """The latest checkpoint, with metrics after it dropped and the watchers replayed.
        Without one, the best checkpoint (with a note); without any, a run that recorded nothing
        starts again from `like`, and one that did is refused rather than wiped."""
        state = self._resume_point(like)
        step = int(state.step)
        if step >= self.cfg.steps:
            raise UserError(f"run {self.run_dir.name} already finished its {self.cfg.steps} steps")
        self.checkpoints.discard_after(step)
        rows = [row for row in read_metrics(self.run_dir) if row["step"] <= step]
        self.wall_offset = max((row["wall_time"] for row in rows), default=0.0)
        if writes():
            rewrite_metrics(self.run_dir, rows)
        for row in rows:
            if row["split"] == "train":
                self.last_train = {k: row[k] for k in ("loss", "accuracy", "lr", "images_per_sec")}
            else:
                self.note_validation(
                    row["step"], {"loss": row["loss"], "accuracy": row["accuracy"]}
                )
        self.first_step = step
        return state

    def _resume_point(self, like):
        if self.checkpoints.step("latest") is not None:
            return self.checkpoints.restore("latest", like)
        best = self.checkpoints.step("best")
        if best is not None:
            note(
                f"run {self.run_dir.name} has no latest checkpoint; resuming from its best (step {best})"
            )
            return self.checkpoints.restore("best", like)
        rows = read_metrics(self.run_dir)
        if rows:
            raise UserError(
                f"run {self.run_dir.name} recorded metrics up to step {rows[-1]['step']} but kept no "
                "checkpoint to resume from; train it again as a new run: "
                f"cnnlab train {self.run_dir / 'config.yaml'}"
            )
        return like

    def start(self) -> None:
        writer = MetricsWriter if writes() else Unwritten
        self.metrics = writer(self.run_dir, purge_after=self.first_step)

    # -- the loop's events -------------------------------------------------------------------

    def log(self, step, series, layers, images_per_sec, wall) -> str | None:
        if not series["finite"].all():
            return self.fail(int(series["step"][~series["finite"]][0]), layers)
        self.last_train = {
            "loss": float(series["loss"].mean()),
            "accuracy": float(series["accuracy"].mean()),
            "lr": float(series["lr"][-1]),
            "images_per_sec": images_per_sec,
        }
        self.metrics.write(step=step, split="train", wall_time=round(wall, 3), **self.last_train)
        self.warn(self.gradients.check(step, float(series["grad_norm"].max())))
        if layers is not None:
            self.metrics.write_diagnostics(layers)
        return None

    def fail(self, step: int, layers: list[dict] | None) -> str:
        """A non-finite loss or gradient at `step`: name the first layer at fault (from the
        statistics of the failing step, which the frozen state replays), keep the last finite
        checkpoint, and stop."""
        layer = first_nonfinite(layers) if layers else None
        self.divergence = Divergence(step, layer)
        if layers is not None:  # the failing step's own statistics: where it blew up
            self.metrics.write_diagnostics([{**row, "step": step} for row in layers])
        where = f"; first non-finite gradient in layer {layer}" if layer else ""
        kept = self.checkpoints.step("latest")
        kept = (
            f"the last finite checkpoint (step {kept}) is kept"
            if kept is not None
            else "no checkpoint was written"
        )
        self.failure = (
            f"loss or gradient became non-finite at step {step}{where}; {kept}. "
            "Lower optimizer.lr, or set optimizer.clip_norm"
        )
        return "diverged"

    def evaluate(self, step: int, state, wall: float, final: bool) -> str | None:
        """Validation loss and accuracy, `best` and `latest` checkpoints, early stopping."""
        improved = True
        if len(self.val):
            result = scores(logits(self.program, state, self.val.images), self.val.labels)
            self.metrics.write(step=step, split="val", wall_time=round(wall, 3), **result)
            if self.best is None or result["accuracy"] > self.best["val_accuracy"]:
                self.checkpoints.save("best", step, state)
            improved = self.note_validation(step, result)
        self.checkpoints.save("latest", step, state)
        early_stop = self.cfg.early_stop
        if early_stop is not None and not improved and self.plateau >= early_stop.patience_evals:
            return "early_stopped"
        return None

    def note_validation(self, step: int, result: dict) -> bool:
        previous = self.best["val_accuracy"] if self.best else -1.0
        self.last_val = result
        if result["accuracy"] > previous:
            self.best = {
                "step": step,
                "val_accuracy": result["accuracy"],
                "val_loss": result["loss"],
            }
        if self.last_train:
            self.warn(
                self.overfitting.check(
                    step, self.last_train["accuracy"], result["accuracy"], result["loss"]
                )
            )
        min_delta = self.cfg.early_stop.min_delta if self.cfg.early_stop else 0.0
        improved = result["accuracy"] > previous + min_delta
        self.plateau = 0 if improved else self.plateau + 1
        return improved

    def warn(self, message: str | None) -> None:
        if message:
            self.warnings.append(message)
            if self.progress is not None and hasattr(self.progress, "warn"):
                self.progress.warn(message)

    # -- the end -----------------------------------------------------------------------------

    def summarise(self, step: int, status: str, seconds: float, compile_seconds: float) -> dict:
        if self.divergence is not None:  # the state stayed at the step that failed
            step = self.divergence.step
        device = jax.devices()[0]
        summary = {
            "name": self.experiment.name,
            "status": status,
            "steps": step,
            "steps_planned": self.cfg.steps,
            "batch_size": self.program.batch_size,
            "dataset": self.built.dataset_info(),
            "final": {"train": self.last_train, "val": self.last_val},
            "best": self.best,
            "overfitting_since_step": self.overfitting.onset,
            "warnings": self.warnings,
            "failure": self.failure,
            "wall_seconds": round(seconds, 3),
            "compile_seconds": round(compile_seconds, 3),
            "device": {
                "platform": device.platform,
                "kind": device.device_kind,
                "count": jax.device_count(),
            },
            "mesh": self.layout,
            "versions": library_versions(),
        }
        summary.update(judge_run(self, summary, self.built, self.stacked))
        if writes():
            write_json(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.checkpoints.close()


class Unwritten:
    """The metrics of a process other than process 0: kept in memory only."""

    def __init__(self, run_dir: Path, purge_after: int = 0):
        pass

    def write(self, **row) -> None:
        pass

    def write_diagnostics(self, rows: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("cnnlab", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions
