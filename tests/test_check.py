"""`cnnlab check`: correct implementations pass in both forms, planted bugs fail with their hint,
no hint fires on a correct one, and the command's exit codes, JSON, templates and list."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from cnnlab.check import CATALOGUE, check, template

FIXTURES = Path(__file__).parent / "check_fixtures"
sys.path.insert(0, str(FIXTURES))  # bugs.py imports its neighbours
LAYERS = [name for name, entry in CATALOGUE.items() if entry.kind == "layer"]
OPTIMIZERS = [name for name, entry in CATALOGUE.items() if entry.kind == "optimizer"]


def run(file: str, name: str, against: str | None = None):
    return check(f"{FIXTURES / file}:{name}", against, speed=False)


def failures(report) -> list:
    return [(t.title, r.case, r.note) for t in report.tables for r in t.rows if not r.passed]


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("file", ["jax_layers.py", "numpy_layers.py"])
def test_correct_layers_pass_without_hints(file, name):
    report = run(file, name)
    assert report.form == ("jax" if file.startswith("jax") else "numpy")
    assert report.passed, failures(report)
    assert report.hints == []
    assert sum(len(t.rows) for t in report.tables) >= 4


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_correct_optimizers_pass_without_hints(name):
    report = run("optimizers.py", name)
    assert report.passed, failures(report)
    assert report.hints == []
    problems = {row.case.split(",")[0] for row in report.tables[0].rows}
    assert problems == {"quadratic", "network"}


def test_a_numpy_optimizer_runs_step_by_step_and_passes():
    report = run("optimizers.py", "adam_numpy", "adam")
    assert report.passed, failures(report)


# file, name, against, the hint that must fire
PLANTED = [
    ("bugs.py", "conv_flipped", "conv2d", "kernel flipped"),
    ("bugs.py", "conv_channels_first", "conv2d", "layout"),
    ("bugs.py", "conv_pad_before", "conv2d", "padding off by one"),
    ("bugs.py", "softmax_naive", "softmax", "overflow"),
    ("bugs.py", "max_pool_all_ties", "max_pool", "max-pool gradient to every tied maximum"),
    ("jax_layers.py", "batch_norm", "batch_norm", None),  # control: no hint
    ("bugs.py", "bn_eval_batch_stats", "batch_norm", "batch statistics in eval"),
    ("bugs.py", "bn_unbiased", "batch_norm", "unbiased variance"),
    ("bugs.py", "layer_norm_eps_outside", "layer_norm", "epsilon outside the square root"),
    ("bugs.py", "gelu_tanh", "gelu", "tanh approximation"),
    ("bugs.py", "dropout_keep_rate", "dropout", "rate is the keep probability"),
    ("optimizers.py", "adam_no_correction", "adam", "no bias correction"),
    ("optimizers.py", "adam_eps_inside", "adam", "epsilon inside the square root"),
    ("optimizers.py", "adamw_coupled", "adamw", "weight decay coupled"),
    ("optimizers.py", "momentum", "nesterov", "plain momentum"),
    ("optimizers.py", "adam_python_counter", "adam", "state outside the optimizer state"),
]


@pytest.mark.parametrize(("file", "name", "against", "hint"), PLANTED, ids=[p[1] for p in PLANTED])
def test_planted_bug_fails_with_its_hint(file, name, against, hint):
    report = run(file, name, against)
    if hint is None:
        assert report.passed and report.hints == []
        return
    assert not report.passed
    assert [h.name for h in report.hints] == [hint], report.hints


def test_unfilled_template_imports_and_fails_as_not_written(tmp_path):
    for numpy in (False, True):
        path = tmp_path / f"t{int(numpy)}.py"
        path.write_text(template("conv2d", numpy=numpy))
        ast.parse(path.read_text())
        report = check(f"{path}:conv2d", speed=False)
        assert not report.passed
        assert "not written yet: NotImplementedError" in report.tables[0].rows[0].note


@pytest.mark.parametrize("name", ["conv2d", "batch_norm", "adam", "dropout"])
@pytest.mark.parametrize("numpy", [False, True])
def test_templates_are_python_that_imports(tmp_path, name, numpy):
    import importlib.util

    path = tmp_path / f"my_{name}.py"
    path.write_text(template(name, numpy))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if CATALOGUE[name].kind == "layer" and numpy:
        assert callable(module.__dict__[f"{name}_forward"])
        assert callable(module.__dict__[f"{name}_backward"])
    else:
        assert callable(module.__dict__[name])
    assert CATALOGUE[name].signature in path.read_text()


# ------------------------------------------------------------------------ the command


def test_cli_passing_check_exits_0_and_reports_speed(cli):
    result = cli("check", f"{FIXTURES / 'numpy_layers.py'}:relu", expect=0)
    assert "PASS" in result.stdout
    assert "slower than the reference" in result.stdout or "faster than the" in result.stdout


def test_cli_failing_check_exits_1_with_table_shapes_and_hint(cli):
    result = cli(
        "check",
        f"{FIXTURES / 'bugs.py'}:conv_flipped",
        "--against",
        "conv2d",
        "--no-speed",
        expect=1,
    )
    out = result.stdout
    assert "FAIL" in out and "first failing case" in out
    assert "hint:" in out and "kernel flipped" in out
    assert "1x5x5x1" in out  # the first failing case's input shapes


def test_cli_json_report(cli, tmp_path):
    path = tmp_path / "report.json"
    cli("check", f"{FIXTURES / 'jax_layers.py'}:softmax", "--json", path, "--no-speed", expect=0)
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["against"] == "softmax"
    assert {c["title"] for c in report["checks"]} == {"values", "gradients vs reference"}
    result = cli("check", f"{FIXTURES / 'bugs.py'}:softmax_naive", "--against", "softmax",
                 "--json", "-", "--no-speed", expect=1)  # fmt: skip
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert [h["name"] for h in report["hints"]] == ["overflow"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere.py:conv2d"], "file not found"),
        (["{fixtures}/jax_layers.py"], "name the function to check"),
        (["{fixtures}/jax_layers.py:conv3d"], "did you mean 'conv2d'"),
        (["{fixtures}/jax_layers.py:relu", "--against", "relux"], "not in the catalogue"),
        (["{fixtures}/signatures.py:conv2d"], "add the argument 'padding'"),
        (["{fixtures}/signatures.py:dense"], "extra argument 'scale'"),
        (["{fixtures}/signatures.py:softmax"], "has softmax_forward but not softmax_backward"),
        (["--template", "convolution"], "not in the catalogue"),
        ([], "give FILE.py:NAME"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(cli, args, message):
    args = [a.format(fixtures=FIXTURES) for a in args]
    result = cli("check", *args, expect=2)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_template_and_list(cli, tmp_path):
    result = cli("check", "--template", "conv2d", "--numpy", expect=0)
    ast.parse(result.stdout)
    assert "def conv2d_forward(x, w, b, stride=1, padding='same'):" in result.stdout
    listing = cli("check", "--list", expect=0).stdout
    for name in CATALOGUE:
        assert name in listing
