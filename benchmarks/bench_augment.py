"""Cost of the seed augmentation next to one resnet training step, on the same batch.

    .venv/bin/python benchmarks/bench_augment.py [--batch 256] [--rounds 7] [--compact]

Augmentation alone, the train step alone, and the step with the augmentation fused into it run
in alternation for several rounds (so load changes on a shared machine hit all three alike);
the table gives medians and the spread over rounds, and the ratio augmentation / step per round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from common import LoadWatch, median_seconds
from flax import nnx

from cnnlab.augment import build_augment, parse_augment
from cnnlab.models.base import Model, from_nnx

SEED_PIPELINE = Path(__file__).resolve().parent.parent / "experiments" / "augment" / "seed.yaml"
SHAPE, CLASSES = (32, 32, 3), 10
# XLA's CPU backend trains convolutions 1.75x faster with YNNPACK fusion off (see PERF notes).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


class Block(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.norm1 = nnx.GroupNorm(cout, num_groups=8, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=8, rngs=rngs)
        same = stride == 1 and cin == cout
        self.skip = (
            None if same else nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
        )

    def __call__(self, x):
        y = nnx.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return nnx.relu(y + (x if self.skip is None else self.skip(x)))


class CompactResnet(nnx.Module):
    """conv3x3-64 + GroupNorm(8) + relu, one residual block per stage at 64/128/256 (strides
    1/2/2), global average pool, dense."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 64, (3, 3), use_bias=False, rngs=rngs)
        self.norm = nnx.GroupNorm(64, num_groups=8, rngs=rngs)
        self.blocks = nnx.List(
            [Block(64, 64, 1, rngs), Block(64, 128, 2, rngs), Block(128, 256, 2, rngs)]
        )
        self.head = nnx.Linear(256, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


def resnet(compact: bool) -> tuple[Model, str]:
    """The project's `resnet` family when it exists (and `compact` is off), else the compact
    resnet above."""
    if compact:
        return from_nnx(CompactResnet), "compact NNX resnet (benchmark's own)"
    try:
        from cnnlab.models import build_model, parse_model_spec

        return build_model(
            parse_model_spec({"family": "resnet"}), SHAPE, CLASSES
        ), "cnnlab resnet family (default)"
    except ImportError:
        return from_nnx(CompactResnet), "compact NNX resnet (benchmark's own)"


def make_steps(model: Model, augment):
    """Jitted train step, and the same step with the augmentation inside it."""
    tx = optax.sgd(0.05, momentum=0.9)
    options = CPU_OPTIONS if jax.default_backend() == "cpu" else None

    def train(params, state, opt_state, x, labels):
        def loss_fn(params):
            logits, new_state = model.apply(params, state, x, train=True)
            return optax.softmax_cross_entropy(logits, labels).mean(), new_state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    def fused(params, state, opt_state, key, x, labels):
        x, labels = augment(key, x, labels)
        return train(params, state, opt_state, x, labels)

    return tx, jax.jit(train, compiler_options=options), jax.jit(fused, compiler_options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compact", action="store_true", help="the benchmark's own resnet")
    args = parser.parse_args()

    specs = parse_augment(yaml.safe_load(SEED_PIPELINE.read_text()))
    augment = build_augment(specs, SHAPE, CLASSES)
    augment_jit = jax.jit(augment)
    model, model_name = resnet(args.compact)
    tx, train, fused = make_steps(model, augment)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(args.batch, *SHAPE)), jnp.float32)
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, CLASSES, args.batch)), CLASSES)
    params, state = model.init(jax.random.key(0))
    opt_state = tx.init(params)
    key = jax.random.key(1)

    start = time.perf_counter()
    jax.block_until_ready(augment_jit(key, x, labels))
    augment_compile = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(train(params, state, opt_state, x, labels))
    train_compile = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fused(params, state, opt_state, key, x, labels))
    fused_compile = time.perf_counter() - start

    rows = {"augment": [], "step": [], "fused": [], "ratio": []}
    load = LoadWatch()
    for round_ in range(args.rounds):
        round_key = jax.random.fold_in(key, round_)
        aug = median_seconds(
            lambda k=round_key: jax.block_until_ready(augment_jit(k, x, labels)), 10
        )
        step = median_seconds(
            lambda: jax.block_until_ready(train(params, state, opt_state, x, labels)), 2
        )
        both = median_seconds(
            lambda k=round_key: jax.block_until_ready(
                fused(params, state, opt_state, k, x, labels)
            ),
            2,
        )
        for name, value in (
            ("augment", aug),
            ("step", step),
            ("fused", both),
            ("ratio", aug / step),
        ):
            rows[name].append(value)

    load.stop()
    print(load.line())
    print(
        f"backend {jax.default_backend()}, {jax.device_count()} device(s), batch {args.batch} x {SHAPE}"
    )
    print(
        f"model: {model_name}; augmentation: {SEED_PIPELINE.name} ({', '.join(s.name for s in specs)})"
    )
    print(
        f"compile: augment {augment_compile:.2f} s, step {train_compile:.2f} s, "
        f"step with augment {fused_compile:.2f} s"
    )
    print(f"{args.rounds} alternating rounds\n")
    print(f"{'':34s}{'median':>10s}{'min':>10s}{'max':>10s}")
    for label, name in (
        ("augmentation alone (ms)", "augment"),
        ("train step (ms)", "step"),
        ("train step with augmentation (ms)", "fused"),
    ):
        values = [1e3 * v for v in rows[name]]
        print(f"{label:34s}{statistics.median(values):10.1f}{min(values):10.1f}{max(values):10.1f}")
    ratios = [100 * r for r in rows["ratio"]]
    print(
        f"{'augmentation / step (%)':34s}{statistics.median(ratios):10.2f}{min(ratios):10.2f}{max(ratios):10.2f}"
    )
    extra = [100 * (f / s - 1) for f, s in zip(rows["fused"], rows["step"], strict=True)]
    print(
        f"{'fused step over plain step (%)':34s}{statistics.median(extra):10.2f}{min(extra):10.2f}{max(extra):10.2f}"
    )
    print(
        f"\nbudget: augmentation at most 15% of a step -> {'met' if statistics.median(ratios) <= 15 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
