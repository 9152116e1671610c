"""Properties of the augmentations, through parse_augment / build_augment / save_grid."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.augment import TRANSFORMS, Seen, build_augment, parse_augment, save_grid
from cnnlab.errors import SpecError

BATCH, SIZE, CLASSES = 6, 8, 10
SHAPE = (SIZE, SIZE, 3)
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments" / "augment"
seeds = st.integers(0, 2**31 - 1)
few = settings(max_examples=12, deadline=None)

# One working, randomising example of every registered transform.
EXAMPLES = {
    "crop": {"padding": 2, "mode": "reflect"},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "rot90": {},
    "rotate": {"degrees": 30, "fill": 0.5},
    "translate": {"fraction": 0.25},
    "scale": {"min": 0.7, "max": 1.4},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2},
    "greyscale": {"p": 0.5},
    "invert": {"p": 0.5},
    "noise": {"std": 0.2},
    "cutout": {"size": [2, 5], "fill": 1.0},
    "mixup": {"alpha": 0.4},
    "cutmix": {"alpha": 1.0},
}


@functools.cache
def _jitted(specs: tuple, shape: tuple):
    return jax.jit(build_augment(specs, shape, CLASSES))


def augment(raw: list, images, labels=None, seed: int = 0, shape=SHAPE):
    """Run the augmentation of `raw` (one compile per spec and shape) -> (images, labels)."""
    if labels is None:
        labels = jax.nn.one_hot(jnp.arange(len(images)) % CLASSES, CLASSES)
    return _jitted(parse_augment(raw), shape)(jax.random.key(seed), images, labels)


def random_images(seed: int, shape=SHAPE, batch=BATCH, extremes=True) -> jax.Array:
    """Uniform pixels, with exact 0s and 1s in two corners where clipping mistakes would show."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(batch, *shape)).astype(np.float32)
    if extremes:
        images[:, 0, 0] = 0.0
        images[:, -1, -1] = 1.0
    return jnp.asarray(images)


def test_every_transform_has_an_example():
    assert set(EXAMPLES) == set(TRANSFORMS)


@few
@given(seed=seeds)
def test_flips_twice_are_the_identity(seed):
    images = random_images(seed)
    for name in ("hflip", "vflip"):
        once, _ = augment([{name: {"p": 1.0}}], images, seed=seed)
        twice, _ = augment([{name: {"p": 1.0}}], once, seed=seed + 1)
        assert not np.array_equal(once, images)
        np.testing.assert_array_equal(twice, images)


def test_alternating_flip_shows_each_example_its_other_side_every_other_epoch():
    examples = jnp.arange(400)
    images = random_images(0, batch=len(examples))
    labels = jax.nn.one_hot(examples % CLASSES, CLASSES)
    flip = build_augment(parse_augment([{"hflip": {"alternate": True}}]), SHAPE, CLASSES)

    def mirrored(epoch: int, step_seed: int, run_seed: int = 7) -> np.ndarray:
        seen = Seen(examples, jnp.asarray(epoch), jax.random.key(run_seed))
        out, _ = flip(jax.random.key(step_seed), images, labels, seen)
        out, images_ = np.asarray(out), np.asarray(images)
        same = (out == images_).all(axis=(1, 2, 3))
        np.testing.assert_array_equal(out[~same], images_[~same][:, :, ::-1])  # or mirrored
        return ~same

    first = mirrored(0, step_seed=1)
    assert 150 < first.sum() < 250  # half the examples, drawn once for the run
    np.testing.assert_array_equal(mirrored(0, step_seed=2), first)  # not by the step's key
    np.testing.assert_array_equal(mirrored(1, step_seed=3), ~first)
    np.testing.assert_array_equal(mirrored(2, step_seed=4), first)
    assert not np.array_equal(mirrored(0, step_seed=1, run_seed=8), first)  # another run


@few
@given(seed=seeds)
def test_rot90_four_times_is_the_identity(seed):
    images = random_images(seed)
    turned = images
    for turn in range(4):
        turned, _ = augment([{"rot90": {"k": 1}}], turned, seed=seed + turn)
        if turn == 0:
            assert not np.array_equal(turned, images)
    np.testing.assert_array_equal(turned, images)


