"""Nothing lost on --resume: a run killed with no usable latest checkpoint but a best one, or
metric rows, is never wiped silently. It resumes from the best checkpoint with a note, or
refuses with one line that says what to do; the best checkpoint and the rows stay either way.

cnnlab resumes from the best checkpoint with a note, and refuses a run with rows but no
checkpoint at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture
def killed(trained, isolated_runs) -> Path:
    """A run of 40 steps killed after step 20: best/20 and 4 metric rows remain, but
    checkpoints/latest is gone and no summary was written."""
    run = Path(shutil.copytree(trained, isolated_runs / trained.name))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("steps: 20", "steps: 40"))
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "latest")
    return run


def rows(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


def test_resume_without_latest_keeps_best_and_rows(cli, killed):
    before = rows(killed)
    result = cli("train", "--resume", killed, expect=None)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.exit_code == 0, output  # resumed from the best checkpoint, and said so
    assert "note:" in output and "resuming from its best (step 20)" in output
    assert rows(killed)[: len(before)] == before  # rows up to step 20 are kept
    steps = [json.loads(line)["step"] for line in rows(killed)]
    assert steps == sorted(steps) and steps[-1] == 40
    best = [int(p.name) for p in (killed / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    assert best and best[0] >= 20  # the best checkpoint is kept, or a better one replaced it


def test_resume_without_any_checkpoint_but_rows_is_not_silent(cli, killed):
    shutil.rmtree(killed / "checkpoints" / "best")
    before = rows(killed)
    result = cli("train", "--resume", killed, expect=None)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.exit_code == 2  # refused, not wiped: one line that says what to do
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no checkpoint" in errors[0] and "cnnlab train" in errors[0]
    assert rows(killed) == before
