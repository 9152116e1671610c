"""Training and evaluation: an explicit state pytree, one compiled multi-step function, the loop.

The whole training split lives on the device as uint8. Each step gathers its batch there from a
seeded per-epoch permutation, augments it, and updates the state; `steps_per_call` steps run in
one compiled call (`lax.scan`), and metrics reach the host only at log and eval intervals.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnlab.augment import build_augment
from cnnlab.config import Experiment, dump_experiment
from cnnlab.data import load_dataset
from cnnlab.data.dataset import Dataset, Split, split_validation
from cnnlab.errors import SpecError
from cnnlab.models import build_model
from cnnlab.models.base import Model
from cnnlab.optim import build_optimizer, eval_params
from cnnlab.runs import Checkpoints, MetricsWriter, create_run_dir, write_json

EVAL_BATCH = 500


class TrainState(NamedTuple):
    """Everything that changes during training; a checkpoint is exactly this."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any
    model_state: Any  # batch statistics, rng streams
    opt_state: Any
    key: jax.Array  # the run's root key; each step folds in its own number
    order: jax.Array  # (N,) int32: this epoch's order of the training examples


class DeviceSplit(NamedTuple):
    images: jax.Array  # (N, H, W, C) uint8
    labels: jax.Array  # (N,) int32


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def train_compiler_options() -> dict | None:
    # On XLA:CPU, YNNPACK fusion makes training steps 1.3-1.75x slower (but evaluation faster),
    # so it is switched off for the training program only.
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if on_cpu() else None


class Trainer:
    """The compiled pieces of one experiment: init, a multi-step train call, and forward passes."""

    def __init__(
        self,
        model: Model,
        tx: optax.GradientTransformation,
        schedule: Callable,
        augment: Callable,
        train: Split,
        num_classes: int,
        batch_size: int,
        normalize: bool = True,
    ):
        self.model, self.tx, self.schedule, self.augment = model, tx, schedule, augment
        self.num_classes = num_classes
        self.num_examples = len(train)
        self.batch_size = min(batch_size, self.num_examples)
        self.steps_per_epoch = self.num_examples // self.batch_size
        self.mean, self.std = channel_stats(train.images) if normalize else (0.0, 1.0)
        self._programs: dict[int, Any] = {}
        self._forward = jax.jit(self._logits)

    # -- state ------------------------------------------------------------------------------

    def init(self, seed: int) -> TrainState:
        init_key, root_key = jax.random.split(jax.random.key(seed))
        params, model_state = self.model.init(init_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=self.tx.init(params),
            key=root_key,
            order=jnp.arange(self.num_examples, dtype=jnp.int32),
        )

    def preprocess(self, images: jax.Array) -> jax.Array:
        return images.astype(jnp.float32) / 255.0

    def standardize(self, x: jax.Array) -> jax.Array:
        return (x - self.mean) / self.std

    # -- one step ---------------------------------------------------------------------------

    def _batch(self, state: TrainState) -> tuple[jax.Array, jax.Array, jax.Array]:
        """This epoch's order, this step's example indices, and this step's key."""
        order_key, step_key = jax.random.split(state.key)
        epoch, position = jnp.divmod(state.step, self.steps_per_epoch)
        order = jax.lax.cond(
            position == 0,
            lambda: jax.random.permutation(jax.random.fold_in(order_key, epoch), self.num_examples),
            lambda: state.order,
        )
        index = jax.lax.dynamic_slice_in_dim(order, position * self.batch_size, self.batch_size)
        return order, index, jax.random.fold_in(step_key, state.step)

    def _step(self, state: TrainState, data: DeviceSplit) -> tuple[TrainState, dict]:
        order, index, key = self._batch(state)
        augment_key, model_key = jax.random.split(key)
        labels = data.labels[index]
        x, targets = self.augment(
            augment_key,
            self.preprocess(data.images[index]),
            jax.nn.one_hot(labels, self.num_classes),
        )
        x = self.standardize(x)

        def loss_fn(params):
            logits, model_state = self.model.apply(
                params, state.model_state, x, train=True, key=model_key
            )
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "lr": self.schedule(state.step),
        }
        new_state = TrainState(state.step + 1, params, model_state, opt_state, state.key, order)
        return new_state, metrics

    def program(self, count: int):
        """The compiled call that runs `count` steps; the state is donated (updated in place)."""
        if count not in self._programs:

            def run(state, data):
                # XLA:CPU runs a rolled scan around convolutions ~17x slower; unrolled it is fastest.
                unroll = count if on_cpu() else 1
                return jax.lax.scan(
                    lambda s, _: self._step(s, data), state, None, length=count, unroll=unroll
                )

            self._programs[count] = jax.jit(
                run, donate_argnums=0, compiler_options=train_compiler_options()
            )
        return self._programs[count]

    def compile(self, state: TrainState, data: DeviceSplit, count: int) -> float:
        """Compile ahead of the first step; returns seconds spent."""
        start = time.perf_counter()
        self.program(count).lower(state, data).compile()
        return time.perf_counter() - start

    # -- evaluation -------------------------------------------------------------------------

    def _logits(self, state: TrainState, images):
        x = self.standardize(self.preprocess(images))
        params = eval_params(
            state.params, state.opt_state
        )  # weight average or slow weights, if any
        logits, _ = self.model.apply(
            params, state.model_state, x, train=False, key=jax.random.key(0)
        )
        return logits

    def logits(self, state: TrainState, images: np.ndarray) -> np.ndarray:
        """Evaluation-mode logits for uint8 images, in fixed-size batches (one compiled shape)."""
        count = len(images)
        batch = min(EVAL_BATCH, max(count, 1))
        padded = np.concatenate(
            [images, np.zeros((-count % batch, *images.shape[1:]), images.dtype)]
        )
        device_images = jax.device_put(padded)
        outputs = [
            self._forward(state, device_images[start : start + batch])
            for start in range(0, len(padded), batch)
        ]
        return np.asarray(jnp.concatenate(outputs))[:count]


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    scaled = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return scaled.mean(0).astype(np.float32), np.maximum(scaled.std(0), 1e-3).astype(np.float32)


