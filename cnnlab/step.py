"""The pure training step: an explicit state, the numbers as data, one step, evaluation logits.

A `Program` is what a step computes, fixed at compile time (model, optimizer and augmentation
structure, shapes, precision). The numbers a step computes with (learning rate and its schedule,
optimizer arguments, augmentation strengths, label smoothing: see cnnlab.hyper) come in as
data, so trials that differ only in numbers share one compiled program, stacked under `vmap`.
Where the program runs, one device or a mesh of several, is part of it too (cnnlab.mesh).

The whole training split lives on the device as uint8; each step gathers its batch there from
its epoch's order, a permutation drawn on the host (EpochOrders). `steps_program` runs several
steps in one compiled call.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnlab.augment import Augment, AugmentSpec, Seen, build_augment
from cnnlab.diagnostics import dead_fraction, layer_stats
from cnnlab.hyper import Numbers, with_numbers
from cnnlab.mesh import DataMesh
from cnnlab.models.base import Model
from cnnlab.optim import OptimizerSpec, build_optimizer, eval_params

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


class Data(NamedTuple):
    """A split on the device."""

    images: jax.Array  # (N, H, W, C) uint8
    labels: jax.Array  # (N,) int32


@dataclass(frozen=True, eq=False)
class Program:
    """What a training step computes, apart from the numbers: fixed when it compiles."""

    model: Model
    optimizer: OptimizerSpec  # its numbers are replaced by the step's inputs
    augment: tuple[AugmentSpec, ...]  # likewise
    image_shape: tuple[int, int, int]
    num_classes: int
    num_examples: int  # of the training split
    batch_size: int
    total_steps: int  # schedules span these
    precision: str = "float32"
    test_time_flip: bool = False
    test_time_shift: int = 0
    mesh: DataMesh | None = None  # None: one device, no sharding at all
    compiled: dict = field(default_factory=dict, repr=False)  # (count, stacked) -> executable

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.precision == "bf16" else jnp.float32

    def optimizer_for(self, numbers: Numbers) -> tuple[optax.GradientTransformation, Any]:
        spec = with_numbers(self.optimizer, numbers, "optimizer")
        return build_optimizer(spec, self.total_steps, self.model.update_scale)

    def augment_for(self, numbers: Numbers) -> Augment:
        specs = with_numbers(self.augment, numbers, "augment")
        return Augment(specs, self.image_shape, self.num_classes)

    def check(self) -> None:
        """Shape problems of the augmentation, found with the concrete numbers."""
        build_augment(self.augment, self.image_shape, self.num_classes)


# ---------------------------------------------------------------------------------------------
# State


def init_state(program: Program, seed: int, norm: np.ndarray, numbers: Numbers, sample=None):
    """The state before the first step. `sample`: training images for parameters computed from
    data (whitening); leave it out when a checkpoint will replace the parameters."""
    with_sample = sample is not None and program.model.data_init is not None
    key = ("init", with_sample)
    if key not in program.compiled:
        # Compiled: run eagerly, each initialiser's few ops would compile one by one.
        layout = {} if program.mesh is None else {"out_shardings": program.mesh.replicated}
        program.compiled[key] = jax.jit(
            lambda seed, norm, numbers, sample: _init(program, seed, norm, numbers, sample),
            **layout,
        )
    return program.compiled[key](seed, norm, numbers, sample if with_sample else None)


def _init(program: Program, seed, norm, numbers, sample) -> TrainState:
    init_key, root_key = jax.random.split(jax.random.key(seed))
    params, model_state = program.model.init(init_key)
    if sample is not None:
        x = standardize(norm, preprocess(sample))
        params = program.model.data_init(params, model_state, x)
    tx, _ = program.optimizer_for(numbers)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        key=root_key,
        order=jnp.arange(program.num_examples, dtype=jnp.int32),
        norm=jnp.asarray(norm, jnp.float32),
    )


def channel_stats(images: np.ndarray) -> np.ndarray:
    """(2, C): per-channel mean and std of uint8 images, on the [0, 1] scale."""
    scaled = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return np.stack([scaled.mean(0), np.maximum(scaled.std(0), 1e-3)]).astype(np.float32)


def unit_stats(channels: int) -> np.ndarray:
    """Mean 0, std 1: inputs stay on the [0, 1] scale."""
    return np.stack([np.zeros(channels), np.ones(channels)]).astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0


def standardize(norm: jax.Array, x: jax.Array) -> jax.Array:
    return (x - norm[0]) / norm[1]


def _in_compute_dtype(program: Program, params, x):
    if program.compute_dtype == jnp.float32:
        return params, x
    cast = jax.tree.map(lambda p: p.astype(program.compute_dtype), params)
    return cast, x.astype(program.compute_dtype)


def forward(program: Program, params, model_state, x, *, train: bool, key, taps=None):
    """The model in the compute precision; logits come back in float32. `taps`: see Model."""
    params, x = _in_compute_dtype(program, params, x)
    logits, model_state = program.model.apply(
        params, model_state, x, train=train, key=key, taps=taps
    )
    return logits.astype(jnp.float32), model_state


# ---------------------------------------------------------------------------------------------
# One step


class Orders(NamedTuple):
    """Example orders, one row an epoch: `rows[i]` is epoch `first + i`'s."""

    first: jax.Array  # int32 scalar
    rows: jax.Array  # (epochs, N) int32


