"""Classify image files with a trained run: top-k classes and their probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cnnlab.errors import UserError

MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode


@dataclass(frozen=True)
class Prediction:
    path: Path
    original_size: tuple[int, int]  # (width, height) of the file, before resizing
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    checkpoint: str  # which checkpoint answered: 'best' or 'latest'
    step: int
    model_input: Path | None = None  # the image as the model was given it (PNG)
    warning: str | None = None  # the input looks unlike the training images


def open_image(path: Path):
    """A decoded Pillow image, turned upright by its EXIF orientation; unreadable, damaged or
    oversized files (files.MAX_IMAGE_PIXELS) are a one-line error naming the file."""
    from PIL import ImageOps

    from cnnlab.files import read_image

    with read_image(path, path) as image:
        return ImageOps.exif_transpose(image)


def to_input(image, shape: Sequence[int]) -> np.ndarray:
    """A Pillow image as the run's input: (H, W, C) uint8, greyscale or RGB to match C, resized
    (stretched, not cropped) to H x W."""
    height, width, channels = shape
    if channels not in MODES:
        raise UserError(f"the run takes {channels}-channel images; predict handles 1 or 3")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = _on_white(image)
    image = image.convert(MODES[channels])
    if image.size != (width, height):
        from PIL import Image

        image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def _on_white(image):
    """Transparent pixels become white rather than whatever colour they happen to hold."""
    from PIL import Image

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def probabilities_of(restored, images: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities of a restored run for uint8 (N, H, W, C) images."""
    from cnnlab.step import logits

    return softmax(logits(restored.program, restored.state, images))


def top_classes(
    probabilities: np.ndarray, class_names: Sequence[str], k: int
) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(class_names))]
    return [(class_names[i], float(probabilities[i])) for i in order]


def predict_files(
    run_dir: Path, paths: Sequence[Path], top_k: int = 5, checkpoint: str = "best"
) -> list[Prediction]:
    """The `top_k` most likely classes for each image file, from the run's checkpoint."""
    from cnnlab.training import restore

    if top_k < 1:
        raise UserError(f"--top-k {top_k}: give 1 or more")
    images = [open_image(Path(path)) for path in paths]  # bad files fail before the slow part
    restored = restore(run_dir, checkpoint)
    batch = np.stack([to_input(image, restored.image_shape) for image in images])
    probabilities = probabilities_of(restored, batch)
    names, kind, step = restored.class_names, restored.checkpoint, restored.step
    saved = save_inputs(run_dir, paths, batch)
    warnings = [input_warning(image, restored.dataset.get("brightness")) for image in batch]
    return [
        Prediction(Path(path), image.size, top_classes(row, names, top_k), kind, step, *extra)
        for path, image, row, *extra in zip(
            paths, images, probabilities, saved, warnings, strict=True
        )
    ]


def save_inputs(run_dir: Path, paths: Sequence[Path], batch: np.ndarray) -> list[Path]:
    """Each input as the model receives it (converted and resized), enlarged without smoothing
    so small inputs stay visible, under the run's predict/ folder."""
    from PIL import Image

    folder = Path(run_dir) / "predict"
    folder.mkdir(exist_ok=True)
    saved = []
    for path, image in zip(paths, batch, strict=True):
        height, width, channels = image.shape
        scale = max(1, 128 // max(height, width))
        picture = Image.fromarray(image[..., 0] if channels == 1 else image)
        picture = picture.resize((width * scale, height * scale), Image.Resampling.NEAREST)
        target = folder / f"{Path(path).stem}_input.png"
        picture.save(target)
        saved.append(target)
    return saved


def brightness(train_images: np.ndarray) -> list[float]:
    """[mean, std] of the training images' per-image mean brightness on the [0, 1] scale:
    recorded with a run, so that predictions can be checked without the data."""
    means = train_images.reshape(len(train_images), -1).mean(1) / 255.0
    return [round(float(means.mean()), 6), round(max(float(means.std()), 0.02), 6)]


def input_warning(image: np.ndarray, recorded: list[float] | None) -> str | None:
    """A warning when the image's mean brightness is far outside that of the training images
    (more than 3 standard deviations of their per-image means, as `brightness` recorded them);
    it names inverted polarity when the inverted image would fit. Runs that recorded nothing
    get no warning."""
    if not recorded:
        return None
    centre, spread = recorded
    mean = float(image.mean()) / 255.0
    if abs(mean - centre) <= 3 * spread:
        return None
    seen = f"mean brightness {mean:.2f}, training images {centre:.2f} ± {spread:.2f}"
    if abs((1 - mean) - centre) <= 3 * spread:
        dark = "light on dark" if centre < 0.5 else "dark on light"
        return f"inverted polarity? {seen}: the training images are {dark}; invert the image"
    return f"unlike the training images: {seen}"


def predictions_table(predictions: Sequence[Prediction], bar_width: int = 20) -> Group:
    """One small table per image: rank, class, probability and a bar."""
    tables = []
    for prediction in predictions:
        width, height = prediction.original_size
        table = Table(title=f"{prediction.path.name} ({width}x{height})", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("probability", justify="right")
        table.add_column("")
        for rank, (name, probability) in enumerate(prediction.top, start=1):
            bar = "█" * round(probability * bar_width)
            style = "bold" if rank == 1 else ""
            table.add_row(str(rank), name, f"{probability:.2%}", f"[cyan]{bar}[/]", style=style)
        tables.append(table)
        if prediction.warning:
            tables.append(Text.from_markup(f"[yellow]warning:[/] {escape(prediction.warning)}"))
        if prediction.model_input:
            tables.append(Text(f"as the model saw it: {prediction.model_input}", style="dim"))
    return Group(*tables)