def to_device(split: Split) -> DeviceSplit:
    return DeviceSplit(jax.device_put(split.images), jax.device_put(split.labels.astype(np.int32)))


def scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Mean cross-entropy and top-1 accuracy, computed on the host."""
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    return {"loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).mean())}


# ---------------------------------------------------------------------------------------------
# Building an experiment


@dataclass(frozen=True)
class Prepared:
    dataset: Dataset
    train: Split
    val: Split
    trainer: Trainer


def load_data(experiment: Experiment) -> Dataset:
    try:
        return load_dataset(
            experiment.data.source, path=experiment.data.path, data_dir=experiment.data.data_dir
        )
    except SpecError as error:
        raise experiment.user_error(error.within("data")) from None


def build_trainer(
    experiment: Experiment, train: Split, num_classes: int, *, augment: bool = True, steps=None
):
    """Model, optimizer and augmentation from the spec; a shape that does not fit is an error here."""
    image_shape = tuple(train.images.shape[1:])

    def build(key, builder, *args):
        try:
            return builder(*args)
        except SpecError as error:
            raise experiment.user_error(error.within(key)) from None

    model = build("model", build_model, experiment.model, image_shape, num_classes)
    tx, schedule = build(
        "optimizer", build_optimizer, experiment.optimizer, steps or experiment.train.steps
    )
    specs = experiment.augment if augment else ()
    augment_fn = build("augment", build_augment, specs, image_shape, num_classes)
    return Trainer(
        model,
        tx,
        schedule,
        augment_fn,
        train,
        num_classes,
        experiment.train.batch_size,
        experiment.data.normalize,
    )


def prepare(experiment: Experiment) -> Prepared:
    """Load the data, carve the validation split and build the trainer: everything that can fail
    on bad input happens here, before a run folder exists."""
    dataset = load_data(experiment)
    train, val = split_validation(
        dataset.train, experiment.data.val_fraction, experiment.train.seed
    )
    return Prepared(dataset, train, val, build_trainer(experiment, train, dataset.num_classes))


# ---------------------------------------------------------------------------------------------
# The training loop


class StopRequest:
    """First Ctrl-C asks the loop to stop at the next call boundary; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Stopwatch:
    """Wall time since start, and training time between laps that leaves out paused spans."""

    def __init__(self):
        self.start = self.mark = time.perf_counter()
        self.pause = 0.0

    def total(self) -> float:
        return time.perf_counter() - self.start

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.mark, self.pause = now - self.mark - self.pause, now, 0.0
        return max(seconds, 1e-9)

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.pause += time.perf_counter() - began


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


def train(
    experiment: Experiment,
    *,
    runs_root: Path | None = None,
    run_dir: Path | None = None,
    progress=None,
) -> TrainResult:
    """Train `experiment` into a new run folder (or the given empty `run_dir`); returns the folder
    and its summary."""
    prepared = prepare(experiment)
    trainer = prepared.trainer
    state = trainer.init(experiment.train.seed)
    data = to_device(prepared.train)
    if run_dir is None:
        run_dir = create_run_dir(experiment.name, runs_root)
    else:
        run_dir.mkdir(parents=True, exist_ok=False)
    dump_experiment(experiment, run_dir / "config.yaml")
    loop = TrainLoop(experiment, prepared, run_dir, progress)
    try:
        summary = loop.run(state, data)
    finally:
        loop.close()
    return TrainResult(run_dir, summary)


