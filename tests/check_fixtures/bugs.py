"""Layers with planted bugs, one known mistake each, in the NumPy and the JAX form."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_layers as good
from jax_layers import conv2d as jax_conv2d


def conv_flipped_forward(x, w, b, stride=1, padding="same"):
    return good.conv2d_forward(x, w[::-1, ::-1], b, stride, padding)


def conv_flipped_backward(dout, cache):
    dx, dw, db = good.conv2d_backward(dout, cache)
    return dx, dw[::-1, ::-1], db


def conv_channels_first(x, w, b, stride=1, padding="same"):
    return jnp.transpose(jax_conv2d(x, w, b, stride, padding), (0, 3, 1, 2))


def conv_pad_before_forward(x, w, b, stride=1, padding="same"):
    """Puts the odd padding row and column first."""
    if padding != "same":
        return good.conv2d_forward(x, w, b, stride, padding)
    kh, kw = w.shape[:2]
    pads = [
        good._pad_same(x.shape[1], kh, stride)[::-1],
        good._pad_same(x.shape[2], kw, stride)[::-1],
    ]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out, (_, _, _, _, s) = good.conv2d_forward(xp, w, b, stride, "valid")
    return out, (x, w, xp, pads, s)


conv_pad_before_backward = good.conv2d_backward


def softmax_naive(logits):
    e = jnp.exp(logits)
    return e / e.sum(-1, keepdims=True)


max_pool_all_ties_forward = good.max_pool_forward


def max_pool_all_ties_backward(dout, cache):
    x, window, stride = cache
    dx = np.zeros_like(x)
    for i, j, rows, cols in good._windows(x.shape, window, stride):
        patch = x[:, rows, cols, :]
        dx[:, rows, cols, :] += (patch == patch.max((1, 2), keepdims=True)) * dout[
            :, i : i + 1, j : j + 1, :
        ]
    return (dx,)


def bn_eval_batch_stats(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    y, m, v = jax_bn(x, gamma, beta, mean, var, True, momentum, eps)
    return (y, m, v) if train else (y, mean, var)


def bn_unbiased(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    if not train:
        return jax_bn(x, gamma, beta, mean, var, train, momentum, eps)
    axes = tuple(range(x.ndim - 1))
    m, v = x.mean(axes), x.var(axes)
    y = (x - m) / jnp.sqrt(x.var(axes, ddof=1) + eps) * gamma + beta  # the bug: ddof=1 here
    return y, momentum * mean + (1 - momentum) * m, momentum * var + (1 - momentum) * v


def jax_bn(*args):
    from jax_layers import batch_norm

    return batch_norm(*args)


def layer_norm_eps_outside(x, gamma, beta, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    return (x - m) / (x.std(-1, keepdims=True) + eps) * gamma + beta


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def dropout_keep_rate(x, rate, key):
    keep = jax.random.uniform(key, x.shape) < rate
    return jnp.where(keep, x / (1 - rate), 0.0)
