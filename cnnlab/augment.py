"""Random image transforms as pure jax functions, built by name from the experiment's list.

Each transform draws its own random numbers per sample, applies to one image (vmapped over the
batch) and fires with its probability `p`, independently for every sample (or, for an
alternating flip, by the example and the epoch: `Seen`). Mixup and cutmix mix
samples within the batch and mix the one-hot labels the same way. Images are float32 NHWC in
[0, 1] and stay so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)

from cnnlab.errors import SpecError
from cnnlab.hyper import STATIC
from cnnlab.registry import Registry
from cnnlab.validation import validate

Image = jax.Array  # (H, W, C) float in [0, 1]
Shape = tuple[int, int, int]

Probability = Annotated[float, Strict(), Field(ge=0, le=1)]
Unit = Probability  # fill levels
NonNegative = Annotated[float, Strict(), Field(ge=0)]
Positive = Annotated[float, Strict(), Field(gt=0)]
Pixels = Annotated[int, Strict(), Field(ge=0)]
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")


def _symmetric(value: Any) -> Any:
    """A bare number d means the range [-d, d]; a pair stays as given."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must be >= 0 (meaning [-d, d]) or a pair [low, high]")
        return (-value, value)
    return value


def _same(value: Any) -> Any:
    """A bare number n means the range [n, n]."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value, value)
    return value


SymmetricRange = Annotated[tuple[float, float], BeforeValidator(_symmetric)]
PixelRange = Annotated[tuple[Pixels, Pixels], BeforeValidator(_same)]


class Seen(NamedTuple):
    """Which training examples a batch holds and in which epoch: what a transform needs to
    follow an example across epochs. `key` is the same for the whole run."""

    examples: jax.Array  # (B,) int indices into the training split
    epoch: jax.Array  # int scalar
    key: jax.Array


class AugmentSpec(BaseModel):
    """One transform of the list: its parameters, and how it applies to an image or a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str]
    per_sample: ClassVar[bool] = True  # False: mixes within the batch (mixup, cutmix)
    uniforms: ClassVar[int] = 0  # random numbers in [0, 1) that one application takes
    p: Probability = 1.0

    def problem(self, shape: Shape) -> str | None:
        """Why this transform cannot apply to images of `shape` (H, W, C), or None."""
        return None

    def draw(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """Random numbers for a batch, one row per sample; column 0 (in [0, 1)) decides whether
        the transform fires. One random call per transform keeps compile time short."""
        return _random(jax.random.uniform, key, (images.shape[0], 1 + self.uniforms))

    def fires(self, draw: jax.Array, seen: Seen | None) -> jax.Array:
        """(B,) bool: which samples this transform changes."""
        return draw[:, 0] < self.p

    def apply(self, draw: jax.Array, image: Image) -> Image:
        """Transform one image given its row of `draw` without column 0 (per-sample
        transforms)."""
        raise NotImplementedError

    def mix(self, key: jax.Array, images: jax.Array, labels: jax.Array):
        """Transform a whole batch and its labels (batch transforms), `p` per sample."""
        raise NotImplementedError


TRANSFORMS: Registry[type[AugmentSpec]] = Registry("augmentation")


def transform(name: str) -> Callable[[type[AugmentSpec]], type[AugmentSpec]]:
    def add(cls: type[AugmentSpec]) -> type[AugmentSpec]:
        cls.name = name
        return TRANSFORMS.register(name)(cls)

    return add


def _need_channels(shape: Shape, count: int, what: str) -> str | None:
    if shape[2] != count:
        return f"{what} needs {count}-channel (RGB) images, these have {shape[2]} channel(s)"
    return None


def _grey(image: Image) -> Image:
    """(H, W, 3) -> (H, W, 1) luma; one channel passes through."""
    if image.shape[-1] == 1:
        return image
    return (image @ jnp.asarray(GREY_WEIGHTS, image.dtype))[..., None]


def _random(sample, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`sample(key, shape)` drawn flat and reshaped: XLA on the CPU compiles the counter-based
    generator for a multi-dimensional shape about 5 times slower (1.3 s against 0.26 s)."""
    return sample(key, (math.prod(shape),)).reshape(shape)


def _between(u: jax.Array, low: float, high: float) -> jax.Array:
    """Map u in [0, 1) to [low, high)."""
    return low + u * (high - low)


def _integer(u: jax.Array, low, high) -> jax.Array:
    """Map u in [0, 1) to an integer in [low, high], each equally likely."""
    return jnp.clip(low + jnp.floor(u * (high - low + 1)).astype(jnp.int32), low, high)


# ---------------------------------------------------------------- geometry


def _bilinear(image: Image, rows: jax.Array, cols: jax.Array, fill: float) -> Image:
    """Sample `image` at fractional (rows, cols); outside the image reads `fill`."""
    height, width, _ = image.shape
    row0, col0 = jnp.floor(rows), jnp.floor(cols)
    row_frac, col_frac = rows - row0, cols - col0
    out = jnp.zeros(rows.shape + image.shape[-1:], image.dtype)
    for d_row, row_weight in ((0, 1 - row_frac), (1, row_frac)):
        for d_col, col_weight in ((0, 1 - col_frac), (1, col_frac)):
            r = (row0 + d_row).astype(jnp.int32)
            c = (col0 + d_col).astype(jnp.int32)
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            value = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
            value = jnp.where(inside[..., None], value, fill)
            out = out + (row_weight * col_weight)[..., None] * value
    return jnp.clip(out, 0.0, 1.0)


def _warp(image: Image, inverse: jax.Array, shift: jax.Array, fill: float) -> Image:
    """Affine warp about the image centre: output pixel q reads input at inverse @ (q - c - shift) + c.

    `inverse` is 2x2 over (row, col); `shift` moves the content by (rows, cols) pixels.
    """
    height, width, _ = image.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij"), -1)
    source = (grid - centre - shift) @ inverse.T + centre
    return _bilinear(image, source[..., 0], source[..., 1], fill)


@transform("crop")
class Crop(AugmentSpec):
    """Pad by `padding` pixels on every side (zeros or reflection), cut back to size at random."""

    uniforms: ClassVar[int] = 2
    padding: Pixels = 4
    mode: Literal["zero", "reflect"] = "zero"

    def problem(self, shape):
        if self.mode == "reflect" and self.padding >= min(shape[:2]):
            return f"reflect padding {self.padding} must be smaller than the image side {min(shape[:2])}"
        return None

    def apply(self, draw, image):
        pad = self.padding
        padded = jnp.pad(
            image,
            ((pad, pad), (pad, pad), (0, 0)),
            "reflect" if self.mode == "reflect" else "constant",
        )
        top, left = _integer(draw, 0, 2 * pad)
        return jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)


@transform("hflip")
class HFlip(AugmentSpec):
    """Mirror left-right. `alternate`: each example draws its mirror state once for the run and
    every other epoch shows the other one (airbench's alternating flip): over any two epochs the
    network sees both sides of every image, where independent draws repeat one side a quarter
    of the time. Batches without their example indices (previews) flip independently."""

    p: Probability = 0.5
    alternate: bool = False

    def fires(self, draw, seen):
        if not self.alternate or seen is None:
            return super().fires(draw, seen)
        per_example = jax.vmap(lambda e: jax.random.uniform(jax.random.fold_in(seen.key, e)))
        return (per_example(seen.examples) < self.p) ^ (seen.epoch % 2 == 1)

    def apply(self, draw, image):
        return image[:, ::-1]


@transform("vflip")
class VFlip(AugmentSpec):
    """Mirror top-bottom."""

    p: Probability = 0.5

    def apply(self, draw, image):
        return image[::-1]


@transform("rot90")
class Rot90(AugmentSpec):
    """Rotate counter-clockwise by k quarter turns, k drawn from 0..3 unless given."""

    uniforms: ClassVar[int] = 1
    k: Annotated[int, Strict(), Field(ge=0, le=3)] | None = None

    def problem(self, shape):
        if shape[0] != shape[1] and self.k not in (0, 2):
            return f"rot90 needs square images, these are {shape[0]}x{shape[1]}; use 'rotate' or 'vflip'"
        return None

    def apply(self, draw, image):
        if self.k is not None:
            return jnp.rot90(image, self.k)
        turns = jnp.stack([jnp.rot90(image, k) for k in range(4)])
        return turns[_integer(draw[0], 0, 3)]


@transform("rotate")
class Rotate(AugmentSpec):
    """Rotate counter-clockwise by an angle drawn from `degrees` (d means [-d, d]), bilinear."""

    uniforms: ClassVar[int] = 1
    degrees: SymmetricRange = (-15.0, 15.0)
    fill: Unit = 0.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.degrees[0] > self.degrees[1]:
            raise ValueError(f"degrees range [{self.degrees[0]}, {self.degrees[1]}] is reversed")
        return self

    def apply(self, draw, image):
        angle = jnp.deg2rad(_between(draw[0], *self.degrees))
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        # Rows point down, so a counter-clockwise turn on screen maps output -> input like this.
        inverse = jnp.array([[cos, sin], [-sin, cos]])
        return _warp(image, inverse, jnp.zeros(2), self.fill)


@transform("translate")
class Translate(AugmentSpec):
    """Shift by whole pixels, up to `pixels`, or up to `fraction` of the side, on each axis."""

    uniforms: ClassVar[int] = 2
    pixels: Pixels | None = None
    # A fraction becomes a whole number of pixels, which shapes the program.
    fraction: Annotated[float, Strict(), Field(ge=0, lt=1)] | None = Field(
        None, json_schema_extra=STATIC
    )
    fill: Unit = 0.0

    @model_validator(mode="after")
    def _one_of(self):
        if (self.pixels is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'pixels' or 'fraction'")
        return self

    def limits(self, shape: Shape) -> tuple[int, int]:
        if self.pixels is not None:
            return self.pixels, self.pixels
        return round(self.fraction * shape[0]), round(self.fraction * shape[1])

    def apply(self, draw, image):
        limits = jnp.array(self.limits(image.shape))
        shift = _integer(draw, -limits, limits).astype(jnp.float32)
        return _warp(image, jnp.eye(2), shift, self.fill)


@transform("scale")
class Scale(AugmentSpec):
    """Zoom about the centre by a factor drawn from [min, max] (> 1 enlarges), bilinear."""

    uniforms: ClassVar[int] = 1
    min: Positive = 0.9
    max: Positive = 1.1
    fill: Unit = 0.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        return self

    def apply(self, draw, image):
        factor = _between(draw[0], self.min, self.max)
        return _warp(image, jnp.eye(2) / factor, jnp.zeros(2), self.fill)


# ---------------------------------------------------------------- colour


@transform("color_jitter")
class ColorJitter(AugmentSpec):
    """Brightness, contrast, saturation (factors in [1-x, 1+x]), then hue (shift in turns).

    The order is fixed. Hue turns the chroma plane in YIQ space. Brightness and contrast
    alone also work on one channel.
    """

    uniforms: ClassVar[int] = 4
    brightness: NonNegative = 0.0
    contrast: NonNegative = 0.0
    saturation: NonNegative = 0.0
    hue: Annotated[float, Strict(), Field(ge=0, le=0.5)] = 0.0

    def problem(self, shape):
        if self.saturation or self.hue:
            return _need_channels(shape, 3, "color_jitter saturation/hue")
        return None

    def apply(self, draw, image):
        # The amounts are traced numbers, so every part is computed and a zero amount selects
        # the image unchanged (exactly, not up to rounding).
        def part(amount, changed):
            return jnp.where(amount > 0, changed, image)

        image = part(
            self.brightness, jnp.clip(image * self._factor(draw[0], self.brightness), 0, 1)
        )
        mean = jnp.mean(_grey(image))
        image = part(self.contrast, _blend(mean, image, self._factor(draw[1], self.contrast)))
        if image.shape[-1] == 3:  # `problem` refused saturation and hue for other images
            grey = _grey(image)
            image = part(
                self.saturation, _blend(grey, image, self._factor(draw[2], self.saturation))
            )
            image = part(self.hue, _shift_hue(image, _between(draw[3], -self.hue, self.hue)))
        return image

    @staticmethod
    def _factor(u, amount):
        return _between(u, jnp.maximum(0.0, 1.0 - amount), 1.0 + amount)


def _blend(base, image, factor):
    """base + factor * (image - base), clipped: factor 0 gives base, 1 the image."""
    return jnp.clip(base + factor * (image - base), 0.0, 1.0)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _shift_hue(image: Image, turns: jax.Array) -> Image:
    angle = 2 * jnp.pi * turns
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotate = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = jnp.asarray(_YIQ_TO_RGB, jnp.float32) @ rotate @ jnp.asarray(_RGB_TO_YIQ, jnp.float32)
    return jnp.clip(image @ matrix.T, 0.0, 1.0)


@transform("greyscale")
class Greyscale(AugmentSpec):
    """Replace RGB by its luma in all three channels."""

    p: Probability = 0.1

    def problem(self, shape):
        return _need_channels(shape, 3, "greyscale")

    def apply(self, draw, image):
        return jnp.broadcast_to(_grey(image), image.shape)


@transform("invert")
class Invert(AugmentSpec):
    """1 - x."""

    p: Probability = 0.5

    def apply(self, draw, image):
        return 1.0 - image


@transform("noise")
class Noise(AugmentSpec):
    """Add Gaussian noise of standard deviation `std` (in [0, 1] pixel units), clipped."""

    std: NonNegative = 0.03

    def draw(self, key, images):
        fire_key, noise_key = jax.random.split(key)
        fire = _random(jax.random.uniform, fire_key, (images.shape[0], 1))
        noise = _random(
            jax.random.normal, noise_key, (images.shape[0], math.prod(images.shape[1:]))
        )
        return jnp.concatenate([fire, noise], axis=1)

    def apply(self, draw, image):
        return jnp.clip(image + self.std * draw.reshape(image.shape), 0.0, 1.0)


@transform("cutout")
class Cutout(AugmentSpec):
    """Fill a square box with `fill`: side drawn from `size` (n or [low, high] pixels), centre
    anywhere, so the box may hang over the edge."""

    uniforms: ClassVar[int] = 3
    size: PixelRange = (8, 8)
    fill: Unit = 0.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.size[0] > self.size[1]:
            raise ValueError(f"size range [{self.size[0]}, {self.size[1]}] is reversed")
        return self

    def problem(self, shape):
        if self.size[1] > max(shape[:2]):
            return f"cutout size {self.size[1]} exceeds the image side {max(shape[:2])}"
        return None

    def apply(self, draw, image):
        height, width, _ = image.shape
        side = _integer(draw[0], *self.size)
        top = _integer(draw[1], 0, height - 1) - side // 2
        left = _integer(draw[2], 0, width - 1) - side // 2
        inside = _box_mask(height, width, top, left, side, side)
        return jnp.where(inside[..., None], jnp.asarray(self.fill, image.dtype), image)


def _box_mask(height, width, top, left, box_height, box_width) -> jax.Array:
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= top) & (rows < top + box_height) & (cols >= left) & (cols < left + box_width)


# ---------------------------------------------------------------- batch mixing


def _partners_and_weights(key, batch: int, alpha: float, p: float):
    """A random partner for every sample, and the weight each keeps of itself (1 if not mixed)."""
    perm_key, weight_key, fire_key = jax.random.split(key, 3)
    partner = jax.random.permutation(perm_key, batch)
    keep = jax.random.beta(weight_key, alpha, alpha, (batch,))
    fires = jax.random.uniform(fire_key, (batch,)) < p
    return partner, jnp.where(fires, keep, 1.0)


@transform("mixup")
class Mixup(AugmentSpec):
    """Blend each image with a random partner of the batch, weight ~ Beta(alpha, alpha); the
    labels blend the same way."""

    per_sample: ClassVar[bool] = False
    alpha: Positive = 0.2

    def mix(self, key, images, labels):
        partner, keep = _partners_and_weights(key, images.shape[0], self.alpha, self.p)
        keep = keep.astype(images.dtype)
        mixed = _blend_with(images, images[partner], keep[:, None, None, None])
        return jnp.clip(mixed, 0.0, 1.0), _blend_with(labels, labels[partner], keep[:, None])


@transform("cutmix")
class CutMix(AugmentSpec):
    """Paste a box of a random partner of the batch into each image, box area ~ 1 - Beta(alpha,
    alpha); the labels mix by the pasted area."""

    per_sample: ClassVar[bool] = False
    alpha: Positive = 1.0

    def mix(self, key, images, labels):
        batch, height, width, _ = images.shape
        mix_key, box_key = jax.random.split(key)
        partner, keep = _partners_and_weights(mix_key, batch, self.alpha, self.p)
        corners = _random(jax.random.uniform, box_key, (batch, 2))
        masks = jax.vmap(_cutmix_box, (0, 0, None, None))(corners, keep, height, width)
        pasted = jnp.mean(masks, axis=(1, 2)).astype(labels.dtype)  # true area after clipping
        mixed_images = jnp.where(masks[..., None], images[partner], images)
        return mixed_images, _blend_with(labels, labels[partner], 1.0 - pasted[:, None])


def _cutmix_box(centre: jax.Array, keep, height: int, width: int) -> jax.Array:
    """A box of area about (1 - keep) of the image around a centre drawn from u in [0, 1)^2."""
    ratio = jnp.sqrt(1.0 - keep)
    box_height = jnp.round(ratio * height).astype(jnp.int32)
    box_width = jnp.round(ratio * width).astype(jnp.int32)
    top = _integer(centre[0], 0, height - 1) - box_height // 2
    left = _integer(centre[1], 0, width - 1) - box_width // 2
    return _box_mask(height, width, top, left, box_height, box_width)


def _blend_with(own, other, keep):
    return keep * own + (1.0 - keep) * other


# ---------------------------------------------------------------- parsing and building


def parse_augment(raw: list | None) -> tuple[AugmentSpec, ...]:
    """Validate the experiment's `augment` list: items `name` or `{name: {param: value}}`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(
            (), "augment must be a list of transforms, e.g. [hflip, {crop: {padding: 4}}]"
        )
    return tuple(_parse_item(index, item) for index, item in enumerate(raw))


def _parse_item(index: int, item: Any) -> AugmentSpec:
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
    else:
        raise SpecError(
            (index,),
            "a transform is a name or a one-key mapping {name: {param: value}}, e.g. hflip or {crop: {padding: 4}}",
        )
    cls = TRANSFORMS.get(name, (index,))
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise SpecError((index, name), f"parameters of '{name}' must be a mapping, e.g. {{p: 0.5}}")
    try:
        return validate(cls, params, "parameter")
    except SpecError as error:
        raise error.within(index, name) from None


@dataclass(frozen=True)
class Augment:
    """`augment(key, images, labels) -> (images, labels)`, pure and traceable.

    images: float (B, H, W, C) in [0, 1]; labels: float (B, K) one-hot or soft. Transforms run in
    list order; each gets its own key (folded in by position) and draws independently per sample.
    `seen`: the batch's examples and epoch, for alternating flips (training passes it).
    """

    specs: tuple[AugmentSpec, ...]
    image_shape: Shape
    num_classes: int

    def __call__(
        self, key: jax.Array, images: jax.Array, labels: jax.Array, seen: Seen | None = None
    ):
        for index, spec in enumerate(self.specs):
            stage_key = jax.random.fold_in(key, index)
            if spec.per_sample:
                images = _apply_per_sample(spec, stage_key, images, seen)
            else:
                images, labels = spec.mix(stage_key, images, labels)
        return images, labels


def _apply_per_sample(spec: AugmentSpec, key: jax.Array, images: jax.Array, seen: Seen | None):
    """Transform every image with its own random numbers; each fires with probability p."""
    draw = spec.draw(key, images)
    out = jax.vmap(spec.apply)(draw[:, 1:], images).astype(images.dtype)
    fires = spec.fires(draw, seen)
    return jnp.where(fires[:, None, None, None], out, images)


def build_augment(specs: tuple[AugmentSpec, ...], image_shape: Shape, num_classes: int) -> Augment:
    """Check every transform fits `image_shape` (H, W, C) and return the batch augmentation."""
    image_shape = tuple(int(n) for n in image_shape)
    for index, spec in enumerate(specs):
        problem = spec.problem(image_shape)
        if problem:
            raise SpecError((index,), problem)
    return Augment(tuple(specs), image_shape, int(num_classes))


def save_grid(images: np.ndarray, augment: Augment, key, draws: int, path) -> None:
    """Write a PNG: one row per image, the original then `draws` augmented versions.

    images: uint8 (N, H, W, C). `key` is a jax key or an int seed. Small images are enlarged
    (nearest neighbour) so that each cell is at least 96 pixels high.
    """
    from PIL import Image as PILImage

    if isinstance(key, int):
        key = jax.random.key(key)
    count = len(images)
    floats = jnp.asarray(images, jnp.float32) / 255.0
    labels = jax.nn.one_hot(jnp.arange(count) % augment.num_classes, augment.num_classes)
    run = jax.jit(augment)
    columns = [floats] + [
        run(jax.random.fold_in(key, draw), floats, labels)[0] for draw in range(draws)
    ]
    cells = np.stack([np.asarray(column) for column in columns], axis=1)  # (N, 1 + draws, H, W, C)
    cells = np.round(np.clip(cells, 0.0, 1.0) * 255).astype(np.uint8)
    PILImage.fromarray(_tile(cells, gap=2)).save(Path(path))


def _tile(cells: np.ndarray, gap: int) -> np.ndarray:
    rows, cols, height, width, channels = cells.shape
    zoom = max(1, math.ceil(96 / height))
    cells = cells.repeat(zoom, axis=2).repeat(zoom, axis=3)
    height, width = height * zoom, width * zoom
    sheet = np.full(
        (rows * (height + gap) + gap, cols * (width + gap) + gap, channels), 255, np.uint8
    )
    for row in range(rows):
        for col in range(cols):
            top, left = gap + row * (height + gap), gap + col * (width + gap)
            sheet[top : top + height, left : left + width] = cells[row, col]
    return sheet[..., 0] if channels == 1 else sheet
