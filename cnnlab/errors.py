"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a message that names what is wrong and how to fix it."""


class SpecError(UserError):
    """A problem at a place in the experiment tree.

    `loc` is the path of keys and list indices from the part being validated; callers that
    validate a subtree re-raise with their own prefix (`error.within(prefix)`), and the config
    loader turns the full path into `file:line`.
    """

    def __init__(self, loc: tuple = (), message: str = ""):
        super().__init__(message)
        self.loc = tuple(loc)
        self.message = message

    def within(self, *prefix) -> SpecError:
        return SpecError(tuple(prefix) + self.loc, self.message)

    def __str__(self) -> str:
        where = dotted(self.loc)
        return f"{where}: {self.message}" if where else self.message


def dotted(loc: Iterable) -> str:
    """('model', 'layers', 2, 'conv') -> 'model.layers[2].conv'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def suggest(name: str, valid: Iterable[str]) -> str:
    """A ' Did you mean ...?' hint, or the list of valid names when nothing is close."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid: " + ", ".join(valid)