@few
@given(seed=seeds)
def test_rotate_by_a_right_angle_matches_rot90(seed):
    images = random_images(seed)
    by_angle, _ = augment([{"rotate": {"degrees": [90, 90]}}], images, seed=seed)
    by_quarter, _ = augment([{"rot90": {"k": 1}}], images, seed=seed)
    np.testing.assert_allclose(by_angle, by_quarter, atol=1e-5)
    np.testing.assert_array_equal(by_quarter, jnp.rot90(images, 1, axes=(1, 2)))


@few
@given(seed=seeds)
def test_rotate_by_zero_and_other_null_moves_are_the_identity(seed):
    images = random_images(seed)
    for raw in (
        [{"rotate": {"degrees": 0}}],
        [{"translate": {"pixels": 0}}],
        [{"scale": {"min": 1.0, "max": 1.0}}],
        [{"crop": {"padding": 0}}],
        [{"color_jitter": {}}],
        [{"noise": {"std": 0.0}}],
        [{"cutout": {"size": 0}}],
    ):
        out, _ = augment(raw, images, seed=seed)
        np.testing.assert_array_equal(out, images, err_msg=str(raw))


def test_rotate_turns_counter_clockwise_and_fills_corners():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 4, 6:] = 1.0  # a bar from the centre to the right edge
    out, _ = augment([{"rotate": {"degrees": [90, 90]}}], jnp.asarray(image), shape=(9, 9, 1))
    assert out[0, :3, 4, 0].min() > 0.99  # now from the centre to the top
    assert out[0, 4, 6:, 0].max() < 0.01
    corners, _ = augment(
        [{"rotate": {"degrees": [45, 45], "fill": 0.25}}], jnp.ones((1, 9, 9, 1)), shape=(9, 9, 1)
    )
    assert corners[0, 0, 0, 0] == pytest.approx(0.25)
    assert corners[0, 4, 4, 0] == pytest.approx(1.0)


def test_translate_moves_content_by_whole_pixels():
    images = random_images(3)
    out, _ = augment([{"translate": {"pixels": 2}}], images, seed=5)
    for sample in range(BATCH):
        shifts = [
            (dr, dc)
            for dr in range(-2, 3)
            for dc in range(-2, 3)
            if np.array_equal(_shifted(images[sample], dr, dc), out[sample])
        ]
        assert len(shifts) == 1


def _shifted(image, rows, cols):
    moved = np.zeros_like(image)
    height, width, _ = image.shape
    source = image[max(0, -rows) : height - max(0, rows), max(0, -cols) : width - max(0, cols)]
    moved[
        max(0, rows) : max(0, rows) + source.shape[0], max(0, cols) : max(0, cols) + source.shape[1]
    ] = source
    return moved


@few
@given(seed=seeds)
def test_invert_twice_is_the_identity(seed):
    images = random_images(seed)
    once, _ = augment([{"invert": {"p": 1.0}}], images, seed=seed)
    twice, _ = augment([{"invert": {"p": 1.0}}], once, seed=seed)
    np.testing.assert_allclose(once, 1.0 - images)
    np.testing.assert_allclose(twice, images, atol=1e-6)


@few
@given(seed=seeds)
def test_greyscale_gives_equal_channels(seed):
    out, _ = augment([{"greyscale": {"p": 1.0}}], random_images(seed), seed=seed)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


@few
@given(seed=seeds, name=st.sampled_from(sorted(EXAMPLES)))
def test_every_transform_keeps_dtype_shape_and_range(seed, name):
    images = random_images(seed)
    labels = jax.nn.one_hot(jnp.arange(BATCH), CLASSES)
    out, out_labels = augment([{name: EXAMPLES[name]}], images, labels, seed=seed)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert out_labels.dtype == jnp.float32 and out_labels.shape == labels.shape
    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, rtol=1e-5)


