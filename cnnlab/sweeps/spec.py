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
from typing import Annotated, Any, ClassVar

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

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
from cnnlab.validation import validate

# name -> (where it sits in a run's summary.json, whether higher is better)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "best_val_accuracy": (("best", "val_accuracy"), True),
    "final_val_accuracy": (("final", "val", "accuracy"), True),
    "final_val_loss": (("final", "val", "loss"), False),
    "final_train_accuracy": (("final", "train", "accuracy"), True),
    "final_train_loss": (("final", "train", "loss"), False),
}
DEFAULT_METRIC = "best_val_accuracy"
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


# ---------------------------------------------------------------------------------------------
# The file's schema: pydantic models, errors through cnnlab.validation like experiments'


def _dotted_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError("expected a dotted key such as optimizer.lr")
    if key == SEED_KEY:
        raise ValueError("set the seeds with the top-level `seeds:` list")
    return key


DottedKey = Annotated[str, AfterValidator(_dotted_key)]


def _values(values: Any) -> list:
    """A non-empty list; numbers written as 1e-4 (text to YAML) read as numbers."""
    if not isinstance(values, list) or not values:
        raise ValueError("expected a non-empty list of values, e.g. [0.001, 0.01]")
    return [as_number(to_plain(value)) for value in values]


def _pair(values: Any) -> tuple[float, float]:
    if not isinstance(values, list) or len(values) != 2:
        raise ValueError("expected two numbers, low and high, e.g. [0.8, 0.95]")
    numbers = [as_number(value) for value in values]
    if any(isinstance(n, bool) or not isinstance(n, (int, float)) for n in numbers):
        raise ValueError(f"expected two numbers, low and high, got {values!r}")
    low, high = (float(n) for n in numbers)
    if not low < high:
        raise ValueError(f"low must be below high, got [{values[0]}, {values[1]}]")
    return low, high


def _metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; {suggest(name, METRICS)}")
    return name


Values = Annotated[list, BeforeValidator(_values)]
Pair = Annotated[tuple[float, float], BeforeValidator(_pair)]
Whole = Annotated[int, Strict()]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Section):
    """One of: {uniform: [low, high]}, {log_uniform: ...}, {int_uniform: ...}, {choice: [...]}."""

    noun: ClassVar[str] = "distribution"
    uniform: Pair | None = None
    log_uniform: Pair | None = None
    int_uniform: Pair | None = None
    choice: Values | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("expected one distribution, e.g. {log_uniform: [1.0e-4, 1.0e-2]}")
        if self.log_uniform and self.log_uniform[0] <= 0:
            raise ValueError("log_uniform needs low > 0")
        if self.int_uniform and not all(v.is_integer() for v in self.int_uniform):
            raise ValueError("int_uniform needs whole numbers")
        return self

    @property
    def kind(self) -> tuple[str, Any]:
        name = next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)
        return name, getattr(self, name)


class RandomSection(_Section):
    trials: Whole | None = Field(None, ge=1)  # settings drawn
    seed: Whole = Field(0, ge=0)  # the same seed draws the same settings
    params: dict[DottedKey, Distribution] = {}

    @model_validator(mode="after")
    def _trials_and_params(self):
        if self.params and self.trials is None:
            raise ValueError("trials: required key is missing (how many draws)")
        if self.trials and not self.params:
            raise ValueError("params: required key is missing (keys to draw)")
        return self


class SweepFile(_Section):
    """The keys of a sweep file (see the module's docstring)."""

    base: str  # the experiment file, relative to the sweep file
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    metric: Annotated[str, AfterValidator(_metric)] = DEFAULT_METRIC
    grid: dict[DottedKey, Values] | None = None
    random: RandomSection = RandomSection()
    seeds: list[Annotated[Whole, Field(ge=0)]] | None = Field(None, min_length=1)
    set: dict[DottedKey, Any] = {}

    @field_validator("grid")
    @classmethod
    def _not_empty(cls, grid):
        if grid is not None and not grid:
            raise ValueError("empty; give keys with lists of values, or leave grid out")
        return grid


