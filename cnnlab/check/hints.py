"""Known mistakes, detected: what a buggy version would output, compared with what the learner's did.

Each detector computes the output (or gradient, or optimizer trajectory) of one known mistake
on the failing case. A hint fires when the learner's result matches that mistake and not the
reference, so a hint names the bug that is there, not one that might be.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cnnlab.check import catalogue as ref
from cnnlab.check.numeric import close


@dataclass(frozen=True)
class Hint:
    name: str
    message: str
    case: str = ""


@dataclass(frozen=True)
class Situation:
    """One failing case as a detector sees it. `mine` and `want` are lists of arrays: the
    outputs (part 'values') or the gradients of the checked inputs (part 'gradients')."""

    entry: str
    case: str
    part: str
    args: tuple  # the case's arguments (jax arrays where arrays)
    mine: list
    want: list
    dout: object = None  # the output gradient used for 'gradients'


@dataclass(frozen=True)
class Variant:
    """A known mistake as a function of the case: its outputs (or gradients)."""

    name: str
    entries: tuple[str, ...]
    part: str
    compute: Callable[[Situation], list | None]
    message: str


def _matches(sit: Situation, buggy: Sequence | None) -> bool:
    """Some output differs from the reference and equals the buggy version's."""
    if buggy is None:
        return False
    for got, want, bad in zip(sit.mine, sit.want, buggy, strict=False):
        if bad is not None and not close(got, want) and close(got, bad, rtol=1e-3, atol=1e-4):
            return True
    return False


def _grads(function, sit: Situation, positions: Sequence[int]) -> list:
    """Gradients of `function`'s first output at the case's arguments, for the given inputs."""

    def first(*diffs):
        args = list(sit.args)
        for position, value in zip(positions, diffs, strict=True):
            args[position] = value
        out = function(*args)
        return out[0] if isinstance(out, tuple) else out

    _, vjp = jax.vjp(first, *(sit.args[p] for p in positions))
    return list(vjp(jnp.asarray(sit.dout, jnp.float32)))


# ------------------------------------------------------------------------- conv2d


def _flipped_values(sit):
    x, w, b, stride, padding = sit.args
    return [ref.conv2d(x, w[::-1, ::-1], b, stride, padding)]


def _flipped_grads(sit):
    """A backward pass that forgets to rotate the kernel for dx (or rotates dw)."""
    x, w, b, stride, padding = sit.args
    dx, dw, db = _grads(lambda x, w, b, s, p: ref.conv2d(x, w[::-1, ::-1], b, s, p), sit, (0, 1, 2))
    return [dx, dw[::-1, ::-1], db]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _explicit_conv(x, w, b, stride, pads):
    out = lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out + b


def _odd_pixel_first(sit):
    x, w, b, stride, padding = sit.args
    if padding != "same":
        return None
    pads = [same_padding(x.shape[i + 1], w.shape[i], stride)[::-1] for i in (0, 1)]
    if pads == [same_padding(x.shape[i + 1], w.shape[i], stride) for i in (0, 1)]:
        return None  # even totals: both ways agree
    return [_explicit_conv(x, w, b, stride, pads)]


