"""Correct JAX-form layers, written by hand (not calling the references), for `cnnlab check`."""

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import erf


def _pad_same(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x, w, b, stride=1, padding="same"):
    # the padding by hand, the sum by lax (a loop of tensordots compiles slowly in the tests)
    kh, kw = w.shape[:2]
    pads = [(0, 0), (0, 0)]
    if padding == "same":
        pads = [_pad_same(x.shape[1], kh, stride), _pad_same(x.shape[2], kw, stride)]
    dims = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=dims) + b


def max_pool(x, window=2, stride=None):
    stride = stride or window
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID"
    )


def avg_pool(x, window=2, stride=None):
    stride = stride or window
    total = lax.reduce_window(
        x, 0.0, lax.add, (1, window, window, 1), (1, stride, stride, 1), "VALID"
    )
    return total / window**2


def dense(x, w, b):
    return jnp.dot(x, w) + b


def relu(x):
    return jnp.maximum(x, 0)


def leaky_relu(x, negative_slope=0.01):
    return jnp.where(x > 0, x, negative_slope * x)


def sigmoid(x):
    return 0.5 * (jnp.tanh(x / 2) + 1)


def tanh(x):
    return jnp.tanh(x)


def gelu(x):
    return x * 0.5 * (1 + erf(x / jnp.sqrt(2.0)))


def softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    e = jnp.exp(shifted)
    return e / e.sum(-1, keepdims=True)


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - jnp.log(jnp.exp(shifted).sum(-1, keepdims=True))


def cross_entropy(logits, labels):
    picked = jnp.take_along_axis(log_softmax(logits), labels[:, None], axis=1)
    return -picked.mean()


def batch_norm(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    if train:
        axes = tuple(range(x.ndim - 1))
        m = x.mean(axes)
        v = ((x - m) ** 2).mean(axes)
        y = (x - m) / jnp.sqrt(v + eps) * gamma + beta
        return y, momentum * mean + (1 - momentum) * m, momentum * var + (1 - momentum) * v
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta, mean, var


def layer_norm(x, gamma, beta, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + eps) * gamma + beta


def group_norm(x, gamma, beta, groups=2, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    m = g.mean((1, 2, 4), keepdims=True)
    v = ((g - m) ** 2).mean((1, 2, 4), keepdims=True)
    return ((g - m) / jnp.sqrt(v + eps)).reshape(x.shape) * gamma + beta


def dropout(x, rate, key):
    keep = jax.random.uniform(key, x.shape) >= rate
    return jnp.where(keep, x / (1 - rate), 0.0)
