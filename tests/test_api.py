"""The Python API, as the README shows it: its example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

import cnnlab
from cnnlab.errors import UserError


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(isolated_runs, capsys):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102
    run = namespace["run"]
    assert run.path.parent == isolated_runs and run.summary["status"] == "completed"
    assert run.metrics[-1]["step"] == 300
    assert 0.9 <= namespace["report"]["top1"] <= 1.0
    assert set(namespace["report"]) >= {"top1", "top5", "per_class", "confusion"}
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert namespace["same"].path == run.path
    assert namespace["check"].memorised
    assert "test top-1" in capsys.readouterr().out


def test_api_errors_are_user_errors(isolated_runs):
    with pytest.raises(UserError, match="no run matches"):
        cnnlab.open_run("nothing-here")
    with pytest.raises(UserError, match="experiment file not found"):
        cnnlab.load_experiment("no_such_experiment")


def test_predict_checks_the_image_shape(tiny_experiment):
    run = cnnlab.train(cnnlab.load_experiment(tiny_experiment, ["train.steps=20"]))
    with pytest.raises(UserError, match=r"the run takes \(8, 8, 1\)"):
        cnnlab.predict(run, np.zeros((2, 28, 28, 1), np.uint8))
    assert Path(run.path / "dataset.json").is_file()
