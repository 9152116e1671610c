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
    """`init(key) -> (params, state)`; `apply(params, state, x, train=, key=, taps=None) ->
    (logits, state)`.

    Both are pure and traceable, so the train step can jit, scan and vmap them. `x` is a float32
    NHWC batch; `key` drives randomness for models that take it explicitly (pure-function models);
    NNX models carry their own rng streams in `state`.
    """

    init: Callable[[jax.Array], tuple[Params, State]]
    apply: Callable[..., tuple[jax.Array, State]]
    # Said once to the user, e.g. "final softmax dropped".
    notes: tuple[str, ...] = field(default=())
    # Whether `apply(..., taps=[])` appends the output of every ReLU layer to the list, for the
    # dead-unit diagnostic (taken from the training step's own forward pass); False where the
    # model cannot tell, and ignores `taps`.
    taps_relus: bool = False
    # `data_init(params, state, x) -> params`: parameters computed from a sample of standardised
    # training images after `init` (e.g. a whitening convolution); None when nothing needs it.
    data_init: Callable[..., Params] | None = None
    # `frozen(params) -> pytree of bools`: parameters that never train.
    frozen: Callable[[Params], Any] | None = None
    # `update_scale(params, step) -> pytree of scalars`: the factor on each parameter's update
    # at `step` (0 where it is frozen); None: the optimizer's updates as they come.
    update_scale: Callable[[Params, Any], Any] | None = None


def from_nnx(
    make: Callable[[nnx.Rngs], nnx.Module],
    notes: tuple[str, ...] = (),
    *,
    rngs_at_call: bool = False,
) -> Model:
    """Wrap an NNX module factory. Training and evaluation differ by the module's own
    `train()`/`eval()` flags (dropout, batch norm), which live in two graph definitions.

    Modules that hold their own rng streams keep them in `state`. With `rngs_at_call`, the
    module is called as `module(x, rngs=nnx.Rngs(key), taps=taps)` instead (cnnlab's own
    networks), so its randomness while training comes from apply's `key` and `state` holds
    only batch statistics."""
    module = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    module.train()
    train_def, _, _ = nnx.split(module, nnx.Param, ...)
    module.eval()
    eval_def, _, _ = nnx.split(module, nnx.Param, ...)

    def init(key):
        # XLA:CPU compiles the partitionable threefry about 5x slower (seconds per layer shape);
        # the classic one gives equally good random numbers.
        with jax.threefry_partitionable(False):
            _, params, state = nnx.split(make(nnx.Rngs(key)), nnx.Param, ...)
        return params, state

    init = jax.jit(init)  # one compiled program for all layers, not one per layer shape

    def apply(params, state, x, *, train: bool, key=None, taps=None):
        net = nnx.merge(train_def if train else eval_def, params, state, copy=True)
        if rngs_at_call:
            logits = net(x, rngs=nnx.Rngs(key) if train and key is not None else None, taps=taps)
        else:
            logits = net(x)
        _, _, state = nnx.split(net, nnx.Param, ...)
        return logits, state

    return Model(init, apply, notes)
