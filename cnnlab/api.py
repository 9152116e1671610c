"""The Python API: what the commands do, for notebooks and scripts. The CLI calls these.

```python
import cnnlab

experiment = cnnlab.load_experiment("digits", set=["train.steps=300"])
run = cnnlab.train(experiment)
run.summary["best"]["val_accuracy"], run.metrics[-1]
cnnlab.evaluate(run)["top1"]
cnnlab.predict(run, images)          # (N, classes) probabilities
cnnlab.sweep("lr", parallel=6).table
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.environment import configure


@dataclass(frozen=True)
class Run:
    """A run folder, read as data. Properties read the files afresh, so a run that is still
    training shows its latest state."""

    path: Path

    @property
    def config(self) -> dict:
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text())

    @property
    def summary(self) -> dict:
        from cnnlab.runs import read_json

        return read_json(self.path / "summary.json")

    @property
    def metrics(self) -> list[dict]:
        from cnnlab.runs import read_metrics

        return read_metrics(self.path)

    @property
    def status(self) -> str | None:
        return self.summary.get("status")

    def restore(self, checkpoint: str = "best"):
        """Experiment, program and state from a checkpoint (cnnlab.training.Restored)."""
        from cnnlab.training import restore

        configure()
        return restore(self.path, checkpoint)


def _folder(run: Run | str | Path) -> Path:
    return run.path if isinstance(run, Run) else open_run(run).path


def load_experiment(name_or_path: str | Path | None = None, set: Sequence[str] = ()):  # noqa: A002
    """An experiment file or a name in experiments/, with `--set`-style overrides applied."""
    from cnnlab.config import load_experiment as load

    return load(name_or_path, list(set))


def train(experiment, *, run_dir: str | Path | None = None, progress=None) -> Run:
    """Train into a new run folder under the runs folder (or the given new `run_dir`)."""
    from cnnlab.training import train as train_run

    configure()
    folder = Path(run_dir) if run_dir is not None else None
    return Run(train_run(experiment, run_dir=folder, progress=progress).run_dir)


def resume(run: Run | str | Path, *, progress=None) -> Run:
    """Continue a stopped run from its latest checkpoint."""
    from cnnlab.config import load_experiment as load
    from cnnlab.training import train as train_run

    configure()
    folder = _folder(run)
    return Run(train_run(load(folder / "config.yaml"), resume=folder, progress=progress).run_dir)


def open_run(folder_or_pattern: str | Path = "latest") -> Run:
    """A run by its folder, part of its name, or `latest`."""
    from cnnlab.runs import find_run

    return Run(find_run(str(folder_or_pattern)))


def overfit(experiment, samples: int = 4, max_steps: int = 1000):
    """Can the model memorise `samples` training images? (cnnlab.sanity.OverfitResult)"""
    from cnnlab.sanity import overfit as run_overfit

    configure()
    return run_overfit(experiment, samples, max_steps)


def evaluate(run: Run | str | Path, split: str = "test", checkpoint: str = "best") -> dict:
    """top1, top5, loss, per_class, confusion (rows: true class), class_names, step; also
    saved as eval_<split>.json in the run folder."""
    from dataclasses import asdict

    from cnnlab.evaluation import evaluate_run

    configure()
    return asdict(evaluate_run(_folder(run), split, checkpoint))


def predict(run: Run | str | Path, images: Any, checkpoint: str = "best") -> np.ndarray:
    """(N, classes) probabilities for images shaped like the run's input: uint8 in [0, 255] or
    floats in [0, 1], (N, H, W, C) or one (H, W, C) image."""
    from cnnlab.errors import UserError
    from cnnlab.prediction import probabilities_of

    configure()
    restored = Run(_folder(run)).restore(checkpoint)
    batch = np.asarray(images)
    if batch.ndim == len(restored.image_shape):
        batch = batch[None]
    if tuple(batch.shape[1:]) != restored.image_shape:
        raise UserError(
            f"images of shape {batch.shape[1:]} given; the run takes {restored.image_shape}"
        )
    if batch.dtype != np.uint8:
        batch = np.round(np.clip(batch.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return probabilities_of(restored, batch)


def sweep(
    path_or_name,
    parallel: int = 1,
    *,
    resume: Path | None = None,
    new: bool = False,
    progress=None,
    log=None,
):
    """Train a sweep (a file, a name in experiments/sweeps/, or a loaded Sweep), resuming an
    unfinished sweep of the same trials or the sweep folder `resume`; returns its result, whose
    `table` ranks the settings. `progress` makes a per-trial progress factory from the sweep
    (see cnnlab.sweeps.console_progress)."""
    from cnnlab.sweeps import Sweep, load_sweep, run_sweep

    configure()
    spec = path_or_name if isinstance(path_or_name, Sweep) else load_sweep(path_or_name)
    return run_sweep(
        spec,
        resume=resume,
        new=new,
        parallel=parallel,
        progress=progress(spec) if progress else None,
        log=log or (lambda message: None),
    )