@few
@given(seed=seeds)
def test_the_same_key_gives_the_same_output(seed):
    images = random_images(seed)
    raw = [{"crop": EXAMPLES["crop"]}, {"rotate": EXAMPLES["rotate"]}]
    first = augment(raw, images, seed=seed)
    np.testing.assert_array_equal(first[0], augment(raw, images, seed=seed)[0])
    assert not np.array_equal(first[0], augment(raw, images, seed=seed + 1)[0])
    for name, params in EXAMPLES.items():
        first = augment([{name: params}], images, seed=seed)
        second = augment([{name: params}], images, seed=seed)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize(
    "name", ["crop", "rot90", "rotate", "translate", "scale", "color_jitter", "noise", "cutout"]
)
def test_samples_in_one_batch_get_different_draws(name):
    same = jnp.broadcast_to(random_images(7, batch=1), (BATCH, *SHAPE))
    out, _ = augment([{name: EXAMPLES[name]}], same, seed=1)
    distinct = {np.asarray(image).tobytes() for image in out}
    assert len(distinct) >= 3


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_probability_zero_leaves_images_untouched(name):
    images = random_images(11)
    labels = jax.nn.one_hot(jnp.arange(BATCH), CLASSES)
    out, out_labels = augment([{name: {**EXAMPLES[name], "p": 0.0}}], images, labels)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_probability_is_per_sample():
    images = random_images(2, batch=64)
    out, _ = augment([{"invert": {"p": 0.5}}], images, seed=4)
    inverted = np.all(np.isclose(out, 1.0 - images), axis=(1, 2, 3))
    untouched = np.all(out == images, axis=(1, 2, 3))
    assert np.all(inverted | untouched)
    assert 16 <= inverted.sum() <= 48


def _partner(labels_row, own: int) -> int:
    others = np.array(labels_row, copy=True)
    others[own] = -1
    return int(np.argmax(others))


@few
@given(seed=seeds)
def test_mixup_blends_images_and_labels_alike(seed):
    images = random_images(seed)
    labels = jax.nn.one_hot(jnp.arange(BATCH), CLASSES)
    out, mixed = augment([{"mixup": EXAMPLES["mixup"]}], images, labels, seed=seed)
    mixed = np.asarray(mixed)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    for i in range(BATCH):
        keep = mixed[i, i]
        j = _partner(mixed[i], i) if keep < 1 else i
        np.testing.assert_allclose(out[i], keep * images[i] + (1 - keep) * images[j], atol=1e-5)


@few
@given(seed=seeds)
def test_cutmix_labels_follow_the_pasted_area(seed):
    images = random_images(seed, extremes=False)  # every pixel differs between images
    labels = jax.nn.one_hot(jnp.arange(BATCH), CLASSES)
    out, mixed = augment([{"cutmix": EXAMPLES["cutmix"]}], images, labels, seed=seed)
    mixed = np.asarray(mixed)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    for i in range(BATCH):
        changed = np.any(np.asarray(out[i]) != np.asarray(images[i]), axis=-1)
        np.testing.assert_allclose(1.0 - mixed[i, i], changed.mean(), atol=1e-6)
        if changed.any():
            j = _partner(mixed[i], i)
            np.testing.assert_array_equal(
                np.asarray(out[i])[changed], np.asarray(images[j])[changed]
            )


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_draws_differ_within_a_batch(name):
    images = random_images(5)
    labels = jax.nn.one_hot(jnp.arange(BATCH), CLASSES)
    _, mixed = augment([{name: EXAMPLES[name]}], images, labels, seed=3)
    own_weights = np.asarray(mixed)[np.arange(BATCH), np.arange(BATCH)]
    assert len(np.unique(np.round(own_weights, 4))) >= 4


