"""YAML experiment files -> one frozen, validated `Experiment`.

An experiment file may inherit from another (`base: other.yaml`, deep-merged), name reusable
fragments (`model: cnn_small` is `experiments/models/cnn_small.yaml`), and be overridden from the
command line (`--set optimizer.lr=3e-4`). Every value remembers the file and line it came from,
so any validation error points at `file:line` and the dotted key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cnnlab.errors import SpecError, UserError, suggest
from cnnlab.files import Tree, TreeList, loader_for, write_text
from cnnlab.files import read_yaml as files_read_yaml
from cnnlab.validation import validate

PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout keeps experiments/ beside the package; a wheel carries a copy inside it.
EXPERIMENTS_DIR = next(
    (d for d in (PACKAGE_DIR.parent / "experiments", PACKAGE_DIR / "experiments") if d.is_dir()),
    PACKAGE_DIR.parent / "experiments",
)
DEFAULT_EXPERIMENT = "digits"
FRAGMENT_DIRS = {"model": "models", "augment": "augment", "optimizer": "optim"}
# Keys holding file paths, made absolute relative to the file that wrote them.
PATH_KEYS = {
    "experiment": [("data", "path"), ("model", "python"), ("optimizer", "python")],
    "model": [("python",)],
}

# Limits (the README's "Limits" section states them).
MAX_STEPS = 10_000_000  # a week of the biggest preset on a GPU; 1e12 is a typo, not a plan
MAX_SEED = 2**32 - 1  # what numpy and JAX take as a seed
# A fragment is named, not pointed at: `model: ../digits` must not leave the fragment folder.
_FRAGMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A --set key: dotted names, each a YAML key (no brackets, no empty parts).
_SET_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ---------------------------------------------------------------------------------------------
# YAML with source locations


# Trees and the guarded loader live in cnnlab.files (the one reader of every file cnnlab is
# given); `_loader_for` keeps its name here for `--set` values.
_loader_for = loader_for


def read_yaml(path: Path) -> Any:
    """Parse one YAML file into Trees; any problem with its bytes is a one-line error with the line."""
    return files_read_yaml(path)


def locate(tree: Any, loc: Sequence) -> str:
    """The `file:line` that wrote the deepest part of `loc` found in `tree`."""
    where = getattr(tree, "source", "")
    node = tree
    for part in loc:
        if isinstance(node, Tree) and part in node:
            where, node = node.where.get(part, where), node[part]
        elif isinstance(node, TreeList) and isinstance(part, int) and 0 <= part < len(node):
            where, node = node.where[part], node[part]
        else:
            break
    return where


def located_error(tree: Any, error: SpecError) -> UserError:
    """`file:line: key.path: message` for a problem at `error.loc` in `tree`."""
    where = locate(tree, error.loc)
    return UserError(f"{where}: {error}" if where else str(error))


def to_plain(value: Any) -> Any:
    """Trees and TreeLists to plain dicts and lists (for writing config.yaml)."""
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# Composition: base files, fragments, --set overrides


def deep_merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key; anything else (lists, scalars, fragments) replaces."""
    if not (isinstance(base, dict) and isinstance(override, Tree)) or override.whole:
        return override
    merged = Tree(base)
    merged.where = dict(getattr(base, "where", {}))
    for key, value in override.items():
        other_form = key == "model" and _model_form(value) not in (None, _model_form(base.get(key)))
        merged[key] = value if other_form else deep_merge(base.get(key), value)
        merged.where[key] = override.where[key]
    return merged


