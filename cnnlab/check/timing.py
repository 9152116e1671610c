"""Speed against the reference at a realistic size: one forward and backward pass (or one
optimizer update), the best of a few repetitions, reported as a ratio.

Both sides are compiled with jax.jit where they can be (compilation is not timed); NumPy code
runs as written. A learner's call that takes longer than TIME_LIMIT seconds is stopped.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.check import cases as battery
from cnnlab.check.calls import grad_positions, jax_args, numpy_args, vjp

REPEATS = 3
TIME_LIMIT = 30.0  # seconds for one call of the learner's code


@dataclass
class Speed:
    case: str
    mine_s: float | None  # None: stopped after TIME_LIMIT
    reference_s: float
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.mine_s is None else self.mine_s / self.reference_s


class _TooSlow(Exception):
    pass


def _once(function: Callable[[], object], limit: float | None) -> float:
    """Seconds one call takes (its result waited for); _TooSlow past `limit`."""
    use_alarm = limit is not None and threading.current_thread() is threading.main_thread()

    def stop(*_):
        raise _TooSlow

    if use_alarm:
        previous = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        start = time.perf_counter()
        jax.block_until_ready(function())
        return time.perf_counter() - start
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def best_time(function: Callable[[], object], limit: float | None = None) -> float:
    """The fastest of REPEATS calls after a first one (which compiles); a slow first call
    (over a second) is itself the measure, so slow code is not run again and again."""
    first = _once(function, limit)
    if first > 1.0:
        return first
    return min(_once(function, limit) for _ in range(REPEATS))


def _with_key(entry, args: tuple, form: str) -> tuple:
    if entry.name != "dropout":
        return args
    key = jax.random.key(0) if form == "jax" else np.random.default_rng(0)
    return (*args[:2], key)


def _jax_pass(function, args, positions, dout) -> Callable[[], object]:
    """A jitted forward and backward of `function` (its array arguments traced)."""

    def run(*diffs):
        full = list(args)
        for position, value in zip(positions, diffs, strict=True):
            full[position] = value
        return vjp(function, tuple(full), positions, dout)

    compiled = jax.jit(run)
    diffs = [args[p] for p in positions]
    return lambda: compiled(*diffs)


def _numpy_pass(learner, args, dout) -> Callable[[], object]:
    def run():
        _, cache = learner.forward(*numpy_args(args))
        return learner.backward(dout, cache)

    return run


def layer_speed(learner, entry) -> Speed:
    case = battery.speed_case(entry)
    positions = grad_positions(entry)
    ref_args = _with_key(entry, jax_args(case.args), "jax")
    out = entry.reference(*ref_args)
    out = out[0] if isinstance(out, tuple) else out
    dout = np.ones(out.shape, np.float32)
    reference_s = best_time(_jax_pass(entry.reference, ref_args, positions, jnp.asarray(dout)))
    note = ""
    if learner.form == "numpy":
        args = _with_key(entry, case.args, "numpy")
        run = _numpy_pass(learner, args, dout.astype(np.float64) if dout.ndim else 1.0)
    else:
        args = _with_key(entry, jax_args(case.args), "jax")
        run = _jax_pass(learner.function, args, positions, jnp.asarray(dout))
        try:
            _once(run, TIME_LIMIT)
        except _TooSlow:
            return Speed(case.name, None, reference_s, f"stopped after {TIME_LIMIT:g} s")
        except Exception:  # not jittable: time it as it runs
            note = "not jittable: timed without jax.jit"
            run = lambda: vjp(learner.function, args, positions, jnp.asarray(dout))  # noqa: E731
    return _timed(case.name, run, reference_s, note)


def _timed(case: str, run, reference_s: float, note: str) -> Speed:
    try:
        return Speed(case, best_time(run, TIME_LIMIT), reference_s, note)
    except _TooSlow:
        return Speed(case, None, reference_s, f"stopped after {TIME_LIMIT:g} s")
    except Exception as error:  # the learner's code failed at this size
        first = (str(error).strip().splitlines() or [""])[0]
        return Speed(
            case, None, reference_s, f"failed at this size: {type(error).__name__}: {first}"
        )


def optimizer_speed(learner, entry) -> Speed:
    params = jax.tree.map(jnp.asarray, battery.optimizer_speed_params())
    grads = jax.tree.map(lambda p: p * 1e-3, params)
    args = battery.optimizer_cases(entry)[0].args
    case = f"one update of {sum(p.size for p in jax.tree.leaves(params)):,} parameters"

    def updater(tx, jit=True):
        state = tx.init(params)
        update = jax.jit(tx.update) if jit else tx.update
        return lambda: update(grads, state, params)

    reference_s = best_time(updater(entry.reference(*args)))
    run, note = updater(learner.function(*args)), ""
    try:
        _once(run, TIME_LIMIT)
    except _TooSlow:
        return Speed(case, None, reference_s, f"stopped after {TIME_LIMIT:g} s")
    except Exception:
        run, note = (
            updater(learner.function(*args), jit=False),
            "not jittable: timed without jax.jit",
        )
    return _timed(case, run, reference_s, note)
