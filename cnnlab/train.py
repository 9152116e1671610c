"""Training and evaluation: an explicit state pytree, one compiled multi-step function, the loop.

The whole training split lives on the device as uint8. Each step gathers its batch there from a
seeded per-epoch permutation, augments it, and updates the state; `steps_per_call` steps run in
one compiled call (`lax.scan`), and metrics reach the host only at log and eval intervals.
"""

from __future__ import annotations

import contextlib
import math
import os
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
from cnnlab.config import Experiment, TrainConfig, dump_experiment
from cnnlab.data import load_dataset
from cnnlab.data.dataset import Dataset, Split, split_validation
from cnnlab.diagnostics import (
    GradientWatch,
    OverfitWatch,
    dead_fraction,
    first_nonfinite,
    layer_stats,
)
from cnnlab.errors import SpecError, UserError
from cnnlab.evidence import judge_run, overfit_diagnosis
from cnnlab.models import build_model
from cnnlab.models.base import Model
from cnnlab.optim import build_optimizer, eval_params
from cnnlab.plots import plot_curves
from cnnlab.runs import (
    Checkpoints,
    MetricsWriter,
    create_run_dir,
    read_metrics,
    rewrite_metrics,
    write_json,
)

EVAL_BATCH = 500


class TrainState(NamedTuple):
    """Everything that changes during training; a checkpoint is exactly this."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any
    model_state: Any  # batch statistics, rng streams
    opt_state: Any
    key: jax.Array  # the run's root key; each step folds in its own number
    order: jax.Array  # (N,) int32: this epoch's order of the training examples
    norm: jax.Array  # (2, C): per-channel mean and std that standardise the inputs


class DeviceSplit(NamedTuple):
    images: jax.Array  # (N, H, W, C) uint8
    labels: jax.Array  # (N,) int32


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk, so a second run of an experiment skips most compiling.
    A cache directory the user chose (JAX_COMPILATION_CACHE_DIR) wins."""
    if jax.config.jax_compilation_cache_dir is None:
        root = Path(os.environ.get("CNNLAB_CACHE_DIR", Path.home() / ".cache" / "cnnlab"))
        jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


