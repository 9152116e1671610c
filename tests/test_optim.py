from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
import yaml
from flax import nnx

from cnnlab.errors import SpecError
from cnnlab.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    eval_params,
    parse_optimizer_spec,
)

FRAGMENTS = Path(__file__).parent.parent / "experiments" / "optim"
STEPS = 50

# Softmax regression on random data with labels from a random linear teacher.
_kx, _kt, _kw = jax.random.split(jax.random.key(0), 3)
INPUTS = jax.random.normal(_kx, (128, 8))
LABELS = jnp.argmax(INPUTS @ jax.random.normal(_kt, (8, 4)), axis=1)
INITIAL = {"w": 0.1 * jax.random.normal(_kw, (8, 4)), "b": jnp.zeros(4)}


def loss_of(params):
    logits = INPUTS @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()


def train(raw: dict, steps: int = STEPS):
    """Run `steps` updates; returns (final params, final optimizer state, losses)."""
    spec = parse_optimizer_spec(raw)
    tx, _ = build_optimizer(spec, total_steps=steps)

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params):
        (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params, state, losses

    return run(INITIAL)


def lr_curve(schedule: dict, total_steps: int, lr: float = 0.1):
    spec = parse_optimizer_spec({"name": "sgd", "lr": lr, "schedule": schedule})
    _, schedule_fn = build_optimizer(spec, total_steps)
    return jax.jit(jax.vmap(schedule_fn))(jnp.arange(total_steps + 1))


# Adadelta's lr multiplies a step that is already unit-free; LARS scales each step by
# trust_coefficient (0.001) times the weight-to-gradient norm ratio: both want a larger lr.
LR = {"adadelta": 10.0, "lars": 20.0}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_reduces_the_loss(name):
    _, _, losses = train({"name": name, "lr": LR.get(name, 0.1)})
    assert losses[-1] < 0.8 * losses[0], (float(losses[0]), float(losses[-1]))


@pytest.mark.parametrize(
    "schedule",
    [
        "constant",
        {"name": "constant", "warmup_steps": 5},
        {"name": "piecewise", "boundaries": [20, 40], "scales": [0.5, 0.5]},
        {"name": "step", "every_steps": 20, "factor": 0.5},
        {"name": "exponential", "decay_rate": 0.5, "transition_steps": 25},
        "cosine",
        {"name": "warmup_cosine", "warmup_steps": 10},
        {"name": "linear", "final_scale": 0.1},
        "one_cycle",
    ],
)
def test_every_schedule_reduces_the_loss(schedule):
    _, _, losses = train({"name": "sgd", "lr": 1.0, "schedule": schedule})
    assert losses[-1] < 0.8 * losses[0]


def test_every_schedule_is_covered_above():
    covered = {"constant", "piecewise", "step", "exponential", "cosine", "warmup_cosine"}
    assert set(SCHEDULES) == covered | {"linear", "one_cycle"}


def test_warmup_rises_linearly_to_lr_then_cosine_ends_at_zero():
    lr = lr_curve({"name": "warmup_cosine", "warmup_steps": 10}, total_steps=100)
    assert lr[:11] == pytest.approx([0.01 * i for i in range(11)], abs=1e-6)
    assert float(lr.max()) == pytest.approx(0.1)
    assert float(lr[55]) == pytest.approx(0.05, abs=1e-6)  # halfway through the decay
    assert float(lr[100]) == pytest.approx(0.0, abs=1e-7)
    assert bool(jnp.all(jnp.diff(lr[10:]) <= 0))


def test_cosine_ends_at_its_floor():
    lr = lr_curve({"name": "cosine", "final_scale": 0.1}, total_steps=100)
    assert float(lr[0]) == pytest.approx(0.1)
    assert float(lr[100]) == pytest.approx(0.01, rel=1e-5)


def test_piecewise_scales_at_the_boundaries():
    lr = lr_curve({"name": "piecewise", "boundaries": [30, 60], "scales": [0.1, 0.5]}, 100)
    assert [float(lr[i]) for i in (29, 30, 59, 60, 99)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.005, 0.005]
    )


def test_step_decay_multiplies_every_period():
    lr = lr_curve({"name": "step", "every_steps": 25, "factor": 0.5}, 100)
    assert [float(lr[i]) for i in (24, 25, 49, 50, 75)] == pytest.approx(
        [0.1, 0.05, 0.05, 0.025, 0.0125]
    )


