"""Sweeps: one experiment trained over a grid or random draws of settings, each over seeds.

```yaml
# cnnlab sweep experiments/sweeps/lr.yaml
base: ../digits.yaml            # the experiment file, relative to this file
metric: best_val_accuracy       # what ranks the settings: one of METRICS
grid:                           # dotted keys -> lists of values: every combination
  optimizer.lr: [0.0003, 0.001, 0.003]
random:                         # seeded draws, crossed with the grid
  trials: 4                     # settings drawn
  seed: 0                       # the same seed draws the same settings
  params:
    optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    optimizer.args.b1: {uniform: [0.8, 0.95]}
    train.batch_size: {int_uniform: [32, 128]}
    model.preset: {choice: [tiny, small]}
seeds: [0, 1, 2]                # every setting is trained once per seed (sets train.seed)
set: {train.steps: 300}         # overrides for every trial
```

Values go into the base experiment the way `--set` does, so every trial is validated like any
experiment, and a bad value is reported at its line in the sweep file. Numbers written as
`1e-4` (which YAML reads as text) are read as numbers.

A sweep folder `runs/<time>_sweep_<name>/` holds `sweep.yaml` (the file as run), `sweep.json`
(the trials), `trials/<trial id>/` (one full run per trial: config.yaml, metrics, checkpoints,
summary.json), and the results: `sweep.csv` (one row per trial), `sweep_settings.csv` (one row
per setting, ranked: mean and sample std of the metric over the finished seeds) and `sweep.png`
(the metric against each swept parameter, error bars over seeds; a log axis for log_uniform
draws and for grids of positive numbers spanning a decade or more).

Resuming: `cnnlab sweep FILE` continues the newest sweep folder made from exactly the same
trials (same values, seeds and resolved experiments) that still has unfinished trials, and
otherwise starts a new folder. `--resume DIR` continues DIR with the file's current trials (to
add values or seeds to a sweep); `--new` always starts afresh. A trial is finished when its
summary.json says `completed`; an unfinished trial folder is deleted and trained from scratch.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab.config import (
    EXPERIMENTS_DIR,
    Experiment,
    Tree,
    TreeList,
    apply_override,
    experiment_from_tree,
    load_experiment,
    locate,
    located_error,
    read_yaml,
    to_plain,
)
from cnnlab.errors import SpecError, UserError, suggest
from cnnlab.runs import create_run_dir, read_json, runs_dir, write_json

# name -> (where it sits in a run's summary.json, whether higher is better)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "best_val_accuracy": (("best", "val_accuracy"), True),
    "final_val_accuracy": (("final", "val", "accuracy"), True),
    "final_val_loss": (("final", "val", "loss"), False),
    "final_train_accuracy": (("final", "train", "accuracy"), True),
    "final_train_loss": (("final", "train", "loss"), False),
}
DEFAULT_METRIC = "best_val_accuracy"
SWEEP_KEYS = ("base", "name", "metric", "grid", "random", "seeds", "set")
RANDOM_KEYS = ("trials", "seed", "params")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
SEED_KEY = "train.seed"
DRAW_DIGITS = 4  # significant digits kept of a drawn float: readable, and exact in a --set line
# YAML 1.1 reads 1e-4 (no dot) as text; in a sweep it is meant as a number.
_BARE_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ---------------------------------------------------------------------------------------------
# The parsed sweep


@dataclass(frozen=True)
class Param:
    """A swept key: how its values were made, and whether its axis is logarithmic."""

    key: str
    source: str  # "grid" or a distribution name
    log: bool = False


@dataclass(frozen=True)
class Setting:
    """One combination of swept values (trained once per seed)."""

    id: str
    values: dict[str, Any]

    @property
    def label(self) -> str:
        return " ".join(f"{key}={format_value(v)}" for key, v in self.values.items()) or "base"


@dataclass(frozen=True)
class Trial:
    """One setting with one seed: a validated experiment, trained as one full run."""

    id: str
    index: int  # 1-based position in the sweep
    setting: Setting
    seed: int
    experiment: Experiment = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.setting.label} seed={self.seed}"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: its settings, seeds, and one validated experiment per trial."""

    name: str
    path: Path
    base: Path
    metric: str
    params: tuple[Param, ...]
    fixed: dict[str, Any]  # the `set:` overrides
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...]
    trials: tuple[Trial, ...]
    text: str = field(repr=False)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def fingerprint(self) -> str:
        """Same for two sweeps exactly when they train the same trials."""
        content = [[trial.id, trial.experiment.raw] for trial in self.trials]
        return _digest(content, 16)


