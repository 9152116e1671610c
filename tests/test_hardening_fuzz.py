"""Property-based fuzzing of experiment and sweep files through the real CLI: random bytes,
random nesting and random keys and values from the schema never give a traceback; files that
cannot be valid end in exit 2 with one `error:` line, and no run folder is made."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from conftest import EXPERIMENTS, Cli, run_dirs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DIGITS = EXPERIMENTS / "digits.yaml"
FUZZ = settings(
    # CNNLAB_FUZZ_EXAMPLES=500 for a longer hunt; the default keeps the suite fast.
    max_examples=int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLI = Cli()


def check(args: list, *, must_fail: bool, runs: Path) -> None:
    result = CLI(*args, expect=None)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    if must_fail or result.exit_code != 0:
        assert result.exit_code == 2, output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
    assert run_dirs(runs) == []


FUZZ_DIR = Path(tempfile.mkdtemp(prefix="cnnlab-fuzz-"))
atexit.register(shutil.rmtree, FUZZ_DIR, ignore_errors=True)


def fuzz_file(data: bytes | str) -> Path:
    """The example as a file (one file, overwritten by each example)."""
    path = FUZZ_DIR / "example.yaml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# Scalars YAML may hold, including the awkward ones: huge numbers, infinities, control text.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
KEYS = st.one_of(st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


def dump(tree) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_experiment(data, isolated_runs):
    check(["train", fuzz_file(data)], must_fail=True, runs=isolated_runs)


@FUZZ
@given(tree=TREES)
def test_random_nesting_as_experiment(tree, isolated_runs):
    # Without a model no experiment is valid, whatever else the tree holds.
    if isinstance(tree, dict):
        tree.pop("model", None)
    check(["train", fuzz_file(dump(tree))], must_fail=True, runs=isolated_runs)


SCHEMA_KEYS = [
    "name",
    "data.source",
    "data.val_fraction",
    "data.normalize",
    "data.path",
    "model",
    "model.layers",
    "model.init",
    "augment",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.schedule",
    "optimizer.clip_norm",
    "train.steps",
    "train.batch_size",
    "train.eval_every_steps",
    "train.steps_per_call",
    "train.seed",
    "train.early_stop",
    "train.label_smoothing",
    "train.precision",
]


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(SCHEMA_KEYS), TREES), min_size=1, max_size=3))
def test_random_schema_values_with_inspect(changes, isolated_runs):
    """Digits with schema keys set to random values: valid or one line, never a traceback
    (inspect builds the model and data without training, so it never makes a run folder)."""
    tree = yaml.safe_load(DIGITS.read_text())
    tree["model"] = "cnn_tiny"
    for key, value in changes:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    check(["inspect", fuzz_file(dump(tree))], must_fail=False, runs=isolated_runs)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_sweep(data, isolated_runs):
    check(["sweep", fuzz_file(data)], must_fail=True, runs=isolated_runs)


SWEEP_KEYS = st.sampled_from(["name", "metric", "grid", "random", "seeds", "set"])


@FUZZ
@given(
    sections=st.dictionaries(SWEEP_KEYS | st.text(max_size=6), TREES, max_size=4),
    steps_key=st.sampled_from(["train.steps", "optimizer.lr", "train.seed", "x.y"]),
)
def test_random_sweep_sections(sections, steps_key, isolated_runs):
    """A sweep of digits with random sections; a valid one would train, so each keeps a value
    that cannot be valid (a grid of a key holding a mapping of mappings)."""
    sections.pop("base", None)
    sections["grid"] = {steps_key: [{"a": {"b": None}}]}
    text = f"base: {DIGITS}\n" + dump(sections)
    check(["sweep", fuzz_file(text)], must_fail=True, runs=isolated_runs)