def test_exponential_decays_smoothly():
    lr = lr_curve({"name": "exponential", "decay_rate": 0.5, "transition_steps": 20}, 100)
    assert [float(lr[i]) for i in (0, 10, 20, 40)] == pytest.approx(
        [0.1, 0.1 * 0.5**0.5, 0.05, 0.025], rel=1e-5
    )


def test_linear_falls_to_zero_over_the_run():
    lr = lr_curve("linear", 100)
    assert [float(lr[i]) for i in (0, 50, 100)] == pytest.approx([0.1, 0.05, 0.0], abs=1e-7)


def test_one_cycle_peaks_at_its_fraction_of_the_run():
    lr = lr_curve({"name": "one_cycle", "peak_fraction": 0.25}, total_steps=200)
    assert int(jnp.argmax(lr)) == 50
    assert float(lr.max()) == pytest.approx(0.1)
    assert float(lr[0]) == pytest.approx(0.1 / 25)
    assert float(lr[200]) == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)


def test_clip_norm_bounds_the_update():
    params = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((3, 3), 30.0), "b": jnp.full(3, 30.0)}

    def update_norm(raw):
        tx, _ = build_optimizer(parse_optimizer_spec(raw), total_steps=10)
        updates, _ = tx.update(grads, tx.init(params), params)
        return float(optax.global_norm(updates))

    assert update_norm({"name": "sgd", "lr": 1.0}) == pytest.approx(30.0 * 12**0.5)
    assert update_norm({"name": "sgd", "lr": 1.0, "clip_norm": 0.5}) == pytest.approx(0.5)


class TinyNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion", "lars"])
def test_weight_decay_spares_biases_and_norm_scales(name):
    _, params, _ = nnx.split(TinyNet(nnx.Rngs(0)), nnx.Param, ...)
    params = jax.tree.map(lambda p: p + 1.0, params)  # biases start at 0: make decay visible
    tx, _ = build_optimizer(
        parse_optimizer_spec({"name": name, "lr": 0.1, "weight_decay": 0.5}), total_steps=10
    )
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["kernel"][...]).min()) > 0
    for one_dim in (updates["conv"]["bias"], updates["norm"]["scale"], updates["norm"]["bias"]):
        assert float(jnp.abs(one_dim[...]).max()) == 0


def test_weight_decay_shrinks_kernels_by_lr_times_decay_with_sgd():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx, _ = build_optimizer(
        parse_optimizer_spec({"name": "sgd", "lr": 0.1, "weight_decay": 0.5}), 10
    )
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert updates["w"] == pytest.approx(jnp.full((2, 2), -0.05))
    assert updates["b"] == pytest.approx(jnp.zeros(2))


def test_ema_evaluates_a_moving_average_that_trails_the_weights():
    params, state, losses = train({"name": "sgd", "lr": 0.5, "ema_decay": 0.9})
    averaged = eval_params(params, state)
    assert float(jnp.abs(averaged["w"] - params["w"]).max()) > 1e-4
    assert loss_of(params) < loss_of(averaged) < losses[0]


def test_lookahead_syncs_fast_to_slow_every_period():
    raw = {"name": "adam", "lr": 0.05, "lookahead": {"sync_period": 5, "slow_step_size": 0.5}}
    params, state, losses = train(raw, steps=10)
    assert eval_params(params, state)["w"] == pytest.approx(params["w"])  # just synced
    params, state, losses = train(raw, steps=12)
    assert float(jnp.abs(eval_params(params, state)["w"] - params["w"]).max()) > 1e-4
    assert losses[-1] < 0.8 * losses[0]


def test_without_ema_or_lookahead_eval_params_are_the_params():
    params, state, _ = train({"name": "adam", "lr": 0.05}, steps=3)
    assert eval_params(params, state) is params


def test_spec_keeps_validated_values():
    spec = parse_optimizer_spec(
        {
            "name": "sgd",
            "lr": "1e-1",  # PyYAML reads 1e-1 as a string
            "args": {"momentum": 0.9, "nesterov": True},
            "schedule": {"name": "warmup_cosine", "warmup_steps": 200},
            "weight_decay": "5e-4",
        }
    )
    assert (spec.lr, spec.weight_decay, spec.args) == (
        0.1,
        5e-4,
        {"momentum": 0.9, "nesterov": True},
    )
    assert spec.schedule.warmup_steps == 200
    assert spec.model_dump()["schedule"] == {
        "name": "warmup_cosine",
        "warmup_steps": 200,
        "warmup_start": 0.0,
        "final_scale": 0.0,
    }
    assert parse_optimizer_spec(spec.model_dump()) == spec  # a run directory can store it
    with pytest.raises(ValueError):
        spec.lr = 1.0