def _digest(value: Any, length: int) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return yaml_text(value)
    return str(value)


def yaml_text(value: Any) -> str:
    """A value as one line of YAML that reads back as the same value (for `--set`)."""
    text = yaml.safe_dump(to_plain(value), default_flow_style=True, width=1 << 30)
    return text.removesuffix("...\n").strip()


# ---------------------------------------------------------------------------------------------
# Reading and validating a sweep file


def find_sweep(name: str | Path) -> Path:
    """A path as given, or a name in ./experiments/sweeps/ or the package's experiments/sweeps/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    stem = str(name).removesuffix(".yaml")
    for folder in (Path("experiments") / "sweeps", EXPERIMENTS_DIR / "sweeps"):
        if (folder / f"{stem}.yaml").is_file():
            return (folder / f"{stem}.yaml").resolve()
    raise UserError(
        f"sweep file not found: {name} (give a path, or a name in {EXPERIMENTS_DIR / 'sweeps'})"
    )


def load_sweep(name: str | Path) -> Sweep:
    """Read a sweep file and validate it and every trial's experiment; nothing is trained.

    Errors are one line, `file:line: key: message`, at the sweep file's line where possible.
    """
    path = find_sweep(name)
    tree = read_yaml(path)
    if tree is None:
        tree = Tree()
    if not isinstance(tree, Tree):
        raise UserError(f"{path}:1: a sweep file must be a mapping of keys (base, grid, ...)")
    tree.source = f"{path}:1"
    try:
        return _build_sweep(path, tree)
    except SpecError as error:
        raise located_error(tree, error) from None


def _build_sweep(path: Path, tree: Tree) -> Sweep:
    for key in tree:
        if key not in SWEEP_KEYS:
            raise SpecError((key,), f"unknown key; {suggest(str(key), SWEEP_KEYS)}")
    if "base" not in tree:
        raise SpecError((), "base: required key is missing (the experiment file to sweep)")
    base = _base_path(path, tree)
    name = tree.get("name", path.stem)
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", name)):
        raise SpecError(("name",), "expected letters, digits, '_', '.', '-' (at most 60)")
    metric = tree.get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise SpecError(("metric",), f"unknown metric {metric!r}; {suggest(str(metric), METRICS)}")
    grid = _keyed_mapping(tree, "grid")
    fixed = _keyed_mapping(tree, "set")
    random_section = tree.get("random") or Tree()
    if not isinstance(random_section, dict):
        raise SpecError(("random",), "expected a mapping with trials, seed and params")
    draws, distributions = _parse_random(random_section)
    _check_no_overlap(grid, distributions, fixed)

    grid_values = {key: _grid_values(key, values) for key, values in grid.items()}
    params = [Param(key, "grid", _spans_decades(vs)) for key, vs in grid_values.items()]
    params += [Param(key, kind, kind == "log_uniform") for key, (kind, _) in distributions.items()]
    settings = _expand(grid_values, distributions, draws, random_section)

    base_experiment = _load_base(base, tree)
    seeds = _parse_seeds(tree.get("seeds"), base_experiment.train.seed)
    where = _Where(tree)
    trials = []
    for setting, seed in product(settings, seeds):
        experiment = _trial_experiment(base_experiment.tree, setting, seed, fixed, where)
        trials.append(Trial(f"{setting.id}_seed{seed}", len(trials) + 1, setting, seed, experiment))
    return Sweep(
        name=name,
        path=path,
        base=base,
        metric=metric,
        params=tuple(params),
        fixed={key: to_plain(value) for key, value in fixed.items()},
        settings=tuple(settings),
        seeds=seeds,
        trials=tuple(trials),
        text=path.read_text(),
    )


def _base_path(path: Path, tree: Tree) -> Path:
    base = tree["base"]
    if not isinstance(base, str):
        raise SpecError(("base",), "expected the path of an experiment file")
    base_path = (path.parent / base).expanduser().resolve()
    if not base_path.is_file():
        raise SpecError(("base",), f"file not found: {base_path}")
    return base_path


def _load_base(base: Path, tree: Tree) -> Experiment:
    try:
        return load_experiment(base)
    except UserError as error:
        raise UserError(f"{tree.where['base']}: base: {error}") from None


def _keyed_mapping(tree: Tree, section: str) -> Tree:
    mapping = tree.get(section) or Tree()
    if not isinstance(mapping, dict):
        raise SpecError((section,), "expected a mapping of dotted keys, e.g. optimizer.lr")
    for key in mapping:
        if not (isinstance(key, str) and _KEY.match(key)):
            raise SpecError((section, key), "expected a dotted key such as optimizer.lr")
        if key == SEED_KEY:
            raise SpecError((section, key), "set the seeds with the top-level `seeds:` list")
    return mapping


def _check_no_overlap(grid: dict, distributions: dict, fixed: dict) -> None:
    for key in distributions:
        if key in grid:
            raise SpecError(("random", "params", key), "already swept in grid")
    for key in fixed:
        if key in grid or key in distributions:
            raise SpecError(("set", key), "already swept in grid or random")


def as_number(value: Any) -> Any:
    """1e-4 (text to YAML) becomes 1e-4 the number; anything else is returned as it is."""
    if isinstance(value, str) and _BARE_EXPONENT.match(value):
        return float(value)
    return value


def _number(value: Any, loc: tuple) -> float:
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(loc, f"expected a number, got {value!r}")
    return float(value)


def _grid_values(key: str, values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise SpecError(("grid", key), "expected a non-empty list of values, e.g. [0.001, 0.01]")
    plain = [as_number(to_plain(value)) for value in values]
    for index, value in enumerate(plain):
        if value in plain[:index]:
            raise SpecError(("grid", key, index), f"duplicate value {value!r}")
    return plain


def _spans_decades(values: list) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 10


def _parse_random(section: dict) -> tuple[int, dict[str, tuple[str, Any]]]:
    for key in section:
        if key not in RANDOM_KEYS:
            raise SpecError(("random", key), f"unknown key; {suggest(str(key), RANDOM_KEYS)}")
    params = section.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(("random", "params"), "expected a mapping of dotted keys to distributions")
    trials = section.get("trials", 0 if not params else None)
    if params and trials is None:
        raise SpecError(("random",), "trials: required key is missing (how many draws)")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < (1 if params else 0):
        raise SpecError(("random", "trials"), f"expected a whole number >= 1, got {trials!r}")
    if trials and not params:
        raise SpecError(("random",), "params: required key is missing (keys to draw)")
    seed = section.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(("random", "seed"), f"expected a whole number >= 0, got {seed!r}")
    try:
        _keyed_mapping(section, "params")
    except SpecError as error:
        raise error.within("random") from None
    return trials, {key: _distribution(key, spec) for key, spec in params.items()}


def _distribution(key: str, spec: Any) -> tuple[str, Any]:
    loc = ("random", "params", key)
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise SpecError(loc, "expected one distribution, e.g. {log_uniform: [1.0e-4, 1.0e-2]}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpecError(loc + (kind,), f"unknown distribution; {suggest(str(kind), DISTRIBUTIONS)}")
    loc += (kind,)
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(loc, "expected a non-empty list of values")
        return kind, [as_number(to_plain(value)) for value in args]
    if not isinstance(args, list) or len(args) != 2:
        raise SpecError(loc, "expected two numbers, low and high, e.g. [0.8, 0.95]")
    low, high = (_number(value, loc + (i,)) for i, value in enumerate(args))
    if not low < high:
        raise SpecError(loc, f"low must be below high, got [{args[0]}, {args[1]}]")
    if kind == "log_uniform" and low <= 0:
        raise SpecError(loc, "log_uniform needs low > 0")
    if kind == "int_uniform" and not (low.is_integer() and high.is_integer()):
        raise SpecError(loc, "int_uniform needs whole numbers")
    return kind, (low, high)


def draw(kind: str, args: Any, rng: np.random.Generator) -> Any:
    """One value from a distribution; floats keep DRAW_DIGITS significant digits."""
    if kind == "choice":
        return copy.deepcopy(args[int(rng.integers(len(args)))])
    low, high = args
    if kind == "int_uniform":
        return int(rng.integers(int(low), int(high) + 1))
    if kind == "log_uniform":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    return min(max(float(f"{value:.{DRAW_DIGITS}g}"), low), high)


def _expand(grid: dict[str, list], distributions: dict, draws: int, section: dict) -> list:
    """Every grid combination crossed with every random draw; duplicates are dropped."""
    seed = section.get("seed", 0)
    drawn = []
    for index in range(draws):
        # One generator per draw: raising `trials` keeps the settings drawn before.
        rng = np.random.default_rng([seed, index])
        drawn.append({key: draw(kind, args, rng) for key, (kind, args) in distributions.items()})
    combos = [dict(zip(grid, values, strict=True)) for values in product(*grid.values())]
    settings, seen = [], set()
    for combo, extra in product(combos, drawn or [{}]):
        setting = make_setting({**combo, **extra})
        if setting.id not in seen:
            seen.add(setting.id)
            settings.append(setting)
    return settings


def make_setting(values: dict[str, Any]) -> Setting:
    """A setting whose id reads its values and ends in a hash of them (unique, stable)."""
    slug = "_".join(f"{key.rsplit('.', 1)[-1]}={format_value(v)}" for key, v in values.items())
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "-", slug)[:60] or "base"
    return Setting(f"{slug}_{_digest(values, 6)}", values)


def _parse_seeds(seeds: Any, default: int) -> tuple[int, ...]:
    if seeds is None:
        return (default,)
    if not isinstance(seeds, list) or not seeds:
        raise SpecError(("seeds",), "expected a non-empty list of whole numbers, e.g. [0, 1, 2]")
    for index, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(("seeds", index), f"expected a whole number >= 0, got {seed!r}")
        if seed in seeds[:index]:
            raise SpecError(("seeds", index), f"duplicate seed {seed}")
    return tuple(seeds)


class _Where:
    """The sweep-file line that gave each trial value."""

    def __init__(self, tree: Tree):
        self.tree = tree

    def of(self, key: str, value: Any = None) -> str:
        if key == SEED_KEY:
            seeds = self.tree.get("seeds")
            if isinstance(seeds, TreeList) and value in seeds:
                return locate(self.tree, ("seeds", seeds.index(value)))
            return locate(self.tree, ("seeds",))
        grid = self.tree.get("grid")
        if isinstance(grid, dict) and key in grid:
            values = [as_number(to_plain(v)) for v in grid[key]]
            index = values.index(value) if value in values else None
            return locate(self.tree, ("grid", key) if index is None else ("grid", key, index))
        random_section = self.tree.get("random")
        if isinstance(random_section, dict) and key in (random_section.get("params") or {}):
            return locate(self.tree, ("random", "params", key))
        return locate(self.tree, ("set", key))


def _trial_experiment(
    base_tree: Tree, setting: Setting, seed: int, fixed: dict, where: _Where
) -> Experiment:
    tree = copy.deepcopy(base_tree)
    assignments = [*fixed.items(), *setting.values.items(), (SEED_KEY, seed)]
    for key, value in assignments:
        set_value(tree, key, to_plain(value), where.of(key, value))
    try:
        return experiment_from_tree(tree)
    except SpecError as error:
        raise located_error(tree, error) from None


def set_value(tree: Tree, key: str, value: Any, where: str) -> None:
    """`--set key=value` on `tree`, recording `where` (a sweep file line) as its source."""
    assignment = f"{key}={yaml_text(value)}"
    marker = f"--set {assignment}"
    try:
        apply_override(tree, assignment)
    except UserError as error:
        raise UserError(str(error).replace(marker, where)) from None
    node: Any = tree
    for part in key.split("."):
        if str(node.where.get(part, "")).startswith("--set"):
            node.where[part] = where
        node = node[part]
    _restamp(node, where)


def _restamp(node: Any, where: str) -> None:
    if isinstance(node, Tree):
        for key, child in node.items():
            if str(node.where.get(key, "")).startswith("--set"):
                node.where[key] = where
            _restamp(child, where)
    elif isinstance(node, TreeList):
        node.where = [where if w.startswith("--set") else w for w in node.where]
        for child in node:
            _restamp(child, where)


def check_buildable(sweep: Sweep) -> None:
    """Build the model, optimizer and augmentation of every distinct setting against its data,
    so that a shape that does not fit fails before anything trains."""
    from cnnlab.train import build_trainer, load_data

    datasets: dict[str, Any] = {}
    checked: set[str] = set()
    for trial in sweep.trials:
        raw = trial.experiment.raw
        data_key = _digest(raw.get("data"), 16)
        parts = {k: v for k, v in raw.items() if k not in ("name", "train")}
        build_key = _digest([parts, trial.experiment.train.steps], 16)
        if build_key in checked:
            continue
        checked.add(build_key)
        if data_key not in datasets:
            datasets[data_key] = load_data(trial.experiment)
        dataset = datasets[data_key]
        sample = dataset.train.take(np.arange(min(len(dataset.train), 8)))
        build_trainer(trial.experiment, sample, dataset.num_classes)


# ---------------------------------------------------------------------------------------------
# Running: the sweep folder, trials to train, the trainer


# Run statuses that end a trial for good (an interrupted one trains again on resume).
FINISHED = {"completed", "early_stopped", "diverged"}
Progress = Callable[[Trial], contextlib.AbstractContextManager]
# Trains the given (trial, run folder) pairs, leaving a finished run in each folder; a future
# trainer may train a group of compatible trials together.
TrialTrainer = Callable[[Sequence[tuple[Trial, Path]], Progress | None], None]


def trial_dir(sweep_dir: Path, trial: Trial) -> Path:
    return sweep_dir / "trials" / trial.id


def train_trial(trial: Trial, run_dir: Path, progress: Progress | None = None) -> dict:
    """Train one trial from scratch into `run_dir` (a partial run there is deleted first)."""
    from cnnlab.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    with progress(trial) if progress else contextlib.nullcontext() as bar:
        return train(trial.experiment, run_dir=run_dir, progress=bar).summary


def train_in_turn(jobs: Sequence[tuple[Trial, Path]], progress: Progress | None = None) -> None:
    """The default trainer: one trial after another. A run stopped by Ctrl-C stops the sweep."""
    for trial, run_dir in jobs:
        summary = train_trial(trial, run_dir, progress)
        if summary.get("status") == "interrupted":
            raise KeyboardInterrupt


def trial_finished(trial: Trial, run_dir: Path) -> bool:
    """Whether `run_dir` holds a completed run of exactly this trial's experiment."""
    if read_json(run_dir / "summary.json").get("status") not in FINISHED:
        return False
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())
    if trained != yaml.safe_load(yaml.safe_dump(trial.experiment.raw)):
        raise UserError(
            f"{run_dir} was trained with another config than the sweep file now gives trial "
            f"{trial.id}; start a new sweep folder (leave out --resume)"
        )
    return True


