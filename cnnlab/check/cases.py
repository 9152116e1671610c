"""The battery: the inputs every catalogue entry is checked on, and one realistic size for speed.

Layer cases are small on purpose (batch 1, odd and non-square sizes, 1 and 3 channels, stride
2, same and valid, ties, logits around 1e3, train and eval), so that the learner's NumPy loops
and finite differences stay fast. Inputs are float32 values; the NumPy form receives them as
float64, which holds them exactly, so both forms see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

STEPS = 100  # optimizer trajectories


@dataclass(frozen=True)
class Case:
    """One call of the entry: `args` in contract order. `fd`: finite differences make sense
    (no ties or kinks near the inputs)."""

    name: str
    args: tuple
    fd: bool = True


def _normal(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv(rng, name, x_shape, k_shape, stride, padding):
    kh, kw, cout = k_shape
    x = _normal(rng, *x_shape)
    w = _normal(rng, kh, kw, x_shape[-1], cout, scale=0.5)
    return Case(name, (x, w, _normal(rng, cout), stride, padding))


def conv2d_cases(rng):
    return [
        _conv(rng, "batch 1, 1 channel, 3x3 same", (1, 5, 5, 1), (3, 3, 2), 1, "same"),
        _conv(rng, "3 channels, 7x6, 3x3 same", (2, 7, 6, 3), (3, 3, 4), 1, "same"),
        _conv(rng, "3 channels, 6x5, 3x3 valid", (2, 6, 5, 3), (3, 3, 2), 1, "valid"),
        _conv(rng, "stride 2, 8x6, 3x3 same (odd padding)", (2, 8, 6, 3), (3, 3, 2), 2, "same"),
        _conv(rng, "2x4 kernel, 5x7 same (odd padding)", (1, 5, 7, 3), (2, 4, 2), 1, "same"),
        _conv(rng, "stride 2, 7x8, 3x3 valid", (2, 7, 8, 1), (3, 3, 3), 2, "valid"),
    ]


def _ties(rng, *shape):
    """Small integers: many windows hold their maximum more than once."""
    return rng.integers(0, 3, shape).astype(np.float32)


def pool_cases(rng):
    return [
        Case("batch 1, 4x4, window 2", (_normal(rng, 1, 4, 4, 1), 2, None)),
        Case("3 channels, 6x5 (odd), window 2", (_normal(rng, 2, 6, 5, 3), 2, None)),
        Case("window 3, stride 2 (overlap)", (_normal(rng, 2, 7, 7, 2), 3, 2)),
        Case("ties, window 2", (_ties(rng, 2, 4, 6, 2), 2, None), fd=False),
        Case("ties, window 3, stride 2", (_ties(rng, 1, 7, 7, 1), 3, 2), fd=False),
    ]


def dense_cases(rng):
    return [
        Case("batch 1, 3 -> 4", (_normal(rng, 1, 3), _normal(rng, 3, 4), _normal(rng, 4))),
        Case("batch 5, 7 -> 2", (_normal(rng, 5, 7), _normal(rng, 7, 2), _normal(rng, 2))),
    ]


def _away_from_zero(rng, *shape, scale=2.0):
    """Normal values at least 0.05 from 0, where relu-like kinks would upset differences."""
    x = _normal(rng, *shape, scale=scale)
    return np.where(np.abs(x) < 0.05, 0.05 * np.sign(x + 1e-9), x).astype(np.float32)


def elementwise_cases(rng, extra=()):
    big = np.array([[-100.0, -30.0, -5.0, 5.0, 30.0, 100.0]], np.float32)
    return [
        Case("batch 1, 1 value", (np.array([[0.7]], np.float32), *extra)),
        Case("4x5 normal", (_away_from_zero(rng, 4, 5), *extra)),
        Case("image 2x3x3x2", (_away_from_zero(rng, 2, 3, 3, 2), *extra)),
        Case("large |x| up to 100", (big, *extra), fd=False),
    ]


def softmax_cases(rng):
    gaps = np.array([[1000.0, 0.0, -1000.0], [3.0, 1003.0, 2.0]], np.float32)
    return [
        Case("batch 1, 10 classes", (_normal(rng, 1, 10),)),
        Case("4x5 normal", (_normal(rng, 4, 5, scale=3),)),
        Case("logits around 1e3", (_normal(rng, 3, 4) + np.float32(1000),)),
        Case("gaps of 1e3", (gaps,), fd=False),
    ]


def cross_entropy_cases(rng):
    return [
        Case("batch 1, 10 classes", (_normal(rng, 1, 10), np.array([3]))),
        Case("batch 6, 4 classes", (_normal(rng, 6, 4, scale=2), rng.integers(0, 4, 6))),
        Case("logits around 1e3", (_normal(rng, 3, 5) + np.float32(1000), np.array([0, 4, 2]))),
    ]


def _stats(rng, c):
    return (
        _normal(rng, c, scale=0.5) + np.float32(1),  # gamma
        _normal(rng, c, scale=0.5),  # beta
        _normal(rng, c, scale=0.5),  # running mean
        (rng.uniform(0.5, 2.0, c)).astype(np.float32),  # running var
    )


def batch_norm_cases(rng):
    small = _normal(rng, 4, 3, 3, 2, scale=2e-3)
    return [
        Case("train, 4x3x3x2", (_normal(rng, 4, 3, 3, 2, scale=2), *_stats(rng, 2), True)),
        Case("train, batch 2 of vectors, momentum 0.8", (_normal(rng, 2, 5), *_stats(rng, 5), True, 0.8)),
        Case("eval, 3x2x2x3", (_normal(rng, 3, 2, 2, 3), *_stats(rng, 3), False)),
        Case("train, variance near eps", (small, *_stats(rng, 2), True, 0.9, 1e-5)),
    ]  # fmt: skip


def _norm_params(rng, c):
    return _normal(rng, c, scale=0.5) + np.float32(1), _normal(rng, c, scale=0.5)


def layer_norm_cases(rng):
    return [
        Case("batch 1, 6 features", (_normal(rng, 1, 6), *_norm_params(rng, 6))),
        Case("image 2x3x3x4", (_normal(rng, 2, 3, 3, 4, scale=3), *_norm_params(rng, 4))),
        Case("variance near eps", (_normal(rng, 3, 5, scale=2e-3), *_norm_params(rng, 5), 1e-5)),
    ]


def group_norm_cases(rng):
    return [
        Case("batch 1, 4 channels, 2 groups", (_normal(rng, 1, 3, 3, 4), *_norm_params(rng, 4), 2)),
        Case("6 channels, 3 groups, 4x5", (_normal(rng, 2, 4, 5, 6, scale=2), *_norm_params(rng, 6), 3)),
        Case("variance near eps", (_normal(rng, 2, 2, 3, 4, scale=2e-3), *_norm_params(rng, 4), 2, 1e-5)),
    ]  # fmt: skip


def fill_defaults(entry, case: Case) -> Case:
    """The case with every contract argument present (the learner gets them all, by position)."""
    missing = [default for _, default in entry.params[len(case.args) :]]
    return Case(case.name, tuple(case.args) + tuple(missing), case.fd)


def layer_cases(entry) -> list[Case]:
    rng = np.random.default_rng(sum(map(ord, entry.name)))
    makers = {
        "conv2d": conv2d_cases,
        "max_pool": pool_cases,
        "avg_pool": pool_cases,
        "dense": dense_cases,
        "softmax": softmax_cases,
        "log_softmax": softmax_cases,
        "cross_entropy": cross_entropy_cases,
        "batch_norm": batch_norm_cases,
        "layer_norm": layer_norm_cases,
        "group_norm": group_norm_cases,
        "leaky_relu": lambda rng: elementwise_cases(rng, (0.1,)),
    }
    cases = makers.get(entry.name, elementwise_cases)(rng)
    return [fill_defaults(entry, case) for case in cases]


# ---------------------------------------------------------------------- speed sizes


def speed_case(entry) -> Case:
    """One realistic call: a CIFAR-sized batch of activations."""
    rng = np.random.default_rng(0)
    image = _normal(rng, 16, 32, 32, 16)
    vectors = _normal(rng, 128, 512)
    gamma, beta = _norm_params(rng, 16)
    cases = {
        "conv2d": lambda: (
            image,
            _normal(rng, 3, 3, 16, 32, scale=0.1),
            _normal(rng, 32),
            1,
            "same",
        ),
        "max_pool": lambda: (image, 2, None),
        "avg_pool": lambda: (image, 2, None),
        "dense": lambda: (vectors, _normal(rng, 512, 256, scale=0.05), _normal(rng, 256)),
        "softmax": lambda: (_normal(rng, 128, 1000),),
        "log_softmax": lambda: (_normal(rng, 128, 1000),),
        "cross_entropy": lambda: (_normal(rng, 128, 1000), rng.integers(0, 1000, 128)),
        "batch_norm": lambda: (image, gamma, beta, *_stats(rng, 16)[2:], True),
        "layer_norm": lambda: (image, gamma, beta),
        "group_norm": lambda: (image, gamma, beta, 4),
        "dropout": lambda: (vectors, 0.5, None),
        "leaky_relu": lambda: (image, 0.1),
    }
    args = cases.get(entry.name, lambda: (image,))()
    return fill_defaults(
        entry, Case("16x32x32x16 images" if args[0] is image else "128 rows", args)
    )


# ------------------------------------------------------------------ optimizer problems


@dataclass(frozen=True)
class Problem:
    """A loss over a dict of parameters and where it starts."""

    name: str
    loss: object  # params -> scalar, jax-traceable
    start: dict


def quadratic() -> Problem:
    rng = np.random.default_rng(1)
    target = {"w": _normal(rng, 4, 3), "b": _normal(rng, 3)}
    curvature = {
        "w": rng.uniform(0.5, 2.0, (4, 3)).astype(np.float32),
        "b": np.float32([1, 3, 0.2]),
    }

    def loss(params):
        terms = jax.tree.map(
            lambda p, t, a: 0.5 * jnp.sum(a * (p - t) ** 2), params, target, curvature
        )
        return sum(jax.tree.leaves(terms))

    return Problem(
        "quadratic", loss, {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    )


def network() -> Problem:
    """A 6-8-3 tanh network fitting fixed random targets (a loss with curvature that changes)."""
    rng = np.random.default_rng(2)
    inputs, targets = _normal(rng, 16, 6), _normal(rng, 16, 3)

    def loss(params):
        hidden = jnp.tanh(inputs @ params["w1"] + params["b1"])
        return jnp.mean((hidden @ params["w2"] + params["b2"] - targets) ** 2)

    start = {
        "w1": _normal(rng, 6, 8, scale=0.4),
        "b1": np.zeros(8, np.float32),
        "w2": _normal(rng, 8, 3, scale=0.4),
        "b2": np.zeros(3, np.float32),
    }
    return Problem("network", loss, start)


@dataclass(frozen=True)
class OptCase:
    name: str
    args: tuple  # the factory's arguments, in contract order
    problem: Problem


# (learning rate, overrides) per optimizer: every case passes all contract arguments
_OPT_SETTINGS = {
    "sgd": [(0.1, {})],
    "momentum": [(0.05, {}), (0.02, {"beta": 0.5})],
    "nesterov": [(0.05, {}), (0.02, {"beta": 0.5})],
    "adagrad": [(0.3, {}), (0.3, {"eps": 0.5})],
    # a small rate and eps 1e-4: near a minimum RMSProp hops chaotically and rounding grows
    "rmsprop": [(0.001, {"eps": 1e-4}), (0.01, {"eps": 0.5})],
    "adam": [(0.05, {}), (0.05, {"b1": 0.5, "b2": 0.9, "eps": 0.5})],
    "adamw": [(0.05, {"weight_decay": 0.1}), (0.05, {"eps": 0.5, "weight_decay": 0.5})],
}


def optimizer_cases(entry) -> list[OptCase]:
    cases = []
    for lr, overrides in _OPT_SETTINGS[entry.name]:
        values = {name: default for name, default in entry.params[1:]} | overrides
        label = ", ".join(f"{k}={v:g}" for k, v in overrides.items()) or "defaults"
        args = (lr, *values.values())
        for problem in (quadratic(), network()):
            cases.append(OptCase(f"{problem.name}, lr={lr:g}, {label}", args, problem))
    return cases


def optimizer_speed_params() -> dict:
    """About a million parameters: a realistic update."""
    rng = np.random.default_rng(3)
    return {"kernel": _normal(rng, 1024, 1024), "bias": _normal(rng, 1024)}
