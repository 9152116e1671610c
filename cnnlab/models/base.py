"""A model as two pure functions over explicit pytrees, whatever wrote it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
from flax import nnx

Params = Any  # pytree of trainable arrays
State = Any  # pytree of non-trainable arrays (batch statistics, rng streams)


@dataclass(frozen=True)
class Model:
    """`init(key) -> (params, state)`; `apply(params, state, x, train=, key=) -> (logits, state)`.

    Both are pure and traceable, so the train step can jit, scan and vmap them. `x` is a float32
    NHWC batch; `key` drives randomness for models that take it explicitly (pure-function models);
    NNX models carry their own rng streams in `state`.
    """

    init: Callable[[jax.Array], tuple[Params, State]]
    apply: Callable[..., tuple[jax.Array, State]]
    notes: tuple[str, ...] = field(default=())  # said once to the user, e.g. "final softmax dropped"
    module: Callable[[jax.Array], nnx.Module] | None = None  # NNX models: build the module (inspect)


def from_nnx(make: Callable[[nnx.Rngs], nnx.Module], notes: tuple[str, ...] = ()) -> Model:
    """Wrap an NNX module factory. Training and evaluation differ by the module's own
    `train()`/`eval()` flags (dropout, batch norm), which live in two graph definitions."""
    module = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    module.train()
    train_def, _, _ = nnx.split(module, nnx.Param, ...)
    module.eval()
    eval_def, _, _ = nnx.split(module, nnx.Param, ...)

    def init(key):
        _, params, state = nnx.split(make(nnx.Rngs(key)), nnx.Param, ...)
        return params, state

    def apply(params, state, x, *, train: bool, key=None):
        net = nnx.merge(train_def if train else eval_def, params, state)
        logits = net(x)
        _, _, state = nnx.split(net, nnx.Param, ...)
        return logits, state

    return Model(init, apply, notes, module=lambda key: make(nnx.Rngs(key)))
