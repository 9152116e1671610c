"""Hyperparameters as data: the numbers a training step computes with, apart from its structure.

Every float of the optimizer spec (learning rate, its arguments, schedule numbers, clipping,
weight decay, weight average), of the augmentation specs (probabilities, strengths) and the
label smoothing is a *number*: the step reads it from a traced input, so one compiled program
serves every value, and trials that differ only in numbers (and seeds) train stacked under
`vmap`. A float that shapes the program instead (e.g. where a one-cycle schedule peaks) says so
in its schema with `Field(..., json_schema_extra=STATIC)`. The model's dropout rates and noise
strengths (IN_STATE) are numbers too, held in the model state that each trial initialises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

STATIC = {"static": True}  # json_schema_extra of a float field that shapes the program
# json_schema_extra of a model's float that its layers hold in the model state (a dropout rate,
# a noise strength): each trial's initial state carries its own value.
IN_STATE = {"in_state": True}

Numbers = dict[str, Any]  # dotted key -> float (or a traced scalar inside the step)


def _is_float(value: Any) -> bool:
    return isinstance(value, float) and not isinstance(value, bool)


def _marked(model: BaseModel, name: str, mark: str) -> bool:
    extra = type(model).model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(mark))


def _static(model: BaseModel, name: str) -> bool:
    return _marked(model, name, "static")


def _children(value: Any):
    """(key, child) pairs of a spec node: pydantic fields, mapping items, sequence items."""
    if isinstance(value, BaseModel):
        return [(n, getattr(value, n)) for n in type(value).model_fields if not _static(value, n)]
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    return []


def _is_dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _key(prefix: str, part: Any) -> str:
    return f"{prefix}[{part}]" if isinstance(part, int) else f"{prefix}.{part}"


def numbers_in(spec: Any, prefix: str) -> Numbers:
    """The floats of `spec` (a pydantic spec, or a tuple of them) by dotted key under `prefix`."""
    if _is_float(spec):
        return {prefix: spec}
    found: Numbers = {}
    for part, child in _children(spec):
        found.update(numbers_in(child, _key(prefix, part)))
    return found


def with_numbers(spec: Any, numbers: Mapping[str, Any], prefix: str) -> Any:
    """`spec` with each float at a key of `numbers` replaced by its value there (a traced scalar
    inside the step). Values are not validated again: the spec was, with the concrete numbers."""
    if prefix in numbers:
        return numbers[prefix]
    if isinstance(spec, BaseModel):
        update = {
            part: with_numbers(child, numbers, _key(prefix, part))
            for part, child in _children(spec)
        }
        return spec.model_copy(update=update)
    if isinstance(spec, Mapping):
        return {k: with_numbers(v, numbers, _key(prefix, k)) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(with_numbers(v, numbers, _key(prefix, i)) for i, v in enumerate(spec))
    return spec


def experiment_numbers(experiment) -> Numbers:
    """Every number of an experiment that the training step takes as data."""
    return {
        **numbers_in(experiment.optimizer, "optimizer"),
        **numbers_in(experiment.augment, "augment"),
        "train.label_smoothing": float(experiment.train.label_smoothing),
    }


def _without_numbers(spec: Any, prefix: str, numbers: Numbers) -> Any:
    """A JSON-able picture of `spec` with its numbers blanked (for comparing structure)."""
    if prefix in numbers:
        return "<number>"
    if isinstance(spec, BaseModel) or _is_dataclass(spec):
        names = (
            type(spec).model_fields
            if isinstance(spec, BaseModel)
            else [item.name for item in dataclasses.fields(spec)]
        )
        picture = {"<kind>": type(spec).__name__}
        for name in names:
            picture[name] = _without_numbers(getattr(spec, name), _key(prefix, name), numbers)
        return picture
    if isinstance(spec, Mapping):
        return {str(k): _without_numbers(v, _key(prefix, k), numbers) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_without_numbers(v, _key(prefix, i), numbers) for i, v in enumerate(spec)]
    return spec if isinstance(spec, (str, int, float, bool, type(None))) else repr(spec)


SECTIONS = ("data", "model", "optimizer", "augment", "train")


def structure(experiment) -> str:
    """Equal for two experiments exactly when one compiled program trains both: their specs
    agree once the numbers, the seed and the name are left out."""
    picture = {section: _section_picture(experiment, section) for section in SECTIONS}
    text = json.dumps(picture, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def first_difference(a, b) -> str | None:
    """The first top-level section in which two experiments' structures differ (for saying why
    they cannot train stacked), or None when they share a program."""
    if structure(a) == structure(b):
        return None
    for section in SECTIONS:
        left, right = _section_picture(a, section), _section_picture(b, section)
        if left != right:
            return _deepest_difference(left, right, section)
    return "their structure"


def state_numbers(spec: Any, prefix: str = "model") -> Numbers:
    """The floats of a model spec that its layers keep in the model state (IN_STATE)."""
    found: Numbers = {}
    if isinstance(spec, BaseModel):
        for name in type(spec).model_fields:
            value, key = getattr(spec, name), _key(prefix, name)
            if _is_float(value) and _marked(spec, name, "in_state"):
                found[key] = value
            else:
                found.update(state_numbers(value, key))
    elif _is_dataclass(spec):
        for item in dataclasses.fields(spec):
            found.update(state_numbers(getattr(spec, item.name), _key(prefix, item.name)))
    elif isinstance(spec, (list, tuple)):
        for index, item in enumerate(spec):
            found.update(state_numbers(item, _key(prefix, index)))
    return found


def _section_picture(experiment, section: str) -> Any:
    if section == "train":
        return experiment.train.model_dump(exclude={"seed", "label_smoothing"})
    if section == "data":
        return experiment.data.model_dump()
    if section == "model":
        return _without_numbers(experiment.model, "model", state_numbers(experiment.model))
    return _without_numbers(getattr(experiment, section), section, experiment_numbers(experiment))


def _deepest_difference(left: Any, right: Any, where: str) -> str:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in [*left, *(k for k in right if k not in left)]:  # in the spec's order
            if left.get(key) != right.get(key):
                if key == "<kind>":
                    return where
                return _deepest_difference(left.get(key), right.get(key), f"{where}.{key}")
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (x, y) in enumerate(zip(left, right, strict=True)):
            if x != y:
                return _deepest_difference(x, y, f"{where}[{index}]")
    return where