enable_compilation_cache()


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
        options: TrainConfig,
        normalize: bool = True,
    ):
        self.model, self.tx, self.schedule, self.augment = model, tx, schedule, augment
        self.options = options
        self.num_classes = num_classes
        self.num_examples = len(train)
        self.batch_size = min(options.batch_size, self.num_examples)
        self.steps_per_epoch = self.num_examples // self.batch_size
        self.stats = channel_stats(train.images) if normalize else no_stats(train.images)
        # A sample of the training images for parameters computed from data (whitening).
        self.sample = train.images[: min(len(train), 5000)] if model.data_init else None
        self.compute_dtype = jnp.bfloat16 if options.precision == "bf16" else jnp.float32
        self._programs: dict[int, Any] = {}
        self._forward = jax.jit(self._logits)
        self._diagnostics = None

    # -- state ------------------------------------------------------------------------------

    def init(self, seed: int) -> TrainState:
        """The state before the first step. Compiled: run eagerly, each initialiser's few ops
        would be compiled one by one, which costs seconds."""
        return jax.jit(self._init)(seed, self.stats, self.sample)

    def _init(self, seed, stats, sample) -> TrainState:
        init_key, root_key = jax.random.split(jax.random.key(seed))
        params, model_state = self.model.init(init_key)
        if self.model.data_init is not None:
            x = self.standardize(stats, self.preprocess(sample))
            params = self.model.data_init(params, model_state, x)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=self.tx.init(params),
            key=root_key,
            order=jnp.arange(self.num_examples, dtype=jnp.int32),
            norm=stats,
        )

    def preprocess(self, images: jax.Array) -> jax.Array:
        return images.astype(jnp.float32) / 255.0

    @staticmethod
    def standardize(norm: jax.Array, x: jax.Array) -> jax.Array:
        return (x - norm[0]) / norm[1]

    def forward(self, params, model_state, x, *, train: bool, key):
        """The model in the compute precision; logits come back in float32."""
        if self.compute_dtype != jnp.float32:
            params = jax.tree.map(lambda p: p.astype(self.compute_dtype), params)
            x = x.astype(self.compute_dtype)
        logits, model_state = self.model.apply(params, model_state, x, train=train, key=key)
        return logits.astype(jnp.float32), model_state

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

    def _gradients(self, state: TrainState, data: DeviceSplit):
        """Loss, gradients and what else a step needs, on this step's batch."""
        order, index, key = self._batch(state)
        augment_key, model_key = jax.random.split(key)
        labels = data.labels[index]
        images = self.preprocess(data.images[index])
        x, targets = self.augment(augment_key, images, jax.nn.one_hot(labels, self.num_classes))
        x = self.standardize(state.norm, x)
        smoothing = self.options.label_smoothing
        targets = targets * (1 - smoothing) + smoothing / self.num_classes

        def loss_fn(params):
            logits, model_state = self.forward(
                params, state.model_state, x, train=True, key=model_key
            )
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, accuracy, grads, model_state, order, x

    def train_step(self, state: TrainState, data: DeviceSplit) -> tuple[TrainState, dict]:
        loss, accuracy, grads, model_state, order, _ = self._gradients(state, data)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        updated = state._replace(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            order=order,
        )
        # A non-finite step leaves the state as it was: training stops at that step with the last
        # finite weights, and `diagnose` can replay the same batch to find the layer at fault.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = jax.lax.cond(finite, lambda: updated, lambda: state)
        metrics = {
            "step": state.step,
            "loss": loss,
            "accuracy": accuracy,
            "lr": self.schedule(state.step),
            "grad_norm": grad_norm,
            "finite": finite,
        }
        return new_state, metrics

    def _diagnose(self, state: TrainState, data: DeviceSplit) -> dict:
        _, _, grads, _, _, x = self._gradients(state, data)
        updates, _ = self.tx.update(grads, state.opt_state, state.params)
        stats = layer_stats(state.params, grads, updates)
        if self.model.activations is not None:
            dead = [
                dead_fraction(a) for a in self.model.activations(state.params, state.model_state, x)
            ]
            stats["_model"] = {"dead_relu": jnp.mean(jnp.stack(dead)) if dead else jnp.zeros(())}
        return stats

    def diagnose(self, state: TrainState, data: DeviceSplit) -> dict:
        """Per-layer statistics on the batch of the state's next step (without taking it)."""
        if self._diagnostics is None:
            self._diagnostics = jax.jit(self._diagnose)
        return jax.device_get(self._diagnostics(state, data))

    def compile(self, state: TrainState, data: DeviceSplit, steps: int) -> float:
        """Compile every call a run from `state` to `steps` needs (the full call, and a shorter
        last one when the steps do not divide evenly); returns seconds spent."""
        started, first = time.perf_counter(), int(state.step)
        per_call = self.options.steps_per_call
        for count in {min(per_call, steps - first), (steps - first) % per_call} - {0}:
            self.program(count, state, data)
        return time.perf_counter() - started

    def program(self, count: int, state: TrainState, data: DeviceSplit):
        """The compiled call that runs `count` steps; the state is donated (updated in place).
        Compiled once per count, ahead of its first use, for arguments shaped like these."""
        if count not in self._programs:

            def run(state, data):
                # XLA:CPU runs a rolled scan around convolutions ~17x slower; unrolled it is fastest.
                unroll = count if on_cpu() else 1
                return jax.lax.scan(
                    lambda s, _: self.train_step(s, data), state, None, length=count, unroll=unroll
                )

            jitted = jax.jit(run, donate_argnums=0, compiler_options=train_compiler_options())
            self._programs[count] = jitted.lower(state, data).compile()
        return self._programs[count]

    # -- evaluation -------------------------------------------------------------------------

    def _logits(self, state: TrainState, images):
        x = self.standardize(state.norm, self.preprocess(images))
        params = eval_params(
            state.params, state.opt_state
        )  # weight average or slow weights, if any

        def forward(x):
            return self.forward(params, state.model_state, x, train=False, key=jax.random.key(0))[0]

        if self.options.test_time_flip:  # mean over the image and its mirror
            return (forward(x) + forward(x[:, :, ::-1])) / 2
        return forward(x)

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


