"""A learner's own layer in a layer list and own optimizer in an experiment."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnlab.errors import SpecError
from cnnlab.models import build_model, model_spec_to_dict, parse_model_spec
from cnnlab.optim import build_optimizer, parse_optimizer_spec

FIXTURES = Path(__file__).parent / "check_fixtures"

LAYERS_PY = """
import jax
import jax.numpy as jnp
from flax import nnx


class MyConv(nnx.Module):
    def __init__(self, in_shape, rngs, features=4):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 3, in_shape[-1], features)) * 0.1)

    def __call__(self, x):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, self.w.value, (1, 1), "SAME", dimension_numbers=dims)


class MyDense:
    @staticmethod
    def init(key, in_shape, features=10):
        return {"w": jax.random.normal(key, (in_shape[0], features)) * 0.05, "b": jnp.zeros(features)}

    @staticmethod
    def apply(params, x):
        return x @ params["w"] + params["b"]
"""


@pytest.fixture
def layers_file(tmp_path) -> Path:
    path = tmp_path / "my_layers.py"
    path.write_text(LAYERS_PY)
    return path


def test_python_layers_in_a_layer_list_build_and_run(layers_file):
    spec = parse_model_spec({"layers": [
        {"python": f"{layers_file}:MyConv", "args": {"features": 6}},
        "relu", "flatten",
        {"python": f"{layers_file}:MyDense", "args": {"features": 3}},
    ]})  # fmt: skip
    model = build_model(spec, (5, 5, 2), 3)
    params, state = model.init(jax.random.key(0))
    sizes = sorted(leaf.size for leaf in jax.tree.leaves(params))
    assert sizes == [3, 3 * 3 * 2 * 6, 5 * 5 * 6 * 3]  # dense bias, conv kernel, dense kernel
    logits, _ = model.apply(
        params, state, jnp.ones((2, 5, 5, 2)), train=True, key=jax.random.key(1)
    )
    assert logits.shape == (2, 3)
    assert parse_model_spec(model_spec_to_dict(spec)) == spec


def test_python_layer_errors_name_the_layer(layers_file):
    with pytest.raises(SpecError, match=r"layers\[0\].*no argument 'width'"):
        parse_model_spec(
            {"layers": [{"python": f"{layers_file}:MyConv", "args": {"width": 3}}, "dense"]}
        )
    with pytest.raises(SpecError, match="has no 'Missing'"):
        parse_model_spec({"layers": [{"python": f"{layers_file}:Missing"}, "dense"]})


def test_python_optimizer_follows_its_trajectory_and_the_schedule():
    raw = {"python": f"{FIXTURES / 'optimizers.py'}:adam", "lr": 0.01, "args": {"b1": 0.8}}
    spec = parse_optimizer_spec(raw)
    assert spec.name == "python" and spec.args == {"b1": 0.8}
    tx, _ = build_optimizer(spec, total_steps=10)
    params = {"w": jnp.ones(3)}
    reference = optax.adam(0.01, b1=0.8)
    state, ref_state = tx.init(params), reference.init(params)
    for _ in range(3):
        grads = {"w": jnp.array([1.0, -2.0, 0.5])}
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-4)
    cosine = parse_optimizer_spec({**raw, "schedule": "cosine"})
    tx, schedule = build_optimizer(cosine, total_steps=4)
    state = tx.init(params)
    for _ in range(4):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    assert float(jnp.abs(updates["w"]).max()) < 0.01 * 0.2  # the last step's rate is near 0


def test_python_optimizer_bad_arguments():
    target = f"{FIXTURES / 'optimizers.py'}:adam"
    with pytest.raises(SpecError, match="no argument 'beta1'"):
        parse_optimizer_spec({"python": target, "lr": 0.01, "args": {"beta1": 0.9}})
    with pytest.raises(SpecError, match="not both"):
        parse_optimizer_spec({"python": target, "name": "adam", "lr": 0.01})


def test_overfit_trains_with_a_learners_layers_and_optimizer(tmp_path, cli):
    """The learner's conv, dense and Adam memorise 4 digits through `cnnlab overfit`, with the
    learning rate a number the compiled step takes as data."""
    (tmp_path / "my_layers.py").write_text(LAYERS_PY)
    experiment = tmp_path / "mine.yaml"
    experiment.write_text(
        "name: mine\n"
        "data: {source: digits}\n"
        "model:\n"
        "  layers:\n"
        "    - {python: my_layers.py:MyConv, args: {features: 8}}\n"
        "    - relu\n"
        "    - flatten\n"
        "    - {python: my_layers.py:MyDense, args: {features: 10}}\n"
        f"optimizer: {{python: {FIXTURES / 'optimizers.py'}:adam, lr: 1.0e-2}}\n"
        "train: {steps: 200, batch_size: 4, log_every_steps: 10, eval_every_steps: 100}\n"
    )
    result = cli("overfit", experiment, "--samples", "4", "--max-steps", "300")
    assert "PASS" in result.stdout
