"""Looking inside a trained run: the only module of the page and of the picture commands that
touches a trained model.

It restores a run's model and state, and answers with plain numpy arrays: probabilities, each
layer's output, the first layer's filters, and saliency (the gradient of the top class with
respect to the input). Every use of the training code goes through the few small functions
below, so that they are the only ones to change when that code moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import UserError


@dataclass(frozen=True)
class Probe:
    """A restored run, ready to look at images."""

    run_dir: Path
    checkpoint: str  # which checkpoint answered: 'best' or 'latest'
    step: int
    input_shape: tuple[int, int, int]  # (H, W, C) the model takes
    class_names: tuple[str, ...]
    norm: np.ndarray  # (2, C): per-channel mean and std on the [0, 1] scale
    summary: Any  # cnnlab.models.ModelSummary: per-layer names, kinds and shapes
    _restored: Any  # cnnlab.training.Restored: experiment, program, state
    _state: Any
    _params: Any  # the parameters evaluation uses (a weight average, if the run keeps one)
    _outputs: Any  # layer_outputs(...) of the model, compiled; None for Python models
    _input_gradient: Any  # (params, state, scaled image, class) -> d logit / d image, compiled


# -- restoring -------------------------------------------------------------------------------


def load_probe(run_dir: Path, checkpoint: str = "best") -> Probe:
    """The run's model and state from its checkpoint, with what the pictures need."""
    import jax

    from cnnlab.models import describe_model, layer_outputs
    from cnnlab.training import restore

    restored = restore(Path(run_dir), checkpoint)  # reads no dataset
    state, shape = restored.state, restored.image_shape
    names = tuple(restored.class_names)
    outputs = layer_outputs(restored.experiment.model, shape, len(names))
    return Probe(
        run_dir=Path(run_dir),
        checkpoint=restored.checkpoint,
        step=restored.step,
        input_shape=shape,
        class_names=names,
        norm=np.asarray(state.norm),
        summary=describe_model(restored.experiment.model, shape, len(names)),
        _restored=restored,
        _state=state,
        _params=_evaluation_params(state),
        _outputs=None if outputs is None else jax.jit(outputs),
        _input_gradient=_input_gradient(restored.program, state.norm),
    )


def _evaluation_params(state):
    from cnnlab.optim import eval_params

    return eval_params(state.params, state.opt_state)


def experiment_summary(experiment_file: Path | str, overrides: list[str] | None = None):
    """(experiment name, ModelSummary) of an experiment file, before any training."""
    from cnnlab.config import load_experiment
    from cnnlab.errors import SpecError
    from cnnlab.models import describe_model
    from cnnlab.training import load_data

    experiment = load_experiment(experiment_file, overrides or [])
    dataset = load_data(experiment)
    try:
        summary = describe_model(experiment.model, dataset.image_shape, dataset.num_classes)
    except SpecError as error:
        raise experiment.user_error(error.within("model")) from None
    return experiment.name, summary


def run_summary(run_dir: Path):
    """The ModelSummary of a run, from its config and the shapes it recorded (no data is
    loaded); a run that recorded none falls back to its experiment's data."""
    from cnnlab.config import load_experiment
    from cnnlab.models import describe_model
    from cnnlab.training import dataset_info

    try:
        dataset = dataset_info(run_dir)
    except UserError:
        return experiment_summary(run_dir / "config.yaml")[1]
    experiment = load_experiment(run_dir / "config.yaml")
    return describe_model(experiment.model, tuple(dataset["image_shape"]), len(dataset["classes"]))


# -- images in ---------------------------------------------------------------------------------


def open_image_file(path: Path):
    """A Pillow image from a file; unreadable files are a one-line error."""
    from cnnlab.prediction import open_image

    return open_image(Path(path))


def model_input(probe: Probe, image) -> np.ndarray:
    """A Pillow image as the model receives it: (H, W, C) uint8 of the run's size and channels."""
    from cnnlab.prediction import to_input

    return to_input(image, probe.input_shape)


def _scaled(probe: Probe, pixels: np.ndarray):
    """uint8 (H, W, C) -> float32 (H, W, C) on the [0, 1] scale, as training reads images."""
    from cnnlab.step import preprocess

    return preprocess(pixels)


def _standardized(probe: Probe, scaled):
    from cnnlab.step import standardize

    return standardize(probe._state.norm, scaled)


