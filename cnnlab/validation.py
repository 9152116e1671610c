"""The one translator from pydantic's validation errors to cnnlab's located errors.

Experiments, their sections (optimizer, model, augmentation) and sweep files are all validated
by pydantic models; `validate` runs one and turns its first problem into a `SpecError` whose
`loc` the caller prefixes and the config loader turns into `file:line: key.path: message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from cnnlab.errors import SpecError, suggest


def validate(model: type[BaseModel], data: Any, noun: str = "key") -> Any:
    """`model.model_validate(data)` for a mapping, its first problem as a SpecError (loc
    relative to `data`). `noun` names what a key of this mapping is: key, argument, parameter."""
    if not isinstance(data, Mapping):
        raise SpecError((), f"expected a mapping, got {data!r}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        raise spec_error(error, model, data, noun) from None


def spec_error(error: ValidationError, model: type[BaseModel], data: Any, noun: str = "key"):
    """The first problem of `error` in `data` as a SpecError (an unknown key first: it
    usually explains a missing one)."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _keys(first["loc"], data)
    if first["type"] == "extra_forbidden":
        inner = model_at(model, loc[:-1])
        noun = getattr(inner, "noun", noun)  # a model may say what its keys are
        return SpecError(loc, f"unknown {noun}; {suggest(loc[-1], fields_at(model, loc[:-1]))}")
    if first["type"] == "missing":
        return SpecError(loc, f"required {noun} '{loc[-1]}' is missing")
    union = [
        e for e in errors if _keys(e["loc"], data)[:1] == loc[:1] and e["type"] != "value_error"
    ]
    if len(union) > 1 and len(loc) == 1:  # a union: say every form it accepts
        wanted = dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in union)
        return SpecError(loc, f"should be {' or '.join(wanted)} (got {first['input']!r})")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] != "value_error" and not isinstance(first.get("input"), (dict, list)):
        message += f" (got {first['input']!r})"
    return SpecError(loc, message[0].lower() + message[1:])


def _keys(loc, data: Any) -> tuple:
    """pydantic's error location without the names it gives the members of a union
    ('constrained-int', 'list[int]', '[key]'): only the keys and indices found in `data`."""
    kept, node = [], data
    for part in loc:
        if _holds(node, part):
            node = node[part]
        elif not isinstance(node, Mapping) or part == "[key]":
            continue  # a tag of pydantic's, not a place in the data
        kept.append(part)  # (a missing key is kept: it names what is missing)
    return tuple(kept)


def _holds(node: Any, part: Any) -> bool:
    if isinstance(node, Mapping):
        return part in node
    return isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node)


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model of the mapping at `loc` inside `model` (through nested models and
    mappings of them), or None when it is not one."""
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            if part not in model.model_fields:
                return None
            model = model.model_fields[part].annotation
        elif get_origin(model) is dict or isinstance(part, int):
            model = get_args(model)[-1]  # a mapping's or a list's items
        else:
            return None
        model = _model_in(model) or model
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    """The model or mapping inside an optional or union annotation."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if get_origin(candidate) in (dict, list):
            return candidate
    return None


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a mapping at `loc` inside `model` may have (none known: an empty list)."""
    found = model_at(model, loc)
    return list(found.model_fields) if found else []
