"""The speed recipe's pieces: a frozen whitening conv computed from data, `trainable: false` on
any layer, global max pool, a constant scale, batch norm without scale, and the experiment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from cnnlab.config import load_experiment
from cnnlab.data.dataset import Split
from cnnlab.errors import SpecError
from cnnlab.hyper import experiment_numbers
from cnnlab.models import INITIALIZERS, build_model, describe_model, parse_model_spec
from cnnlab.models.initializers import image_patches
from cnnlab.optim import LookaheadSpec, build_optimizer, eval_params, parse_optimizer_spec
from cnnlab.step import (
    EpochOrders,
    channel_stats,
    device_numbers,
    init_state,
    logits,
    preprocess,
    standardize,
    steps_program,
    to_device,
)
from cnnlab.training import WHITENING_SAMPLE, build_program, setup

REPO = Path(__file__).resolve().parent.parent
KEY = jax.random.key(0)

WHITEN = {
    "conv": {
        "features": 8,
        "kernel": 2,
        "padding": "valid",
        "bias": False,
        "init": "whiten",
        "trainable": False,
    }
}
# A small airbench-shaped net for 8x8 digits: 2x2 patches of 1 channel give 4 directions, 8 filters.
SMALL_NET = {
    "init": "dirac_lecun",
    "layers": [
        WHITEN,
        "gelu",
        {"conv": {"features": 16, "bias": False}},
        {"max_pool": 2},
        {"batch_norm": {"momentum": 0.4, "scale": False}},
        "gelu",
        "global_max_pool",
        {"dense": {"bias": False}},
        {"scale": 0.5},
    ],
}


def digits_experiment(tmp_path: Path) -> Path:
    experiment = {
        "name": "whiten_digits",
        "data": {"source": "digits", "val_fraction": 0.1},
        "model": SMALL_NET,
        "augment": [{"hflip": {"alternate": True}}],
        "optimizer": {
            "name": "sgd",
            "lr": 0.2,
            "args": {"momentum": 0.85, "nesterov": True},
            "schedule": {"name": "linear", "warmup_steps": 2, "final_scale": 0.1},
            "lookahead": {"sync_period": 2, "slow_step_size": 0.5},
            "weight_decay": 0.005,  # decay must not reach the frozen kernel either
            "ema_decay": 0.9,
        },
        "train": {
            "steps": 4,
            "batch_size": 64,
            "steps_per_call": 4,
            "log_every_steps": 4,
            "eval_every_steps": 4,
            "label_smoothing": 0.2,
            "test_time_flip": True,
        },
    }
    path = tmp_path / "whiten_digits.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Digits built for the experiment, its state after init, and after four training steps."""
    experiment = load_experiment(digits_experiment(tmp_path_factory.mktemp("speedrun")))
    built = setup(experiment)
    start = built.initial_state()
    before = jax.device_get(start)  # the program donates `start`
    data = to_device(built.train.images, built.train.labels)
    numbers = device_numbers(built.numbers)
    call = steps_program(built.program, 4, start, data, numbers)
    upcoming = EpochOrders(built.program, start).upcoming(0, 4)
    after, _ = call(start, upcoming, data, numbers, np.bool_(False))
    return built, before, jax.device_get(after)


def whiten_kernel(params) -> np.ndarray:
    return np.asarray(params["layers"][0]["kernel"][...])


def test_the_whitening_kernel_is_computed_from_data_and_stays_frozen(trained):
    _, before, after = trained
    kernel = whiten_kernel(before.params)
    assert np.abs(kernel).max() > 0.1  # computed by data_init, not the zeros it starts from
    np.testing.assert_array_equal(whiten_kernel(after.params), kernel)
    # the weights evaluated (the average of the slow lookahead weights) keep it too, to rounding:
    # no weight decay reaches it
    evaluated = whiten_kernel(eval_params(after.params, after.opt_state))
    np.testing.assert_allclose(evaluated, kernel, rtol=1e-6, atol=1e-7)
    for index in (2, 7):  # the conv and the dense layer did train
        assert not np.allclose(
            after.params["layers"][index]["kernel"][...],
            before.params["layers"][index]["kernel"][...],
        )
    assert int(after.step) == 4


