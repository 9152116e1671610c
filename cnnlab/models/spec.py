"""Model specs: the `model:` mapping of an experiment, parsed into frozen, validated objects.

Three forms, told apart by their key:

    {layers: [...], init: he_normal}                    a layer list
    {family: resnet, preset: tiny, norm: batch}          a family preset, arguments overridden
    {python: /abs/file.py:Name, args: {...}}             a model written in Python (custom.py)

A layer is a bare name (`relu`) or a one-key mapping from its kind to its arguments, given in
full (`{conv: {features: 32, kernel: 5}}`) or as one scalar (`{conv: 32}`, `{max_pool: 2}`,
`{dropout: 0.3}`). `{residual: [...]}` adds its body's output to its input, and
`{repeat: N, layers: [...]}` writes out its layers N times.

The number of classes: a `dense` layer without a width (`dense`, or `{dense: classes}`) gets
one output per class. The network must end with exactly that many outputs; a final softmax is
dropped (the loss works on logits) and a note says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cnnlab.errors import SpecError, suggest
from cnnlab.models.families import FAMILIES, FamilyArgs
from cnnlab.models.initializers import DEFAULT_INIT, check_init_name
from cnnlab.models.layers import LAYERS, LayerSpec
from cnnlab.models.python_layer import parse_python_layer
from cnnlab.validation import validate

BLOCKS = ("residual", "repeat")
MAX_LAYERS = 10_000  # layers once repeats are written out (residual bodies counted too)
SOFTMAX_NOTE = "the final softmax was dropped: the loss takes logits and applies softmax itself"


@dataclass(frozen=True)
class LayerListSpec:
    """A model as a flat list of layers (repeats written out, residual bodies nested)."""

    layers: tuple[LayerSpec, ...]
    init: str = DEFAULT_INIT
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilySpec:
    """A family preset with overrides, and the layer list its builder emitted."""

    family: str
    preset: str
    overrides: tuple[tuple[str, Any], ...]
    args: FamilyArgs
    net: LayerListSpec


@dataclass(frozen=True)
class PythonModelSpec:
    """A model written in Python: `kind` is 'nnx' (a Module class) or 'functions' (init/apply)."""

    file: Path
    name: str | None  # None: the file's own top-level init and apply
    kind: str
    args: dict = field(default_factory=dict, hash=False)

    @property
    def title(self) -> str:
        return f"{self.file.name}:{self.name}" if self.name else self.file.name


ModelSpec = LayerListSpec | FamilySpec | PythonModelSpec


def validate_args(model: type[BaseModel], data: Any, loc: tuple) -> Any:
    """`model.model_validate(data)`, its first problem as a SpecError at `loc`."""
    if not isinstance(data, Mapping):
        raise SpecError(loc, f"expected a mapping of arguments, got {data!r}")
    try:
        return validate(model, data, "argument")
    except SpecError as error:
        raise error.within(*loc) from None


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def parse_layers(raw: Any, loc: tuple) -> tuple[LayerSpec, ...]:
    """Parse a list of layers (repeats written out)."""
    if not _is_list(raw) or not raw:
        raise SpecError(loc, "expected a non-empty list of layers")
    layers: list[LayerSpec] = []
    total = 0
    for index, item in enumerate(raw):
        parsed = _parse_item(item, loc + (index,))
        total += count_layers(parsed)
        _check_size(total, loc + (index,))
        layers += parsed
    return tuple(layers)


def count_layers(layers: Sequence[LayerSpec]) -> int:
    """Layers, counting those inside residual bodies."""
    return sum(1 + count_layers(layer.body) for layer in layers)


def _check_size(count: int, loc: tuple) -> None:
    if count > MAX_LAYERS:
        raise SpecError(
            loc,
            f"the model would have {count:,} layers once repeats are written out; "
            f"at most {MAX_LAYERS:,}",
        )


def _parse_item(item: Any, loc: tuple) -> list[LayerSpec]:
    if isinstance(item, str):
        return [_parse_layer(item, None, loc, loc)]
    if not isinstance(item, Mapping):
        raise SpecError(
            loc, f"expected a layer name (relu) or a mapping such as {{conv: 32}}, got {item!r}"
        )
    if "repeat" in item:
        return _parse_repeat(item, loc)
    if "python" in item:  # a layer written in Python (python_layer.py)
        return [parse_python_layer(item, loc)]
    if len(item) != 1:
        raise SpecError(loc, f"a layer is a mapping with one key, its kind; got {list(item)}")
    ((kind, value),) = item.items()
    if kind == "residual":
        return [LayerSpec("residual", body=parse_layers(value, loc + ("residual",)), loc=loc)]
    return [_parse_layer(kind, value, loc, loc + (kind,))]


def _parse_repeat(item: Mapping, loc: tuple) -> list[LayerSpec]:
    for key in item:
        if key not in ("repeat", "layers"):
            raise SpecError(
                loc + (key,), f"unknown key in a repeat block; {suggest(key, ['repeat', 'layers'])}"
            )
    times = item["repeat"]
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise SpecError(
            loc + ("repeat",), f"expected a whole number of repeats >= 1, got {times!r}"
        )
    if "layers" not in item:
        raise SpecError(loc, "a repeat block needs its layers: {repeat: 2, layers: [...]}")
    body = parse_layers(item["layers"], loc + ("layers",))
    _check_size(count_layers(body) * times, loc + ("repeat",))  # counted before writing out
    return list(body) * times


def _parse_layer(kind: Any, value: Any, loc: tuple, args_loc: tuple) -> LayerSpec:
    if not isinstance(kind, str) or kind not in LAYERS:
        raise SpecError(loc, f"unknown layer '{kind}'; {suggest(str(kind), [*LAYERS, *BLOCKS])}")
    layer = LAYERS.get(kind)
    if layer.Args is None:
        if value not in (None, {}):
            raise SpecError(args_loc, f"{kind} takes no arguments")
        return LayerSpec(kind, loc=loc)
    if value is None:
        value = {}
    elif not isinstance(value, Mapping):
        value = {layer.short: value}
    return LayerSpec(kind, validate_args(layer.Args, value, args_loc), loc=loc)


def _drop_final_softmax(layers: tuple[LayerSpec, ...], loc: tuple) -> tuple[tuple, tuple]:
    if layers[-1].kind != "softmax":
        return layers, ()
    if len(layers) == 1:
        raise SpecError(loc, "a model needs more than a softmax")
    return layers[:-1], (SOFTMAX_NOTE,)


def _init(raw: Mapping) -> str:
    name = raw.get("init", DEFAULT_INIT)
    return check_init_name(name, ("init",)) if isinstance(name, str) else _bad_init(name)


def _bad_init(name: Any):
    raise SpecError(("init",), f"expected an initialiser name such as he_normal, got {name!r}")


def _check_keys(raw: Mapping, valid: Sequence[str]) -> None:
    for key in raw:
        if key not in valid:
            raise SpecError((key,), f"unknown key; {suggest(str(key), valid)}")


def parse_layer_list(raw: Mapping) -> LayerListSpec:
    _check_keys(raw, ["layers", "init"])
    layers, notes = _drop_final_softmax(parse_layers(raw["layers"], ("layers",)), ("layers",))
    return LayerListSpec(layers, _init(raw), notes)


def _relocate(layer: LayerSpec, loc: tuple) -> LayerSpec:
    return replace(layer, loc=loc, body=tuple(_relocate(inner, loc) for inner in layer.body))


def parse_family(raw: Mapping) -> FamilySpec:
    family = FAMILIES.get(raw["family"], ("family",))
    preset = raw.get("preset", "default")
    if preset not in family.presets:
        raise SpecError(
            ("preset",),
            f"unknown {raw['family']} preset '{preset}'; {suggest(str(preset), family.presets)}",
        )
    overrides = {
        key: value for key, value in raw.items() if key not in ("family", "preset", "init")
    }
    args = validate_args(family.Args, {**family.presets[preset], **overrides}, ())
    layers = parse_layers(family.layers(args), ())
    # generated layers have no place of their own in the user's file: point at `family`
    layers = tuple(_relocate(layer, ("family",)) for layer in layers)
    net = LayerListSpec(layers, _init(raw))
    return FamilySpec(raw["family"], preset, tuple(overrides.items()), args, net)


def parse_python(raw: Mapping) -> PythonModelSpec:
    from cnnlab.models.custom import resolve_python_model

    _check_keys(raw, ["python", "args"])
    target = raw["python"]
    if not isinstance(target, str):
        raise SpecError(("python",), f"expected 'path/to/file.py:Name', got {target!r}")
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        raise SpecError(("args",), f"expected a mapping of arguments, got {args!r}")
    return resolve_python_model(target, dict(args))


def parse_model_spec(raw: Any) -> ModelSpec:
    """Parse and validate a `model:` mapping; SpecError locs are relative to `raw`."""
    if not isinstance(raw, Mapping):
        raise SpecError((), "a model is a mapping with `layers`, `family` or `python`")
    forms = [key for key in ("layers", "family", "python") if key in raw]
    if len(forms) > 1:
        raise SpecError(
            (forms[1],), f"give one of layers, family or python, not {' and '.join(forms)}"
        )
    if not forms:
        keys = list(raw)
        hint = (
            f" ({keys[0]!r}: {suggest(str(keys[0]), ['layers', 'family', 'python'])})"
            if keys
            else ""
        )
        raise SpecError((), f"a model needs `layers`, `family` or `python`{hint}")
    return {"layers": parse_layer_list, "family": parse_family, "python": parse_python}[forms[0]](
        raw
    )


def layer_to_raw(layer: LayerSpec) -> Any:
    """A parsed layer back in the form a user writes."""
    if layer.kind == "residual":
        return {"residual": [layer_to_raw(inner) for inner in layer.body]}
    if layer.args is None:
        return layer.kind
    if layer.kind == "python":
        return {"python": layer.args.target, "args": dict(layer.args.args)}
    args = layer.args.model_dump(exclude_defaults=True)
    args = {key: list(value) if isinstance(value, tuple) else value for key, value in args.items()}
    return {layer.kind: args} if args else layer.kind


def model_spec_to_dict(spec: ModelSpec) -> dict:
    """A mapping that `parse_model_spec` turns back into an equal spec (repeats written out)."""
    if isinstance(spec, PythonModelSpec):
        target = f"{spec.file}:{spec.name}" if spec.name else str(spec.file)
        return {"python": target, "args": dict(spec.args)}
    if isinstance(spec, FamilySpec):
        return {
            "family": spec.family,
            "preset": spec.preset,
            **dict(spec.overrides),
            "init": spec.net.init,
        }
    layers = [layer_to_raw(layer) for layer in spec.layers]
    if spec.notes:
        layers.append("softmax")
    return {"layers": layers, "init": spec.init}