def channel_stats(images: np.ndarray) -> np.ndarray:
    """(2, C): per-channel mean and std of uint8 images, on the [0, 1] scale."""
    scaled = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return np.stack([scaled.mean(0), np.maximum(scaled.std(0), 1e-3)]).astype(np.float32)


def no_stats(images: np.ndarray) -> np.ndarray:
    """Mean 0, std 1: inputs stay on the [0, 1] scale."""
    channels = images.shape[-1]
    return np.stack([np.zeros(channels), np.ones(channels)]).astype(np.float32)


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
        "optimizer",
        build_optimizer,
        experiment.optimizer,
        steps or experiment.train.steps,
        model.frozen,
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
        experiment.train,
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

    def __init__(self, offset: float = 0.0):
        self.start = self.mark = time.perf_counter()
        self.pause = 0.0
        self.offset = offset  # seconds already spent before (a resumed run)

    def total(self) -> float:
        return time.perf_counter() - self.start + self.offset

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

    @property
    def failed(self) -> bool:
        return self.summary["status"] == "diverged"


def train(
    experiment: Experiment,
    *,
    runs_root: Path | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
    progress=None,
) -> TrainResult:
    """Train `experiment` into a new run folder (or the given empty `run_dir`), or continue the run
    in `resume` from its latest checkpoint. Returns the folder and its summary."""
    prepared = prepare(experiment)
    state, data = prepared.trainer.init(experiment.train.seed), to_device(prepared.train)
    if resume is None:  # compile before the run folder exists: a failure leaves nothing behind
        compile_seconds = prepared.trainer.compile(state, data, experiment.train.steps)
        if run_dir is None:
            run_dir = create_run_dir(experiment.name, runs_root)
        else:
            run_dir.mkdir(parents=True, exist_ok=False)
        dump_experiment(experiment, run_dir / "config.yaml")
    loop = TrainLoop(experiment, prepared, resume or run_dir, progress)
    try:
        if resume is not None:
            state = loop.resume(state)
            compile_seconds = prepared.trainer.compile(state, data, experiment.train.steps)
        summary = loop.run(state, data, compile_seconds)
    finally:
        loop.close()
    run_dir = loop.run_dir
    if read_metrics(run_dir):
        plot_curves(run_dir)
    return TrainResult(run_dir, summary)


