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
        (a.astype(np.float64) if a.dtype.kind == "f" else a.copy())
        if isinstance(a, np.ndarray)
        else a
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
        out = function(*_put(args, positions, diffs))
        return out[0] if isinstance(out, tuple | list) else out

    _, pullback = jax.vjp(first, *(args[p] for p in positions))
    return list(pullback(dout))


def compiled(function: Callable, args: tuple) -> Callable:
    """`function` under jax.jit with its non-array arguments static, called on `args`'s arrays:
    one compilation per case instead of one per operation of an eager call."""
    arrays = [i for i, a in enumerate(args) if isinstance(a, jax.Array)]

    def on_arrays(*values):
        return function(*_put(args, arrays, values))

    jitted = jax.jit(on_arrays)
    return lambda: jitted(*(args[i] for i in arrays))


def forward_backward(function: Callable, args: tuple, positions: list[int], dout=None):
    """(outputs, dout, input gradients of the first output) in one traced call. Without `dout`
    the output gradient is drawn (seeded) inside, to the first output's shape."""

    def run(*diffs):
        out, pullback = jax.vjp(lambda *d: function(*_put(args, positions, d)), *diffs)
        first = out[0] if isinstance(out, tuple | list) else out
        cot = dout if dout is not None else jax.random.normal(jax.random.key(7), jnp.shape(first))
        if isinstance(out, tuple | list):
            cotangent = type(out)([cot, *(jnp.zeros_like(o) for o in out[1:])])
        else:
            cotangent = jnp.asarray(cot, first.dtype)
        return out, cot, list(pullback(cotangent))

    return run


def _put(args: tuple, positions: list[int], values) -> list:
    full = list(args)
    for position, value in zip(positions, values, strict=True):
        full[position] = value
    return full


def reference_values(entry: Entry, args: tuple):
    """The reference's outputs, an output gradient `dout` and its input gradients, compiled once."""
    positions = grad_positions(entry)
    run = forward_backward(entry.reference, args, positions)
    out, dout, grads = compiled(lambda *a: run(*(a[p] for p in positions)), args)()
    return outputs(entry, out), np.asarray(dout, np.float32), grads
