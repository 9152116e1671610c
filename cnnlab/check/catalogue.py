"""The catalogue: every layer and optimizer a learner can check, its contract and its reference.

A contract is the exact signature the learner writes (arguments are always passed by position,
so the names may differ but the order may not) and what each argument means. References are
JAX, lax and optax: what the learner's version must agree with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnnlab.errors import UserError, suggest

REQUIRED = object()  # an argument without a default


@dataclass(frozen=True)
class Entry:
    """One catalogue entry.

    `params` are (name, default) pairs in call order; `grads` the array arguments whose
    gradients are checked (NumPy backward returns them in this order); `outputs` the names of
    what the function returns (more than one: a tuple, gradients taken of the first)."""

    name: str
    kind: str  # "layer" or "optimizer"
    params: tuple[tuple[str, Any], ...]
    reference: Callable
    summary: str
    contract: str
    grads: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("out",)

    @property
    def signature(self) -> str:
        parts = [
            name if default is REQUIRED else f"{name}={default!r}" for name, default in self.params
        ]
        return f"{self.name}({', '.join(parts)})"

    @property
    def arity(self) -> int:
        return len(self.params)


# ------------------------------------------------------------------ layer references


def conv2d(x, w, b, stride=1, padding="same"):
    out = lax.conv_general_dilated(
        x, w, (stride, stride), padding.upper(), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out + b


def _pool(x, window, stride, init, op):
    stride = stride or window
    return lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), "VALID")


def max_pool(x, window=2, stride=None):
    return _pool(x, window, stride, -jnp.inf, lax.max)


def avg_pool(x, window=2, stride=None):
    return _pool(x, window, stride, 0.0, lax.add) / (window * window)


def dense(x, w, b):
    return x @ w + b


def relu(x):
    return jax.nn.relu(x)


def leaky_relu(x, negative_slope=0.01):
    return jax.nn.leaky_relu(x, negative_slope)


def sigmoid(x):
    return jax.nn.sigmoid(x)


def tanh(x):
    return jnp.tanh(x)


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


def softmax(logits):
    return jax.nn.softmax(logits, axis=-1)


def log_softmax(logits):
    return jax.nn.log_softmax(logits, axis=-1)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _normalise(x, mean, var, gamma, beta, eps):
    return (x - mean) * lax.rsqrt(var + eps) * gamma + beta


def batch_norm(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    if not train:
        return _normalise(x, mean, var, gamma, beta, eps), mean, var
    axes = tuple(range(x.ndim - 1))
    batch_mean, batch_var = x.mean(axes), x.var(axes)
    y = _normalise(x, batch_mean, batch_var, gamma, beta, eps)
    new_mean = momentum * mean + (1 - momentum) * batch_mean
    new_var = momentum * var + (1 - momentum) * batch_var
    return y, new_mean, new_var


def layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return _normalise(x, mean, var, gamma, beta, eps)


def group_norm(x, gamma, beta, groups=2, eps=1e-5):
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = grouped.mean((1, 2, 4), keepdims=True)
    var = grouped.var((1, 2, 4), keepdims=True)
    normal = ((grouped - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
    return normal * gamma + beta


def dropout(x, rate, key):
    if rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0.0)


# -------------------------------------------------------------- optimizer references


def sgd_ref(lr):
    return optax.sgd(lr)


def momentum_ref(lr, beta=0.9):
    return optax.sgd(lr, momentum=beta)


def nesterov_ref(lr, beta=0.9):
    return optax.sgd(lr, momentum=beta, nesterov=True)


def adagrad_ref(lr, eps=1e-7):
    return optax.adagrad(lr, initial_accumulator_value=0.0, eps=eps)


def rmsprop_ref(lr, decay=0.9, eps=1e-8):
    return optax.rmsprop(lr, decay=decay, eps=eps, eps_in_sqrt=False)


def adam_ref(lr, b1=0.9, b2=0.999, eps=1e-8):
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def adamw_ref(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


# ------------------------------------------------------------------------ contracts

_IMAGE = "x (N, H, W, C) float, channels last"
_OPTAX = (
    "Return an optax.GradientTransformation: init(params) -> state and "
    "update(grads, state, params=None) -> (updates, state), where updates are added to params "
    "(so a descent step is negative). params and grads are pytrees (dicts of arrays)."
)

LAYERS = [
    Entry(
        "conv2d",
        "layer",
        (("x", REQUIRED), ("w", REQUIRED), ("b", REQUIRED), ("stride", 1), ("padding", "same")),
        conv2d,
        "2-D convolution (cross-correlation), NHWC",
        f"{_IMAGE}; w (KH, KW, Cin, Cout); b (Cout,); stride an int; padding 'same' or 'valid'. "
        "Returns (N, H', W', Cout). Cross-correlation as every framework computes it: "
        "out[n, i, j, o] = sum over (di, dj, c) of xpad[n, i*stride + di, j*stride + dj, c] * "
        "w[di, dj, c, o] + b[o], the kernel NOT flipped. 'valid': no padding, "
        "H' = (H - KH) // stride + 1. 'same': H' = ceil(H / stride), padded with zeros as XLA "
        "and TensorFlow pad: total = max((H' - 1) * stride + KH - H, 0) rows, total // 2 on "
        "top and the rest (the odd row) at the bottom; the same for the width.",
        grads=("x", "w", "b"),
    ),
    Entry(
        "max_pool",
        "layer",
        (("x", REQUIRED), ("window", 2), ("stride", None)),
        max_pool,
        "max pooling over window x window patches, valid padding",
        f"{_IMAGE}; window an int; stride an int, or None for the window. No padding: "
        "H' = (H - window) // stride + 1. Gradient: each window's output gradient goes to ONE "
        "input, the first maximum of the window in row-major order (as XLA, PyTorch and "
        "numpy.argmax choose), even when several inputs tie for the maximum.",
        grads=("x",),
    ),
    Entry(
        "avg_pool",
        "layer",
        (("x", REQUIRED), ("window", 2), ("stride", None)),
        avg_pool,
        "average pooling over window x window patches, valid padding",
        f"{_IMAGE}; window an int; stride an int, or None for the window. No padding: "
        "H' = (H - window) // stride + 1; each output is the mean of its window.",
        grads=("x",),
    ),
    Entry(
        "dense",
        "layer",
        (("x", REQUIRED), ("w", REQUIRED), ("b", REQUIRED)),
        dense,
        "fully connected layer",
        "x (N, Din); w (Din, Dout); b (Dout,). Returns x @ w + b, shape (N, Dout).",
        grads=("x", "w", "b"),
    ),
    Entry("relu", "layer", (("x", REQUIRED),), relu, "max(x, 0)", "x any shape.", ("x",)),
    Entry(
        "leaky_relu",
        "layer",
        (("x", REQUIRED), ("negative_slope", 0.01)),
        leaky_relu,
        "x, or negative_slope * x below 0",
        "x any shape; negative_slope a float.",
        ("x",),
    ),
    Entry(
        "sigmoid",
        "layer",
        (("x", REQUIRED),),
        sigmoid,
        "1 / (1 + exp(-x))",
        "x any shape; must stay finite for |x| up to 100.",
        ("x",),
    ),  # fmt: skip
    Entry("tanh", "layer", (("x", REQUIRED),), tanh, "hyperbolic tangent", "x any shape.", ("x",)),
    Entry(
        "gelu",
        "layer",
        (("x", REQUIRED),),
        gelu,
        "x * Phi(x), the exact (erf) form",
        "x any shape. The exact form x * 0.5 * (1 + erf(x / sqrt(2))), as PyTorch's default; "
        "the tanh approximation differs by up to about 5e-4.",
        ("x",),
    ),
    Entry(
        "softmax",
        "layer",
        (("logits", REQUIRED),),
        softmax,
        "softmax over the last axis",
        "logits (N, K). Returns probabilities (N, K) summing to 1 over the last axis; must "
        "stay finite for logits around 1e3.",
        ("logits",),
    ),
    Entry(
        "log_softmax",
        "layer",
        (("logits", REQUIRED),),
        log_softmax,
        "log of softmax over the last axis",
        "logits (N, K). Returns log-probabilities (N, K); must stay finite for logits around "
        "1e3 and for gaps of 1e3 between logits.",
        ("logits",),
    ),
    Entry(
        "cross_entropy",
        "layer",
        (("logits", REQUIRED), ("labels", REQUIRED)),
        cross_entropy,
        "softmax cross-entropy, mean over the batch",
        "logits (N, K) float; labels (N,) integers in [0, K). Returns a scalar: the mean over "
        "the batch of -log softmax(logits)[n, labels[n]]. Only logits get a gradient; "
        "the NumPy backward gets dout as a float.",
        ("logits",),
    ),
    Entry(
        "batch_norm",
        "layer",
        (
            ("x", REQUIRED),
            ("gamma", REQUIRED),
            ("beta", REQUIRED),
            ("mean", REQUIRED),
            ("var", REQUIRED),
            ("train", REQUIRED),
            ("momentum", 0.9),
            ("eps", 1e-5),
        ),
        batch_norm,
        "batch normalisation with running statistics -> (y, mean, var)",
        "x (..., C), statistics over every axis but the last; gamma, beta, mean, var (C,); "
        "train a bool. Returns (y, new_mean, new_var). train=True: normalise with the batch "
        "mean and the biased batch variance (divide by the count, not count - 1): "
        "y = (x - m) / sqrt(v + eps) * gamma + beta, and update the running statistics as "
        "Flax does: new = momentum * old + (1 - momentum) * batch (the same biased variance). "
        "train=False: normalise with the given mean and var and return them unchanged. "
        "Gradients are checked for x, gamma and beta of y (the NumPy backward gets dy and "
        "returns (dx, dgamma, dbeta)).",
        ("x", "gamma", "beta"),
        ("y", "mean", "var"),
    ),
    Entry(
        "layer_norm",
        "layer",
        (("x", REQUIRED), ("gamma", REQUIRED), ("beta", REQUIRED), ("eps", 1e-5)),
        layer_norm,
        "layer normalisation over the last axis",
        "x (..., C); gamma, beta (C,). Each position is normalised over its last axis with the "
        "biased variance: (x - m) / sqrt(v + eps) * gamma + beta.",
        ("x", "gamma", "beta"),
    ),
    Entry(
        "group_norm",
        "layer",
        (("x", REQUIRED), ("gamma", REQUIRED), ("beta", REQUIRED), ("groups", 2), ("eps", 1e-5)),
        group_norm,
        "group normalisation of NHWC images",
        f"{_IMAGE}; gamma, beta (C,); groups divides C. Channels are split into `groups` "
        "contiguous blocks (channels 0 .. C/groups - 1 form group 0); each image and group is "
        "normalised over H, W and its channels with the biased variance, then scaled and "
        "shifted per channel.",
        ("x", "gamma", "beta"),
    ),
    Entry(
        "dropout",
        "layer",
        (("x", REQUIRED), ("rate", REQUIRED), ("key", REQUIRED)),
        dropout,
        "inverted dropout, checked statistically",
        "x any shape; rate the probability of zeroing an element; key a jax.random key (the "
        "NumPy form gets a numpy.random.Generator). Kept elements are scaled by 1 / (1 - rate) "
        "so the mean is unchanged; rate 0 returns x. The gradient is the same mask and scale "
        "(checked as dx == out / x).",
        ("x",),
    ),
]

OPTIMIZERS = [
    Entry(
        "sgd",
        "optimizer",
        (("lr", REQUIRED),),
        sgd_ref,
        "plain gradient descent",
        f"p <- p - lr * g. {_OPTAX}",
    ),
    Entry(
        "momentum",
        "optimizer",
        (("lr", REQUIRED), ("beta", 0.9)),
        momentum_ref,
        "heavy-ball momentum (as optax.sgd and PyTorch)",
        f"v <- beta * v + g (v starts at 0); p <- p - lr * v. {_OPTAX}",
    ),
    Entry(
        "nesterov",
        "optimizer",
        (("lr", REQUIRED), ("beta", 0.9)),
        nesterov_ref,
        "Nesterov momentum (as optax.sgd(nesterov=True) and PyTorch)",
        f"v <- beta * v + g (v starts at 0); p <- p - lr * (g + beta * v). {_OPTAX}",
    ),
    Entry(
        "adagrad",
        "optimizer",
        (("lr", REQUIRED), ("eps", 1e-7)),
        adagrad_ref,
        "AdaGrad (as optax.adagrad with the accumulator starting at 0)",
        f"G <- G + g^2 (G starts at 0); p <- p - lr * g / sqrt(G + eps), epsilon INSIDE the "
        f"square root here, as optax writes it. {_OPTAX}",
    ),
    Entry(
        "rmsprop",
        "optimizer",
        (("lr", REQUIRED), ("decay", 0.9), ("eps", 1e-8)),
        rmsprop_ref,
        "RMSProp (as PyTorch and Keras: epsilon outside the square root)",
        f"s <- decay * s + (1 - decay) * g^2 (s starts at 0); "
        f"p <- p - lr * g / (sqrt(s) + eps). {_OPTAX}",
    ),
    Entry(
        "adam",
        "optimizer",
        (("lr", REQUIRED), ("b1", 0.9), ("b2", 0.999), ("eps", 1e-8)),
        adam_ref,
        "Adam (as optax.adam)",
        f"t <- t + 1; m <- b1 * m + (1 - b1) * g; v <- b2 * v + (1 - b2) * g^2; "
        f"m_hat = m / (1 - b1^t); v_hat = v / (1 - b2^t); "
        f"p <- p - lr * m_hat / (sqrt(v_hat) + eps), epsilon outside the square root. {_OPTAX}",
    ),
    Entry(
        "adamw",
        "optimizer",
        (("lr", REQUIRED), ("b1", 0.9), ("b2", 0.999), ("eps", 1e-8), ("weight_decay", 1e-4)),
        adamw_ref,
        "Adam with decoupled weight decay (as optax.adamw and PyTorch AdamW)",
        f"Adam's step on g alone, plus decay scaled by the learning rate but not by Adam's "
        f"denominator: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p), every "
        f"parameter decayed. {_OPTAX}",
    ),
]

CATALOGUE: dict[str, Entry] = {entry.name: entry for entry in LAYERS + OPTIMIZERS}


def get_entry(name: str) -> Entry:
    """The catalogue entry called `name`; a UserError naming the close ones otherwise."""
    if name not in CATALOGUE:
        raise UserError(
            f"'{name}' is not in the catalogue; {suggest(name, CATALOGUE)} "
            "(see cnnlab check --list, or name one with --against)"
        )
    return CATALOGUE[name]


def entries_by_kind() -> dict[str, list[Entry]]:
    return {"layers": LAYERS, "optimizers": OPTIMIZERS}