def test_the_whitening_conv_decorrelates_the_sample_to_unit_variance(trained):
    built, before, _ = trained
    x = standardize(before.norm, preprocess(built.train.images[:WHITENING_SAMPLE]))
    kernel = whiten_kernel(before.params)
    responses = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    responses = np.asarray(responses).reshape(-1, 8)
    positive, negative = responses[:, :4], responses[:, 4:]
    np.testing.assert_allclose(negative, -positive, atol=1e-5)
    np.testing.assert_allclose(np.cov(positive, rowvar=False), np.eye(4), atol=0.02)
    # the 2x2 patches themselves are far from white: neighbouring pixels correlate
    patches = np.asarray(image_patches(x, (2, 2)))
    assert np.abs(np.cov(patches, rowvar=False) - np.eye(4)).max() > 0.3


def frozen_leaves(model, params) -> list[tuple[str, bool]]:
    mask = model.frozen(params)
    return [
        ("/".join(str(getattr(k, "key", "")) for k in path[:-1]), flag)
        for path, flag in jax.tree_util.tree_leaves_with_path(mask)
    ]


def test_trainable_false_freezes_any_layer_with_parameters():
    layers = [
        {"conv": {"features": 4, "trainable": False}},
        {"batch_norm": {"trainable": False}},
        {"residual": [{"conv": {"features": 4, "trainable": False}}, "relu"]},
        {"group_norm": {"groups": 2, "trainable": False}},
        {"conv": 4},
        "global_avg_pool",
        "dense",
    ]
    model = build_model(parse_model_spec({"layers": layers}), (6, 6, 3), 5)
    params, state = model.init(KEY)
    leaves = frozen_leaves(model, params)
    frozen = ("layers/0/", "layers/1/", "layers/2/body/layers/0/", "layers/3/")
    assert [flag for _, flag in leaves] == [name.startswith(frozen) for name, _ in leaves]
    assert sum(flag for _, flag in leaves) == 8  # kernel + bias, scale + bias of four layers
    x = jax.random.normal(KEY, (4, 6, 6, 3))

    def loss(params):
        logits, _ = model.apply(params, state, x, train=True, key=KEY)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4)).mean()

    grads = jax.grad(loss)(params)
    for (name, flag), grad in zip(leaves, jax.tree.leaves(grads), strict=True):
        assert (np.abs(grad).max() == 0) == flag, name


def test_a_dense_layer_can_be_frozen_and_trainable_layers_have_no_mask():
    frozen = build_model(
        parse_model_spec(
            {"layers": ["flatten", {"dense": {"features": 3, "trainable": False}}, "dense"]}
        ),
        (4, 4, 1),
        2,
    )
    params, _ = frozen.init(KEY)
    assert [flag for _, flag in frozen_leaves(frozen, params)] == [True, True, False, False]
    plain = build_model(parse_model_spec({"layers": ["flatten", "dense"]}), (4, 4, 1), 2)
    assert plain.frozen is None and plain.data_init is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (
            {"layers": [{"max_pool": {"window": 2, "trainable": False}}, "flatten", "dense"]},
            "no parameters to freeze",
        ),
        (
            {
                "layers": [
                    {"conv": {"features": 7, "kernel": 2, "init": "whiten"}},
                    "flatten",
                    "dense",
                ]
            },
            "must be even",
        ),
        (
            {
                "layers": [
                    {"conv": {"features": 18, "kernel": 2, "init": "whiten"}},
                    "flatten",
                    "dense",
                ]
            },
            "at most 16",
        ),
        (
            {
                "layers": [
                    {"residual": [{"conv": {"features": 2, "init": "whiten"}}]},
                    "flatten",
                    "dense",
                ]
            },
            "top-level",
        ),
        ({"layers": ["flatten", {"dense": {"init": "whiten"}}]}, "conv kernels only"),
        ({"layers": ["flatten", "dense"], "init": "whiten"}, "give it to a conv"),
        (
            {"layers": [{"conv": {"features": 2, "trainabel": False}}, "flatten", "dense"]},
            "trainable",
        ),
    ],
)
def test_mistakes_with_the_new_options_are_spec_errors(raw, words):
    with pytest.raises(SpecError, match=words):
        describe_model(parse_model_spec(raw), (4, 4, 2), 3)


def test_new_layers_in_the_summary():
    summary = describe_model(parse_model_spec(SMALL_NET), (8, 8, 1), 10)
    rows = {row.name: row for row in summary.rows}
    assert (rows["0"].output_shape, rows["0"].params, rows["0"].trainable) == ((7, 7, 8), 32, False)
    assert "whiten" in rows["0"].detail and "frozen" in rows["0"].detail
    assert rows["4"].params == 16  # batch norm with a shift but no scale
    assert (rows["6"].kind, rows["6"].output_shape, rows["6"].params) == (
        "global_max_pool",
        (16,),
        0,
    )
    assert (rows["7"].params, rows["8"].output_shape, rows["8"].params) == (160, (10,), 0)
    assert rows["8"].detail == "x 0.5"
    assert summary.frozen_params == 32
    assert summary.total_params == 32 + 8 * 9 * 16 + 16 + 160