class TrainLoop:
    """Runs compiled calls, logs at intervals, evaluates, checkpoints, summarises."""

    def __init__(self, experiment: Experiment, prepared: Prepared, run_dir: Path, progress=None):
        self.experiment, self.prepared, self.run_dir = experiment, prepared, run_dir
        self.trainer = prepared.trainer
        self.cfg = experiment.train
        self.metrics = MetricsWriter(run_dir)
        self.checkpoints = Checkpoints(run_dir)
        self.progress = progress
        self.best: dict | None = None
        self.last_train: dict = {}
        self.last_val: dict = {}

    def run(self, state: TrainState, data: DeviceSplit) -> dict:
        cfg, trainer = self.cfg, self.trainer
        step = int(state.step)
        compile_seconds = trainer.compile(state, data, min(cfg.steps_per_call, cfg.steps - step))
        clock = Stopwatch()
        last_step, pending, status = step, [], "completed"
        with StopRequest() as stop:
            while step < cfg.steps:
                count = min(cfg.steps_per_call, cfg.steps - step)
                state, metrics = trainer.program(count)(state, data)
                pending.append(metrics)
                step += count
                stopping = stop.requested  # read once: a Ctrl-C arriving later is seen next call
                final = step == cfg.steps or stopping
                if step % cfg.log_every_steps == 0 or final:
                    values = jax.device_get(pending)  # the only host sync between logs
                    images_per_sec = (step - last_step) * trainer.batch_size / clock.lap()
                    self.log_train(step, values, images_per_sec, clock.total())
                    pending, last_step = [], step
                if step % cfg.eval_every_steps == 0 or final:
                    with clock.paused():
                        self.evaluate(step, state, clock.total())
                        self.checkpoints.save("latest", step, state)
                if self.progress:
                    self.progress.update(step, self.last_train, self.last_val)
                if stopping:
                    status = "interrupted"
                    break
        return self.summarise(step, status, clock.total(), compile_seconds)

    def log_train(self, step: int, values: list[dict], images_per_sec: float, wall: float) -> None:
        mean = {key: float(np.mean([m[key] for m in values])) for key in ("loss", "accuracy")}
        lr = float(np.asarray(values[-1]["lr"]).reshape(-1)[-1])
        self.last_train = {**mean, "lr": lr, "images_per_sec": images_per_sec}
        self.metrics.write(step=step, split="train", wall_time=round(wall, 3), **self.last_train)

    def evaluate(self, step: int, state: TrainState, wall: float) -> None:
        val = self.prepared.val
        if not len(val):
            return
        self.last_val = scores(self.trainer.logits(state, val.images), val.labels)
        self.metrics.write(step=step, split="val", wall_time=round(wall, 3), **self.last_val)
        if self.best is None or self.last_val["accuracy"] > self.best["val_accuracy"]:
            self.best = {
                "step": step,
                "val_accuracy": self.last_val["accuracy"],
                "val_loss": self.last_val["loss"],
            }
            self.checkpoints.save("best", step, state)

    def summarise(self, step: int, status: str, seconds: float, compile_seconds: float) -> dict:
        device = jax.devices()[0]
        summary = {
            "name": self.experiment.name,
            "status": status,
            "steps": step,
            "steps_planned": self.cfg.steps,
            "batch_size": self.trainer.batch_size,
            "dataset": {
                "name": self.prepared.dataset.name,
                "train": len(self.prepared.train),
                "val": len(self.prepared.val),
                "test": len(self.prepared.dataset.test),
                "image_shape": list(self.prepared.dataset.image_shape),
                "classes": list(self.prepared.dataset.class_names),
            },
            "final": {"train": self.last_train, "val": self.last_val},
            "best": self.best,
            "wall_seconds": round(seconds, 3),
            "compile_seconds": round(compile_seconds, 3),
            "device": {
                "platform": device.platform,
                "kind": device.device_kind,
                "count": jax.device_count(),
            },
            "versions": library_versions(),
        }
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        self.metrics.close()
        self.checkpoints.close()


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("cnnlab", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions


# ---------------------------------------------------------------------------------------------
# Overfit: the sanity check


@dataclass
class OverfitResult:
    samples: int
    memorised: bool
    step: int | None  # the step at which every sample was classified correctly
    steps_run: int
    losses: list[tuple[int, float]]  # (step, loss) at each check
    accuracy: float
    notes: tuple[str, ...] = ()


def overfit(experiment: Experiment, samples: int, max_steps: int = 1000) -> OverfitResult:
    """Train on `samples` training examples (no augmentation, no validation) until the model
    classifies all of them correctly in evaluation mode, or `max_steps` pass."""
    dataset = load_data(experiment)
    chosen = np.random.default_rng(experiment.train.seed).permutation(len(dataset.train))[:samples]
    subset = dataset.train.take(np.sort(chosen))
    trainer = build_trainer(experiment, subset, dataset.num_classes, augment=False, steps=max_steps)
    state = trainer.init(experiment.train.seed)
    data = to_device(subset)
    check_every = min(experiment.train.steps_per_call, max_steps)
    losses, step = [], 0
    result = scores(trainer.logits(state, subset.images), subset.labels)
    losses.append((0, result["loss"]))
    while step < max_steps and result["accuracy"] < 1.0:
        count = min(check_every, max_steps - step)
        state, _ = trainer.program(count)(state, data)
        step += count
        result = scores(trainer.logits(state, subset.images), subset.labels)
        losses.append((step, result["loss"]))
        if not math.isfinite(result["loss"]):
            break
    memorised = result["accuracy"] == 1.0
    return OverfitResult(
        samples=len(subset),
        memorised=memorised,
        step=step if memorised else None,
        steps_run=step,
        losses=losses,
        accuracy=result["accuracy"],
        notes=trainer.model.notes,
    )
