"""Predicting image files with a trained run (8x8 greyscale digits), through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_EXPERIMENT, Cli, write
from PIL import Image

import cnnlab
from cnnlab.data import load_dataset
from cnnlab.prediction import predict_files, to_input

FAST_TRAIN = (
    "train: {steps: 6, batch_size: 32, eval_every_steps: 2, log_every_steps: 2, "
    "steps_per_call: 2, seed: 0}\n"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    lines = [line for line in TINY_EXPERIMENT.splitlines() if not line.startswith("train:")]
    experiment = write(folder / "tiny.yaml", "\n".join(lines) + "\n" + FAST_TRAIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_RUNS_DIR", str(folder / "runs"))
        patch.setenv("CNNLAB_CACHE_DIR", str(folder / "cache"))
        Cli()("train", experiment)
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """A 40x30 RGB PNG, a 100x100 greyscale JPEG and a 20x20 RGBA PNG."""
    rng = np.random.default_rng(0)
    paths = {
        "rgb": tmp_path / "colour.png",
        "grey": tmp_path / "grey.jpg",
        "rgba": tmp_path / "clear.png",
    }
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8), "RGB").save(paths["rgb"])
    Image.fromarray(rng.integers(0, 256, (100, 100), np.uint8), "L").save(paths["grey"])
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), np.uint8), "RGBA").save(paths["rgba"])
    return paths


def percentages(block: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+\.\d\d)%", block)]


def test_predict_prints_top_k_with_probabilities_for_any_size_and_channels(cli, run, images):
    out = cli("predict", run, images["rgb"], images["grey"], "--top-k", "10").stdout
    assert "best checkpoint, step 6" in out
    start_rgb, start_grey = out.index("colour.png (40x30)"), out.index("grey.jpg (100x100)")
    for block in (out[start_rgb:start_grey], out[start_grey:]):
        shares = percentages(block)
        assert len(shares) == 10  # every digit class once
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) == pytest.approx(100, abs=0.1)


def test_predict_limits_rows_to_top_k(cli, run, images):
    out = cli("predict", run, images["rgba"], "--top-k", "3", "--checkpoint", "latest").stdout
    assert "latest checkpoint" in out
    assert len(percentages(out)) == 3


def test_predict_file_at_native_size_matches_the_model_on_the_array(run, tmp_path):
    digits = load_dataset("digits").test.images[:2]
    paths = []
    for index, image in enumerate(digits):
        paths.append(tmp_path / f"digit{index}.png")
        Image.fromarray(image[..., 0], "L").save(paths[-1])
    expected = cnnlab.predict(run, digits)
    assert expected.shape == (2, 10) and np.allclose(expected.sum(-1), 1, atol=1e-5)
    floats = cnnlab.predict(run, digits[0].astype(np.float32) / 255)  # one float image
    np.testing.assert_allclose(floats[0], expected[0], atol=1e-6)
    names = cnnlab.open_run(run).restore().class_names
    predictions = predict_files(run, paths, top_k=10)
    for prediction, probabilities in zip(predictions, expected, strict=True):
        got = np.array([p for _, p in sorted(prediction.top, key=lambda t: names.index(t[0]))])
        np.testing.assert_allclose(got, probabilities, atol=1e-6)


def test_to_input_converts_channels_and_size():
    colour = Image.new("RGB", (40, 30), (200, 10, 10))
    assert to_input(colour, (8, 8, 1)).shape == (8, 8, 1)
    grey = Image.new("L", (5, 9), 77)
    as_rgb = to_input(grey, (16, 12, 3))
    assert as_rgb.shape == (16, 12, 3) and as_rgb.dtype == np.uint8
    assert (as_rgb == 77).all()
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert (to_input(clear, (4, 4, 1)) == 255).all()  # transparent becomes white, not black


def test_missing_image_is_one_line_error(cli, run, images, tmp_path):
    result = cli("predict", run, images["rgb"], tmp_path / "nope.png", expect=2)
    assert f"image not found: {tmp_path / 'nope.png'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_image_is_one_line_error(cli, run, tmp_path):
    fake = write(tmp_path / "fake.jpg", "not an image")
    result = cli("predict", run, fake, expect=2)
    assert f"cannot read image {fake}" in result.stderr


def test_unknown_run_is_one_line_error(cli, images):
    result = cli("predict", "no-such-run", images["rgb"], expect=2)
    assert "no run matches 'no-such-run'" in result.stderr


def test_a_run_predicts_after_its_dataset_is_gone_and_eval_says_what_is_missing(
    cli, tmp_path, isolated_runs
):
    rng = np.random.default_rng(0)
    data = tmp_path / "shapes"
    for split, count in (("train", 12), ("test", 4)):
        for name, level in (("dark", 40), ("light", 220)):
            (data / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(level, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(data / split / name / f"{index}.png")
    experiment = write(
        tmp_path / "folder.yaml",
        TINY_EXPERIMENT.replace(
            "{source: digits, val_fraction: 0.1}", f"{{source: folder, path: {data}}}"
        )
        .replace("steps: 40", "steps: 20")
        .replace("batch_size: 32", "batch_size: 8"),
    )
    cli("train", experiment)
    (run,) = isolated_runs.iterdir()
    probe = np.asarray(Image.open(data / "test" / "light" / "0.png"))
    import shutil

    shutil.rmtree(data)
    probabilities = cnnlab.predict(run, probe)
    assert probabilities.shape == (1, 2) and probabilities.sum() == pytest.approx(1, abs=1e-5)
    image = write(tmp_path / "probe.png", "")
    Image.fromarray(probe).save(image)
    out = cli("predict", run, image, "--top-k", "2").stdout
    assert "dark" in out and "light" in out
    missing = cli("eval", run, expect=2)
    assert str(data) in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
