"""Layer lists -> NNX networks with their shapes checked, and per-layer summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
from flax import nnx

from cnnlab.errors import SpecError
from cnnlab.models.base import Model, from_nnx
from cnnlab.models.custom import _guarded, build_python_model, python_cost
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
        for layer, random in zip(self.layers, self.random, strict=True):
            if isinstance(layer, Residual):
                x = layer(x, rngs=rngs, taps=taps)
            else:
                x = layer(x, rngs=rngs) if random else layer(x)
            if taps is not None and isinstance(layer, Activation) and layer.name == "relu":
                taps.append(x)
        return x


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
            rows.append(
                LayerRow(
                    name,
                    layer.kind,
                    kind.label(layer.args),
                    out,
                    count_params(module),
                    flops,
                    depth,
                )
            )
            random.append(kind.random)
        modules.append(module)
        shape = out
    return LayerNet(modules, tuple(random)), rows, shape


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

    model = from_nnx(make, layer_list.notes, rngs_at_call=True)
    module = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    module.eval()
    eval_def, _, _ = nnx.split(module, nnx.Param, ...)

    def activations(params, state, x) -> list[jax.Array]:
        taps: list[jax.Array] = []
        nnx.merge(eval_def, params, state, copy=True)(x, taps=taps)
        return taps

    return replace(model, activations=activations)


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
    if summary.state_size:
        table.caption = "\n".join(
            [*summary.notes, f"plus {summary.state_size:,} non-trainable values (batch statistics)"]
        )
    return table
