"""Finding the learner's code in `FILE.py:NAME` and checking its signature against the contract.

Two forms of a layer: a JAX function `NAME` (gradients through jax.grad), or the NumPy pair
`NAME_forward(...) -> (out, cache)` and `NAME_backward(dout, cache) -> gradients`. An optimizer
is a factory `NAME(...)` returning an optax.GradientTransformation.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnlab.check.catalogue import Entry
from cnnlab.errors import UserError, suggest


@dataclass(frozen=True)
class Learner:
    """The learner's code: `form` is 'jax' (or an optimizer factory) or 'numpy'."""

    file: Path
    name: str
    form: str
    function: Callable | None = None
    forward: Callable | None = None
    backward: Callable | None = None

    @property
    def title(self) -> str:
        return f"{self.file.name}:{self.name}"


def split(target: str) -> tuple[Path, str]:
    """'my.py:conv2d' -> (absolute path, 'conv2d'); a UserError when NAME is missing."""
    from cnnlab.models.custom import split_target

    file, name = split_target(target)
    if name is None:
        raise UserError(
            f"'{target}': name the function to check, as FILE.py:NAME (my_conv.py:conv2d)"
        )
    if not file.is_file():
        raise UserError(f"file not found: {file}")
    return file, name


def _positional(function: Callable) -> tuple[list[inspect.Parameter], bool]:
    """Its parameters that can be given by position, and whether it takes *args."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return [], True  # a builtin or C function: trust it
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    open_ended = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return [p for p in params if p.kind in kinds], open_ended


def check_signature(function: Callable, wanted: list[str], title: str, contract: str) -> None:
    """The function must take len(wanted) arguments by position: a UserError naming the first
    one it lacks, or the first extra one without a default."""
    params, open_ended = _positional(function)
    if open_ended:
        return
    if len(params) < len(wanted):
        missing = wanted[len(params)]
        have = ", ".join(p.name for p in params) or "nothing"
        raise UserError(
            f"{title} takes ({have}) but the contract is {contract}: add the argument "
            f"'{missing}' (argument {len(params) + 1})"
        )
    for extra in params[len(wanted) :]:
        if extra.default is inspect.Parameter.empty:
            raise UserError(
                f"{title} has an extra argument '{extra.name}' without a default; the contract "
                f"is {contract}: remove it or give it a default"
            )


def find(target: str, entry: Entry) -> Learner:
    """Import FILE.py and pick NAME (JAX form or optimizer factory) or NAME_forward/_backward."""
    from cnnlab.models.custom import load_module

    file, name = split(target)
    module = load_module(file)
    function = getattr(module, name, None)
    contract = entry.signature
    if callable(function):
        check_signature(function, [p for p, _ in entry.params], f"{file.name}:{name}", contract)
        return Learner(file, name, "jax", function=function)
    forward, backward = (
        getattr(module, f"{name}_{part}", None) for part in ("forward", "backward")
    )
    if entry.kind == "layer" and callable(forward) and callable(backward):
        names = [p for p, _ in entry.params]
        check_signature(
            forward,
            names,
            f"{file.name}:{name}_forward",
            f"{name}_forward{contract[len(entry.name) :]}",
        )
        check_signature(
            backward,
            ["dout", "cache"],
            f"{file.name}:{name}_backward",
            f"{name}_backward(dout, cache)",
        )
        return Learner(file, name, "numpy", forward=forward, backward=backward)
    raise UserError(_not_found(file, name, entry, module))


def _not_found(file: Path, name: str, entry: Entry, module) -> str:
    public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
    if entry.kind == "optimizer":
        wanted = f"a function {name}(...) returning an optax.GradientTransformation"
    else:
        wanted = f"a function {name}(...) or the pair {name}_forward and {name}_backward"
        half = [n for n in (f"{name}_forward", f"{name}_backward") if n in public]
        if half:
            other = ({f"{name}_forward", f"{name}_backward"} - set(half)).pop()
            return f"{file.name} has {half[0]} but not {other}: write both halves of the NumPy form"
    return f"{file.name} has no {wanted}; {suggest(name, public)}"


def explain(error: BaseException, file: Path) -> str:
    """'ValueError: shapes ... (at my_conv.py:12)': one line for an error in the learner's code."""
    first = (str(error).strip().splitlines() or [""])[0]
    lines = [
        f.lineno for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == file
    ]
    where = f" (at {file.name}:{lines[-1]})" if lines else ""
    if isinstance(error, NotImplementedError):
        return f"not written yet: NotImplementedError{where}"
    return f"{type(error).__name__}: {first}{where}"
