"""Layer lists -> NNX networks with their shapes checked, and per-layer summaries.

A layer's `trainable`, `lr_scale` and `freeze_at_step` become an `UpdateRule`: the model's
`update_scale(params, step)` gives the factor on each parameter's update (0 for frozen ones), and
`apply` stops the gradients of the parameters that never train (`frozen(params)`). A conv with a
data-computed `init` (whiten) gets its kernel from the model's `data_init(params, state, x)`,
which runs the layers before it on a sample of training images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnnlab.errors import SpecError
from cnnlab.models.base import Model, from_nnx
from cnnlab.models.custom import _guarded, build_python_model, python_cost
from cnnlab.models.initializers import DATA_INITIALIZERS
from cnnlab.models.layers import (
    LAYERS,
    Activation,
    BuildContext,
    LayerSpec,
    Residual,
    Shape,
    ShapeMismatch,
    make_projection,
    projection_flops,
)
from cnnlab.models.spec import FamilySpec, LayerListSpec, ModelSpec, PythonModelSpec


class LayerNet(nnx.Module):
    """Layers applied in order; `random[i]` says whether layer i takes the call's `rngs`."""

    def __init__(self, layers: list[nnx.Module], random: tuple[bool, ...]):
        self.layers = nnx.List(layers)
        self.random = random

    def __call__(self, x, *, rngs: nnx.Rngs | None = None, taps: list | None = None):
        """`taps`, when given, collects the output of every relu (the dead-unit diagnostic)."""
        for index in range(len(self.layers)):
            x = self.call_layer(index, x, rngs=rngs, taps=taps)
        return x

    def call_layer(self, index: int, x, *, rngs: nnx.Rngs | None = None, taps: list | None = None):
        """Layer `index` alone, as the whole network would call it."""
        layer = self.layers[index]
        if isinstance(layer, Residual):
            x = layer(x, rngs=rngs, taps=taps)
        else:
            x = layer(x, rngs=rngs) if self.random[index] else layer(x)
        if taps is not None and isinstance(layer, Activation) and layer.name == "relu":
            taps.append(x)
        return x


@dataclass(frozen=True)
class UpdateRule:
    """How the optimizer treats one layer's parameters, which sit under `prefix` in the params
    tree: only those named in `trains` change, by `lr_scale` times the optimizer's update, until
    `freeze_at_step`."""

    prefix: tuple
    trains: frozenset[str]
    lr_scale: float = 1.0
    freeze_at_step: int | None = None

    def factor(self, name: str, step: jax.Array):
        if name not in self.trains:
            return jnp.zeros(())
        if self.freeze_at_step is None:
            return jnp.full((), self.lr_scale)
        return jnp.where(step < self.freeze_at_step, self.lr_scale, 0.0)

    def describe(self, names: list[str]) -> str:
        """' (frozen)', ' (trains bias until step 150)', ' (lr x64)' or ''."""
        if not self.trains:
            return " (frozen)"
        which = "" if set(names) <= self.trains else " " + ", ".join(sorted(self.trains))
        until = f" until step {self.freeze_at_step}" if self.freeze_at_step else ""
        scale = f"lr x{self.lr_scale:g}" if self.lr_scale != 1 else ""
        trains = f"trains{which}{until}" if which or until else ""
        return f" ({', '.join(part for part in (trains, scale) if part)})"


@dataclass(frozen=True)
class LayerRow:
    """One line of a model summary; `name` is the layer's position ('4', or '4.1' inside a
    residual block), `depth` its nesting."""

    name: str
    kind: str
    detail: str
    output_shape: tuple[int, ...]
    params: int
    flops: int  # forward, per image
    depth: int = 0
    frozen_params: int = 0  # of `params`, those that never train
    rule: UpdateRule | None = None  # None: the optimizer's update, as it comes

    @property
    def trainable(self) -> bool:
        """False when none of its parameters train (`trainable: false`)."""
        return self.rule is None or bool(self.rule.trains)


