"""Models: spec parsing, shapes, parameter counts, initialisers, state, custom Python models."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from cnnlab.errors import SpecError, UserError
from cnnlab.models import (
    FAMILIES,
    build_model,
    describe_model,
    model_spec_to_dict,
    parse_model_spec,
    render_model_summary,
)

REPO = Path(__file__).resolve().parent.parent
FRAGMENTS = REPO / "experiments" / "models"
CUSTOM = REPO / "experiments" / "custom"
KEY = jax.random.key(0)


def build(raw: dict, input_shape=(8, 8, 1), num_classes=10):
    return build_model(parse_model_spec(raw), input_shape, num_classes)


def total_params(raw: dict, input_shape, num_classes=10) -> int:
    return describe_model(parse_model_spec(raw), input_shape, num_classes).total_params


def fragment(name: str) -> dict:
    return yaml.safe_load((FRAGMENTS / f"{name}.yaml").read_text())


def count_leaves(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# -- parameter counts -------------------------------------------------------------------------


def test_cnn_default_is_the_seed_cnn_with_421642_parameters():
    # conv 3*3*1*32+32 = 320; conv 3*3*32*64+64 = 18,496; dense (7*7*64)*128+128 = 401,536;
    # dense 128*10+10 = 1,290
    assert 320 + 18_496 + 401_536 + 1_290 == 421_642
    assert total_params({"family": "cnn"}, (28, 28, 1)) == 421_642
    assert total_params(fragment("cnn_small"), (28, 28, 1)) == 421_642


def test_mlp_parameters_match_a_hand_count():
    # 784*256+256 = 200,960; 256*128+128 = 32,896; 128*10+10 = 1,290
    assert total_params(fragment("mlp"), (28, 28, 1)) == 200_960 + 32_896 + 1_290


def test_seed_residual_parameters_match_a_hand_count():
    # conv 1->32: 9*1*32+32 = 320; residual conv 32->32: 9*32*32+32 = 9,248 (identity shortcut);
    # conv 32->64: 9*32*64+64 = 18,496; residual conv 64->64: 9*64*64+64 = 36,928;
    # dense (14*14*64)*128+128 = 1,605,760; dense 128*10+10 = 1,290
    expected = 320 + 9_248 + 18_496 + 36_928 + 1_605_760 + 1_290
    assert expected == 1_672_042
    assert total_params(fragment("seed_residual"), (28, 28, 1)) == expected


def test_resnet_default_parameters_match_a_hand_count():
    # bias-free convs: stem 3*3*3*64 = 1,728; stage 1: 2 * 9*64*64 = 73,728;
    # stage 2: 9*64*128 + 9*128*128 + 1x1 projection 64*128 = 229,376;
    # stage 3: 9*128*256 + 9*256*256 + projection 128*256 = 917,504;
    # GroupNorm scale+shift: 2*64 (stem) + 2*2*64 + 2*2*128 + 2*2*256 = 1,920; dense 256*10+10
    expected = 1_728 + 73_728 + 229_376 + 917_504 + 1_920 + 2_570
    assert expected == 1_226_826
    assert total_params(fragment("resnet_small"), (32, 32, 3)) == expected


@pytest.mark.parametrize(
    ("raw", "input_shape"),
    [
        ({"family": "cnn"}, (28, 28, 1)),
        ({"family": "resnet", "preset": "tiny", "norm": "batch"}, (8, 8, 3)),
    ],
)
def test_summary_counts_equal_the_initialised_parameters(raw, input_shape):
    summary = describe_model(parse_model_spec(raw), input_shape, 10)
    params, state = build(raw, input_shape).init(KEY)
    assert summary.total_params == count_leaves(params)
    assert summary.state_size == count_leaves(state)


def test_flops_of_the_seed_cnn_count_a_multiply_add_as_two():
    rows = describe_model(parse_model_spec({"family": "cnn"}), (28, 28, 1), 10).rows
    conv2 = next(row for row in rows if row.name == "3")
    assert conv2.kind == "conv" and conv2.output_shape == (14, 14, 64)
    assert conv2.flops == 2 * 14 * 14 * 64 * 9 * 32 + 14 * 14 * 64  # plus one add per bias


# -- every preset and fragment builds --------------------------------------------------------


PRESETS = [(family, preset) for family in FAMILIES for preset in FAMILIES.get(family).presets]


@pytest.mark.parametrize(("family", "preset"), PRESETS)
def test_every_preset_builds_with_the_right_output_shape(family, preset):
    model = build({"family": family, "preset": preset}, (32, 32, 3), 7)
    x = jnp.zeros((2, 32, 32, 3))
    params, state = jax.eval_shape(model.init, KEY)
    for train in (True, False):
        logits, _ = jax.eval_shape(
            lambda p, s, t=train: model.apply(p, s, x, train=t, key=KEY), params, state
        )
        assert logits.shape == (2, 7)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_presets_run_for_real(family):
    model = build({"family": family, "preset": "tiny"}, (8, 8, 1), 10)
    params, state = model.init(KEY)
    logits, _ = jax.jit(model.apply, static_argnames="train")(
        params, state, jnp.ones((3, 8, 8, 1)), train=True, key=KEY
    )
    assert logits.shape == (3, 10) and bool(jnp.isfinite(logits).all())


@pytest.mark.parametrize("path", sorted(FRAGMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_fragments_build(path):
    model = build(yaml.safe_load(path.read_text()), (32, 32, 3), 10)
    params, state = jax.eval_shape(model.init, KEY)
    logits, _ = jax.eval_shape(
        lambda p, s: model.apply(p, s, jnp.zeros((1, 32, 32, 3)), train=False), params, state
    )
    assert logits.shape == (1, 10)


def test_repeat_writes_its_layers_out():
    summary = describe_model(parse_model_spec(fragment("seed_cnn_layers")), (28, 28, 1), 10)
    kinds = [row.kind for row in summary.rows]
    assert kinds == ["conv", "relu", "max_pool"] * 2 + ["flatten", "dense", "relu", "dense"]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "loc", "words"),
    [
        (["flatten", {"conv": 8}, "dense"], ("layers", 1), ["layer 1 (conv)", "(64,)", "image"]),
        (
            [{"conv": 4}, {"max_pool": 16}, "flatten", "dense"],
            ("layers", 1),
            ["layer 1 (max_pool)", "(8, 8, 4)", "larger"],
        ),
        (
            [{"conv": 6}, {"group_norm": 4}, "flatten", "dense"],
            ("layers", 1),
            ["layer 1 (group_norm)", "groups=4", "6 channels"],
        ),
        ([{"conv": 4}, {"dense": 5}], ("layers", 1), ["layer 1 (dense)", "(8, 8, 4)", "flatten"]),
        (
            [
                {"conv": 4},
                {"residual": [{"conv": {"features": 4, "padding": "valid"}}]},
                "flatten",
                "dense",
            ],
            ("layers", 1),
            ["layer 1 (residual)", "(6, 6, 4)"],
        ),
        (["flatten", {"dense": 7}], ("layers", 1), ["(7,)", "(10,)"]),
        ([{"conv": 4}], ("layers", 0), ["(8, 8, 4)", "flatten"]),
    ],
)
def test_shape_errors_name_the_layer_and_the_shapes(layers, loc, words):
    spec = parse_model_spec({"layers": layers})  # parsing alone cannot know the input
    with pytest.raises(SpecError) as caught:
        build_model(spec, (8, 8, 1), 10)
    assert caught.value.loc == loc
    for word in words:
        assert word in caught.value.message


def test_family_shape_errors_point_at_the_family():
    with pytest.raises(SpecError) as caught:
        describe_model(parse_model_spec({"family": "cnn", "widths": [8, 8, 8, 8]}), (8, 8, 1), 10)
    assert caught.value.loc == ("family",)
    assert "(max_pool)" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "loc", "words"),
    [
        ({"layers": [{"conv": 8}, "flaten", "dense"]}, ("layers", 1), ["did you mean 'flatten'"]),
        (
            {"layers": [{"conv": {"featurs": 8}}]},
            ("layers", 0, "conv", "featurs"),
            ["did you mean 'features'"],
        ),
        ({"layers": ["conv"]}, ("layers", 0, "features"), ["'features' is missing"]),
        ({"layers": ["dense"], "init": "he_norml"}, ("init",), ["did you mean 'he_normal'"]),
        (
            {"layers": [{"conv": {"features": 8, "init": "xavier"}}]},
            ("layers", 0, "conv", "init"),
            ["did you mean"],
        ),
        (
            {"layers": [{"dense": {"init": "dirac"}}]},
            ("layers", 0, "dense", "init"),
            ["conv kernels only"],
        ),
        ({"layers": [{"relu": 2}]}, ("layers", 0, "relu"), ["no arguments"]),
        ({"layers": [{"dense": -3}]}, ("layers", 0, "dense", "features"), ["'classes'"]),
        ({"layers": [{"repeat": 0, "layers": ["relu"]}]}, ("layers", 0, "repeat"), [">= 1"]),
        ({"layers": ["dense"], "nit": "zeros"}, ("nit",), ["did you mean 'init'"]),
        ({"family": "resnte"}, ("family",), ["did you mean 'resnet'"]),
        ({"family": "cnn", "preset": "huge"}, ("preset",), ["tiny"]),
        ({"family": "resnet", "stides": [1]}, ("stides",), ["did you mean 'strides'"]),
        ({"family": "resnet", "widths": [8, 16]}, (), ["one value per stage"]),
        ({"layrs": []}, (), ["did you mean 'layers'"]),
    ],
)
def test_spec_errors_say_where_and_suggest(raw, loc, words):
    with pytest.raises(SpecError) as caught:
        parse_model_spec(raw)
    assert caught.value.loc == loc
    for word in words:
        assert word in caught.value.message


def test_a_final_softmax_is_dropped_with_one_note():
    spec = parse_model_spec({"layers": ["flatten", "dense", "softmax"]})
    model = build_model(spec, (8, 8, 1), 10)
    assert len(model.notes) == 1 and "softmax" in model.notes[0]
    assert [row.kind for row in describe_model(spec, (8, 8, 1), 10).rows] == ["flatten", "dense"]
    params, state = model.init(KEY)
    logits, _ = model.apply(params, state, jnp.ones((2, 8, 8, 1)), train=False)
    assert not np.allclose(jnp.exp(logits).sum(-1), 1.0)  # logits, not probabilities
    assert build({"layers": ["flatten", "dense"]}).notes == ()


# -- layers, initialisers, state ---------------------------------------------------------------


def layer_net(raw: dict, input_shape=(8, 8, 3)):
    """The NNX module of a layer-list model, for looking at single layers."""
    from cnnlab.models.build import network

    return network(parse_model_spec(raw), input_shape, 10, nnx.Rngs(KEY))[0]


def test_dirac_conv_is_the_identity():
    net = layer_net(
        {"layers": [{"conv": {"features": 3, "init": "dirac", "bias": False}}, "flatten", "dense"]}
    )
    x = jax.random.normal(KEY, (2, 8, 8, 3))
    assert np.allclose(net.layers[0](x), x)


def test_he_normal_has_the_variance_of_its_fan_in():
    net = layer_net(
        {
            "layers": [{"conv": {"features": 256, "kernel": 3}}, "flatten", "dense"],
            "init": "he_normal",
        },
        (8, 8, 64),
    )
    kernel = np.asarray(net.layers[0].kernel[...])
    assert kernel.std() == pytest.approx(np.sqrt(2 / (3 * 3 * 64)), rel=0.03)
    assert np.asarray(net.layers[0].bias[...]).max() == 0


@pytest.mark.parametrize(
    "init", ["zeros", "orthogonal", "xavier_uniform", "glorot_normal", "lecun_normal", "he_uniform"]
)
def test_named_initialisers_reach_the_kernels(init):
    net = layer_net({"layers": ["flatten", {"dense": {"features": 16, "init": init}}, "dense"]})
    kernel = np.asarray(net.layers[1].kernel[...])
    if init == "zeros":
        assert not kernel.any()
    elif init == "orthogonal":
        assert np.allclose(kernel.T @ kernel, np.eye(16), atol=1e-5)
    else:
        assert 0.005 < kernel.std() < 1


def test_batch_norm_updates_running_statistics_in_training_only():
    model = build({"layers": ["batch_norm", "flatten", "dense"]})
    params, fresh = model.init(KEY)
    x = 3.0 + 2.0 * jax.random.normal(KEY, (16, 8, 8, 1))
    _, unchanged = model.apply(params, fresh, x, train=False)
    assert jax.tree.all(jax.tree.map(np.array_equal, unchanged, fresh))
    state = fresh
    for _ in range(5):
        _, state = model.apply(params, state, x, train=True, key=KEY)
    trained_eval, _ = model.apply(params, state, x, train=False)
    fresh_eval, _ = model.apply(params, fresh, x, train=False)
    assert not np.allclose(trained_eval, fresh_eval)
    train_out, _ = model.apply(params, state, x, train=True, key=KEY)
    assert not np.allclose(train_out, trained_eval)  # training normalises with the batch's own


@pytest.mark.parametrize("layer", [{"dropout": 0.5}, {"noise": 0.5}])
def test_random_layers_follow_the_key_in_training_and_vanish_in_evaluation(layer):
    model = build({"layers": ["flatten", layer, "dense"]})
    params, state = model.init(KEY)
    x = jnp.ones((4, 8, 8, 1))
    first, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    again, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    other, _ = model.apply(params, state, x, train=True, key=jax.random.key(2))
    evaluation, _ = model.apply(params, state, x, train=False)
    plain = build({"layers": ["flatten", "dense"]})  # its state holds no rate
    clean = plain.apply(params, plain.init(KEY)[1], x, train=False)[0]
    assert np.allclose(first, again) and not np.allclose(first, other)
    assert np.allclose(evaluation, clean)


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("size", [8, 31, 7])  # odd sides drop their last row and column
def test_pooling_as_reshape_matches_reduce_window_with_gradients(reduce, size):
    x = jax.random.normal(KEY, (2, size, size, 3))
    pool = layer_net({"layers": [{f"{reduce}_pool": 2}, "flatten", "dense"]}).layers[0]
    reference = nnx.max_pool if reduce == "max" else nnx.avg_pool
    window = functools.partial(reference, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    assert pool.fast
    assert pool(x).shape == (2, size // 2, size // 2, 3)
    assert np.allclose(pool(x), window(x))
    grad = jax.grad(lambda pool, x: (pool(x) ** 2).sum(), argnums=1)
    assert np.allclose(grad(pool, x), grad(window, x))


def test_overlapping_or_padded_pooling_keeps_reduce_window():
    for args in ({"window": 3, "stride": 2}, {"window": 2, "padding": "same"}):
        pool = layer_net({"layers": [{"max_pool": args}, "flatten", "dense"]}).layers[0]
        assert not pool.fast


# -- custom Python models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind"),
    [("nnx_model.py:SmallNet", "python nnx"), ("pure_model.py:TinyConvNet", "python functions")],
)
def test_custom_models_build_run_and_describe(target, kind):
    spec = parse_model_spec({"python": f"{CUSTOM / target}", "args": {"width": 8}})
    model = build_model(spec, (8, 8, 1), 10)
    params, state = model.init(KEY)
    logits, _ = model.apply(params, state, jnp.ones((2, 8, 8, 1)), train=True, key=KEY)
    assert logits.shape == (2, 10)
    summary = describe_model(spec, (8, 8, 1), 10)
    assert [row.kind for row in summary.rows] == [kind]
    assert summary.total_params == count_leaves(params) and summary.total_flops > 0


def test_custom_model_with_the_wrong_output_width_is_a_spec_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "import jax.numpy as jnp\n"
        "def init(key, input_shape, num_classes):\n    return {'w': jnp.zeros((3,))}\n"
        "def apply(params, x, *, train, key):\n    return jnp.zeros((x.shape[0], 3))\n"
    )
    spec = parse_model_spec({"python": str(path)})  # no :Name, the file's own init and apply
    with pytest.raises(SpecError, match=r"\(2, 3\).*\(2, 10\)"):
        build_model(spec, (8, 8, 1), 10)


@pytest.mark.parametrize(
    ("source", "target", "args", "error", "loc", "words"),
    [
        ("x = 1\n", "missing.py:Net", {}, SpecError, ("python",), ["file not found"]),
        (
            "class SmallNt: pass\n",
            "m.py:SmallNet",
            {},
            SpecError,
            ("python",),
            ["did you mean 'SmallNt'"],
        ),
        (
            "def Net(): pass\n",
            "m.py:Net",
            {},
            SpecError,
            ("python",),
            ["nnx.Module subclass", "function"],
        ),
        (
            "import nope_not_here\n",
            "m.py:Net",
            {},
            UserError,
            None,
            ["m.py", "ModuleNotFoundError", "m.py:1"],
        ),
        (
            None,
            "nnx_model.py:SmallNet",
            {"widht": 8},
            SpecError,
            ("args", "widht"),
            ["did you mean 'width'"],
        ),
        (None, "pure_model.py:TinyConvNet", {"depth": 2}, SpecError, ("args", "depth"), ["width"]),
    ],
)
def test_custom_model_mistakes_name_the_file(tmp_path, source, target, args, error, loc, words):
    folder = CUSTOM if source is None else tmp_path
    if source is not None:
        (tmp_path / "m.py").write_text(source)
    with pytest.raises(error) as caught:
        parse_model_spec({"python": f"{folder / target}", "args": args})
    if loc is not None:
        assert caught.value.loc == loc
    for word in words:
        assert word in str(caught.value)


def test_errors_inside_custom_code_name_their_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(
        "from flax import nnx\n\nclass Net(nnx.Module):\n"
        "    def __init__(self, in_shape, num_classes, *, rngs):\n        pass\n\n"
        "    def __call__(self, x):\n        return x @ undefined_name\n"
    )
    spec = parse_model_spec({"python": f"{path}:Net"})
    with pytest.raises(UserError, match=r"NameError.*broken.py:8"):
        build_model(spec, (8, 8, 1), 10)


# -- round trip and rendering ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed_cnn_layers", "seed_residual", "resnet_small", "cnn_tiny"])
def test_spec_to_dict_parses_back_to_an_equal_spec(name):
    spec = parse_model_spec(fragment(name))
    assert parse_model_spec(model_spec_to_dict(spec)) == spec


def test_render_model_summary_lists_every_layer_and_the_totals():
    from rich.console import Console

    summary = describe_model(parse_model_spec(fragment("seed_residual")), (28, 28, 1), 10)
    console = Console(width=150, record=True)
    console.print(render_model_summary(summary))
    text = console.export_text()
    assert "1,672,042" in text and "residual" in text
    assert len([row for row in summary.rows if row.depth == 1]) == 2


# -- memorising four samples through the training code -----------------------------------------


MEMORISE = {
    "mlp_tiny": "mlp_tiny",
    "cnn_tiny": "cnn_tiny",
    "resnet_tiny": "resnet_tiny",
    "seed_cnn_layers": "seed_cnn_layers",
    "seed_residual": "seed_residual",
    "custom_nnx": f"{{python: {CUSTOM / 'nnx_model.py'}:SmallNet, args: {{width: 8}}}}",
    "custom_pure": f"{{python: {CUSTOM / 'pure_model.py'}:TinyConvNet, args: {{width: 8}}}}",
}


@pytest.mark.parametrize("name", list(MEMORISE))
def test_models_memorise_four_samples(tmp_path, name):
    from cnnlab import load_experiment, overfit

    path = tmp_path / "exp.yaml"
    path.write_text(
        f"name: overfit_{name}\ndata: {{source: digits}}\nmodel: {MEMORISE[name]}\n"
        "optimizer: {name: adam, lr: 0.01}\n"
        "train: {steps: 200, batch_size: 4, eval_every_steps: 5, log_every_steps: 5, steps_per_call: 5, seed: 0}\n"
    )
    result = overfit(load_experiment(path), samples=4, max_steps=200)
    assert result.memorised, result.losses
    assert result.accuracy == 1.0


@pytest.mark.parametrize("train", [True, False])
def test_apply_taps_every_relu_output(train):
    model = build(fragment("seed_residual"), (8, 8, 1))
    assert model.taps_relus
    params, state = model.init(KEY)
    taps = []
    model.apply(params, state, jnp.ones((2, 8, 8, 1)), train=train, key=KEY, taps=taps)
    assert [tap.shape for tap in taps] == [(2, 8, 8, 32), (2, 4, 4, 64), (2, 128)]
    assert all(float(tap.min()) >= 0 for tap in taps)
