"""The catalogue of training failures: from a run's evidence to the one cause to fix first.

`diagnose(evidence)` is pure: it reads plain numbers (metric rows, per-layer statistics, the
label counts, the model's layer kinds) and returns a `Diagnosis` naming a cause, what was seen,
and the fix to try. The checks run in a fixed order so that a root cause is named before the
symptoms it produces: a rate 10,000 times too high kills ReLU units, pins the loss at the label
entropy and leaves tiny updates behind, and the diagnosis must still be "lower the rate".

Causes, in the order they are checked:

  lr_too_high            the loss diverged, rose or bounced, or units died in the first steps,
                         with first updates a large fraction of the weights
  exploding_gradients    gradients at initialisation grow by orders of magnitude towards the input
  lr_too_low             updates a tiny fraction of the weights and the loss barely moved
  no_nonlinearity        two linear layers (conv, dense) with nothing nonlinear between them
  unpredictable_labels   training accuracy rises by memorising while validation stays at chance,
                         or the loss settles at the entropy of the labels (identical inputs
                         also leave every ReLU dead: the labels come first)
  dead_relu              most ReLU units output zero for every input
  vanishing_gradients    gradients shrink by orders of magnitude towards the input
  initial_loss_far       the loss at initialisation is far from ln(classes)
  overfitting            validation accuracy stopped improving while the train-val gap widened
  underfitting           training accuracy plateaus low
  not_learning           the run did not learn, and nothing above explains it

Per-layer rows are those of diagnostics.jsonl: `{step, layer, param_norm, param_mean, grad_norm,
update_ratio}`; dead units come as `{step, layer: "model", dead_relu}` (one figure for the model)
or `{step, layer, dead_fraction}` (per layer). Rows at step 0 describe the model at
initialisation, before its first update.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

LINEAR = {"conv", "dense"}
# Kinds that keep a stack linear: between two linear layers they do not break the collapse.
PASS_THROUGH = {"flatten", "avg_pool", "global_avg_pool", "dropout", "batch_norm", "layer_norm"}
SATURATING = {"sigmoid", "tanh"}

HEALTHY_UPDATE_RATIO = 3e-3  # update/parameter per step that the suggested rates aim for
CAUTIOUS_UPDATE_RATIO = 1e-2  # coming down from a rate too high: the upper end of healthy
HIGH_UPDATE_RATIO = 0.5  # above this a first step rewrites half of a layer's weights
LOW_UPDATE_RATIO = 1e-5
GRADIENT_SPAN = 100.0  # orders of magnitude between output and input layers: 2
LARGE_GRADIENT = 10.0  # gradient norm over weight norm at initialisation (healthy: below 1)


@dataclass(frozen=True)
class Divergence:
    step: int
    layer: str | None = None  # the first layer whose gradient went non-finite


@dataclass(frozen=True)
class Evidence:
    """What a run left behind, as plain data."""

    num_classes: int
    label_counts: tuple[int, ...]  # training examples per class
    train: tuple[dict, ...] = ()  # {step, loss, accuracy, lr}; accuracy may be None
    val: tuple[dict, ...] = ()  # {step, loss, accuracy}
    layers: tuple[dict, ...] = ()  # diagnostics rows; step 0 = at initialisation
    initial_loss: float | None = None
    val_size: int = 0
    divergence: Divergence | None = None
    structure: tuple[tuple[str, str], ...] = ()  # (name, kind) of each layer in forward order
    order: tuple[str, ...] = ()  # layer names in call order where names do not tell it (Python)
    lr: float | None = None  # the configured peak rate
    memorise: bool = False  # an overfit check: every training sample must be learned

    @property
    def chance(self) -> float:
        return 1.0 / max(self.num_classes, 1)

    @property
    def majority(self) -> float:
        total = sum(self.label_counts)
        return max(self.label_counts) / total if total else self.chance

    @property
    def baseline(self) -> float:
        """The accuracy of a model that ignores its input."""
        return max(self.chance, self.majority)

    @property
    def label_entropy(self) -> float:
        """The loss of a model that predicts the label frequencies and ignores its input."""
        total = sum(self.label_counts)
        return (
            -sum(c / total * math.log(c / total) for c in self.label_counts if c) if total else 0.0
        )

    @property
    def noise(self) -> float:
        """How far from the baseline a validation accuracy can land by luck (2 standard errors
        plus one example)."""
        if not self.val_size:
            return 0.0
        p = self.baseline
        return 2 * math.sqrt(p * (1 - p) / self.val_size) + 1 / self.val_size


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    message: str  # what was seen, in one line
    fix: str  # what to try
    evidence: dict = field(default_factory=dict)
    also: tuple[str, ...] = ()  # other causes that apply (their ids)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.message}. Fix: {self.fix}"


# ---------------------------------------------------------------------------------------------
# Reading the evidence


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def layer_order(name: str) -> tuple:
    """'10' after '2.0' after '2': layers in forward order, whatever the text sorts to."""
    return tuple(int(p) if p.isdigit() else math.inf for p in re.split(r"[.]", str(name)))


def stats_at(evidence: Evidence, step: int) -> list[dict]:
    """The per-layer rows with statistics at `step`, in forward order."""
    rows = [r for r in evidence.layers if r.get("step") == step and "grad_norm" in r]
    called = {name: index for index, name in enumerate(evidence.order)}
    return sorted(rows, key=lambda r: (called.get(r["layer"], -1), layer_order(r["layer"])))


def first_stats(evidence: Evidence) -> list[dict]:
    """Rows at initialisation if measured, else at the first logged step."""
    steps = sorted({r["step"] for r in evidence.layers if "grad_norm" in r})
    return stats_at(evidence, steps[0]) if steps else []


def update_ratios(rows: list[dict]) -> list[float]:
    # A layer whose weights are all zero (a zeroed output layer) has no meaningful ratio.
    return [
        r["update_ratio"]
        for r in rows
        if _finite(r.get("update_ratio")) and r.get("param_norm", 0) > 1e-6
    ]


def dead_by_step(evidence: Evidence) -> dict[int, float]:
    """The fraction of dead ReLU units at each step (mean over layers when given per layer)."""
    found: dict[int, list[float]] = {}
    for row in evidence.layers:
        value = row.get("dead_relu", row.get("dead_fraction"))
        if _finite(value):
            found.setdefault(row["step"], []).append(value)
    return {step: sum(v) / len(v) for step, v in sorted(found.items())}


def gradient_span(rows: list[dict]) -> float | None:
    """Gradient norm of the layer nearest the output over that of the layer nearest the input
    (> 1: gradients shrink towards the input). None without two layers with gradients."""
    norms = [r["grad_norm"] for r in rows if _finite(r.get("grad_norm"))]
    if len(norms) < 2 or not all(math.isfinite(n) for n in norms):
        return None
    first, last = norms[0], norms[-1]
    if first <= 0:
        return math.inf if last > 0 else None
    return last / first


def losses(evidence: Evidence) -> list[float]:
    return [r["loss"] for r in evidence.train if r.get("loss") is not None]


def start_loss(evidence: Evidence) -> float | None:
    if evidence.initial_loss is not None and math.isfinite(evidence.initial_loss):
        return evidence.initial_loss
    values = losses(evidence)
    return values[0] if values else None


def final_accuracy(rows: Sequence[dict]) -> float | None:
    values = [r["accuracy"] for r in rows if _finite(r.get("accuracy"))]
    return values[-1] if values else None


def loss_never_left_start(evidence: Evidence) -> bool:
    start, values = start_loss(evidence), losses(evidence)
    if start is None or not values or not all(map(math.isfinite, values)):
        return False
    return min(values) > 0.9 * start


def val_at_chance(evidence: Evidence) -> bool:
    accuracy = final_accuracy(evidence.val)
    return accuracy is not None and accuracy <= evidence.baseline + evidence.noise


def val_can_tell(evidence: Evidence) -> bool:
    """Whether the validation split is large enough that a perfect score would stand clear of
    chance: with a handful of images, noise covers every score."""
    return evidence.baseline + evidence.noise < 1.0


def not_learning(evidence: Evidence) -> bool:
    """Validation accuracy ends within noise of chance (or of the majority class); without a
    validation split large enough to tell, the loss never left its starting value."""
    if final_accuracy(evidence.val) is not None and val_can_tell(evidence):
        return val_at_chance(evidence)
    return loss_never_left_start(evidence)


def failed(evidence: Evidence) -> bool:
    if evidence.divergence is not None:
        return True
    if evidence.memorise:
        return (final_accuracy(evidence.train) or 0.0) < 1.0
    return not_learning(evidence)


def suggest_rate(
    lr: float | None, ratio: float | None, fallback: float, target: float = HEALTHY_UPDATE_RATIO
) -> str:
    """A rate that would bring the update ratio near the healthy one, as 1 or 3 times a power
    of ten (the way rates are usually tried)."""
    if lr is None or lr <= 0:
        return ""
    target = lr * target / ratio if ratio and ratio > 0 else lr * fallback
    exponent = math.floor(math.log10(target))
    mantissa = 3 if target / 10**exponent >= 3 else 1
    return f"{mantissa}e{exponent}" if exponent < -3 else f"{mantissa * 10.0**exponent:g}"


def _format_rate(lr: float | None) -> str:
    return f"{lr:g}" if lr is not None else "the rate"


# ---------------------------------------------------------------------------------------------
# The checks, in order. Each returns a Diagnosis or None.


def check_lr_too_high(ev: Evidence) -> Diagnosis | None:
    first = first_stats(ev)
    ratios = update_ratios(first)
    biggest = max(ratios, default=None)
    start, values = start_loss(ev), losses(ev)
    dead = dead_by_step(ev)
    dead_steps = list(dead)
    killed = len(dead_steps) >= 2 and dead[dead_steps[1]] - dead[dead_steps[0]] >= 0.3
    rose = bool(
        start and values and max(v if math.isfinite(v) else math.inf for v in values) > 1.5 * start
    )
    big_steps = biggest is not None and biggest > HIGH_UPDATE_RATIO
    if not (failed(ev) or rose) or _exploding(first):
        return None  # gradients that explode at initialisation are the model's, not the rate's
    signs = []
    if ev.divergence is not None:
        signs.append(f"the loss went non-finite at step {ev.divergence.step}")
    elif rose:
        signs.append(f"the loss rose from {start:.3g} to {max(values):.3g}")
    if killed:
        signs.append(
            f"dead ReLU units went from {dead[dead_steps[0]]:.0%} to {dead[dead_steps[1]]:.0%} "
            f"by step {dead_steps[1]}"
        )
    if big_steps:
        signs.append(f"the first update was {biggest:.2g}x the size of a layer's weights")
    if not (big_steps or killed or rose or ev.divergence):
        return None
    median = sorted(ratios)[len(ratios) // 2] if ratios else None
    rate = suggest_rate(ev.lr, median, fallback=0.1, target=CAUTIOUS_UPDATE_RATIO)
    to = f" to about {rate}" if rate else " by 10x or more"
    return Diagnosis(
        "lr_too_high",
        f"learning rate {_format_rate(ev.lr)} is too high: " + "; ".join(signs),
        f"lower optimizer.lr{to} (or run `cnnlab lr-find`)",
        {
            "lr": ev.lr,
            "first_update_ratio": biggest,
            "divergence": asdict(ev.divergence) if ev.divergence else None,
            "suggested_lr": float(rate) if rate else None,
        },
    )


def _exploding(rows: list[dict]) -> float | None:
    """How far gradients at initialisation are beyond healthy: their growth from the output
    layer to the input layer, or their typical size against the weights (a forward pass that
    blows up gives gradients as large as the activations, in every layer); None if healthy."""
    span = gradient_span(rows)
    if span and span < 1 / GRADIENT_SPAN:
        return 1 / span
    ratios = sorted(
        r["grad_norm"] / r["param_norm"]
        for r in rows
        if _finite(r.get("grad_norm")) and _finite(r.get("param_norm")) and r["param_norm"] > 1e-6
    )
    typical = ratios[len(ratios) // 2] if ratios else 0.0
    return typical if typical > LARGE_GRADIENT else None


def check_exploding_gradients(ev: Evidence) -> Diagnosis | None:
    first = first_stats(ev)
    growth = _exploding(first)
    if growth is None or not (failed(ev) or ev.divergence):
        return None
    where = f"; the loss went non-finite at step {ev.divergence.step}" if ev.divergence else ""
    span = gradient_span(first)
    seen = (
        f"grow {1 / span:,.0f}x from the output layer to the input layer"
        if span and span < 1 / GRADIENT_SPAN
        else f"are {growth:,.0f}x the size of the weights"
    )
    return Diagnosis(
        "exploding_gradients",
        f"gradients at initialisation {seen}{where}",
        "add batch_norm inside each block (or start residual branches near zero), and set "
        "optimizer.clip_norm (e.g. 1.0)",
        {"excess": growth, "layers": [r["layer"] for r in first]},
    )


def check_lr_too_low(ev: Evidence) -> Diagnosis | None:
    ratios = update_ratios(first_stats(ev))
    if not ratios or not failed(ev):
        return None
    biggest = max(ratios)
    gradients = any(r.get("grad_norm", 0) > 1e-6 for r in first_stats(ev))
    if biggest >= LOW_UPDATE_RATIO or not gradients:
        return None
    rate = suggest_rate(ev.lr, biggest, fallback=100)
    to = f" to about {rate}" if rate else " by 100x or more"
    return Diagnosis(
        "lr_too_low",
        f"learning rate {_format_rate(ev.lr)} is too low: updates are at most "
        f"{biggest:.1e} of the weights (healthy: about 1e-3) and the loss barely moved",
        f"raise optimizer.lr{to} (or run `cnnlab lr-find`)",
        {
            "lr": ev.lr,
            "largest_update_ratio": biggest,
            "suggested_lr": float(rate) if rate else None,
        },
    )


def linear_pairs(structure: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Names of linear layers that follow each other with only linear kinds between them. A
    residual block's skip is linear too, so its marker does not break a run."""
    pairs, last = [], None
    for name, kind in structure:
        if kind in LINEAR:
            if last is not None:
                pairs.append((last, f"{name} {kind}"))
            last = f"{name} {kind}"
        elif kind not in PASS_THROUGH and kind != "residual":
            last = None
    return pairs


