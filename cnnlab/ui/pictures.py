"""Arrays from `probe` turned into pictures (Pillow): feature-map grids, first-layer filters,
saliency, and the input as the model receives it. The page and the CLI commands draw the same
pictures from here."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 56  # pixels a feature map or filter is drawn at (nearest-neighbour, so pixels stay sharp)
GAP = 4
LABEL = 18  # height of a row's caption
BACKGROUND = (255, 255, 255)


def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def colorize(values: np.ndarray, low: float, high: float, cmap: str = "viridis") -> Image.Image:
    """A 2-D array as a coloured image, `low`..`high` spanning the colour map."""
    span = max(high - low, 1e-12)
    index = np.clip((values - low) / span * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(_lut(cmap)[index])


def enlarge(image: Image.Image, size: int = TILE) -> Image.Image:
    """Scaled so its longer side is `size`, pixels kept square and sharp."""
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _font():
    return ImageFont.load_default()


def _grid(tiles: Sequence[Image.Image], columns: int) -> Image.Image:
    width = max(t.width for t in tiles)
    height = max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = Image.new(
        "RGB", (columns * (width + GAP) - GAP, rows * (height + GAP) - GAP), BACKGROUND
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        sheet.paste(tile, (column * (width + GAP), row * (height + GAP)))
    return sheet


def _captioned(caption: str, picture: Image.Image) -> Image.Image:
    sheet = Image.new(
        "RGB", (max(picture.width, 8 * len(caption)), picture.height + LABEL), BACKGROUND
    )
    ImageDraw.Draw(sheet).text((0, 2), caption, fill=(0, 0, 0), font=_font())
    sheet.paste(picture, (0, LABEL))
    return sheet


def _stack(pictures: Sequence[Image.Image]) -> Image.Image:
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height + 2 * GAP for p in pictures)), BACKGROUND)
    top = 0
    for picture in pictures:
        sheet.paste(picture, (0, top))
        top += picture.height + 2 * GAP
    return sheet


def input_picture(pixels: np.ndarray, size: int = 168) -> Image.Image:
    """The (H, W, C) uint8 input as the model sees it, enlarged."""
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    return enlarge(Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode), size)


def feature_maps(output: np.ndarray, limit: int = 16, columns: int = 8) -> Image.Image:
    """The first `limit` channels of one (H, W, C) layer output, one tile each, on one colour
    scale for the whole layer (so a weak channel looks weak)."""
    channels = output[..., :limit]
    low, high = float(channels.min()), float(channels.max())
    tiles = [enlarge(colorize(channels[..., c], low, high)) for c in range(channels.shape[-1])]
    return _grid(tiles, min(columns, len(tiles)))


def spatial_layers(layers, kinds: tuple[str, ...] = ("conv",)) -> list:
    """The (row, output) pairs worth drawing as maps: image-shaped outputs of the given kinds."""
    return [(row, out) for row, out in layers if row.kind in kinds and out.ndim == 3]


def layer_caption(row, output: np.ndarray, limit: int) -> str:
    shown = min(limit, output.shape[-1])
    shape = "x".join(str(n) for n in output.shape)
    return f"layer {row.name} {row.kind} {row.detail}: {shape}, first {shown} channels"


def feature_maps_sheet(layers, limit: int = 16) -> Image.Image:
    """Every conv layer's maps, one captioned block per layer."""
    blocks = [
        _captioned(layer_caption(row, out, limit), feature_maps(out, limit))
        for row, out in spatial_layers(layers)
    ]
    if not blocks:
        return _captioned("the model has no conv layers", Image.new("RGB", (1, 1), BACKGROUND))
    return _stack(blocks)


def filters_picture(kernel: np.ndarray, limit: int = 64, columns: int = 16) -> Image.Image:
    """First-layer filters (kh, kw, in, out): colour filters as RGB (each scaled on its own),
    others per input channel 0 on a red-white-blue scale shared by all filters."""
    kernel = kernel[..., :limit]
    if kernel.shape[2] == 3:
        tiles = []
        for f in range(kernel.shape[-1]):
            one = kernel[..., f]
            scaled = (one - one.min()) / max(float(one.max() - one.min()), 1e-12)
            tiles.append(enlarge(Image.fromarray((scaled * 255).astype(np.uint8), "RGB"), 40))
    else:
        bound = float(np.abs(kernel[:, :, 0]).max())
        tiles = [
            enlarge(colorize(kernel[:, :, 0, f], -bound, bound, "RdBu_r"), 40)
            for f in range(kernel.shape[-1])
        ]
    return _grid(tiles, min(columns, len(tiles)))


def saliency_map(gradient: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1]: the largest absolute gradient over channels, scaled to its maximum."""
    magnitude = np.abs(gradient).max(-1)
    return magnitude / max(float(magnitude.max()), 1e-12)


def saliency_picture(pixels: np.ndarray, gradient: np.ndarray, size: int = 168) -> Image.Image:
    """The input, the saliency heat map, and the two blended, side by side."""
    base = input_picture(pixels, size).convert("RGB")
    heat = enlarge(colorize(saliency_map(gradient), 0.0, 1.0, "inferno"), size)
    blend = Image.blend(base, heat, 0.6)
    return _grid([base, heat, blend], 3)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    """The picture inline, for a JSON answer to the page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def save(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
