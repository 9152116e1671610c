"""Shared by the web page's tests: one tiny digits run, trained once per test session through
the real CLI, and a drawn digit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, Cli
from PIL import Image, ImageDraw

_trained: dict[str, Path] = {}


def trained_run(factory: pytest.TempPathFactory) -> Path:
    """A digits run of 60 steps, evaluated (so it has a confusion matrix); trained once."""
    if "run" not in _trained:
        folder = factory.mktemp("ui-runs")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CNNLAB_RUNS_DIR", str(folder / "runs"))
            patch.setenv("CNNLAB_CACHE_DIR", str(folder / "cache"))
            cli = Cli()
            cli("train", EXPERIMENTS / "digits.yaml", "--set", "train.steps=60")
            (run_dir,) = (folder / "runs").iterdir()
            cli("eval", run_dir)
        _trained["run"] = run_dir
    return _trained["run"]


def drawn_digit(size: int = 280) -> Image.Image:
    """A white '7' on black, as the page's canvas draws it."""
    image = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(image)
    pen.line([(60, 60), (220, 60), (120, 240)], fill=255, width=24)
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