def epoch_order(key_words: np.ndarray, epoch: int, count: int) -> np.ndarray:
    """Epoch `epoch`'s order of the `count` training examples, seeded by the run's key. Drawn on
    the host, where it costs no compiling: in the program, a permutation's hashing and sorts
    took a fifth of a small model's compile time."""
    seed = [*np.ravel(key_words).tolist(), epoch]
    return np.random.default_rng(seed).permutation(count).astype(np.int32)


class EpochOrders:
    """The orders of the epochs that start within each call, as the call's input: the call
    that starts at `step` gets the epochs from the first that starts at or after it. One
    device transfer an epoch: the calls within an epoch get the same rows."""

    def __init__(self, program: Program, state: TrainState, stacked: bool = False):
        self.program, self.stacked = program, stacked
        words = np.asarray(jax.device_get(jax.random.key_data(state.key)))
        self.trial_words = list(words) if stacked else [words]
        self._placed: tuple = (None, None)

    def upcoming(self, step: int, count: int) -> Orders:
        """Orders with (epochs, N) rows, or (trials, epochs, N) when stacked (and `first` per
        trial): see `epochs_starting`."""
        per_epoch = self.program.steps_per_epoch
        first = -(-step // per_epoch)
        span = (first, epochs_starting(self.program, count))
        if self._placed[0] != span:
            rows = np.stack([self._rows(words, *span) for words in self.trial_words])
            upcoming = (
                Orders(np.full(len(rows), first, np.int32), rows)
                if self.stacked
                else Orders(np.int32(first), rows[0])
            )
            self._placed = (span, placed(self.program.mesh, upcoming, split=self.stacked))
        return self._placed[1]

    def _rows(self, words, first: int, epochs: int) -> np.ndarray:
        n = self.program.num_examples
        return np.stack([epoch_order(words, first + i, n) for i in range(epochs)])


def epochs_starting(program: Program, count: int) -> int:
    """At most this many epochs start within a call of `count` steps."""
    return -(-count // program.steps_per_epoch)


def call_orders(program: Program, state: TrainState, upcoming: Orders) -> Orders:
    """The orders a call reads: row 0 is the epoch the state is in, then the `upcoming` ones
    (EpochOrders). Row 0 is the state's own order unless its epoch starts now; a state frozen
    by a non-finite step lags the host's count of steps, and keeps the failing step's order."""
    first, position = jnp.divmod(state.step, program.steps_per_epoch)
    starts_now = (position == 0) & (upcoming.first == first)
    current = jnp.where(starts_now, upcoming.rows[0], state.order)
    return Orders(upcoming.first - 1, jnp.concatenate([current[None], upcoming.rows]))


def _batch(program: Program, state: TrainState, orders: Orders):
    """This epoch's order, this step's example indices, its epoch and its key. Every device
    computes the same orders; each then takes its own part of the indices."""
    step_key = jax.random.split(state.key)[1]
    epoch, position = jnp.divmod(state.step, program.steps_per_epoch)
    order = orders.rows[jnp.maximum(epoch - orders.first, 0)]
    index = jax.lax.dynamic_slice_in_dim(order, position * program.batch_size, program.batch_size)
    return order, index, epoch, jax.random.fold_in(step_key, state.step)


class StepParts(NamedTuple):
    """What the per-layer statistics of a step are computed from (`step_stats`)."""

    params: Any  # before the step
    grads: Any
    updates: Any
    # The batch's fraction of dead ReLU units; None where the model cannot tell.
    dead_relu: jax.Array | None


def no_parts(program: Program, params) -> StepParts:
    """Zeros shaped like a step's parts: what a multi-step call carries in before its first."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    dead = jnp.zeros(()) if program.model.taps_relus else None
    return StepParts(params, zeros, zeros, dead)


def train_step(
    program: Program, state: TrainState, orders: Orders, data: Data, numbers: Numbers, split=None
):
    """One optimizer step on this step's batch (from `orders`) -> (state, metrics, parts). A
    non-finite loss or gradient leaves the state as it was but for its order, which becomes the
    failing batch's epoch's: the next steps replay that batch. `parts`: what this step's
    per-layer statistics come from (`step_stats`). `split`: lays out an array split along the
    batch over the mesh (DataMesh.constrain); the rest follows."""
    order, index, epoch, key = _batch(program, state, orders)
    if split is not None:  # each device gathers its part of the batch from its own copy
        index = split(index)
    augment_key, model_key = jax.random.split(key)
    labels = data.labels[index]
    images = data.images[index] if split is None else split(data.images[index])
    seen = Seen(index, epoch, jax.random.fold_in(state.key, 1))  # a key for the whole run
    x, targets = program.augment_for(numbers)(
        augment_key, preprocess(images), jax.nn.one_hot(labels, program.num_classes), seen
    )
    x = standardize(state.norm, x)
    smoothing = numbers["train.label_smoothing"]
    targets = targets * (1 - smoothing) + smoothing / program.num_classes

    def loss_fn(params):
        taps = [] if program.model.taps_relus else None
        logits, model_state = forward(
            program, params, state.model_state, x, train=True, key=model_key, taps=taps
        )
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, model_state, taps)

    (loss, (logits, model_state, taps)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    tx, schedule = program.optimizer_for(numbers)
    grad_norm = global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updated = state._replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        model_state=model_state,
        opt_state=opt_state,
        order=order,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {
        "step": state.step,
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "lr": schedule(state.step),
        "grad_norm": grad_norm,
        "finite": finite,
    }
    # Dead units come from this step's own forward pass, where a dead ReLU passes no gradient.
    dead = None if taps is None else jnp.mean(jnp.stack([dead_fraction(a) for a in taps] or [0.0]))
    frozen = state._replace(order=order)
    parts = StepParts(state.params, grads, updates, dead)
    return jax.lax.cond(finite, lambda: updated, lambda: frozen), metrics, parts


def global_norm(tree) -> jax.Array:
    """The L2 norm of all the tree's numbers, as one reduction: optax.global_norm reduces each
    leaf on its own, and those kernels, once per step of a call, made cnn_small's 10-step call
    778 fusions for XLA to compile instead of 688."""
    flat = [jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(flat)))) if flat else jnp.zeros(())


def step_stats(parts: StepParts) -> dict[str, jax.Array]:
    """A step's per-layer statistics (diagnostics.layer_stats), and its dead ReLU fraction
    where the model can tell."""
    values = layer_stats(parts.params, parts.grads, parts.updates)
    if parts.dead_relu is not None:
        values["dead_relu"] = parts.dead_relu
    return values


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def compiler_options() -> dict | None:
    # On XLA:CPU, YNNPACK fusion makes training steps 1.3-1.75x slower (but evaluation faster),
    # so it is switched off for the training program only. (The CPU scheduler is set in
    # cnnlab.environment: XLA reads that one when it starts, not per program.)
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if on_cpu() else None


def steps_program(program: Program, count: int, state, data, numbers, *, stacked: bool = False):
    """The compiled call `(state, upcoming, data, numbers, with_stats) -> (state, metrics)` that
    takes `count` steps (`upcoming`: EpochOrders.upcoming); the state is donated. Metrics come
    per step, and under "layers" the per-layer statistics of the last step when `with_stats`.
    Every step, the last included, is the one traced step of a scan: each step hands on what
    its statistics come from. Where the scan is unrolled (the CPU), only the last step's parts
    survive into the program; where it stays a loop, they ride along in its carry. `stacked`:
    state, upcoming orders, data and numbers have a leading trial axis (vmap). Compiled once
    per count, for arguments shaped (and laid out on the program's mesh) like these."""
    key = (count, stacked)
    if key not in program.compiled:
        mesh = program.mesh
        split = mesh.constrain if mesh is not None and not stacked else None

        def steps(state, upcoming, data, numbers, with_stats):
            orders = call_orders(program, state, upcoming)

            def step(carry):  # the parts of every step but the last are dead code
                state, metrics, parts = train_step(program, carry[0], orders, data, numbers, split)
                return (state, parts), metrics

            start = (state, no_parts(program, state.params))
            (state, parts), metrics = _repeat(step, start, count)
            return state, {**metrics, "layers": _only_if(with_stats, lambda: step_stats(parts))}

        run = jax.vmap(steps, in_axes=(0, 0, 0, 0, None)) if stacked else steps
        jitted = jax.jit(
            run, donate_argnums=0, compiler_options=compiler_options(), **_layout(mesh, stacked)
        )
        flag = jnp.zeros((), bool)
        trials = state.order.shape[:-1]
        upcoming = Orders(
            jax.ShapeDtypeStruct(trials, jnp.int32),
            jax.ShapeDtypeStruct(
                (*trials, epochs_starting(program, count), program.num_examples), jnp.int32
            ),
        )
        with collector_paused():
            program.compiled[key] = jitted.lower(state, upcoming, data, numbers, flag).compile()
    return program.compiled[key]


@contextmanager
def collector_paused():
    """Python's cycle collector off, for tracing. A trace allocates many objects, and each
    collection they set off walks every object the imported libraries hold: with it on, a
    small model's step took 2-3x longer to trace."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _only_if(flag, compute):
    """`compute()` when `flag`, else zeros shaped like it. A cond on an unbatched flag stays a
    branch under vmap: the work costs nothing on the calls that do not ask for it."""

    def zeros():
        return jax.tree.map(jnp.zeros_like, jax.eval_shape(compute))

    return jax.lax.cond(flag, compute, zeros)


def _repeat(step, carry, count: int):
    """`count` steps -> (carry, their metrics stacked). XLA:CPU runs convolutions inside a loop
    17x slower or worse, so on the CPU the scan is unrolled: its step is traced once and
    written out `count` times when lowered. A scan of one step would still be a loop (of one
    trip): that step is called directly."""
    if count == 1:
        carry, metrics = step(carry)
        return carry, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda c, _: step(c), carry, None, length=count, unroll=on_cpu())


def _layout(mesh: DataMesh | None, stacked: bool) -> dict:
    """In and out shardings of the multi-step call: everything replicated (the batch is split
    inside), or, for stacked trials, every input split along the trial axis. Metrics come back
    replicated, so every process can read them."""
    if mesh is None:
        return {}
    inputs = mesh.split if stacked else mesh.replicated
    return {
        "in_shardings": (inputs, inputs, inputs, inputs, mesh.replicated),
        "out_shardings": (inputs, mesh.replicated),
    }


def compile_run(
    program, state, data, numbers, first: int, steps: int, per_call: int, stacked=False
):
    """Compile every call a run from step `first` to `steps` needs (the full call, and a shorter
    last one when the steps do not divide evenly); returns the seconds spent."""
    started = time.perf_counter()
    for count in {min(per_call, steps - first), (steps - first) % per_call} - {0}:
        steps_program(program, count, state, data, numbers, stacked=stacked)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_logits(program: Program, state: TrainState, images: jax.Array) -> jax.Array:
    """Evaluation-mode logits of uint8 images: the weight average or slow weights when the
    optimizer keeps them. Test-time flips average in the mirror; a test-time shift averages
    the result with that of the two diagonal shifts (half weight each side, as airbench)."""
    x = standardize(state.norm, preprocess(images))
    params = eval_params(state.params, state.opt_state)

    def logits_of(x):
        return forward(program, params, state.model_state, x, train=False, key=jax.random.key(0))[0]

    def mirrored(x):
        if program.test_time_flip:
            return (logits_of(x) + logits_of(x[:, :, ::-1])) / 2
        return logits_of(x)

    shift = program.test_time_shift
    if not shift:
        return mirrored(x)
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    shifted = (mirrored(padded[:, :height, :width]) + mirrored(padded[:, -height:, -width:])) / 2
    return (mirrored(x) + shifted) / 2


def logits(program: Program, state: TrainState, images: np.ndarray) -> np.ndarray:
    """Evaluation-mode logits for uint8 images, in fixed-size batches (one compiled shape); on a
    mesh each batch is split over the devices like a training batch."""
    mesh = program.mesh
    if "eval" not in program.compiled:
        if mesh is None:
            program.compiled["eval"] = jax.jit(lambda s, x: eval_logits(program, s, x))
        else:
            program.compiled["eval"] = jax.jit(
                lambda s, x: eval_logits(program, s, mesh.constrain(x)),
                out_shardings=mesh.replicated,
            )
    count = len(images)
    batch = min(EVAL_BATCH, max(count, 1))
    if mesh is not None:  # whole batches per device
        batch = -(-batch // mesh.size) * mesh.size
    padded = np.concatenate([images, np.zeros((-count % batch, *images.shape[1:]), images.dtype)])
    device_images = placed(mesh, padded)
    if mesh is not None:  # a stacked trial's slice lies on one device: replicate it
        state = mesh.put(state, mesh.replicated)
    outputs = [
        program.compiled["eval"](state, device_images[start : start + batch])
        for start in range(0, len(padded), batch)
    ]
    return np.asarray(jnp.concatenate(outputs))[:count]


def scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Mean cross-entropy and top-1 accuracy, computed on the host."""
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    return {"loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).mean())}


def placed(mesh: DataMesh | None, tree, split: bool = False):
    """Values on the device, or replicated over the mesh (`split`: their leading axis divided
    over it, for stacked trials)."""
    if mesh is None:
        return jax.device_put(tree)
    return mesh.put(tree, mesh.split if split else mesh.replicated)


def to_device(images: np.ndarray, labels: np.ndarray, mesh: DataMesh | None = None) -> Data:
    return placed(mesh, Data(images, labels.astype(np.int32)))


def device_numbers(numbers: Numbers, mesh: DataMesh | None = None) -> Numbers:
    """The numbers as float32 device scalars (or rows, for stacked trials)."""
    return placed(mesh, {key: np.asarray(value, np.float32) for key, value in numbers.items()})
