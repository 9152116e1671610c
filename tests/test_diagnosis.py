"""The pure diagnosis on synthetic evidence: each cause, and root causes named before symptoms."""

from __future__ import annotations

from cnnlab.diagnosis import Divergence, Evidence, diagnose, linear_pairs, not_learning

BALANCED = (100,) * 10


def layers(step, grads, params=None, ratios=None, dead=None):
    rows = [
        {
            "step": step,
            "layer": str(i),
            "grad_norm": g,
            "param_norm": (params or [1.0] * len(grads))[i],
            "param_mean": 0.0,
            "update_ratio": (ratios or [1e-3] * len(grads))[i],
        }
        for i, g in enumerate(grads)
    ]
    if dead is not None:
        rows.append({"step": step, "layer": "model", "dead_relu": dead})
    return rows


def flat_run(**changes) -> Evidence:
    """A run that did not learn: loss flat at ln 10, validation at chance."""
    base = dict(
        num_classes=10,
        label_counts=BALANCED,
        train=tuple(
            {"step": s, "loss": 2.30, "accuracy": 0.1, "lr": 1e-3} for s in (10, 20, 30, 40)
        ),
        val=({"step": 40, "loss": 2.30, "accuracy": 0.1},),
        initial_loss=2.30,
        val_size=200,
        lr=1e-3,
    )
    return Evidence(**{**base, **changes})


def test_a_huge_rate_that_kills_units_is_the_rate_not_dead_units():
    evidence = flat_run(
        lr=10.0,
        layers=tuple(
            layers(0, [1, 1, 1], ratios=[30, 40, 50], dead=0.05) + layers(10, [0, 0, 1], dead=0.7)
        ),
    )
    found = diagnose(evidence)
    assert found.cause == "lr_too_high" and found.fix.startswith("lower optimizer.lr")
    assert found.evidence["suggested_lr"] < 0.01


def test_divergence_is_the_rate_unless_gradients_explode_at_initialisation():
    diverged = flat_run(divergence=Divergence(3, "0"), layers=tuple(layers(0, [1, 1, 1])))
    assert diagnose(diverged).cause == "lr_too_high"
    exploding = flat_run(divergence=Divergence(3, "0"), layers=tuple(layers(0, [500, 400, 600])))
    assert diagnose(exploding).cause == "exploding_gradients"


def test_tiny_updates_are_a_rate_too_low():
    found = diagnose(flat_run(layers=tuple(layers(0, [1, 1, 1], ratios=[1e-7, 1e-7, 2e-7]))))
    assert found.cause == "lr_too_low" and found.fix.startswith("raise optimizer.lr")


def test_vanishing_and_dead_units():
    vanishing = flat_run(
        layers=tuple(layers(0, [1e-5, 1e-3, 0.5])), structure=(("0", "dense"), ("1", "sigmoid"))
    )
    assert diagnose(vanishing).cause == "vanishing_gradients"
    dead = flat_run(
        layers=tuple(layers(0, [0, 0, 0.5], dead=1.0) + layers(10, [0, 0, 0.5], dead=1.0))
    )
    assert diagnose(dead).cause == "dead_relu"


def test_a_python_models_layers_are_judged_in_call_order():
    # names sort a_out, m_mid, z_in; the forward pass calls z_in first
    rows = layers(0, [0.5, 1e-3, 1e-5])
    for row, name in zip(rows, ["a_out", "m_mid", "z_in"], strict=True):
        row["layer"] = name
    assert diagnose(flat_run(layers=tuple(rows))).cause != "vanishing_gradients"
    ordered = flat_run(layers=tuple(rows), order=("z_in", "m_mid", "a_out"))
    assert diagnose(ordered).cause == "vanishing_gradients"


def test_structure_without_nonlinearity_and_a_far_initial_loss():
    structure = (("0", "conv"), ("1", "max_pool"), ("2", "conv"), ("3", "flatten"), ("4", "dense"))
    assert linear_pairs(structure) == [("2 conv", "4 dense")]
    learned = flat_run(
        val=({"step": 40, "loss": 0.1, "accuracy": 0.97},),
        train=({"step": 40, "loss": 0.1, "accuracy": 0.98},),
        structure=structure,
        initial_loss=10.2,
    )
    found = diagnose(learned)
    assert found.cause == "no_nonlinearity" and found.also == ("initial_loss_far",)
    assert diagnose(flat_run(initial_loss=40.0, val=(), train=())).cause == "initial_loss_far"


def test_memorising_while_validation_stays_at_chance_is_the_labels():
    train = tuple(
        {"step": s, "loss": 1.0, "accuracy": a} for s, a in ((10, 0.2), (20, 0.5), (30, 0.8))
    )
    found = diagnose(flat_run(train=train, initial_loss=2.3))
    assert found.cause == "unpredictable_labels"


def test_overfitting_and_underfitting():
    train = tuple(
        {"step": s, "loss": 0.1, "accuracy": a} for s, a in ((100, 0.8), (200, 0.9), (300, 0.99))
    )
    val = tuple(
        {"step": s, "loss": 0.5, "accuracy": a} for s, a in ((100, 0.78), (200, 0.85), (300, 0.84))
    )
    assert diagnose(flat_run(train=train, val=val)).cause == "overfitting"
    falling = tuple({**row, "loss": 0.5 - row["step"] / 1000} for row in val)
    assert diagnose(flat_run(train=train, val=falling)) is None
    low = tuple(
        {"step": s, "loss": 1.5, "accuracy": a}
        for s, a in ((10, 0.3), (20, 0.5), (30, 0.55), (40, 0.56))
    )
    val = ({"step": 40, "loss": 1.5, "accuracy": 0.55},)
    assert diagnose(flat_run(train=low, val=val, initial_loss=2.3)).cause == "underfitting"


def test_chance_means_the_majority_class_within_noise():
    skewed = flat_run(
        label_counts=(900, 100), num_classes=2, val=({"step": 40, "loss": 0.3, "accuracy": 0.91},)
    )
    assert not_learning(skewed)  # 91% is the majority class, not learning
    assert diagnose(flat_run(val=(), train=(), initial_loss=2.3)) is None


def test_sweep_ranking_says_when_it_is_within_seed_noise():
    from types import SimpleNamespace

    from cnnlab.sweeps.results import SettingResult, separation, sweep_verdict
    from cnnlab.sweeps.runner import sweep_folder_name

    def setting(lr, scores):
        return SettingResult(SimpleNamespace(values={"optimizer.lr": lr}), scores, 3)

    tied = [setting(3e-4, (0.99, 0.975, 0.99)), setting(3e-3, (0.98, 0.99, 0.985))]
    sweep = SimpleNamespace(metric="best_val_accuracy", name="lr")
    trial = SimpleNamespace(summary={"dataset": {"val": 142}})
    result = SimpleNamespace(settings=tied, sweep=sweep, trials=(trial,))
    assert separation(result).startswith("tied within noise; add seeds")
    assert "worth 0.70 accuracy points" in sweep_verdict(result)[1]
    apart = [setting(3e-3, (0.99, 0.991, 0.989)), setting(1e-4, (0.90, 0.91, 0.92))]
    assert "beyond seed noise" in separation(SimpleNamespace(settings=apart))
    assert sweep_folder_name(SimpleNamespace(name="sweep_res")) == "sweep_res"
    assert sweep_folder_name(SimpleNamespace(name="lr")) == "sweep_lr"
