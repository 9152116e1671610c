"""The one training loop: compiled calls, and at their boundaries log, evaluate, checkpoint,
stop. Every way of training (train, resume, overfit, lr-find, stacked sweep trials) runs here.

The loop owns the cadence and the host side of time; what happens at a log or an evaluation is
up to each trial's record (cnnlab.record for run folders; overfit and lr-find keep their own).
With several trials stacked, state, data and numbers carry a leading trial axis and each record
sees its own slice.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import numpy as np

from cnnlab.diagnostics import layer_names, stats_rows
from cnnlab.processes import any_process
from cnnlab.step import EpochOrders, Program, steps_program


@dataclass(frozen=True)
class Cadence:
    """When things happen, in steps. Log and eval intervals are multiples of `per_call`."""

    steps: int  # the step the run ends at
    per_call: int  # steps fused into one compiled call
    log_every: int
    eval_every: int

    def count(self, step: int) -> int:
        """Steps in the call that starts at `step`."""
        return min(self.per_call, self.steps - step)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.steps

    def evaluates(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.steps


class Record(Protocol):
    """What a trial does at the loop's events. A method that returns a status ends the trial
    with it ("diverged", "early_stopped", "memorised", ...)."""

    last_train: dict
    last_val: dict

    def log(
        self, step: int, series: dict, layers: list[dict], images_per_sec: float, wall: float
    ): ...

    def evaluate(self, step: int, state, wall: float, final: bool) -> str | None: ...


@dataclass
class Outcome:
    """How the loop ended for one trial."""

    status: str  # completed, interrupted, or what a record returned
    step: int  # the last step it recorded
    wall_seconds: float


class StopRequest:
    """First Ctrl-C asks the loop to stop at the next call boundary; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Stopwatch:
    """Wall time since start, and training time between laps that leaves out paused spans."""

    def __init__(self, offset: float = 0.0):
        self.start = self.mark = time.perf_counter()
        self.pause = 0.0
        self.offset = offset  # seconds already spent before (a resumed run)

    def total(self) -> float:
        return time.perf_counter() - self.start + self.offset

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.mark, self.pause = now - self.mark - self.pause, now, 0.0
        return max(seconds, 1e-9)

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.pause += time.perf_counter() - began


def trial_slice(tree: Any, index: int | None) -> Any:
    """Trial `index` of a stacked tree; the tree itself when nothing is stacked."""
    return tree if index is None else jax.tree.map(lambda leaf: leaf[index], tree)


def _series(calls: list[dict], index: int | None) -> tuple[dict, dict]:
    """Per-step metrics of one trial over the calls since the last log, as flat arrays, and the
    per-layer statistics of the last step (as layer_stats gives them)."""
    calls = [trial_slice(call, index) for call in calls]
    layers = calls[-1].pop("layers")
    for call in calls[:-1]:
        call.pop("layers")
    series = {key: np.concatenate([np.ravel(c[key]) for c in calls]) for key in calls[0]}
    return series, layers


def run(
    program: Program,
    state,
    data,
    numbers,
    records: Sequence[Record],
    cadence: Cadence,
    *,
    stacked: bool = False,
    progress=None,
    wall_offset: float = 0.0,
) -> tuple[Any, list[Outcome]]:
    """Train from `state` to `cadence.steps`; returns the final state and each trial's outcome.
    Device values reach the host only at logs and evaluations."""
    step = int(np.ravel(jax.device_get(state.step))[0])
    clock = Stopwatch(offset=wall_offset)
    batch = program.batch_size
    slots = list(range(len(records))) if stacked else [None]
    outcomes: list[Outcome | None] = [None] * len(records)
    last_step, pending = step, []
    orders, names = EpochOrders(program, state, stacked), layer_names(state.params)
    with StopRequest() as stop:
        while step < cadence.steps and any(o is None for o in outcomes):
            count = cadence.count(step)
            report = cadence.logs(step + count)
            call = steps_program(program, count, state, data, numbers, stacked=stacked)
            upcoming = orders.upcoming(step, count)
            state, metrics = call(state, upcoming, data, numbers, np.bool_(report))
            pending.append(metrics)
            step += count
            # Read once: a Ctrl-C arriving later is seen next call. Several processes stop
            # together, at the first boundary after any of them was asked to.
            stopping = any_process(stop.requested)
            if report or stopping:
                calls = jax.device_get(pending)  # the only host sync between logs
                images_per_sec = (step - last_step) * batch / clock.lap()
                with clock.paused():
                    for index, record, slot in _active(records, slots, outcomes):
                        series, layers = _series(calls, slot)
                        # A stop mid-interval has no statistics.
                        layers = stats_rows(step, layers, names) if report else None
                        status = record.log(step, series, layers, images_per_sec, clock.total())
                        if status:
                            outcomes[index] = Outcome(status, step, clock.total())
                pending, last_step = [], step
            if cadence.evaluates(step) or stopping:
                with clock.paused():
                    final = step == cadence.steps or stopping
                    for index, record, slot in _active(records, slots, outcomes):
                        own = trial_slice(state, slot)
                        status = record.evaluate(step, own, clock.total(), final)
                        if status:
                            outcomes[index] = Outcome(status, step, clock.total())
            if progress is not None:
                first = next((r for r, o in zip(records, outcomes, strict=True) if o is None), None)
                if first is not None:
                    progress.update(step, first.last_train, first.last_val)
            if stopping:
                break
    ending = "interrupted" if step < cadence.steps else "completed"
    return state, [o or Outcome(ending, step, clock.total()) for o in outcomes]


def _active(records, slots, outcomes):
    """(index, record, its slice of stacked values) of the trials still training."""
    for index, (record, slot) in enumerate(zip(records, slots, strict=True)):
        if outcomes[index] is None:
            yield index, record, slot