@pytest.mark.parametrize(
    "raw, loc, message",
    [
        ({"name": "adamm", "lr": 0.1}, ("name",), "did you mean 'adam'"),
        ({"name": "sgd", "lr": -0.1}, ("lr",), "greater than 0"),
        ({"name": "sgd", "lr": "fast"}, ("lr",), "number"),
        ({"name": "sgd", "lr": True}, ("lr",), "number"),
        ({"name": "sgd"}, ("lr",), "missing"),
        ({"name": "sgd", "lr": 0.1, "lrr": 1}, ("lrr",), "did you mean 'lr'"),
        ({"name": "sgd", "lr": 0.1, "args": {"momentun": 0.9}}, ("args", "momentun"), "'momentum'"),
        ({"name": "sgd", "lr": 0.1, "args": {"momentum": "high"}}, ("args", "momentum"), "number"),
        ({"name": "sgd", "lr": 0.1, "args": {"nesterov": 1}}, ("args", "nesterov"), "true or false"),
        ({"name": "sgd", "lr": 0.1, "args": {"nesterov": True}}, ("args", "nesterov"), "momentum"),
        ({"name": "adam", "lr": 0.1, "args": [0.9]}, ("args",), "mapping"),
        ({"name": "adamw", "lr": 0.1, "args": {"weight_decay": 0.1}}, ("args", "weight_decay"), "'weight_decay' key"),
        ({"name": "adam", "lr": 0.1, "args": {"learning_rate": 0.1}}, ("args", "learning_rate"), "'lr'"),
        ({"name": "sgd", "lr": 0.1, "schedule": "cosin"}, ("schedule", "name"), "did you mean 'cosine'"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"warmup_steps": 3}}, ("schedule",), "name"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "step"}}, ("schedule", "every_steps"), "missing"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "warmup_cosine"}}, ("schedule", "warmup_steps"), "missing"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "cosine", "warmup": 5}}, ("schedule", "warmup"), "'warmup_steps'"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "step", "every_steps": 2.5}}, ("schedule", "every_steps"), "integer"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "piecewise", "boundaries": [50, 10], "scales": [0.1, 0.1]}}, ("schedule", "boundaries"), "increasing"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "piecewise", "boundaries": [10], "scales": [0.1, 0.1]}}, ("schedule", "scales"), "one scale per boundary"),
        ({"name": "sgd", "lr": 0.1, "schedule": {"name": "one_cycle", "warmup_steps": 5}}, ("schedule", "warmup_steps"), "unknown key"),
        ({"name": "sgd", "lr": 0.1, "clip_norm": 0}, ("clip_norm",), "greater than 0"),
        ({"name": "sgd", "lr": 0.1, "weight_decay": -1}, ("weight_decay",), "greater than or equal"),
        ({"name": "sgd", "lr": 0.1, "ema_decay": 1.0}, ("ema_decay",), "less than 1"),
        ({"name": "sgd", "lr": 0.1, "lookahead": {"sync_period": 0}}, ("lookahead", "sync_period"), "greater than or equal to 1"),
        ({"name": "sgd", "lr": 0.1, "lookahead": {"period": 3}}, ("lookahead", "period"), "did you mean 'sync_period'"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_place(raw, loc, message):
    with pytest.raises(SpecError) as caught:
        parse_optimizer_spec(raw)
    assert caught.value.loc == loc
    assert message in caught.value.message


def test_a_spec_that_is_not_a_mapping_is_rejected():
    with pytest.raises(SpecError, match="mapping"):
        parse_optimizer_spec("adam")


@pytest.mark.parametrize(
    "fragment", ["adam", "sgd_momentum", "sgd_step_decay", "adamw_cosine", "adagrad"]
)
def test_shipped_fragments_parse_build_and_train(fragment):
    raw = yaml.safe_load((FRAGMENTS / f"{fragment}.yaml").read_text())
    spec = parse_optimizer_spec(raw)
    build_optimizer(spec, total_steps=1000)
    _, _, losses = train({**raw, "lr": min(spec.lr, 0.1)})
    assert losses[-1] < losses[0]
