"""Signals that explain a run: per-layer norms, non-finite gradients, gradient jumps, overfitting.
The causes they point to are named in `cnnlab.diagnosis`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

# Path parts that name containers rather than layers: dropped from layer names.
_CONTAINER_KEYS = {"layers", "body", "value"}


def layer_name(path) -> str:
    """('layers', 3, 'body', 'layers', 0, 'kernel') -> '3.0' (the numbering `inspect` shows)."""
    parts = []
    for entry in path[:-1]:
        key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        if key not in _CONTAINER_KEYS:
            parts.append(str(key))
    return ".".join(parts) or "params"


def _leaf_layer(path) -> str:
    if path and getattr(path[-1], "name", None) == "value":
        path = path[:-1]
    return layer_name(path)


def call_order(model, input_shape: tuple[int, int, int]) -> list[str]:
    """The layer names of `layer_stats` in the order the forward pass first reads each layer's
    parameters: for Python models, whose parameter names say nothing of the order.

    The evaluation forward pass is traced (shapes only, nothing runs) and its equations, which
    are in program order, are walked, into the bodies of jitted helpers too; the first equation
    reading a parameter places its layer. Layers never read come last, in parameter order."""
    key = jax.random.key(0)
    params, state = jax.eval_shape(model.init, key)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x, train=False, key=key)[0])(
        params, state, x
    )
    names = [_leaf_layer(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    # The flattened arguments are params, then state and x: zip stops at the params.
    owner = dict(zip(closed.jaxpr.invars, names, strict=False))
    first: dict[str, int] = {}
    _walk(closed.jaxpr, owner, first, [0])
    return sorted(dict.fromkeys(names), key=lambda n: first.get(n, math.inf))


def _walk(jaxpr, owner: dict, first: dict[str, int], counter: list[int]) -> None:
    for eqn in jaxpr.eqns:
        inner = eqn.params.get("jaxpr")  # a jitted helper (pjit): follow the arguments in
        inner = getattr(inner, "jaxpr", inner)
        if inner is not None and hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars):
            mapped = {
                i: owner[o]
                for o, i in zip(eqn.invars, inner.invars, strict=True)
                if _var_of(o, owner)
            }
            _walk(inner, mapped, first, counter)
            continue
        counter[0] += 1
        for var in eqn.invars:
            if _var_of(var, owner):
                first.setdefault(owner[var], counter[0])


def _var_of(var, owner: dict) -> bool:
    return not hasattr(var, "val") and var in owner  # literals (constants) carry .val


ROW = 128  # statistics lay every leaf out as rows of this many values (zero-padded)


def layer_names(params) -> list[str]:
    """The layers that `layer_stats` reports, in parameter order."""
    paths = jax.tree_util.tree_leaves_with_path(params)
    return list(dict.fromkeys(_leaf_layer(path) for path, _ in paths))


def _rows(tree) -> jax.Array:
    """Every leaf raveled, zero-padded to whole rows and stacked: (rows, ROW) float32."""
    return jnp.concatenate(
        [
            jnp.pad(jnp.ravel(leaf).astype(jnp.float32), (0, -leaf.size % ROW)).reshape(-1, ROW)
            for leaf in jax.tree.leaves(tree)
        ]
    )


def layer_stats(params, grads, updates) -> dict[str, jax.Array]:
    """Per layer, as arrays in `layer_names` order: parameter norm and mean, gradient norm, and
    update-to-parameter ratio. The leaves are laid out as the rows of one matrix, whose row sums
    are summed per layer: a few reductions however many leaves there are (XLA compiles a kernel
    for each reduction of its own shape, which made per-leaf sums slow to compile)."""
    names = layer_names(params)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    index = [names.index(_leaf_layer(path)) for path, _ in leaves]
    sizes = np.bincount(index, [leaf.size for _, leaf in leaves], len(names))
    row_layer = np.repeat(index, [-(-leaf.size // ROW) for _, leaf in leaves])
    p, g, u = _rows(params), _rows(grads), _rows(updates)
    per_row = jnp.stack([(p * p).sum(1), p.sum(1), (g * g).sum(1), (u * u).sum(1)], axis=1)
    sums = jax.ops.segment_sum(per_row, row_layer, num_segments=len(names))
    param_norm = jnp.sqrt(sums[:, 0])
    return {
        "param_norm": param_norm,
        "param_mean": sums[:, 1] / sizes,
        "grad_norm": jnp.sqrt(sums[:, 2]),
        "update_ratio": jnp.sqrt(sums[:, 3]) / (param_norm + 1e-12),
    }


def dead_fraction(activations: jax.Array) -> jax.Array:
    """Fraction of units (channels, or features) that are zero for every example in the batch."""
    units = activations.reshape(-1, activations.shape[-1])
    return jnp.mean(jnp.all(units <= 0, axis=0))


def stats_rows(step: int, stats: dict, names: list[str]) -> list[dict]:
    """A step's statistics (host arrays from `layer_stats`, and "dead_relu" where the model
    reports it) as diagnostics.jsonl rows: one per layer, and one for the model's dead units."""
    per_layer = {key: np.ravel(value) for key, value in stats.items() if key != "dead_relu"}
    rows = [
        {"step": step, "layer": name, **{key: float(v[i]) for key, v in per_layer.items()}}
        for i, name in enumerate(names)
    ]
    if "dead_relu" in stats:
        rows.append({"step": step, "layer": "model", "dead_relu": float(stats["dead_relu"])})
    return rows