def _symmetric_padding(sit):
    x, w, b, stride, padding = sit.args
    if padding != "same":
        return None
    pads = [(w.shape[i] // 2, w.shape[i] // 2) for i in (0, 1)]
    return [_explicit_conv(x, w, b, stride, pads)]


# ------------------------------------------------------------------------ pooling


def _windows(shape, window, stride):
    stride = stride or window
    n, h, w, c = shape
    for i in range((h - window) // stride + 1):
        for j in range((w - window) // stride + 1):
            yield (
                i,
                j,
                slice(i * stride, i * stride + window),
                slice(j * stride, j * stride + window),
            )


def _tie_grads(sit, share: str):
    """max_pool's dx when each window's gradient goes to every tied maximum ('all'), is split
    among them ('split') or goes to the last one ('last')."""
    x, window, stride = (np.asarray(a) if i == 0 else a for i, a in enumerate(sit.args))
    dout = np.asarray(sit.dout, np.float64)
    dx = np.zeros(x.shape)
    for i, j, rows, cols in _windows(x.shape, window, stride):
        patch = x[:, rows, cols, :]
        top = patch == patch.max(axis=(1, 2), keepdims=True)
        if share == "split":
            top = top / top.sum(axis=(1, 2), keepdims=True)
        elif share == "last":
            flat = top.reshape(top.shape[0], -1, top.shape[-1])
            last = flat.shape[1] - 1 - np.argmax(flat[:, ::-1, :], axis=1)
            top = np.zeros_like(flat, dtype=float)
            np.put_along_axis(top, last[:, None, :], 1.0, axis=1)
            top = top.reshape(patch.shape)
        dx[:, rows, cols, :] += top * dout[:, i : i + 1, j : j + 1, :]
    return [dx]


def _sum_pool(sit):
    x, window, stride = sit.args
    return [ref.avg_pool(x, window, stride) * window * window]


# ---------------------------------------------------------------- softmax and losses


def _softmax_wrong_axis(sit):
    return [jax.nn.softmax(sit.args[0], axis=0)]


def _log_softmax_wrong_axis(sit):
    return [jax.nn.log_softmax(sit.args[0], axis=0)]


def _summed_loss(sit):
    logits, labels = sit.args
    return [ref.cross_entropy(logits, labels) * logits.shape[0]]


def _gelu_tanh(sit):
    return [jax.nn.gelu(sit.args[0], approximate=True)]


# ---------------------------------------------------------------------- normalisation


def _bn(x, gamma, beta, mean, var, train, momentum, eps, *, ddof=0, running_ddof=0,
        swap=False, eps_outside=False, batch_stats=False):  # fmt: skip
    """batch_norm with the known mistakes switchable."""
    axes = tuple(range(x.ndim - 1))
    count = np.prod([x.shape[a] for a in axes])
    use_batch = train or batch_stats
    m = x.mean(axes) if use_batch else mean
    v = x.var(axes) * count / max(count - ddof, 1) if use_batch else var
    y = (x - m) / (jnp.sqrt(v) + eps if eps_outside else jnp.sqrt(v + eps)) * gamma + beta
    if not train:
        return [y, mean, var]
    running_v = x.var(axes) * count / max(count - running_ddof, 1)
    keep, take = (1 - momentum, momentum) if swap else (momentum, 1 - momentum)
    return [y, keep * mean + take * x.mean(axes), keep * var + take * running_v]


def _bn_variant(**bug):
    def compute(sit):
        if "batch_stats" in bug and sit.args[5]:
            return None  # only an evaluation case shows it
        return _bn(*sit.args, **bug)

    return compute


def _norm(x, gamma, beta, eps, axes, *, ddof=0, eps_outside=False):
    count = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True) * count / max(count - ddof, 1)
    return (x - mean) / (jnp.sqrt(var) + eps if eps_outside else jnp.sqrt(var + eps)) * gamma + beta


def _layer_norm_variant(**bug):
    def compute(sit):
        x, gamma, beta, eps = sit.args
        return [_norm(x, gamma, beta, eps, (x.ndim - 1,), **bug)]

    return compute


def _group_norm_variant(strided=False, **bug):
    def compute(sit):
        x, gamma, beta, groups, eps = sit.args
        n, h, w, c = x.shape
        if strided:  # channel k in group k % groups: a reshape with the two axes swapped
            grouped = x.reshape(n, h, w, c // groups, groups).swapaxes(3, 4)
        else:
            grouped = x.reshape(n, h, w, groups, c // groups)
        normal = _norm(grouped, 1.0, 0.0, eps, (1, 2, 4), **bug)
        if strided:
            normal = normal.swapaxes(3, 4)
        return [normal.reshape(x.shape) * gamma + beta]

    return compute


# ----------------------------------------------------------------------- the table

_BN = "batch_norm"
VARIANTS = [
    Variant("kernel flipped", ("conv2d",), "values", _flipped_values,
            "kernel flipped: your layer computes a true convolution (kernel rotated 180 degrees); "
            "frameworks compute cross-correlation: index w[di, dj], not w[KH-1-di, KW-1-dj]"),
    Variant("kernel flipped", ("conv2d",), "gradients", _flipped_grads,
            "kernel flipped in the backward pass: dx is the full correlation of dout with the "
            "kernel rotated 180 degrees (and dw correlates x with dout, unrotated)"),
    Variant("padding off by one", ("conv2d",), "values", _odd_pixel_first,
            "padding off by one: with an odd amount of 'same' padding the extra row/column goes "
            "at the bottom/right (XLA, TensorFlow), yours puts it at the top/left"),
    Variant("padding off by one", ("conv2d",), "values", _symmetric_padding,
            "padding off by one: you pad kernel // 2 on every side (PyTorch's padding=k//2); "
            "'same' pads total = (H'-1)*stride + KH - H, total // 2 before and the rest after"),
    Variant("max-pool gradient to every tied maximum", ("max_pool",), "gradients",
            lambda sit: _tie_grads(sit, "all"),
            "max-pool gradient sent to every tied maximum (a mask x == max); it goes to one "
            "input per window, the first maximum in row-major order (np.argmax's choice)"),
    Variant("max-pool gradient split among ties", ("max_pool",), "gradients",
            lambda sit: _tie_grads(sit, "split"),
            "max-pool gradient split evenly among tied maxima (what jnp.max's gradient does); "
            "it goes whole to the first maximum in row-major order (use lax.reduce_window, or "
            "an argmax)"),
    Variant("max-pool gradient to the last maximum", ("max_pool",), "gradients",
            lambda sit: _tie_grads(sit, "last"),
            "max-pool gradient sent to the last tied maximum (a >= comparison while scanning); "
            "it goes to the first maximum in row-major order"),
    Variant("sum instead of mean", ("avg_pool",), "values", _sum_pool,
            "your pooling sums each window; average pooling divides by window * window"),
    Variant("softmax over the wrong axis", ("softmax",), "values", _softmax_wrong_axis,
            "softmax over the wrong axis: normalise each row (axis -1, the classes), not each "
            "column (the batch)"),
    Variant("softmax over the wrong axis", ("log_softmax",), "values", _log_softmax_wrong_axis,
            "log_softmax over the wrong axis: normalise over the last axis (the classes)"),
    Variant("summed instead of mean", ("cross_entropy",), "values", _summed_loss,
            "the loss is summed over the batch; the contract is its mean (divide by N)"),
    Variant("tanh approximation", ("gelu",), "values", _gelu_tanh,
            "you wrote GELU's tanh approximation; the contract is the exact erf form "
            "x * 0.5 * (1 + erf(x / sqrt(2)))"),
    Variant("batch statistics in eval", (_BN,), "values", _bn_variant(batch_stats=True),
            "batch norm uses the batch's statistics in eval mode; with train=False normalise "
            "with the running mean and var passed in"),
    Variant("unbiased variance", (_BN,), "values", _bn_variant(ddof=1),
            "you normalise with the unbiased variance (divided by count - 1, as torch.var and "
            "np.var(ddof=1)); batch norm divides by the count (biased variance)"),
    Variant("unbiased running variance", (_BN,), "values", _bn_variant(running_ddof=1),
            "the running variance is updated with the unbiased variance (PyTorch's "
            "convention); this contract (Flax's, which cnnlab trains with) uses the biased one"),
    Variant("momentum reversed", (_BN,), "values", _bn_variant(swap=True),
            "running statistics updated as (1 - momentum) * old + momentum * batch; here "
            "momentum weighs the old value: momentum * old + (1 - momentum) * batch "
            "(PyTorch's momentum=0.1 is 0.9 here)"),
    Variant("epsilon outside the square root", (_BN,), "values", _bn_variant(eps_outside=True),
            "epsilon outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps "
            "(they differ when the variance is near eps)"),
    Variant("unbiased variance", ("layer_norm",), "values", _layer_norm_variant(ddof=1),
            "you normalise with the unbiased variance (count - 1); layer norm divides by the count"),
    Variant("epsilon outside the square root", ("layer_norm",), "values",
            _layer_norm_variant(eps_outside=True),
            "epsilon outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps"),
    Variant("unbiased variance", ("group_norm",), "values", _group_norm_variant(ddof=1),
            "you normalise with the unbiased variance (count - 1); group norm divides by the count"),
    Variant("epsilon outside the square root", ("group_norm",), "values",
            _group_norm_variant(eps_outside=True),
            "epsilon outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps"),
    Variant("channels grouped by stride", ("group_norm",), "values",
            _group_norm_variant(strided=True),
            "channels grouped by stride (channel k in group k % groups): reshape the channels "
            "as (groups, C // groups) so each group is a contiguous block"),
]  # fmt: skip


# ------------------------------------------------------------- shape and overflow

_LABELS = {4: "NHWC", 3: "NHC", 2: "NK"}


def _layout(sit: Situation) -> Hint | None:
    """The learner's output is the reference's with its axes permuted (channels first,
    height and width swapped, a transposed matrix)."""
    got, want = np.asarray(sit.mine[0]), np.asarray(sit.want[0])
    if got.ndim != want.ndim or got.ndim < 2 or got.size != want.size:
        return None
    for perm in itertools.permutations(range(got.ndim)):
        if perm == tuple(range(got.ndim)) or got.transpose(perm).shape != want.shape:
            continue
        if close(got.transpose(perm), want):
            return Hint("layout", _layout_message(perm, want.ndim), sit.case)
    return None


def _layout_message(perm: tuple, ndim: int) -> str:
    labels = _LABELS.get(ndim, "ABCDEFG"[:ndim])
    mine = [""] * ndim
    for axis, source in enumerate(perm):
        mine[source] = labels[axis]
    if ndim == 4 and mine[1] == "C":
        what = "channels first"
    elif ndim == 4 and mine[1:3] == ["W", "H"]:
        what = "height and width swapped: a transposed output"
    else:
        what = "a transposed output"
    return f"your output is laid out as ({', '.join(mine)}), {what}; the contract is ({', '.join(labels)})"


def _overflow(sit: Situation) -> Hint | None:
    """inf or nan where the reference is finite: exp of a large number."""
    for got, want in zip(sit.mine, sit.want, strict=False):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            continue
        bad = ~np.isfinite(got) & np.isfinite(want)
        if bad.any():
            return Hint("overflow", _overflow_message(sit), sit.case)
    return None


def _overflow_message(sit: Situation) -> str:
    if sit.entry == "log_softmax":
        return (
            "overflow or underflow: log(softmax(x)) gives -inf once a probability underflows to "
            "0; compute x - max - log(sum(exp(x - max)))"
        )
    if sit.entry in ("softmax", "cross_entropy"):
        return (
            "overflow in softmax: exp(1000) is inf; subtract each row's maximum before exp "
            "(the result is the same, the numbers stay finite)"
        )
    return (
        "overflow: your output is inf or nan where the reference is finite (exp of a large number?)"
    )


def detect(sit: Situation) -> list[Hint]:
    """The hints whose mistake the learner's failing result matches."""
    hints = []
    if sit.part == "values":
        hints += [h for h in (_layout(sit), _overflow(sit)) if h]
    for variant in VARIANTS:
        if variant.part != sit.part or sit.entry not in variant.entries:
            continue
        try:
            buggy = variant.compute(sit)
        except (ValueError, TypeError, IndexError):
            continue  # the mistake cannot happen on this case's shapes
        if _matches(sit, buggy):
            hints.append(Hint(variant.name, variant.message, sit.case))
    return hints


# -------------------------------------------------------------------- optimizers


def adam_like(lr, b1, b2, eps, weight_decay=0.0, *, bias_correction=True, eps_inside=False,
              decay="decoupled"):  # fmt: skip
    """Adam / AdamW with the known mistakes switchable. decay: 'decoupled' (AdamW),
    'coupled' (added to the gradient) or 'unscaled' (decoupled but not times lr)."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return jnp.zeros([], jnp.int32), zeros, zeros

    def update(grads, state, params=None):
        t, m, v = state
        t = t + 1
        if decay == "coupled":
            grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        fix1, fix2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)

        def step(m, v, p):
            denom = jnp.sqrt(v / fix2 + eps) if eps_inside else jnp.sqrt(v / fix2) + eps
            out = -lr * (m / fix1) / denom
            if decay == "decoupled":
                out = out - lr * weight_decay * p
            elif decay == "unscaled":
                out = out - weight_decay * p
            return out

        return jax.tree.map(step, m, v, params), (t, m, v)

    return optax.GradientTransformation(init, update)


def _adagrad_eps_outside(lr, eps=1e-7):
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        state = jax.tree.map(lambda s, g: s + g * g, state, grads)
        return jax.tree.map(lambda g, s: -lr * g / (jnp.sqrt(s) + eps), grads, state), state

    return optax.GradientTransformation(init, update)


def _dampened(lr, beta=0.9, nesterov=False):
    return optax.chain(optax.ema(beta, debias=False), optax.scale(-lr))


def _wrong_sign(reference):
    return lambda *args: optax.chain(reference(*args), optax.scale(-1.0))


_EPS_INSIDE = (
    "epsilon inside the square root: Adam divides by sqrt(v_hat) + eps, not sqrt(v_hat + eps)"
)
_NO_BIAS = (
    "Adam without bias correction: divide m by (1 - b1^t) and v by (1 - b2^t), t counting "
    "steps from 1; without it the first steps are too large (or too small)"
)

# name, entries, factory (contract arguments) -> optax.GradientTransformation, message
OPT_VARIANTS = [
    ("no bias correction", ("adam",), lambda *a: adam_like(*a, bias_correction=False), _NO_BIAS),
    ("epsilon inside the square root", ("adam",), lambda *a: adam_like(*a, eps_inside=True), _EPS_INSIDE),
    ("no bias correction", ("adamw",), lambda *a: adam_like(*a, bias_correction=False), _NO_BIAS),
    ("epsilon inside the square root", ("adamw",), lambda *a: adam_like(*a, eps_inside=True), _EPS_INSIDE),
    ("weight decay coupled", ("adamw",), lambda *a: adam_like(*a, decay="coupled"),
     "weight decay coupled: you add weight_decay * p to the gradient (L2, as Adam's "
     "weight_decay does); AdamW decouples it: p <- p - lr * (adam_step + weight_decay * p)"),
    ("weight decay not scaled by lr", ("adamw",), lambda *a: adam_like(*a, decay="unscaled"),
     "decoupled weight decay without the learning rate: optax and PyTorch subtract "
     "lr * weight_decay * p, not weight_decay * p"),
    ("epsilon inside the square root", ("rmsprop",),
     lambda lr, decay, eps: optax.rmsprop(lr, decay=decay, eps=eps, eps_in_sqrt=True),
     "epsilon inside the square root: this RMSProp divides by sqrt(s) + eps, not sqrt(s + eps)"),
    ("epsilon outside the square root", ("adagrad",), _adagrad_eps_outside,
     "epsilon outside the square root: this AdaGrad (optax's) divides by sqrt(G + eps), "
     "not sqrt(G) + eps"),
    ("momentum as an average", ("momentum", "nesterov"), _dampened,
     "momentum as an average (v = beta * v + (1 - beta) * g) shrinks every step by 1 - beta; "
     "the contract sums: v = beta * v + g"),
    ("plain momentum", ("nesterov",), lambda lr, beta: optax.sgd(lr, momentum=beta),
     "this is plain (heavy-ball) momentum; Nesterov steps by g + beta * v with the new v"),
]  # fmt: skip


def optimizer_variants(entry_name: str, reference) -> list[tuple[str, Callable, str]]:
    """(name, factory, message) of the mistakes that apply to this optimizer."""
    found = [(n, f, m) for n, entries, f, m in OPT_VARIANTS if entry_name in entries]
    found.append(
        ("updates with the wrong sign", _wrong_sign(reference),
         "updates with the wrong sign: update returns what is ADDED to params, so a descent "
         "step is -lr * (...)")
    )  # fmt: skip
    return found