def open_sweep_dir(sweep: Sweep, resume: Path | None = None, new: bool = False) -> Path:
    """The folder to run in: `resume`, else the newest unfinished folder of the same trials,
    else (or with `new`) a new one. Writes sweep.yaml and sweep.json there."""
    if resume is not None:
        folder = _resumable(sweep, resume)
    else:
        folder = None if new else _newest_unfinished(sweep)
        folder = folder or create_run_dir(f"sweep_{sweep.name}", runs_dir())
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(sweep.text)
    write_json(folder / "sweep.json", _sweep_record(sweep))
    return folder


def _resumable(sweep: Sweep, folder: Path) -> Path:
    record = read_json(folder / "sweep.json")
    if not record:
        raise UserError(f"--resume {folder}: not a sweep folder (it has no sweep.json)")
    if record.get("name") != sweep.name:
        raise UserError(
            f"--resume {folder}: that folder holds sweep '{record.get('name')}', not '{sweep.name}'"
        )
    return folder


def _newest_unfinished(sweep: Sweep) -> Path | None:
    root = runs_dir()
    folders = sorted(root.glob(f"*_sweep_{sweep.name}*"), key=lambda p: p.name, reverse=True)
    fingerprint = sweep.fingerprint()
    for folder in folders:
        if read_json(folder / "sweep.json").get("fingerprint") != fingerprint:
            continue
        if not all(trial_finished(t, trial_dir(folder, t)) for t in sweep.trials):
            return folder
    return None