def first_nonfinite(rows: list[dict]) -> str | None:
    """The first layer, in forward order, whose gradient holds a NaN or an infinity, or is so
    large that its norm overflows (each element finite, their squares not)."""
    layers = sorted((r for r in rows if "grad_norm" in r), key=lambda r: _forward_order(r["layer"]))
    return next((r["layer"] for r in layers if not math.isfinite(r["grad_norm"])), None)


def _forward_order(name: str) -> tuple:
    """'10.2' after '9': layer names compared as numbers where they are numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in name.split("."))


class GradientWatch:
    """Warns when the global gradient norm jumps by orders of magnitude between log intervals."""

    def __init__(self, factor: float = 100.0):
        self.factor = factor
        self.previous: float | None = None

    def check(self, step: int, grad_norm: float) -> str | None:
        previous, self.previous = self.previous, grad_norm
        if previous and math.isfinite(grad_norm) and grad_norm > self.factor * previous:
            return (
                f"step {step}: gradient norm jumped {grad_norm / previous:,.0f}x "
                f"({previous:.3g} -> {grad_norm:.3g}); lower optimizer.lr or set optimizer.clip_norm"
            )
        return None


@dataclass
class OverfitWatch:
    """Reports overfitting: validation accuracy stops improving while the train-val gap widens
    and validation loss has stopped falling.

    `onset` is the eval step after which validation accuracy never beat its best, once the gap
    has grown by `min_gap` since then. An evaluation at a new lowest validation loss never
    reports: the model still generalises better, and the accuracy of a small validation split
    dips by chance."""

    min_gap: float = 0.05
    best_val: float = -1.0
    best_step: int | None = None
    gap_at_best: float = 0.0
    lowest_val_loss: float = math.inf
    onset: int | None = None

    def check(
        self, step: int, train_accuracy: float, val_accuracy: float, val_loss: float = math.nan
    ) -> str | None:
        gap = train_accuracy - val_accuracy
        still_falling = val_loss < self.lowest_val_loss
        self.lowest_val_loss = min(self.lowest_val_loss, val_loss)
        if val_accuracy > self.best_val:
            self.best_val, self.best_step, self.gap_at_best = val_accuracy, step, gap
            return None
        if self.onset is None and not still_falling and gap - self.gap_at_best >= self.min_gap:
            self.onset = self.best_step
            return (
                f"step {step}: overfitting since step {self.onset}: validation accuracy has not improved "
                f"on {self.best_val:.4f} while the train-val gap grew to {gap:.1%}"
            )
        return None