@dataclass(frozen=True)
class ModelSummary:
    title: str
    input_shape: tuple[int, int, int]
    num_classes: int
    rows: tuple[LayerRow, ...]
    notes: tuple[str, ...] = ()
    state_size: int = 0  # non-trainable values (batch statistics)

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def total_flops(self) -> int:
        return sum(row.flops for row in self.rows)

    @property
    def frozen_params(self) -> int:
        """Parameters that never train (included in `total_params`)."""
        return sum(row.frozen_params for row in self.rows)


def count_params(module: nnx.Module | None) -> int:
    if module is None:
        return 0
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _shape_checked(layer: LayerSpec, name: str, shape: Shape, compute, *args):
    try:
        return compute(*args)
    except ShapeMismatch as error:
        raise SpecError(
            layer.loc, f"layer {name} ({layer.kind}) received {shape}: {error}"
        ) from None


def assemble(
    layers: tuple[LayerSpec, ...], shape: Shape, ctx: BuildContext, prefix: str = "", depth: int = 0
) -> tuple[LayerNet, list[LayerRow], Shape]:
    """Build the modules of `layers` for per-image input `shape`; SpecError on a misfit."""
    modules, random, rows = [], [], []
    for index, layer in enumerate(layers):
        name = f"{prefix}{index}"
        if layer.kind == "residual":
            body, body_rows, out = assemble(layer.body, shape, ctx, f"{name}.", depth + 1)
            projection = _shape_checked(layer, name, shape, make_projection, shape, out, ctx)
            module = Residual(body, projection)
            detail = "+ 1x1 projection of its input" if projection else "+ its input"
            params, flops = count_params(projection), projection_flops(shape, out)
            rows += [LayerRow(name, "residual", detail, out, params, flops, depth), *body_rows]
            random.append(True)
        else:
            kind = LAYERS.get(layer.kind)
            out = _shape_checked(layer, name, shape, kind.output_shape, layer.args, shape, ctx)
            module = kind.make(layer.args, shape, ctx)
            flops = kind.flops(layer.args, shape, out)
            sizes = _param_sizes(module)
            rule = _update_rule(layer, name, depth, sizes)
            detail = kind.label(layer.args) + (rule.describe(list(sizes)) if rule else "")
            frozen = sum(size for key, size in sizes.items() if rule and key not in rule.trains)
            params = sum(sizes.values())
            rows.append(
                LayerRow(name, layer.kind, detail.strip(), out, params, flops, depth, frozen, rule)
            )
            random.append(kind.random)
        modules.append(module)
        shape = out
    return LayerNet(modules, tuple(random)), rows, shape


def _param_sizes(module: nnx.Module) -> dict[str, int]:
    """A layer's parameters by name ('kernel', 'bias', ...) -> their number of values."""
    state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return {
        key: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(value))
        for key, value in state.items()
    }


def _update_rule(layer: LayerSpec, name: str, depth: int, sizes: dict) -> UpdateRule | None:
    """The layer's rule (None when the optimizer treats it as usual); SpecError where its
    options cannot apply."""
    where = f"layer {name} ({layer.kind})"
    if depth and _data_init_name(layer):
        raise SpecError(
            layer.loc,
            f"{where}: init {_data_init_name(layer)} is computed from data and works on "
            "top-level layers only, not inside a residual block",
        )
    args = layer.args
    if args is None or args.default_training:
        return None
    if not sizes:
        raise SpecError(layer.loc, f"{where} has no parameters to freeze or scale")
    trains = args.trainable
    if trains is True or trains is False:
        trains = list(sizes) if trains else []
    unknown = [key for key in trains if key not in sizes]
    if unknown:
        raise SpecError(
            layer.loc + ("trainable",),
            f"{where} has no parameter '{unknown[0]}'; it has {', '.join(sizes)}",
        )
    return UpdateRule(_param_prefix(name), frozenset(trains), args.lr_scale, args.freeze_at_step)


def _data_init_name(layer: LayerSpec) -> str | None:
    init = getattr(layer.args, "init", None)
    return init if init in DATA_INITIALIZERS else None


def _param_prefix(row_name: str) -> tuple:
    """Where a layer's parameters sit in the params tree: '4.1' -> layers/4/body/layers/1."""
    prefix: tuple = ()
    for index, position in enumerate(row_name.split(".")):
        prefix += (("body",) if index else ()) + ("layers", int(position))
    return prefix