def test_the_airbench_fragment_matches_a_hand_count():
    spec = parse_model_spec(yaml.safe_load((REPO / "experiments/models/airbench.yaml").read_text()))
    summary = describe_model(spec, (32, 32, 3), 10)
    convs = 2 * 2 * 3 * 24 + 24 + 9 * (24 * 64 + 64 * 64 + 64 * 256 + 256 * 256 * 3)
    norms = 2 * 64 + 4 * 256  # shifts only
    assert summary.total_params == convs + norms + 256 * 10 == 1_971_640
    assert summary.frozen_params == 288  # the whitening kernel; its bias trains for 146 steps
    rows = {row.name: row for row in summary.rows}
    assert "trains bias until step 146" in rows["0"].detail and "lr x64" in rows["4"].detail
    shapes = [row.output_shape for row in summary.rows if row.kind == "max_pool"]
    assert shapes == [(15, 15, 64), (7, 7, 256), (3, 3, 256)]


def test_global_max_pool_and_scale_compute_what_they_say():
    model = build_model(
        parse_model_spec({"layers": ["global_max_pool", {"scale": -2.0}]}), (3, 3, 4), 4
    )
    params, state = model.init(KEY)
    x = jax.random.normal(KEY, (2, 3, 3, 4))
    out, _ = model.apply(params, state, x, train=False)
    np.testing.assert_allclose(out, -2.0 * x.max(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize(("name", "variance"), [("dirac_lecun", 1.0), ("dirac_pytorch", 1 / 3)])
def test_dirac_inits_copy_their_inputs_and_draw_the_other_filters(name, variance):
    kernel = np.asarray(INITIALIZERS[name](KEY, (3, 3, 16, 64)))
    assert np.array_equal(kernel[..., :16], np.asarray(INITIALIZERS["dirac"](KEY, (3, 3, 16, 16))))
    assert kernel[..., 16:].std() == pytest.approx(np.sqrt(variance / (9 * 16)), rel=0.1)


def test_pytorch_default_draws_uniformly_within_one_over_root_fan_in():
    kernel = np.asarray(INITIALIZERS["pytorch_default"](KEY, (3, 3, 16, 64)))
    bound = 1 / np.sqrt(9 * 16)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound


def test_the_speedrun_experiment_loads_and_builds():
    experiment = load_experiment(REPO / "experiments" / "cifar10_speedrun.yaml")
    assert experiment.train.label_smoothing == 0.2 and experiment.train.test_time_flip
    assert experiment.train.batch_size == 1024
    assert experiment.optimizer.args == {"momentum": 0.85, "nesterov": True}
    rng = np.random.default_rng(0)
    tiny = Split(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 10)
    program = build_program(experiment, (32, 32, 3), 10, len(tiny))
    numbers = device_numbers(experiment_numbers(experiment))
    state = init_state(program, 0, channel_stats(tiny.images), numbers, tiny.images)
    assert np.abs(whiten_kernel(state.params)).max() > 0
    found = logits(program, state, tiny.images[:4])
    assert found.shape == (4, 10) and np.isfinite(found).all()


# ------------------------------------------------------------------ per-layer update rules


def rule_model():
    layers = [
        {"conv": {"features": 2, "trainable": ["bias"], "freeze_at_step": 2}},
        {"batch_norm": {"scale": False, "lr_scale": 4}},
        "global_avg_pool",
        {"dense": {"features": 3}},
    ]
    return build_model(parse_model_spec({"layers": layers}), (4, 4, 1), 3)


def sgd_steps(model, count, lr=0.1):
    """Params after each of `count` plain SGD steps through the model's update rules, and the
    updates the same gradients would give without rules."""
    spec = parse_optimizer_spec({"name": "sgd", "lr": lr})
    tx, _ = build_optimizer(spec, 10, model.update_scale)
    params, state = model.init(KEY)
    x = jax.random.normal(KEY, (6, 4, 4, 1))

    def loss(params):
        logits, _ = model.apply(params, state, x, train=True, key=KEY)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(6) % 3).mean()

    opt_state, history, plain = tx.init(params), [params], []
    for _ in range(count):
        grads = jax.grad(loss)(params)
        plain.append(jax.tree.map(lambda g: -lr * g, grads))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, plain


def test_layer_rules_freeze_scale_and_stop_parameters_on_time():
    history, plain = sgd_steps(rule_model(), 3)
    conv = [np.asarray(p["layers"][0]["bias"][...]) for p in history]
    kernels = [np.asarray(p["layers"][0]["kernel"][...]) for p in history]
    norm = [np.asarray(p["layers"][1]["bias"][...]) for p in history]
    assert all(np.array_equal(k, kernels[0]) for k in kernels)  # not in `trainable`
    assert not np.array_equal(conv[1], conv[0]) and not np.array_equal(conv[2], conv[1])
    np.testing.assert_array_equal(conv[3], conv[2])  # frozen from step 2 on
    for step in range(3):  # 4x the plain SGD step
        expected = 4 * np.asarray(plain[step]["layers"][1]["bias"][...])
        np.testing.assert_allclose(norm[step + 1] - norm[step], expected, rtol=1e-5, atol=1e-8)


def test_layer_rules_name_parameters_the_layer_has():
    raw = {"layers": [{"conv": {"features": 2, "trainable": ["bais"]}}, "flatten", "dense"]}
    with pytest.raises(SpecError, match="has no parameter 'bais'; it has bias, kernel"):
        describe_model(parse_model_spec(raw), (4, 4, 1), 3)
    raw = {"layers": [{"max_pool": {"window": 2, "lr_scale": 2}}, "flatten", "dense"]}
    with pytest.raises(SpecError, match="no parameters to freeze or scale"):
        describe_model(parse_model_spec(raw), (4, 4, 1), 3)


def test_a_ramped_lookahead_starts_as_plain_sgd_and_averages_at_the_end():
    spec = LookaheadSpec(sync_period=5, slow_step_size=0.2262, ramp=3)
    assert float(spec.step_size(5, 480)) == pytest.approx(1.0, abs=1e-5)  # early syncs: no-ops
    assert float(spec.step_size(480, 480)) == pytest.approx(0.2262)
    assert float(spec.step_size(240, 480)) == pytest.approx(1 - 0.7738 / 8)

    def run(lookahead, steps=10):
        raw = {"name": "sgd", "lr": 0.1, "lookahead": lookahead}
        tx, _ = build_optimizer(parse_optimizer_spec(raw), steps)
        params = jnp.array([3.0])
        opt_state = tx.init(params)
        trail = []
        for _ in range(steps):
            updates, opt_state = tx.update(2 * params, opt_state, params)  # d/dp of p**2
            params = optax.apply_updates(params, updates)
            trail.append(float(params[0]))
        return trail, opt_state

    # SGD on p**2 with lr 0.1 multiplies p by 0.8 a step; syncs at steps 5 and 10 of 10
    trail, _ = run({"sync_period": 5, "slow_step_size": 0.5, "ramp": 3})
    np.testing.assert_allclose(trail[:4], [3.0 * 0.8 ** (k + 1) for k in range(4)], rtol=1e-6)
    first = 3.0 + (1 - 0.5 * 0.5**3) * (3.0 * 0.8**5 - 3.0)  # halfway, 1/16 stays behind
    second = first + 0.5 * (first * 0.8**5 - first)  # at the end, the full slow_step_size
    np.testing.assert_allclose([trail[4], trail[9]], [first, second], rtol=1e-6)
    unramped, state = run({"sync_period": 5, "slow_step_size": 0.5})
    np.testing.assert_allclose(unramped[4], 3.0 + 0.5 * (3.0 * 0.8**5 - 3.0), rtol=1e-6)
    np.testing.assert_allclose(eval_params(None, state), unramped[9], rtol=1e-6)  # the slow ones


def test_warmup_can_start_above_zero():
    spec = parse_optimizer_spec(
        {
            "name": "sgd",
            "lr": 1.0,
            "schedule": {"name": "linear", "warmup_steps": 10, "warmup_start": 0.2},
        }
    )
    _, schedule = build_optimizer(spec, 100)
    assert [round(float(schedule(step)), 4) for step in (0, 5, 10)] == [0.2, 0.6, 1.0]


def test_a_test_time_shift_averages_the_diagonal_shifts_at_half_weight(trained):
    built, _, after = trained
    program = built.program
    assert program.test_time_flip and program.test_time_shift == 0
    images = built.train.images[:8]
    shifted = dataclasses.replace(program, test_time_shift=1, compiled={})
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    corners = [padded[:, :8, :8], padded[:, 2:, 2:]]
    plain = logits(program, after, images)
    expected = (
        plain + (logits(program, after, corners[0]) + logits(program, after, corners[1])) / 2
    ) / 2
    np.testing.assert_allclose(logits(shifted, after, images), expected, rtol=1e-5, atol=1e-5)