@pytest.mark.parametrize(
    "raw, loc, words",
    [
        ("hflip", (), "must be a list"),
        (["hflp"], (0,), "did you mean 'hflip'"),
        (["hflip", {"crop": {"paddin": 4}}], (1, "crop", "paddin"), "did you mean 'padding'"),
        ([{"hflip": {"p": 1.5}}], (0, "hflip", "p"), "less than or equal to 1"),
        ([{"hflip": {"p": -0.1}}], (0, "hflip", "p"), "greater than or equal to 0"),
        ([{"noise": {"std": -0.1}}], (0, "noise", "std"), "greater than or equal to 0"),
        ([{"crop": {"mode": "wrap"}}], (0, "crop", "mode"), "'zero' or 'reflect'"),
        ([{"crop": {"padding": 2.5}}], (0, "crop", "padding"), "integer"),
        ([{"rotate": {"degrees": [20, 10]}}], (0, "rotate"), "reversed"),
        ([{"rotate": {"degrees": -5}}], (0, "rotate", "degrees"), ">= 0"),
        ([{"translate": {}}], (0, "translate"), "exactly one"),
        ([{"scale": {"min": 0}}], (0, "scale", "min"), "greater than 0"),
        ([{"color_jitter": {"hue": 0.7}}], (0, "color_jitter", "hue"), "less than or equal to 0.5"),
        ([{"mixup": {"alpha": 0}}], (0, "mixup", "alpha"), "greater than 0"),
        ([{"cutout": {"size": [6, 2]}}], (0, "cutout"), "reversed"),
        ([{"hflip": 0.5}], (0, "hflip"), "must be a mapping"),
        ([{"hflip": {}, "vflip": {}}], (0,), "one-key mapping"),
        ([{"noise": {"std": True}}], (0, "noise", "std"), "valid number"),
    ],
)
def test_bad_specs_name_the_place(raw, loc, words):
    with pytest.raises(SpecError) as caught:
        parse_augment(raw)
    assert caught.value.loc == loc
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "raw, shape, words",
    [
        (["hflip", "rot90"], (8, 6, 3), "square"),
        (["hflip", {"color_jitter": {"hue": 0.1}}], (8, 8, 1), "3-channel"),
        (["hflip", {"color_jitter": {"saturation": 0.1}}], (8, 8, 1), "3-channel"),
        (["hflip", "greyscale"], (8, 8, 1), "3-channel"),
        (["hflip", {"crop": {"padding": 8, "mode": "reflect"}}], (8, 8, 3), "smaller than"),
        (["hflip", {"cutout": {"size": 9}}], (8, 8, 3), "exceeds"),
    ],
)
def test_transforms_that_cannot_apply_to_the_shape_are_errors(raw, shape, words):
    with pytest.raises(SpecError) as caught:
        build_augment(parse_augment(raw), shape, CLASSES)
    assert caught.value.loc == (1,)
    assert words in str(caught.value)


def test_shape_free_transforms_build_for_any_shape():
    raw = [{"rot90": {"k": 2}}, {"color_jitter": {"brightness": 0.3, "contrast": 0.3}}, "rotate"]
    images = random_images(1, shape=(8, 6, 1))
    out, _ = augment(raw, images, shape=(8, 6, 1))
    assert out.shape == images.shape and not np.array_equal(out, images)


@pytest.mark.parametrize(
    "fragment, shape",
    [
        ("seed", (32, 32, 3)),
        ("flip_crop", (32, 32, 3)),
        ("mnist", (28, 28, 1)),
        ("mnist", (8, 8, 1)),
    ],
)
def test_fragments_parse_and_run(fragment, shape):
    raw = yaml.safe_load((EXPERIMENTS / f"{fragment}.yaml").read_text())
    images = random_images(0, shape=shape, batch=4)
    out, _ = augment(raw, images, shape=shape)
    assert out.shape == images.shape
    assert not np.array_equal(out, images)


def test_save_grid_writes_originals_then_draws(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    aug = build_augment(parse_augment([{"invert": {"p": 1.0}}]), (8, 8, 3), CLASSES)
    path = tmp_path / "grid.png"
    save_grid(images, aug, jax.random.key(0), draws=2, path=path)
    grid = np.asarray(Image.open(path))
    zoom, gap = 12, 2  # 8-pixel images are enlarged to 96
    cell = 8 * zoom
    assert grid.shape == (3 * (cell + gap) + gap, 3 * (cell + gap) + gap, 3)
    for row in range(3):
        top = gap + row * (cell + gap)
        original = grid[top : top + cell : zoom, gap : gap + cell : zoom]
        drawn = grid[top : top + cell : zoom, 2 * gap + cell : 2 * gap + 2 * cell : zoom]
        np.testing.assert_array_equal(original, images[row])
        np.testing.assert_array_equal(drawn, 255 - images[row])


def test_save_grid_handles_one_channel(tmp_path):
    images = np.full((2, 28, 28, 1), 100, np.uint8)
    aug = build_augment(parse_augment(["rotate"]), (28, 28, 1), CLASSES)
    save_grid(images, aug, 3, draws=4, path=tmp_path / "grey.png")
    grid = Image.open(tmp_path / "grey.png")
    assert grid.mode == "L" and grid.size == (5 * (112 + 2) + 2, 2 * (112 + 2) + 2)