# ---------------------------------------------------------------------------------------------
# From the validated file to trials


def _build_sweep(path: Path, tree: Tree, max_trials: int) -> Sweep:
    _check_trial_count(tree, max_trials)  # before anything is expanded, even validated
    spec = validate(SweepFile, tree)
    base = _base_path(path, spec.base)
    grid = spec.grid or {}
    distributions = {key: dist.kind for key, dist in spec.random.params.items()}
    _check_no_overlap(grid, distributions, spec.set)
    _check_duplicates(grid, spec.seeds)
    params = [Param(key, "grid", _spans_decades(vs)) for key, vs in grid.items()]
    params += [Param(key, kind, kind == "log_uniform") for key, (kind, _) in distributions.items()]
    settings = _expand(grid, distributions, spec.random.trials or 0, spec.random.seed)

    base_experiment = _load_base(base, tree)
    seeds = tuple(spec.seeds) if spec.seeds else (base_experiment.train.seed,)
    where = _Where(tree)
    trials = []
    for setting, seed in product(settings, seeds):
        experiment = _trial_experiment(base_experiment.tree, setting, seed, spec.set, where)
        trials.append(Trial(f"{setting.id}_seed{seed}", len(trials) + 1, setting, seed, experiment))
    return Sweep(
        name=spec.name or path.stem,
        path=path,
        base=base,
        metric=spec.metric,
        params=tuple(params),
        fixed={key: to_plain(value) for key, value in spec.set.items()},
        settings=tuple(settings),
        seeds=seeds,
        trials=tuple(trials),
        text=path.read_text(),
    )


def _check_trial_count(tree: Tree, max_trials: int) -> None:
    """Count the trials from the lengths of the lists, before any list is read or expanded."""
    grid, section, seeds = tree.get("grid"), tree.get("random"), tree.get("seeds")
    draws = section.get("trials") if isinstance(section, dict) else None
    count = draws if isinstance(draws, int) and not isinstance(draws, bool) and draws > 1 else 1
    count *= len(seeds) if isinstance(seeds, list) and seeds else 1
    for values in (grid or {}).values() if isinstance(grid, dict) else ():
        count *= len(values) if isinstance(values, list) and values else 1
    if count > max_trials:
        raise SpecError(
            (),
            f"this sweep makes {count:,} trials (grid values x random draws x seeds), more than "
            f"{max_trials:,}; make it smaller, or allow it with --max-trials {count}",
        )


def _base_path(path: Path, base: str) -> Path:
    base_path = (path.parent / base).expanduser().resolve()
    if not base_path.is_file():
        raise SpecError(("base",), f"file not found: {base_path}")
    return base_path


def _load_base(base: Path, tree: Tree) -> Experiment:
    try:
        return load_experiment(base)
    except UserError as error:
        raise UserError(f"{tree.where['base']}: base: {error}") from None


def _check_no_overlap(grid: dict, distributions: dict, fixed: dict) -> None:
    for key in distributions:
        if key in grid:
            raise SpecError(("random", "params", key), "already swept in grid")
    for key in fixed:
        if key in grid or key in distributions:
            raise SpecError(("set", key), "already swept in grid or random")


def _check_duplicates(grid: dict[str, list], seeds: list[int] | None) -> None:
    for key, values in grid.items():
        for index, value in enumerate(values):
            if value in values[:index]:
                raise SpecError(("grid", key, index), f"duplicate value {value!r}")
    for index, seed in enumerate(seeds or []):
        if seed in seeds[:index]:
            raise SpecError(("seeds", index), f"duplicate seed {seed}")


def as_number(value: Any) -> Any:
    """1e-4 (text to YAML) becomes 1e-4 the number; anything else is returned as it is."""
    if isinstance(value, str) and _BARE_EXPONENT.match(value):
        return float(value)
    return value


def _spans_decades(values: list) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 10


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


def _expand(grid: dict[str, list], distributions: dict, draws: int, seed: int) -> list:
    """Every grid combination crossed with every random draw; duplicates are dropped."""
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
