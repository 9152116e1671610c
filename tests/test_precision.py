"""Mixed precision (`train.precision: bf16`): bfloat16 compute, float32 weights and optimizer state."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import TINY_EXPERIMENT, run_dirs

from cnnlab.config import experiment_from_tree
from cnnlab.step import (
    EpochOrders,
    call_orders,
    device_numbers,
    logits,
    scores,
    steps_program,
    to_device,
    train_step,
)
from cnnlab.training import setup

STEPS_PER_CALL = 10


def tiny(precision: str):
    tree = yaml.safe_load(TINY_EXPERIMENT)
    tree["train"]["precision"] = precision
    return experiment_from_tree(tree)


@pytest.fixture(scope="module")
def prepared() -> dict:
    """The tiny experiment in both precisions: same data, same initial weights."""
    return {precision: setup(tiny(precision)) for precision in ("float32", "bf16")}


def float_leaves(tree) -> list[jax.Array]:
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


def train_calls(prepared, calls: int):
    """The state after `calls` compiled calls, and each call's per-step losses."""
    state = prepared.initial_state()
    data, numbers = (
        to_device(prepared.train.images, prepared.train.labels),
        device_numbers(prepared.numbers),
    )
    call = steps_program(prepared.program, STEPS_PER_CALL, state, data, numbers)
    orders, losses = EpochOrders(prepared.program, state), []
    for index in range(calls):
        upcoming = orders.upcoming(index * STEPS_PER_CALL, STEPS_PER_CALL)
        state, metrics = call(state, upcoming, data, numbers, np.bool_(False))
        losses.append(np.asarray(metrics["loss"]))
    return state, losses


def test_bf16_keeps_parameters_and_optimizer_state_in_float32(prepared):
    initial = prepared["bf16"].initial_state()
    state, _ = train_calls(prepared["bf16"], calls=2)
    assert int(state.step) == 2 * STEPS_PER_CALL
    params, moments = float_leaves(state.params), float_leaves(state.opt_state)
    assert params and moments
    assert {leaf.dtype for leaf in params + moments} == {jnp.dtype(jnp.float32)}
    moved = [
        not np.array_equal(a, b) for a, b in zip(params, float_leaves(initial.params), strict=True)
    ]
    assert all(moved)  # every parameter took float32 updates, not bf16-rounded copies


def test_bf16_logits_and_loss_are_close_to_float32_on_the_same_init(prepared):
    full, half = prepared["float32"], prepared["bf16"]
    full_state, half_state = full.initial_state(), half.initial_state()
    for a, b in zip(
        jax.tree.leaves(full_state.params), jax.tree.leaves(half_state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    images, labels = full.val.images, full.val.labels
    full_logits = logits(full.program, full_state, images)
    half_logits = logits(half.program, half_state, images)
    assert half_logits.dtype == np.float32
    difference = np.abs(full_logits - half_logits).max()
    scale = np.abs(full_logits).max()
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9); a few layers add up to ~1%.
    assert difference <= 0.03 * scale
    assert difference > 0  # the bf16 run really rounded somewhere
    full_loss, half_loss = scores(full_logits, labels)["loss"], scores(half_logits, labels)["loss"]
    assert half_loss == pytest.approx(full_loss, rel=0.01)


def test_tiny_model_trains_under_bf16(prepared):
    _, losses = train_calls(prepared["bf16"], calls=4)
    assert all(np.isfinite(call).all() for call in losses)
    assert losses[-1].mean() < 0.7 * losses[0].mean()


def primitives_with_dtypes(jaxpr) -> list[tuple[str, tuple]]:
    """(primitive name, input dtypes) of every equation, inner jaxprs (scan, cond, jit,
    custom derivatives) included."""
    found = []
    for eqn in jaxpr.eqns:
        found.append((eqn.primitive.name, tuple(v.aval.dtype for v in eqn.invars)))
        for param in eqn.params.values():
            for inner in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    found += primitives_with_dtypes(inner)
    return found


@pytest.mark.parametrize("precision, dtype", [("bf16", jnp.bfloat16), ("float32", jnp.float32)])
def test_train_step_runs_convolutions_and_matmuls_in_the_compute_dtype(prepared, precision, dtype):
    built = prepared[precision]
    state, data = built.initial_state(), to_device(built.train.images, built.train.labels)
    orders = call_orders(built.program, state, EpochOrders(built.program, state).upcoming(0, 1))
    step = lambda s, d, n: train_step(built.program, s, orders, d, n)  # noqa: E731
    jaxpr = jax.make_jaxpr(step)(state, data, device_numbers(built.numbers)).jaxpr
    heavy = [
        dtypes
        for name, dtypes in primitives_with_dtypes(jaxpr)
        if name in ("conv_general_dilated", "dot_general")
    ]
    # 2 convs and 2 dense layers: each one's forward and weight gradient, and the input
    # gradient of all but the first
    assert len(heavy) >= 11
    assert all(set(dtypes) == {jnp.dtype(dtype)} for dtypes in heavy), heavy


def test_cli_trains_in_bf16_and_checkpoints_float32(cli, tiny_experiment, isolated_runs):
    cli("train", tiny_experiment, "--set", "train.precision=bf16")
    (run,) = run_dirs(isolated_runs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final"]["val"]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == "bf16"
