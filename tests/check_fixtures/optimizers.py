"""Optimizers written by hand as optax-style factories: correct ones and planted bugs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _map(f, *trees):
    return jax.tree.map(f, *trees)


def sgd(lr):
    return optax.GradientTransformation(
        lambda p: (), lambda g, s, p=None: (_map(lambda g: -lr * g, g), s)
    )


def _heavy_ball(lr, beta, nesterov):
    def init(params):
        return _map(jnp.zeros_like, params)

    def update(grads, v, params=None):
        v = _map(lambda v, g: beta * v + g, v, grads)
        step = _map(lambda v, g: g + beta * v, v, grads) if nesterov else v
        return _map(lambda s: -lr * s, step), v

    return optax.GradientTransformation(init, update)


def momentum(lr, beta=0.9):
    return _heavy_ball(lr, beta, False)


def nesterov(lr, beta=0.9):
    return _heavy_ball(lr, beta, True)


def adagrad(lr, eps=1e-7):
    def update(grads, acc, params=None):
        acc = _map(lambda a, g: a + g * g, acc, grads)
        return _map(lambda g, a: -lr * g / jnp.sqrt(a + eps), grads, acc), acc

    return optax.GradientTransformation(lambda p: _map(jnp.zeros_like, p), update)


def rmsprop(lr, decay=0.9, eps=1e-8):
    def update(grads, s, params=None):
        s = _map(lambda s, g: decay * s + (1 - decay) * g * g, s, grads)
        return _map(lambda g, s: -lr * g / (jnp.sqrt(s) + eps), grads, s), s

    return optax.GradientTransformation(lambda p: _map(jnp.zeros_like, p), update)


def _adam(lr, b1, b2, eps, wd=0.0, correct=True, coupled=False):
    def init(params):
        return 0, _map(jnp.zeros_like, params), _map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        t, m, v = state
        t = t + 1
        if coupled:
            grads = _map(lambda g, p: g + wd * p, grads, params)
        m = _map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = _map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = (1 - b1**t, 1 - b2**t) if correct else (1.0, 1.0)
        decay = 0.0 if coupled else wd
        step = _map(
            lambda m, v, p: -lr * (m / c1 / (jnp.sqrt(v / c2) + eps) + decay * p), m, v, params
        )
        return step, (t, m, v)

    return optax.GradientTransformation(init, update)


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    return _adam(lr, b1, b2, eps)


def adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    return _adam(lr, b1, b2, eps, weight_decay)


def adam_no_correction(lr, b1=0.9, b2=0.999, eps=1e-8):
    return _adam(lr, b1, b2, eps, correct=False)


def adam_eps_inside(lr, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        return 0, _map(jnp.zeros_like, params), _map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        t, m, v = state
        t = t + 1
        m = _map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = _map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        step = _map(lambda m, v: -lr * m / (1 - b1**t) / jnp.sqrt(v / (1 - b2**t) + eps), m, v)
        return step, (t, m, v)

    return optax.GradientTransformation(init, update)


def adamw_coupled(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    return _adam(lr, b1, b2, eps, weight_decay, coupled=True)


def adam_numpy(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in NumPy: state holds NumPy arrays and a plain step count (runs without jit)."""

    def init(params):
        zeros = {k: np.zeros(np.shape(p)) for k, p in params.items()}
        return {"t": 0, "m": zeros, "v": {k: z.copy() for k, z in zeros.items()}}

    def update(grads, state, params=None):
        t = state["t"] + 1
        m = {k: b1 * state["m"][k] + (1 - b1) * np.asarray(g) for k, g in grads.items()}
        v = {k: b2 * state["v"][k] + (1 - b2) * np.asarray(g) ** 2 for k, g in grads.items()}
        updates = {
            k: (-lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)).astype(np.float32)
            for k in grads
        }
        return updates, {"t": t, "m": m, "v": v}

    return optax.GradientTransformation(init, update)


def adam_python_counter(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Keeps its step count in a Python variable: right step by step, frozen under jit."""
    steps = [0]

    def init(params):
        return _map(jnp.zeros_like, params), _map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        steps[0] += 1
        t = steps[0]
        m = _map(lambda m, g: b1 * m + (1 - b1) * g, state[0], grads)
        v = _map(lambda v, g: b2 * v + (1 - b2) * g * g, state[1], grads)
        step = _map(lambda m, v: -lr * m / (1 - b1**t) / (jnp.sqrt(v / (1 - b2**t)) + eps), m, v)
        return step, (m, v)

    return optax.GradientTransformation(init, update)
