"""How the learner's code and the references are called: arguments in each form, outputs, vjps."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.check.catalogue import Entry


def shapes(args: tuple) -> str:
    parts = []
    for arg in args:
        if hasattr(arg, "shape") and np.ndim(arg):
            parts.append("x".join(map(str, np.shape(arg))) or "scalar")
        else:
            parts.append(repr(arg))
    return ", ".join(parts)


def jax_args(args: tuple) -> tuple:
    return tuple(jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def numpy_args(args: tuple) -> tuple:
    """float64 copies (the learner may change its inputs in place); integers stay integers."""
    return tuple(
        (a.astype(np.float64) if a.dtype.kind == "f" else a.copy()) if isinstance(a, np.ndarray) else a
        for a in args
    )


def outputs(entry: Entry, out) -> list:
    """The learner's output as a list of len(entry.outputs) arrays; ValueError otherwise."""
    if len(entry.outputs) == 1:
        if isinstance(out, tuple):
            raise ValueError(f"returned a tuple of {len(out)}; expected one array")
        return [out]
    if not isinstance(out, tuple | list) or len(out) != len(entry.outputs):
        raise ValueError(f"expected a tuple ({', '.join(entry.outputs)})")
    return list(out)


def grad_positions(entry: Entry) -> list[int]:
    names = [name for name, _ in entry.params]
    return [names.index(g) for g in entry.grads]


def vjp(function: Callable, args: tuple, positions: list[int], dout) -> list:
    def first(*diffs):
        full = list(args)
        for position, value in zip(positions, diffs, strict=True):
            full[position] = value
        out = function(*full)
        return out[0] if isinstance(out, tuple | list) else out

    _, pullback = jax.vjp(first, *(args[p] for p in positions))
    return list(pullback(dout))