def _path_keys(path: Sequence) -> tuple:
    return tuple(getattr(part, "key", getattr(part, "name", None)) for part in path)


def by_rule(params: Any, rules: Sequence[UpdateRule], value, default) -> Any:
    """`value(rule, name)` for each parameter under a rule's prefix, `default` elsewhere."""

    def leaf(path, _):
        keys = _path_keys(path)
        for rule in rules:
            if keys[: len(rule.prefix)] == rule.prefix:
                return value(rule, keys[len(rule.prefix)])
        return default

    return jax.tree_util.tree_map_with_path(leaf, params)


def network(spec: LayerListSpec, input_shape: Shape, num_classes: int, rngs: nnx.Rngs):
    """(LayerNet, summary rows) for a layer list; checks that it ends in one logit per class."""
    ctx = BuildContext(num_classes, spec.init, rngs)
    net, rows, out = assemble(spec.layers, input_shape, ctx)
    if out != (num_classes,):
        last = spec.layers[-1]
        fix = (
            "end with flatten (or global_avg_pool) and dense"
            if len(out) != 1
            else "give the last dense no width (dense, or {dense: classes})"
        )
        raise SpecError(
            last.loc,
            f"the network outputs {out} per image but needs ({num_classes},), one logit per "
            f"class; {fix}",
        )
    return net, rows


def _layer_list(spec: ModelSpec) -> LayerListSpec:
    return spec.net if isinstance(spec, FamilySpec) else spec


def _check_io(input_shape, num_classes) -> tuple[int, int, int]:
    shape = tuple(int(size) for size in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return shape


def build_model(spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int) -> Model:
    """The model for images of `input_shape` (H, W, C) and `num_classes` classes.

    Every layer's shape is checked here, before any training: a misfit raises SpecError naming
    the layer, the shape it received and what it expected."""
    input_shape = _check_io(input_shape, num_classes)
    if isinstance(spec, PythonModelSpec):
        return build_python_model(spec, input_shape, num_classes)
    layer_list = _layer_list(spec)

    def make(rngs: nnx.Rngs) -> nnx.Module:
        return network(layer_list, input_shape, num_classes, rngs)[0]

    model = replace(from_nnx(make, layer_list.notes, rngs_at_call=True), taps_relus=True)
    found: dict = {}

    def make_with_rows() -> nnx.Module:
        net, found["rows"] = network(layer_list, input_shape, num_classes, nnx.Rngs(0))
        return net

    module = nnx.eval_shape(make_with_rows)
    module.eval()
    eval_def, _, _ = nnx.split(module, nnx.Param, ...)

    model = _with_data_init(model, layer_list, eval_def)
    rows = found["rows"]
    return _with_update_rules(model, rows) if any(row.rule for row in rows) else model


def _with_data_init(model: Model, spec: LayerListSpec, eval_def) -> Model:
    """Adds `data_init` when some top-level layer's kernel is computed from data."""
    computed = {
        index: _data_init_name(layer)
        for index, layer in enumerate(spec.layers)
        if _data_init_name(layer)
    }
    if not computed:
        return model

    def data_init(params, state, x):
        net = nnx.merge(eval_def, params, state, copy=True)
        for index in range(max(computed) + 1):
            if index in computed:
                kernel = net.layers[index].kernel
                values = DATA_INITIALIZERS[computed[index]](x, kernel.value.shape)
                kernel.value = values.astype(kernel.value.dtype)
            x = net.call_layer(index, x)
        return nnx.split(net, nnx.Param, ...)[1]

    return replace(model, data_init=data_init)


def _with_update_rules(model: Model, rows: list[LayerRow]) -> Model:
    """Adds `update_scale`; where some parameters never train, also `frozen`, and `apply` stops
    their gradients (so that momentum and weight averages see exact zeros)."""
    rules = [row.rule for row in rows if row.rule is not None]

    def update_scale(params, step):
        return by_rule(params, rules, lambda rule, name: rule.factor(name, step), jnp.ones(()))

    model = replace(model, update_scale=update_scale)
    if not any(row.frozen_params for row in rows):
        return model

    def frozen(params):
        return by_rule(params, rules, lambda rule, name: name not in rule.trains, False)

    def apply(params, state, x, *, train: bool, key=None, taps=None):
        params = jax.tree.map(
            lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen(params)
        )
        return model.apply(params, state, x, train=train, key=key, taps=taps)

    return replace(model, apply=apply, frozen=frozen)


def _title(spec: ModelSpec) -> str:
    if isinstance(spec, PythonModelSpec):
        return f"python {spec.title}"
    if isinstance(spec, FamilySpec):
        changed = "".join(f", {key}={value}" for key, value in spec.overrides)
        return f"{spec.family} (preset {spec.preset}{changed}), init {spec.net.init}"
    return f"layer list, init {spec.init}"


def describe_model(
    spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int
) -> ModelSummary:
    """Per-layer output shapes, parameter counts and forward FLOPs per image, with totals."""
    input_shape = _check_io(input_shape, num_classes)
    if isinstance(spec, PythonModelSpec):
        model = build_python_model(spec, input_shape, num_classes)
        params, state, flops = _guarded(spec, lambda: python_cost(model, input_shape))
        row = LayerRow(
            spec.name or spec.file.stem, f"python {spec.kind}", "", (num_classes,), params, flops
        )
        return ModelSummary(_title(spec), input_shape, num_classes, (row,), (), state)
    layer_list = _layer_list(spec)
    found: dict = {}

    def make():
        net, found["rows"] = network(layer_list, input_shape, num_classes, nnx.Rngs(0))
        return net

    net = nnx.eval_shape(make)
    state = nnx.state(net, nnx.Not(nnx.Param))
    state_size = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state))
    return ModelSummary(
        _title(spec), input_shape, num_classes, tuple(found["rows"]), layer_list.notes, state_size
    )


