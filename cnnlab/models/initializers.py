"""Weight initialisers by name, for conv and dense kernels (biases always start at zero).

`INITIALIZERS` draw kernels from a key; `DATA_INITIALIZERS` compute a conv kernel from the
layer's inputs on a sample of training images (the model's `data_init`, run once after init).
"""

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


# PyTorch's default for Conv2d and Linear (kaiming_uniform with a = sqrt(5)): uniform in
# +/- 1/sqrt(fan_in), a third of lecun's variance. Behind batch norm a smaller kernel learns
# faster (the step is relative to its norm), so recipes tuned in PyTorch expect it.
pytorch_default = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dirac_then(random: Initializer) -> Initializer:
    """`dirac` on the first min(in, out) output channels, `random` on the others.

    Unlike plain `dirac`, no filter starts at zero: a zero filter followed by batch norm has a
    zero variance, and its gradient is then scaled by 1/sqrt(epsilon)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        identity = dirac(key, shape, dtype)
        return jnp.where(jnp.arange(shape[-1]) < shape[-2], identity, random(key, shape, dtype))

    return init


# Added to each eigenvalue: on standardised inputs it caps the gain of near-constant directions.
WHITEN_EPS = 5e-4


def image_patches(x: jax.Array, kernel: tuple[int, int]) -> jax.Array:
    """(N * positions, kh * kw * C): every `kernel`-sized patch of NHWC `x` at stride 1,
    flattened in the (kh, kw, C) order of a conv kernel's first three axes."""
    kh, kw = kernel
    _, height, width, channels = x.shape
    rows, cols = height - kh + 1, width - kw + 1
    shifted = [x[:, i : i + rows, j : j + cols, :] for i in range(kh) for j in range(kw)]
    return jnp.stack(shifted, axis=3).reshape(-1, kh * kw * channels)


def whitening_kernel(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A conv kernel (kh, kw, in, out) that whitens the patches of `x` (NHWC, the layer's input).

    Filter k is the k-th principal direction of the patch covariance divided by the square root
    of its eigenvalue (+ WHITEN_EPS), so the responses are uncorrelated with unit variance. The
    out/2 strongest directions come twice, as +v and -v, so that a following ReLU or GELU keeps
    both signs. `out` must be even and at most 2 * kh * kw * in."""
    kh, kw, cin, cout = shape
    patches = image_patches(x.astype(jnp.float32), (kh, kw))
    centred = patches - patches.mean(axis=0)
    highest = jax.lax.Precision.HIGHEST  # GPUs would otherwise multiply in TF32
    covariance = jnp.matmul(centred.T, centred, precision=highest) / patches.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
    count = cout // 2
    eigenvalues, eigenvectors = eigenvalues[::-1][:count], eigenvectors[:, ::-1][:, :count]
    filters = eigenvectors / jnp.sqrt(eigenvalues + WHITEN_EPS)
    return jnp.concatenate([filters, -filters], axis=1).reshape(kh, kw, cin, cout)


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
    "pytorch_default": pytorch_default,
    "dirac": dirac,
    "dirac_lecun": dirac_then(nnx.initializers.lecun_normal()),
    "dirac_pytorch": dirac_then(pytorch_default),
    "zeros": nnx.initializers.zeros_init(),
}
# name -> f(layer inputs NHWC, kernel shape) -> kernel; conv layers only, set per layer
DATA_INITIALIZERS: dict[str, Callable[[jax.Array, tuple[int, ...]], jax.Array]] = {
    "whiten": whitening_kernel,
}
# conv-only name -> what a model-wide one of them gives dense layers
DENSE_COUNTERPART = {
    "dirac": DEFAULT_INIT,
    "dirac_lecun": DEFAULT_INIT,
    "dirac_pytorch": "pytorch_default",
}
CONV_ONLY = {*DENSE_COUNTERPART, *DATA_INITIALIZERS}


def check_init_name(name: str, loc: tuple) -> str:
    """Return `name` if it names an initialiser, else raise SpecError with a suggestion."""
    if name in DATA_INITIALIZERS:
        raise SpecError(
            loc,
            f"'{name}' is computed from data per layer: give it to a conv, {{conv: {{init: {name}}}}}",
        )
    if name not in INITIALIZERS:
        raise SpecError(loc, f"unknown initialiser '{name}'; {suggest(name, INITIALIZERS)}")
    return name


def get_initializer(name: str) -> Initializer:
    """The initialiser called `name` (names are checked at parse time)."""
    return INITIALIZERS[name]
