"""The one translator from pydantic's validation errors to cnnlab's located errors.

Experiments, their sections (optimizer, model, augmentation) and sweep files are all validated
by pydantic models; `validate` runs one and turns its first problem into a `SpecError` whose
`loc` the caller prefixes and the config loader turns into `file:line: key.path: message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

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
        raise spec_error(error, model, noun) from None


def spec_error(error: ValidationError, model: type[BaseModel], noun: str = "key") -> SpecError:
    """The first problem of `error` (an unknown key first: it usually explains a missing one)."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _keys(first["loc"])
    if first["type"] == "extra_forbidden":
        return SpecError(loc, f"unknown {noun}; {suggest(loc[-1], fields_at(model, loc[:-1]))}")
    if first["type"] == "missing":
        return SpecError(loc, f"required {noun} '{loc[-1]}' is missing")
    union = [e for e in errors if _keys(e["loc"])[:1] == loc[:1] and e["type"] != "value_error"]
    if len(union) > 1 and len(loc) == 1:  # a union: say every form it accepts
        wanted = dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in union)
        return SpecError(loc, f"should be {' or '.join(wanted)} (got {first['input']!r})")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] != "value_error" and not isinstance(first.get("input"), (dict, list)):
        message += f" (got {first['input']!r})"
    return SpecError(loc, message[0].lower() + message[1:])


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "tuple", "none", "set"}


def _keys(loc) -> tuple:
    """pydantic's error location without the names it gives the members of a union
    ('constrained-int', 'list[int]', ...): only the keys and indices a user wrote."""
    return tuple(
        part
        for part in loc
        if isinstance(part, int) or not ("[" in part or "-" in part or part in _TYPE_NAMES)
    )


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a mapping at `loc` inside `model` may have (none known: an empty list)."""
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        nested = [
            t
            for t in (annotation, *get_args(annotation))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