def find_experiment(name: str | Path) -> Path:
    """A path as given, or a name in the experiments folder (`digits` -> experiments/digits.yaml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    for candidate in (Path("experiments") / f"{name}.yaml", EXPERIMENTS_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(
        f"experiment file not found: {name} (give a path, or a name in {EXPERIMENTS_DIR})"
    )


def _find_fragment(kind: str, name: str, near: Path) -> Path:
    folder = FRAGMENT_DIRS[kind]
    if not _FRAGMENT_NAME.match(name) or ".." in name:
        raise SpecError(
            (kind,),
            f"'{name}' is not a fragment name: give the name of a file in {folder}/ "
            f"(letters, digits, _ . -), or write the {kind} mapping here",
        )
    places = [
        near / folder,
        near.parent / folder,
        Path("experiments") / folder,
        EXPERIMENTS_DIR / folder,
    ]
    for place in places:
        if (place / f"{name}.yaml").is_file():
            return (place / f"{name}.yaml").resolve()
    known = {p.stem for place in places if place.is_dir() for p in place.glob("*.yaml")}
    raise SpecError((kind,), f"no {kind} fragment '{name}' in {folder}/; {suggest(name, known)}")


def _absolutize(tree: Any, key_paths: list[tuple], base_dir: Path) -> None:
    for key_path in key_paths:
        node = tree
        for key in key_path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        last = key_path[-1]
        if isinstance(node, dict) and isinstance(node.get(last), str):
            value = node[last]
            file_part, sep, rest = value.partition(":") if last == "python" else (value, "", "")
            resolved = (base_dir / Path(file_part).expanduser()).resolve()
            node[last] = f"{resolved}{sep}{rest}"


def _resolve_fragments(tree: Tree, near: Path, where_fallback: str) -> None:
    for kind in FRAGMENT_DIRS:
        name = tree.get(kind)
        if not isinstance(name, str):
            continue
        try:
            path = _find_fragment(kind, name, near)
        except SpecError as error:
            raise UserError(f"{tree.where.get(kind, where_fallback)}: {error}") from None
        fragment = read_yaml(path)
        if kind == "model":
            _absolutize(fragment, PATH_KEYS["model"], path.parent)
        if isinstance(fragment, (Tree, TreeList)):
            fragment.whole = True
        tree[kind] = fragment


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> Tree:
    if path in seen:
        raise UserError(
            f"{path}: 'base' files form a cycle: {' -> '.join(map(str, seen + (path,)))}"
        )
    tree = read_yaml(path)
    if tree is None:
        tree = Tree()
    if not isinstance(tree, Tree):
        raise UserError(
            f"{path}:1: an experiment file must be a mapping of keys (name, data, model, ...)"
        )
    _absolutize(tree, PATH_KEYS["experiment"], path.parent)
    _resolve_fragments(tree, path.parent, f"{path}:1")
    base = tree.pop("base", None)
    if base is None:
        return tree
    base_path = (path.parent / str(base)).resolve()
    if not base_path.is_file():
        raise UserError(f"{tree.where['base']}: base: file not found: {base_path}")
    return deep_merge(_load_tree(base_path, seen + (path,)), tree)


MODEL_FORMS = ("layers", "family", "python")  # a model mapping is written in one of these


def _model_form(model: Any) -> str | None:
    if isinstance(model, dict):
        return next((form for form in MODEL_FORMS if form in model), None)
    return None


def _stamped(value: Any, where: str) -> Any:
    """`value` as Trees and TreeLists whose every key and item was written at `where`."""
    if isinstance(value, dict):
        tree = Tree({key: _stamped(item, where) for key, item in value.items()})
        tree.where = dict.fromkeys(tree, where)
        return tree
    if isinstance(value, list):
        items = TreeList(_stamped(item, where) for item in value)
        items.where = [where] * len(items)
        return items
    return value


def set_key(tree: Tree, key: str, value: Any, where: str) -> None:
    """The one way to change an experiment tree: set the dotted `key` to `value`, recording
    `where` (a `--set` option, a sweep file's line) as the source of all it writes. A model of
    another form than the one there (layers, family or python) replaces it whole."""
    parts = key.split(".")
    if not all(part.strip() for part in parts):
        raise UserError(f"{where}: '{key}' is not a dotted key such as optimizer.lr")
    if len(parts) > 1 and parts[0] == "model" and parts[1] in MODEL_FORMS:
        form = _model_form(tree.get("model"))
        if form is not None and form != parts[1]:
            tree["model"], tree.where["model"] = Tree(), where
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise UserError(f"{where}: '{key}' goes inside {part}, which is not a mapping")
            child = Tree()
            node[part], node.where[part] = child, where
        node = child
    node[parts[-1]] = _stamped(value, where)
    node.where[parts[-1]] = where
    if tuple(parts) in PATH_KEYS["experiment"]:
        _absolutize(tree, [tuple(parts)], Path.cwd())
    if len(parts) == 1:
        _resolve_fragments(tree, Path.cwd(), where)


def _check_assignment(assignment: str) -> None:
    """A `--set KEY=VALUE` whose key can be followed: dotted names only."""
    key, sep, _ = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        return  # apply_override explains KEY=VALUE
    if "[" in key or "]" in key:
        head = key.split("[", 1)[0]
        raise UserError(
            f"--set {assignment!r}: list items cannot be set one by one; set the whole list, "
            f"e.g. --set '{head}=[...]', or edit the experiment file"
        )
    if not _SET_KEY.match(key):
        raise UserError(
            f"--set {assignment!r}: '{key}' is not a dotted key; write names joined by single "
            "dots, e.g. --set train.steps=5"
        )


def apply_override(tree: Tree, assignment: str) -> None:
    """`optimizer.lr=3e-4`: set a dotted key to a YAML-parsed value."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optimizer.lr=3e-4")
    _check_assignment(assignment)
    try:
        value = yaml.load(text, Loader=_loader_for(Path("--set")))  # noqa: S506
    except yaml.YAMLError:
        raise UserError(f"--set {assignment!r}: the value is not valid YAML") from None
    set_key(tree, key.strip(), to_plain(value), f"--set {assignment}")


# ---------------------------------------------------------------------------------------------
# The typed experiment


def _not_bool(value: Any) -> Any:
    # YAML reads `true` as a bool, and pydantic would take it as 1
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    return value