def _sweep_record(sweep: Sweep) -> dict:
    return {
        "name": sweep.name,
        "file": str(sweep.path),
        "base": str(sweep.base),
        "metric": sweep.metric,
        "fingerprint": sweep.fingerprint(),
        "params": [{"key": p.key, "source": p.source, "log": p.log} for p in sweep.params],
        "set": sweep.fixed,
        "seeds": list(sweep.seeds),
        "trials": [
            {"id": t.id, "setting": t.setting.id, "seed": t.seed, "values": t.setting.values}
            for t in sweep.trials
        ],
    }


def run_sweep(
    sweep: Sweep,
    *,
    resume: Path | None = None,
    new: bool = False,
    trainer: TrialTrainer = train_in_turn,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SweepResult:
    """Train the sweep's unfinished trials and write its results (also when interrupted).

    Every trial is checked before the folder is chosen or anything trains; `trainer` gets the
    (trial, run folder) pairs still to train.
    """
    check_buildable(sweep)
    folder = open_sweep_dir(sweep, resume, new)
    jobs = [(t, trial_dir(folder, t)) for t in sweep.trials]
    pending = [(t, d) for t, d in jobs if not trial_finished(t, d)]
    log(
        f"sweep {sweep.name}: {len(sweep.settings)} settings x {len(sweep.seeds)} seeds = "
        f"{len(jobs)} trials, {len(jobs) - len(pending)} finished, {len(pending)} to train"
    )
    log(f"sweep folder: {folder}")
    try:
        trainer(pending, progress)
    except KeyboardInterrupt:
        result = collect_results(sweep, folder, pending)
        write_results(result)
        finished = sum(r.status in FINISHED for r in result.trials)
        log(
            f"stopped with {finished} of {len(jobs)} trials finished; run the same command "
            f"again to continue in {folder}"
        )
        raise
    result = collect_results(sweep, folder, pending)
    write_results(result)
    return result


# ---------------------------------------------------------------------------------------------
# Results


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
        score = (
            metric_value(summary, sweep.metric)
            if status in ("completed", "early_stopped")
            else None
        )
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


def sweep_table(result: SweepResult):
    """A rich table: one row per setting, best first, the metric's mean ± std over seeds."""
    from rich.table import Table

    sweep = result.sweep
    better = "higher" if sweep.higher_is_better else "lower"
    table = Table(title=f"sweep {sweep.name}: {sweep.metric} ({better} is better)")
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


def console_progress(console, sweep: Sweep) -> Progress:
    """A progress factory for run_sweep: a header line and a training bar per trial."""
    from cnnlab.report import TrainProgress

    def start(trial: Trial) -> TrainProgress:
        header = f"[bold]trial {trial.index}/{len(sweep.trials)}[/] {trial.label}"
        console.print(header, highlight=False)
        return TrainProgress(console, trial.experiment.train.steps)

    return start
