"""Weight initialisers by name, for conv and dense kernels (biases always start at zero)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cnnlab.errors import SpecError, suggest

Initializer = Callable[..., jax.Array]
DEFAULT_INIT = "lecun_normal"  # Flax's own default for Conv and Linear


def dirac(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """A conv kernel (kh, kw, in, out) that copies input channel i to output channel i.

    With as many outputs as inputs and 'same' padding the conv is the identity; extra output
    channels start at zero, extra input channels are ignored."""
    del key
    if len(shape) != 4:
        raise ValueError("dirac initialisation applies to 2-d conv kernels only")
    kh, kw, cin, cout = shape
    channels = jnp.arange(min(cin, cout))
    kernel = jnp.zeros(shape, dtype)
    return kernel.at[kh // 2, kw // 2, channels, channels].set(1)


INITIALIZERS: dict[str, Initializer] = {
    "he_normal": nnx.initializers.he_normal(),
    "he_uniform": nnx.initializers.he_uniform(),
    "xavier_normal": nnx.initializers.xavier_normal(),
    "glorot_normal": nnx.initializers.glorot_normal(),
    "xavier_uniform": nnx.initializers.xavier_uniform(),
    "glorot_uniform": nnx.initializers.glorot_uniform(),
    "lecun_normal": nnx.initializers.lecun_normal(),
    "lecun_uniform": nnx.initializers.lecun_uniform(),
    "orthogonal": nnx.initializers.orthogonal(),
    "dirac": dirac,
    "zeros": nnx.initializers.zeros_init(),
}
CONV_ONLY = {"dirac"}


def check_init_name(name: str, loc: tuple) -> str:
    """Return `name` if it names an initialiser, else raise SpecError with a suggestion."""
    if name not in INITIALIZERS:
        raise SpecError(loc, f"unknown initialiser '{name}'; {suggest(name, INITIALIZERS)}")
    return name


def get_initializer(name: str) -> Initializer:
    """The initialiser called `name` (names are checked at parse time)."""
    return INITIALIZERS[name]