Whole = Annotated[int, BeforeValidator(_not_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = "digits"
    path: str | None = None  # image folder or tarball, for source: folder
    data_dir: str | None = None  # TFDS data directory (default: TFDS's own)
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    normalize: bool = True  # standardise each channel with the training split's mean and std


class EarlyStop(_Section):
    patience_evals: Whole = Field(5, ge=1)  # evaluations without improvement before stopping
    min_delta: float = Field(0.0, ge=0.0)  # validation accuracy gain that counts as improvement


class TrainConfig(_Section):
    steps: Whole = Field(1000, ge=1, le=MAX_STEPS)
    batch_size: Whole = Field(128, ge=1)  # at most the training split: checked when data is loaded
    eval_every_steps: Whole = Field(500, ge=1)
    log_every_steps: Whole = Field(100, ge=1)
    steps_per_call: Whole = Field(
        10, ge=1
    )  # steps fused into one compiled call (written out on the CPU)
    seed: Whole = Field(0, ge=0, le=MAX_SEED)
    early_stop: EarlyStop | None = None  # stop on a validation plateau, keeping the best checkpoint
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["float32", "bf16"] = (
        "float32"  # bf16: compute in bfloat16, keep float32 weights
    )
    test_time_flip: bool = False  # evaluate on the mean logits of each image and its mirror
    # > 0: average in, at half weight, the images shifted diagonally by +/- this many pixels
    test_time_shift: Whole = Field(0, ge=0, le=4)
    # Devices the batch splits over (cnnlab.mesh): all of them, or the first N.
    devices: Literal["all"] | Annotated[int, Field(ge=1)] = "all"

    @model_validator(mode="after")
    def _cadence_fits_calls(self):
        for key in ("log_every_steps", "eval_every_steps"):
            if getattr(self, key) % self.steps_per_call:
                raise ValueError(
                    f"{key} ({getattr(self, key)}) must be a multiple of steps_per_call ({self.steps_per_call})"
                )
        return self


class _Top(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=80)
    data: DataConfig = DataConfig()
    model: Any = None
    augment: Any = None
    optimizer: Any = None
    train: TrainConfig = TrainConfig()

    @field_validator("model", "optimizer")
    @classmethod
    def _mapping(cls, value):
        if value is not None and not isinstance(value, dict):
            raise ValueError("expected a mapping, or the name of a fragment file")
        return value


@dataclass(frozen=True)
class Experiment:
    """A resolved, validated experiment. `raw` is what config.yaml holds, to rebuild it exactly."""

    name: str
    data: DataConfig
    model: Any  # cnnlab.models.ModelSpec
    augment: tuple  # of cnnlab.augment.AugmentSpec
    optimizer: Any  # cnnlab.optim.OptimizerSpec
    train: TrainConfig
    raw: dict = field(compare=False, repr=False)
    tree: Any = field(default=None, compare=False, repr=False)  # `raw` with source locations

    def user_error(self, error: SpecError) -> UserError:
        """A problem found after validation (e.g. a shape that does not fit), at its file:line."""
        return located_error(self.tree, error)


def experiment_from_tree(tree: dict) -> Experiment:
    """Validate a composed tree (raises SpecError with the full key path)."""
    from cnnlab.augment import parse_augment
    from cnnlab.models import parse_model_spec
    from cnnlab.optim import parse_optimizer_spec

    top = validate(_Top, tree)
    if top.model is None:
        raise SpecError(
            ("model",), "required key is missing (a mapping, or a fragment name such as cnn_small)"
        )

    def parse(key, parser, value):
        try:
            return parser(value)
        except SpecError as error:
            raise error.within(key) from None

    return Experiment(
        name=top.name,
        data=top.data,
        model=parse("model", parse_model_spec, top.model),
        augment=parse("augment", parse_augment, top.augment or []),
        optimizer=parse("optimizer", parse_optimizer_spec, top.optimizer or {}),
        train=top.train,
        raw=to_plain(tree),
        tree=tree,
    )


def load_experiment(name: str | Path | None = None, overrides: Sequence[str] = ()) -> Experiment:
    """Read, compose, override and validate an experiment; errors name `file:line: key`."""
    path = find_experiment(name or DEFAULT_EXPERIMENT)
    tree = _load_tree(path)
    tree.source = f"{path}:1"
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return experiment_from_tree(tree)
    except SpecError as error:
        raise located_error(tree, error) from None


def with_settings(experiment: Experiment, settings: dict[str, Any], where: str) -> Experiment:
    """A new experiment: `experiment` with dotted keys set to values, validated again; errors
    name `where` for the keys it wrote (e.g. a sweep file's line)."""
    tree = copy.deepcopy(experiment.tree)
    for key, value in settings.items():
        set_key(tree, key, value, where)
    try:
        return experiment_from_tree(tree)
    except SpecError as error:
        raise located_error(tree, error) from None


def check_batch_size(experiment: Experiment, train_examples: int) -> None:
    """A batch larger than the training split would be cut down silently: refuse it instead,
    with the numbers, at the line that set it."""
    batch = experiment.train.batch_size
    if batch > train_examples:
        raise experiment.user_error(
            SpecError(
                ("train", "batch_size"),
                f"{batch} is larger than the training split ({train_examples} images after "
                f"{experiment.data.val_fraction:g} went to validation); use at most {train_examples}",
            )
        )


def dump_experiment(experiment: Experiment, path: Path) -> None:
    write_text(path, yaml.safe_dump(experiment.raw, sort_keys=False))