class TrainLoop:
    """Runs compiled calls; logs, diagnoses, evaluates and checkpoints at intervals; summarises."""

    def __init__(self, experiment: Experiment, prepared: Prepared, run_dir: Path, progress=None):
        self.experiment, self.prepared, self.run_dir = experiment, prepared, run_dir
        self.trainer = prepared.trainer
        self.cfg = experiment.train
        self.checkpoints = Checkpoints(run_dir)
        self.progress = progress
        self.best: dict | None = None
        self.last_train: dict = {}
        self.last_val: dict = {}
        self.warnings: list[str] = []
        self.failure: str | None = None
        self.gradients = GradientWatch()
        self.overfitting = OverfitWatch()
        self.plateau = 0  # evaluations since validation accuracy last improved by min_delta
        self.first_step = 0
        self.metrics: MetricsWriter | None = None
        self.diagnostics = True  # per-layer statistics at each log (one extra gradient pass)
        self.wall_offset = 0.0

    def resume(self, like: TrainState) -> TrainState:
        """The latest checkpoint, with metrics after it dropped and the watchers replayed. A run
        killed before its first checkpoint was committed starts again from `like`."""
        has_checkpoint = self.checkpoints.step("latest") is not None
        state = self.checkpoints.restore("latest", like) if has_checkpoint else like
        step = int(state.step)
        if step >= self.cfg.steps:
            raise UserError(f"run {self.run_dir.name} already finished its {self.cfg.steps} steps")
        self.checkpoints.discard_after(step)
        rows = [row for row in read_metrics(self.run_dir) if row["step"] <= step]
        self.wall_offset = max((row["wall_time"] for row in rows), default=0.0)
        rewrite_metrics(self.run_dir, rows)
        for row in rows:
            if row["split"] == "train":
                self.last_train = {k: row[k] for k in ("loss", "accuracy", "lr", "images_per_sec")}
            else:
                self.note_validation(
                    row["step"], {"loss": row["loss"], "accuracy": row["accuracy"]}
                )
        self.first_step = step
        return state

    def run(self, state: TrainState, data: DeviceSplit, compile_seconds: float) -> dict:
        cfg, trainer = self.cfg, self.trainer
        self.start()
        step = int(state.step)
        clock = Stopwatch(offset=self.wall_offset)
        last_step, pending, status = step, [], "completed"
        with StopRequest() as stop:
            while step < cfg.steps:
                count = min(cfg.steps_per_call, cfg.steps - step)
                state, metrics = trainer.program(count, state, data)(state, data)
                pending.append(metrics)
                step += count
                stopping = stop.requested  # read once: a Ctrl-C arriving later is seen next call
                final = step == cfg.steps or stopping
                if step % cfg.log_every_steps == 0 or final:
                    values = jax.device_get(pending)  # the only host sync between logs
                    images_per_sec = (step - last_step) * trainer.batch_size / clock.lap()
                    with clock.paused():
                        self.log_train(step, state, data, values, images_per_sec, clock.total())
                    pending, last_step = [], step
                    if self.failure:
                        status = "diverged"
                        break
                if step % cfg.eval_every_steps == 0 or final:
                    with clock.paused():
                        improved = self.evaluate(step, state, clock.total())
                        self.checkpoints.save("latest", step, state)
                    if self.plateaued(improved):
                        status = "early_stopped"
                        break
                if self.progress:
                    self.progress.update(step, self.last_train, self.last_val)
                if stopping:
                    status = "interrupted"
                    break
        return self.summarise(step, status, clock.total(), compile_seconds)

    def start(self) -> None:
        self.metrics = MetricsWriter(self.run_dir, purge_after=self.first_step)

    def log_train(
        self, step, state, data, values: list[dict], images_per_sec: float, wall: float
    ) -> None:
        series = {key: np.concatenate([np.ravel(v[key]) for v in values]) for key in values[0]}
        if not series["finite"].all():
            self.fail(int(series["step"][~series["finite"]][0]), state, data)
            return
        self.last_train = {
            "loss": float(series["loss"].mean()),
            "accuracy": float(series["accuracy"].mean()),
            "lr": float(series["lr"][-1]),
            "images_per_sec": images_per_sec,
        }
        self.metrics.write(step=step, split="train", wall_time=round(wall, 3), **self.last_train)
        self.warn(self.gradients.check(step, float(series["grad_norm"].max())))
        if self.diagnostics:
            self.metrics.write_diagnostics(step, self.trainer.diagnose(state, data))

    def fail(self, step: int, state: TrainState, data: DeviceSplit) -> None:
        """A non-finite loss or gradient at `step`: name the first layer at fault, keep the last
        finite checkpoint, and stop."""
        layer = first_nonfinite(self.trainer.diagnose(state, data))
        where = f"; first non-finite gradient in layer {layer}" if layer else ""
        kept = self.checkpoints.step("latest")
        kept = (
            f"the last finite checkpoint (step {kept}) is kept"
            if kept is not None
            else "no checkpoint was written"
        )
        self.failure = (
            f"loss or gradient became non-finite at step {step}{where}; {kept}. "
            "Lower optimizer.lr, or set optimizer.clip_norm"
        )

    def evaluate(self, step: int, state: TrainState, wall: float) -> bool:
        """Validation loss and accuracy; saves `best` when accuracy improves. Returns whether
        it improved by at least early_stop.min_delta."""
        val = self.prepared.val
        if not len(val):
            return True
        result = scores(self.trainer.logits(state, val.images), val.labels)
        self.metrics.write(step=step, split="val", wall_time=round(wall, 3), **result)
        if self.best is None or result["accuracy"] > self.best["val_accuracy"]:
            self.checkpoints.save("best", step, state)
        return self.note_validation(step, result)

    def note_validation(self, step: int, result: dict) -> bool:
        previous = self.best["val_accuracy"] if self.best else -1.0
        self.last_val = result
        if result["accuracy"] > previous:
            self.best = {
                "step": step,
                "val_accuracy": result["accuracy"],
                "val_loss": result["loss"],
            }
        if self.last_train:
            self.warn(self.overfitting.check(step, self.last_train["accuracy"], result["accuracy"]))
        min_delta = self.cfg.early_stop.min_delta if self.cfg.early_stop else 0.0
        improved = result["accuracy"] > previous + min_delta
        self.plateau = 0 if improved else self.plateau + 1
        return improved

    def plateaued(self, improved: bool) -> bool:
        early_stop = self.cfg.early_stop
        return early_stop is not None and not improved and self.plateau >= early_stop.patience_evals

    def warn(self, message: str | None) -> None:
        if message:
            self.warnings.append(message)
            if self.progress is not None and hasattr(self.progress, "warn"):
                self.progress.warn(message)

    def summarise(self, step: int, status: str, seconds: float, compile_seconds: float) -> dict:
        device = jax.devices()[0]
        dataset = self.prepared.dataset
        summary = {
            "name": self.experiment.name,
            "status": status,
            "steps": step,
            "steps_planned": self.cfg.steps,
            "batch_size": self.trainer.batch_size,
            "dataset": {
                "name": dataset.name,
                "train": len(self.prepared.train),
                "val": len(self.prepared.val),
                "test": len(dataset.test),
                "image_shape": list(dataset.image_shape),
                "classes": list(dataset.class_names),
            },
            "final": {"train": self.last_train, "val": self.last_val},
            "best": self.best,
            "overfitting_since_step": self.overfitting.onset,
            "warnings": self.warnings,
            "failure": self.failure,
            "wall_seconds": round(seconds, 3),
            "compile_seconds": round(compile_seconds, 3),
            "device": {
                "platform": device.platform,
                "kind": device.device_kind,
                "count": jax.device_count(),
            },
            "versions": library_versions(),
        }
        summary.update(judge_run(self, summary))  # status completed_not_learning, diagnosis
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.metrics is not None:
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
    diagnosis: Any = None  # cnnlab.diagnosis.Diagnosis: why it failed, or a note on the model


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
    result = scores(trainer.logits(state, subset.images), subset.labels)
    losses, step = [(0, result["loss"])], 0
    while step < max_steps and result["accuracy"] < 1.0 and math.isfinite(result["loss"]):
        count = min(check_every, max_steps - step)
        state, _ = trainer.program(count, state, data)(state, data)
        step += count
        result = scores(trainer.logits(state, subset.images), subset.labels)
        losses.append((step, result["loss"]))
    memorised = result["accuracy"] == 1.0
    return OverfitResult(
        samples=len(subset),
        memorised=memorised,
        step=step if memorised else None,
        steps_run=step,
        losses=losses,
        accuracy=result["accuracy"],
        notes=trainer.model.notes,
        diagnosis=overfit_diagnosis(
            experiment, trainer, subset, data, losses, result["accuracy"], step, state
        ),
    )