def layer_outputs(spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int):
    """`outputs(params, state, x) -> {row name: array}`: every layer's output in evaluation
    mode, keyed like `describe_model`'s rows ('4', or '4.1' inside a residual block), for looking
    inside a trained network. None for Python models, whose layers cnnlab cannot see."""
    input_shape = _check_io(input_shape, num_classes)
    if isinstance(spec, PythonModelSpec):
        return None
    layer_list = _layer_list(spec)
    module = nnx.eval_shape(lambda: network(layer_list, input_shape, num_classes, nnx.Rngs(0))[0])
    module.eval()
    eval_def, _, _ = nnx.split(module, nnx.Param, ...)

    def outputs(params, state, x) -> dict[str, jax.Array]:
        found: dict[str, jax.Array] = {}
        _collect(nnx.merge(eval_def, params, state, copy=True), x, "", found)
        return found

    return outputs


def _collect(net: LayerNet, x, prefix: str, found: dict) -> None:
    """Runs `net` layer by layer, recording each output; a residual block's body is run once
    more on its own to record its layers (inference only, so the cost does not matter)."""
    for index, layer in enumerate(net.layers):
        if isinstance(layer, Residual):
            _collect(layer.body, x, f"{prefix}{index}.", found)
        x = net.call_layer(index, x)
        found[f"{prefix}{index}"] = x


def _si(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def render_model_summary(summary: ModelSummary):
    """A rich Table of the summary: one row per layer, totals in the footer."""
    from rich.table import Table

    table = Table(
        title=f"{summary.title}: input {summary.input_shape}, {summary.num_classes} classes",
        show_footer=True,
        caption="\n".join(summary.notes) or None,
    )
    table.add_column("layer", footer="total")
    table.add_column("kind")
    table.add_column("output", footer=str((summary.num_classes,)))
    table.add_column("params", justify="right", footer=f"{summary.total_params:,}")
    table.add_column("FLOPs", justify="right", footer=_si(summary.total_flops))
    for row in summary.rows:
        kind = f"{row.kind} {row.detail}".strip()
        table.add_row(
            "  " * row.depth + row.name,
            kind,
            str(row.output_shape),
            f"{row.params:,}",
            _si(row.flops),
        )
    lines = list(summary.notes)
    if summary.frozen_params:
        lines.append(f"of the parameters, {summary.frozen_params:,} never train (trainable)")
    if summary.state_size:
        lines.append(f"plus {summary.state_size:,} non-trainable values (batch statistics)")
    table.caption = "\n".join(lines) or None
    return table