def check_no_nonlinearity(ev: Evidence) -> Diagnosis | None:
    pairs = linear_pairs(ev.structure)
    if not pairs:
        return None
    shown = ", ".join(f"{a} -> {b}" for a, b in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
    return Diagnosis(
        "no_nonlinearity",
        f"no nonlinearity between linear layers ({shown}): together they are one linear map",
        "put an activation (relu) after every conv and dense layer except the last",
        {"pairs": pairs},
    )


def check_dead_relu(ev: Evidence) -> Diagnosis | None:
    dead = dead_by_step(ev)
    if not dead or not failed(ev):
        return None
    last = list(dead.values())[-1]
    if last < 0.5:
        return None
    at_start = list(dead.values())[0]
    return Diagnosis(
        "dead_relu",
        f"{last:.0%} of ReLU units output zero for every input ({at_start:.0%} at the first "
        "measurement): no gradient flows through them",
        "initialise with he_normal (not zeros), use leaky_relu, or lower the learning rate",
        {"dead_fraction": last, "dead_fraction_first": at_start},
    )


def _saturated(ev: Evidence) -> bool:
    """Gradients vanish through sigmoid/tanh layers: then an output that ignores the input is
    theirs to explain, not the labels'."""
    span = gradient_span(first_stats(ev))
    return bool(span and span >= 1e3 and any(kind in SATURATING for _, kind in ev.structure))


def check_vanishing_gradients(ev: Evidence) -> Diagnosis | None:
    first = first_stats(ev)
    span = gradient_span(first)
    if span is None or span < 1e3 or not failed(ev):
        return None
    saturating = sum(kind in SATURATING for _, kind in ev.structure)
    through = f" through {saturating} sigmoid/tanh layers" if saturating else ""
    return Diagnosis(
        "vanishing_gradients",
        f"gradients shrink {span:,.0f}x from the output layer to the input layer{through}: "
        "the early layers barely train",
        "use relu (or gelu) with he_normal init instead of sigmoid/tanh, add batch_norm, or "
        "use fewer layers or residual connections",
        {"shrink_towards_input": span, "saturating_layers": saturating},
    )


def check_initial_loss(ev: Evidence) -> Diagnosis | None:
    loss = ev.initial_loss
    expected = math.log(max(ev.num_classes, 2))
    if loss is None or not math.isfinite(loss) or abs(loss - expected) < max(1.0, 0.5 * expected):
        return None
    return Diagnosis(
        "initial_loss_far",
        f"loss at initialisation is {loss:.3g}, far from ln({ev.num_classes}) = {expected:.2f} "
        "(what uniform predictions give): the first logits are far too large",
        "shrink the initial weights (lecun_normal, or he_normal only before relu), and do not "
        "scale the output",
        {"initial_loss": loss, "expected": expected},
    )


def check_unpredictable_labels(ev: Evidence) -> Diagnosis | None:
    if not failed(ev):
        return None
    train = final_accuracy(ev.train)
    if ev.val and val_at_chance(ev) and train is not None:
        margin = max(0.15, 2 * ev.noise)
        if train > ev.baseline + margin:
            val = final_accuracy(ev.val)
            return Diagnosis(
                "unpredictable_labels",
                f"training accuracy rose to {train:.0%} by memorising while validation stays at "
                f"chance ({val:.0%}; chance {ev.baseline:.0%})",
                "check that the labels belong to the images (shuffled labels, misnamed class "
                "folders); the images do not predict them",
                {"train_accuracy": train, "val_accuracy": val, "chance": ev.baseline},
            )
    values = losses(ev)
    entropy = ev.label_entropy
    # Zeroed weights also give an output that ignores the input: that is the init's fault.
    zeroed = any(r.get("param_norm", 1.0) < 1e-6 for r in first_stats(ev))
    if (
        ev.memorise
        and not zeroed
        and not _saturated(ev)
        and values
        and entropy > 0
        and abs(values[-1] - entropy) < 0.05 * entropy
    ):
        return Diagnosis(
            "unpredictable_labels",
            f"loss settled at {values[-1]:.3f}, the entropy of the labels ({entropy:.3f}): the "
            "output ignores the input, which does not tell the labels apart",
            "check that the labels belong to the images and that the output depends on the input",
            {"loss": values[-1], "label_entropy": entropy},
        )
    return None


def overfitting_onset(ev: Evidence, min_gap: float = 0.05) -> tuple[int, float, float] | None:
    """(step of the best validation accuracy, best, gap at the last evaluation) when the last
    evaluation came after the run's best, the train-val gap has grown by `min_gap` since, and
    the last validation loss is not the lowest yet.

    Judged over the whole run, not at the first widening: a run whose validation accuracy
    recovers to a new best later has not overfit then (the live warning of OverfitWatch can
    only see the steps so far)."""
    rows = []  # (step, validation accuracy, train-val gap)
    for row in ev.val:
        train = [r for r in ev.train if r["step"] <= row["step"] and _finite(r.get("accuracy"))]
        if train and _finite(row.get("accuracy")):
            rows.append((row["step"], row["accuracy"], train[-1]["accuracy"] - row["accuracy"]))
    if not rows or _still_falling([row.get("loss") for row in ev.val]):
        return None
    best_step, best, gap_at_best = max(rows, key=lambda r: r[1])  # the first best
    step, _, gap = rows[-1]
    if step > best_step and gap - gap_at_best >= min_gap:
        return best_step, best, gap
    return None


def _still_falling(losses: list) -> bool:
    """Whether the last validation loss is the lowest yet: then the model still generalises
    better, and a dip in the accuracy of a small validation split is chance, not overfitting."""
    losses = [loss for loss in losses if _finite(loss)]
    return len(losses) >= 2 and losses[-1] < min(losses[:-1])


def check_overfitting(ev: Evidence) -> Diagnosis | None:
    found = overfitting_onset(ev)
    if found is None:
        return None
    step, best, gap = found
    return Diagnosis(
        "overfitting",
        f"overfitting since step {step}: validation accuracy has not beaten {best:.2%} while "
        f"the train-val gap grew to {gap:.1%}",
        "add augmentation, weight_decay or dropout, use more data, or stop at the best "
        "checkpoint (train.early_stop)",
        {"since_step": step, "best_val_accuracy": best, "gap": gap},
    )


def check_underfitting(ev: Evidence) -> Diagnosis | None:
    accuracies = [r["accuracy"] for r in ev.train if _finite(r.get("accuracy"))]
    if len(accuracies) < 4:
        return None
    last = accuracies[-1]
    third = accuracies[-max(2, len(accuracies) // 3)]
    low = last < (0.999 if ev.memorise else 0.9)
    if not low or last - third > 0.05 or last < ev.baseline + 0.05 and not ev.memorise:
        return None
    return Diagnosis(
        "underfitting",
        f"training accuracy plateaus at {last:.0%}: the model cannot fit even its training data",
        "give the model more capacity (more features or layers), train longer, or raise the "
        "learning rate",
        {"train_accuracy": last},
    )


def check_not_learning(ev: Evidence) -> Diagnosis | None:
    if not failed(ev):
        return None
    return Diagnosis(
        "not_learning",
        "the run did not learn and no cause in the catalogue matched",
        "run `cnnlab overfit` on the experiment, then `cnnlab lr-find`",
        {},
    )


CHECKS: tuple[Callable[[Evidence], Diagnosis | None], ...] = (
    check_lr_too_high,
    check_exploding_gradients,
    check_lr_too_low,
    check_no_nonlinearity,
    check_unpredictable_labels,
    check_dead_relu,
    check_vanishing_gradients,
    check_initial_loss,
    check_overfitting,
    check_underfitting,
    check_not_learning,
)
# Found from the model alone: worth saying next to any other cause.
STRUCTURAL = {"no_nonlinearity", "initial_loss_far"}


def findings(evidence: Evidence) -> list[Diagnosis]:
    """Every cause whose check fires, in catalogue order."""
    return [d for d in (check(evidence) for check in CHECKS) if d is not None]


def diagnose(evidence: Evidence) -> Diagnosis | None:
    """The root cause, with the structural causes that also apply in `also`; None for a run
    with nothing to report."""
    found = findings(evidence)
    if not found:
        return None
    root = found[0]
    also = tuple(d.cause for d in found[1:] if d.cause in STRUCTURAL)
    return Diagnosis(root.cause, root.message, root.fix, root.evidence, also)


def explain(evidence: Evidence) -> list[Diagnosis]:
    """The root cause first, then the structural causes that also apply (for printing)."""
    found = findings(evidence)
    return found[:1] + [d for d in found[1:] if d.cause in STRUCTURAL]
