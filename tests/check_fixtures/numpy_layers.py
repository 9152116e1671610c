"""Correct NumPy-form layers (NAME_forward -> (out, cache), NAME_backward -> gradients)."""

import math

import numpy as np


def _pad_same(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d_forward(x, w, b, stride=1, padding="same"):
    kh, kw = w.shape[:2]
    pads = [(0, 0), (0, 0)]
    if padding == "same":
        pads = [_pad_same(x.shape[1], kh, stride), _pad_same(x.shape[2], kw, stride)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3])) + b
    for di in range(kh):
        for dj in range(kw):
            patch = xp[:, di : di + stride * oh : stride, dj : dj + stride * ow : stride, :]
            out += np.tensordot(patch, w[di, dj], axes=([3], [0]))
    return out, (x, w, xp, pads, stride)


def conv2d_backward(dout, cache):
    x, w, xp, pads, stride = cache
    kh, kw = w.shape[:2]
    oh, ow = dout.shape[1:3]
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for di in range(kh):
        for dj in range(kw):
            rows, cols = slice(di, di + stride * oh, stride), slice(dj, dj + stride * ow, stride)
            dw[di, dj] = np.tensordot(xp[:, rows, cols, :], dout, axes=([0, 1, 2], [0, 1, 2]))
            dxp[:, rows, cols, :] += np.tensordot(dout, w[di, dj], axes=([3], [1]))
    (top, _), (left, _) = pads
    dx = dxp[:, top : top + x.shape[1], left : left + x.shape[2], :]
    return dx, dw, dout.sum((0, 1, 2))


def _windows(shape, window, stride):
    _, h, w, _ = shape
    for i in range((h - window) // stride + 1):
        for j in range((w - window) // stride + 1):
            yield (
                i,
                j,
                slice(i * stride, i * stride + window),
                slice(j * stride, j * stride + window),
            )


def max_pool_forward(x, window=2, stride=None):
    stride = stride or window
    oh, ow = (x.shape[1] - window) // stride + 1, (x.shape[2] - window) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i, j, rows, cols in _windows(x.shape, window, stride):
        out[:, i, j, :] = x[:, rows, cols, :].max(axis=(1, 2))
    return out, (x, window, stride)


def max_pool_backward(dout, cache):
    x, window, stride = cache
    dx = np.zeros_like(x)
    n, c = x.shape[0], x.shape[3]
    for i, j, rows, cols in _windows(x.shape, window, stride):
        flat = x[:, rows, cols, :].reshape(n, -1, c)
        first = np.argmax(flat, axis=1)  # the first maximum in row-major order
        mask = np.zeros_like(flat)
        np.put_along_axis(mask, first[:, None, :], 1.0, axis=1)
        dx[:, rows, cols, :] += (
            mask.reshape(n, window, window, c) * dout[:, i : i + 1, j : j + 1, :]
        )
    return (dx,)


def avg_pool_forward(x, window=2, stride=None):
    stride = stride or window
    oh, ow = (x.shape[1] - window) // stride + 1, (x.shape[2] - window) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i, j, rows, cols in _windows(x.shape, window, stride):
        out[:, i, j, :] = x[:, rows, cols, :].mean(axis=(1, 2))
    return out, (x.shape, window, stride)


def avg_pool_backward(dout, cache):
    shape, window, stride = cache
    dx = np.zeros(shape)
    for i, j, rows, cols in _windows(shape, window, stride):
        dx[:, rows, cols, :] += dout[:, i : i + 1, j : j + 1, :] / window**2
    return (dx,)


def dense_forward(x, w, b):
    return x @ w + b, (x, w)


def dense_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, x):
    return dout * (x > 0)


def leaky_relu_forward(x, negative_slope=0.01):
    return np.where(x > 0, x, negative_slope * x), (x, negative_slope)


def leaky_relu_backward(dout, cache):
    x, slope = cache
    return (dout * np.where(x > 0, 1.0, slope),)


def sigmoid_forward(x):
    out = np.where(
        x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x)))
    )
    return out, out


def sigmoid_backward(dout, out):
    return (dout * out * (1 - out),)


def tanh_forward(x):
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, out):
    return (dout * (1 - out**2),)


_erf = np.vectorize(math.erf)


def gelu_forward(x):
    cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
    return x * cdf, (x, cdf)


def gelu_backward(dout, cache):
    x, cdf = cache
    pdf = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    return (dout * (cdf + x * pdf),)


def softmax_forward(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return p, p


def softmax_backward(dout, p):
    return (p * (dout - (dout * p).sum(-1, keepdims=True)),)


def log_softmax_forward(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return out, out


def log_softmax_backward(dout, out):
    return (dout - np.exp(out) * dout.sum(-1, keepdims=True),)


def cross_entropy_forward(logits, labels):
    logp, _ = log_softmax_forward(logits)
    n = logits.shape[0]
    return -logp[np.arange(n), labels].mean(), (logp, labels)


def cross_entropy_backward(dout, cache):
    logp, labels = cache
    n = logp.shape[0]
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return (dout * grad / n,)


def batch_norm_forward(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    if train:
        m, v = x.mean(axes), x.var(axes)
        new_mean, new_var = (
            momentum * mean + (1 - momentum) * m,
            momentum * var + (1 - momentum) * v,
        )
    else:
        m, v, new_mean, new_var = mean, var, mean, var
    inv = 1 / np.sqrt(v + eps)
    xhat = (x - m) * inv
    return (xhat * gamma + beta, new_mean, new_var), (xhat, inv, gamma, train, axes)


def batch_norm_backward(dy, cache):
    xhat, inv, gamma, train, axes = cache
    dgamma, dbeta = (dy * xhat).sum(axes), dy.sum(axes)
    dxhat = dy * gamma
    if not train:
        return dxhat * inv, dgamma, dbeta
    dx = inv * (dxhat - dxhat.mean(axes) - xhat * (dxhat * xhat).mean(axes))
    return dx, dgamma, dbeta


def _normalise_backward(dxhat, xhat, inv, axes):
    return inv * (
        dxhat - dxhat.mean(axes, keepdims=True) - xhat * (dxhat * xhat).mean(axes, keepdims=True)
    )


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    inv = 1 / np.sqrt(v + eps)
    xhat = (x - m) * inv
    return xhat * gamma + beta, (xhat, inv, gamma)


def layer_norm_backward(dy, cache):
    xhat, inv, gamma = cache
    axes = tuple(range(dy.ndim - 1))
    dx = _normalise_backward(dy * gamma, xhat, inv, -1)
    return dx, (dy * xhat).sum(axes), dy.sum(axes)


def group_norm_forward(x, gamma, beta, groups=2, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    m, v = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
    inv = 1 / np.sqrt(v + eps)
    xhat = ((g - m) * inv).reshape(x.shape)
    return xhat * gamma + beta, (xhat, inv, gamma, groups)


def group_norm_backward(dy, cache):
    xhat, inv, gamma, groups = cache
    n, h, w, c = dy.shape
    split = (n, h, w, groups, c // groups)
    dxhat = (dy * gamma).reshape(split)
    dx = _normalise_backward(dxhat, xhat.reshape(split), inv, (1, 2, 4)).reshape(dy.shape)
    return dx, (dy * xhat).sum((0, 1, 2)), dy.sum((0, 1, 2))


def dropout_forward(x, rate, rng):
    mask = (rng.random(x.shape) >= rate) / (1 - rate)
    return x * mask, mask


def dropout_backward(dout, mask):
    return (dout * mask,)