# -- answers ---------------------------------------------------------------------------------


def probabilities(probe: Probe, pixels: np.ndarray) -> np.ndarray:
    """(classes,) probabilities for one uint8 (H, W, C) input, as `cnnlab predict` computes."""
    from cnnlab.prediction import softmax
    from cnnlab.step import logits

    return softmax(logits(probe._restored.program, probe._state, pixels[None]))[0]


def activations(probe: Probe, pixels: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """(LayerRow, output) of every layer for one input, in the order of the model summary;
    empty for Python models."""
    if probe._outputs is None:
        return []
    x = _standardized(probe, _scaled(probe, pixels))[None]
    found = probe._outputs(probe._params, probe._state.model_state, x)
    return [
        (row, np.asarray(found[row.name][0])) for row in probe.summary.rows if row.name in found
    ]


def first_filters(probe: Probe) -> tuple[Any, np.ndarray] | None:
    """(LayerRow, kernel (kh, kw, in, out)) of the first conv layer; None without one."""
    import jax

    conv = next((row for row in probe.summary.rows if row.kind == "conv"), None)
    if conv is None:
        return None
    wanted = _param_path(conv.name) + ("kernel",)
    for path, leaf in jax.tree_util.tree_flatten_with_path(probe._params)[0]:
        keys = tuple(getattr(part, "key", getattr(part, "name", None)) for part in path)
        if keys[: len(wanted)] == wanted:  # NNX adds a trailing `.value`
            return conv, np.asarray(leaf, dtype=np.float32)
    return None


def _param_path(row_name: str) -> tuple:
    """Where a layer's parameters sit: '4.1' -> ('layers', 4, 'body', 'layers', 1)."""
    path: tuple = ()
    for index, position in enumerate(row_name.split(".")):
        path += (("body",) if index else ()) + ("layers", int(position))
    return path


def saliency(probe: Probe, pixels: np.ndarray) -> tuple[int, np.ndarray]:
    """(top class, (H, W, C) gradient of its logit with respect to the input on the [0, 1]
    scale): which pixels would change the answer most."""
    top = int(np.argmax(probabilities(probe, pixels)))
    gradient = probe._input_gradient(
        probe._params, probe._state.model_state, _scaled(probe, pixels), top
    )
    return top, np.asarray(gradient)


def logits(probe: Probe, scaled: np.ndarray) -> np.ndarray:
    """(classes,) evaluation-mode logits of one float (H, W, C) image on the [0, 1] scale: the
    function `saliency` differentiates."""
    import jax

    x = _standardized(probe, scaled)[None]
    model = probe._restored.program.model
    out, _ = model.apply(
        probe._params, probe._state.model_state, x, train=False, key=jax.random.key(0)
    )
    return np.asarray(out[0])


def _input_gradient(program, norm):
    """The compiled gradient of one class's logit with respect to one image."""
    import jax

    from cnnlab.step import standardize

    def class_logit(params, model_state, image, target):
        x = standardize(norm, image)[None]
        logits, _ = program.model.apply(params, model_state, x, train=False, key=jax.random.key(0))
        return logits[0, target]

    return jax.jit(jax.grad(class_logit, argnums=2))


def confident_mistakes(probe: Probe, count: int = 12) -> list[dict]:
    """The test images the model gets wrong with the highest confidence: image (uint8), true
    class, predicted class and its probability; most confident first."""
    from cnnlab.evaluation import split_images
    from cnnlab.prediction import softmax
    from cnnlab.step import logits

    test = split_images(probe._restored, "test")
    images, labels = test.images, test.labels
    if not len(images):
        return []
    chances = softmax(logits(probe._restored.program, probe._state, images))
    predicted = chances.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-chances[wrong, predicted[wrong]], kind="stable")][:count]
    return [
        {
            "image": images[i],
            "true": probe.class_names[int(labels[i])],
            "predicted": probe.class_names[int(predicted[i])],
            "probability": float(chances[i, predicted[i]]),
        }
        for i in order
    ]


def require_image_input(probe: Probe) -> None:
    """Pictures of inputs need image models of 1 or 3 channels."""
    if probe.input_shape[-1] not in (1, 3):
        raise UserError(
            f"run {probe.run_dir.name} takes {probe.input_shape[-1]}-channel images; "
            "the pictures handle 1 or 3"
        )
