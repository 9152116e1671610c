"""A sweep file read and validated: its settings, seeds and one experiment per trial."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
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
    experiment_from_tree,
    load_experiment,
    locate,
    located_error,
    read_yaml,
    set_key,
    to_plain,
)
from cnnlab.errors import SpecError, UserError, suggest

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
MAX_TRIALS = 1000  # above this a sweep needs --max-trials: 10^6 trials is a typo, not a plan
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
        return digest(content, 16)


def digest(value: Any, length: int) -> str:
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


def load_sweep(name: str | Path, max_trials: int | None = None) -> Sweep:
    """Read a sweep file and validate it and every trial's experiment; nothing is trained.

    Errors are one line, `file:line: key: message`, at the sweep file's line where possible.
    Trials are counted before any is made: more than `max_trials` (default MAX_TRIALS) is an
    error that says how to allow them.
    """
    path = find_sweep(name)
    tree = read_yaml(path)
    if tree is None:
        tree = Tree()
    if not isinstance(tree, Tree):
        raise UserError(f"{path}:1: a sweep file must be a mapping of keys (base, grid, ...)")
    tree.source = f"{path}:1"
    try:
        return _build_sweep(path, tree, max_trials or MAX_TRIALS)
    except SpecError as error:
        raise located_error(tree, error) from None


def _build_sweep(path: Path, tree: Tree, max_trials: int) -> Sweep:
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
    if not isinstance(metric, str) or metric not in METRICS:  # a list is not hashable
        raise SpecError(("metric",), f"unknown metric {metric!r}; {suggest(str(metric), METRICS)}")
    if "grid" in tree and not tree["grid"]:
        raise SpecError(("grid",), "empty; give keys with lists of values, or leave grid out")
    grid = _keyed_mapping(tree, "grid")
    fixed = _keyed_mapping(tree, "set")
    random_section = tree.get("random") or Tree()
    if not isinstance(random_section, dict):
        raise SpecError(("random",), "expected a mapping with trials, seed and params")
    draws, distributions = _parse_random(random_section)
    _check_no_overlap(grid, distributions, fixed)
    _check_trial_count(grid, draws, tree.get("seeds"), max_trials)

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


def _check_trial_count(grid: dict, draws: int, seeds: Any, max_trials: int) -> None:
    """Count the trials from the lengths of the lists, before any list is read or expanded."""
    count = max(draws, 1) * (len(seeds) if isinstance(seeds, list) and seeds else 1)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(
                ("grid", key), "expected a non-empty list of values, e.g. [0.001, 0.01]"
            )
        count *= len(values)
    if count > max_trials:
        raise SpecError(
            (),
            f"this sweep makes {count:,} trials (grid values x random draws x seeds), more than "
            f"{max_trials:,}; make it smaller, or allow it with --max-trials {count}",
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
    return Setting(f"{slug}_{digest(values, 6)}", values)


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
        set_key(tree, key, to_plain(value), where.of(key, value))
    try:
        return experiment_from_tree(tree)
    except SpecError as error:
        raise located_error(tree, error) from None
