"""Running a check: the learner's code against the reference on the battery, with hints and speed.

`check(target, against)` returns a `Report`: tables of rows (case, pass or fail, max absolute
and relative error), the hints that fired, and the speed ratio. Errors raised by the learner's
code become failing rows that say where; only bad input (a missing file or name, a wrong
signature) is a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnlab.check import cases as battery
from cnnlab.check import hints as known
from cnnlab.check.calls import (
    compiled,
    forward_backward,
    grad_positions,
    jax_args,
    numpy_args,
    outputs,
    reference_values,
    shapes,
    vjp,
)
from cnnlab.check.catalogue import Entry, get_entry
from cnnlab.check.learner import Learner, explain, find
from cnnlab.check.numeric import FD_RTOL, compare, fd_coordinates, finite_differences
from cnnlab.check.timing import Speed, layer_speed, optimizer_speed

TRAJ_RTOL, TRAJ_ATOL = 1e-3, 1e-5  # 100 float32 steps: rounding adds up
_REFERENCES: dict = {}  # (entry, case) -> reference outputs, dout, gradients
HINT_LOOKS = 3  # failing cases (of a layer) or 2 (of an optimizer) searched for known mistakes


@dataclass
class Row:
    case: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""
    shapes: str = ""  # the inputs' shapes, shown for the first failing case


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


@dataclass
class Report:
    target: str
    against: str
    form: str
    signature: str
    kind: str = "layer"  # or "optimizer"
    tables: list[Table] = field(default_factory=list)
    hints: list[known.Hint] = field(default_factory=list)
    speed: Speed | None = None

    @property
    def passed(self) -> bool:
        return all(table.passed for table in self.tables)

    def add_hints(self, found: list[known.Hint]) -> None:
        for hint in found:  # one line per mistake, however many cases or variants show it
            if all(hint.name != old.name for old in self.hints):
                self.hints.append(hint)


def check(target: str, against: str | None = None, speed: bool = True) -> Report:
    """Check `FILE.py:NAME` against catalogue entry `against` (default: NAME)."""
    from cnnlab.check.learner import split

    _, name = split(target)
    entry = get_entry(against or name)
    learner = find(target, entry)
    report = Report(target, entry.name, learner.form, entry.signature, entry.kind)
    if entry.kind == "optimizer":
        check_optimizer(learner, entry, report, speed)
    elif entry.name == "dropout":
        check_dropout(learner, report, speed)
    else:
        check_layer(learner, entry, report, speed)
    return report


# ---------------------------------------------------------------------------- layers


def _row(case: str, got: list, want: list, args: tuple, labels) -> Row:
    errors = [compare(g, w) for g, w in zip(got, want, strict=True)]
    bad = [label for label, e in zip(labels, errors, strict=True) if not e.close]
    note = ""
    for g, w, label in zip(got, want, labels, strict=True):
        if np.shape(g) != np.shape(w):
            note = f"{label}: shape {tuple(np.shape(g))}, expected {tuple(np.shape(w))}"
            break
    else:
        if bad and len(labels) > 1:
            note = f"{', '.join(bad)} differ"
    return Row(
        case,
        not bad,
        max(e.max_abs for e in errors),
        max(e.max_rel for e in errors),
        note,
        shapes(args),
    )


class _Layer:
    """State shared by the checks of one layer: the tables and where hints go."""

    def __init__(self, learner: Learner, entry: Entry, report: Report):
        self.learner, self.entry, self.report = learner, entry, report
        self.positions = grad_positions(entry)
        self.values = Table("values")
        self.grads = Table("gradients vs reference")
        self.fd = Table("gradients vs finite differences")
        self.looked = 0

    def hints(self, case, part, args, mine, want, dout=None):
        # Each look computes every known mistake on the case; a few failing cases are enough.
        if self.looked >= HINT_LOOKS:
            return
        self.looked += 1
        sit = known.Situation(self.entry.name, case.name, part, jax_args(args), mine, want, dout)
        self.report.add_hints(known.detect(sit))

    def reference(self, case):
        key = (self.entry.name, case.name)
        if key not in _REFERENCES:  # both forms of a layer share the compiled reference
            _REFERENCES[key] = reference_values(self.entry, jax_args(case.args))
        return _REFERENCES[key]

    def fail(self, table: Table, case, error: BaseException, what: str) -> None:
        note = f"{what}: {explain(error, self.learner.file)}"
        table.rows.append(Row(case.name, False, note=note, shapes=shapes(case.args)))


def check_layer(learner: Learner, entry: Entry, report: Report, speed: bool) -> None:
    layer = _Layer(learner, entry, report)
    run = _jax_case if learner.form == "jax" else _numpy_case
    for case in battery.layer_cases(entry):
        run(layer, case)
    report.tables += [layer.values, layer.grads] + ([layer.fd] if learner.form == "numpy" else [])
    if speed:
        report.speed = layer_speed(learner, entry)


def _call(function, args):
    """function(*args) compiled (fast), or as written where it cannot be traced."""
    try:
        return compiled(function, args)()
    except (jax.errors.JAXTypeError, jax.errors.ConcretizationTypeError):
        return function(*args)


def _jax_case(layer: _Layer, case) -> None:
    entry = layer.entry
    want, dout, want_grads = layer.reference(case)
    args = jax_args(case.args)
    run = forward_backward(layer.learner.function, args, layer.positions, jnp.asarray(dout))
    try:
        out, _, mine_grads = _call(lambda *a: run(*(a[p] for p in layer.positions)), args)
    except Exception:  # values first: an error in the backward pass alone is reported there
        mine_grads = None
        try:
            out = _call(layer.learner.function, args)
        except Exception as error:  # the learner's code: any error is a finding
            layer.fail(layer.values, case, error, "calling it")
            return
    try:
        mine = outputs(entry, out)
    except ValueError as error:
        layer.fail(layer.values, case, error, "its result")
        return
    row = _row(case.name, mine, want, case.args, entry.outputs)
    layer.values.rows.append(row)
    if not row.passed:
        layer.hints(case, "values", case.args, mine, want)
    if mine_grads is None:
        try:
            mine_grads = vjp(layer.learner.function, args, layer.positions, jnp.asarray(dout))
        except Exception as error:
            layer.fail(layer.grads, case, error, "differentiating it (write it with jax.numpy)")
            return
    row = _row(case.name, mine_grads, want_grads, case.args, [f"d{g}" for g in entry.grads])
    layer.grads.rows.append(row)
    if not row.passed:
        layer.hints(case, "gradients", case.args, mine_grads, want_grads, dout)


def _grad_list(entry: Entry, grads) -> list:
    if not isinstance(grads, tuple | list):
        grads = (grads,)
    if len(grads) != len(entry.grads):
        wanted = ", ".join(f"d{g}" for g in entry.grads)
        raise ValueError(f"backward returned {len(grads)} gradients; expected ({wanted})")
    return list(grads)


def _numpy_case(layer: _Layer, case) -> None:
    entry, learner = layer.entry, layer.learner
    want, dout, want_grads = layer.reference(case)
    dout64 = dout.astype(np.float64) if np.ndim(dout) else float(dout)
    try:
        out, cache = learner.forward(*numpy_args(case.args))
        mine = outputs(entry, out)
    except Exception as error:
        layer.fail(
            layer.values, case, error, f"calling {learner.name}_forward (returns (out, cache))"
        )
        return
    row = _row(case.name, mine, want, case.args, entry.outputs)
    layer.values.rows.append(row)
    if not row.passed:
        layer.hints(case, "values", case.args, mine, want)
    try:
        mine_grads = _grad_list(entry, learner.backward(dout64, cache))
    except Exception as error:
        layer.fail(layer.grads, case, error, f"calling {learner.name}_backward")
        return
    row = _row(case.name, mine_grads, want_grads, case.args, [f"d{g}" for g in entry.grads])
    layer.grads.rows.append(row)
    if not row.passed:
        layer.hints(case, "gradients", case.args, mine_grads, want_grads, dout)
    _finite_difference_row(layer, case, dout64, mine_grads)


def _finite_difference_row(layer: _Layer, case, dout, mine_grads) -> None:
    """The learner's backward against central differences of the learner's own forward."""
    if not case.fd:
        layer.fd.rows.append(Row(case.name, True, note="skipped: ties or kinks at the inputs"))
        return
    learner, positions = layer.learner, layer.positions
    base = list(numpy_args(case.args))

    def loss(inputs):
        full = list(base)
        for position, value in zip(positions, inputs, strict=True):
            full[position] = value
        out = learner.forward(*full)[0]
        out = out[0] if isinstance(out, tuple | list) else out
        return float(np.sum(np.asarray(out, np.float64) * dout))

    rng = np.random.default_rng(11)
    inputs = [base[p] for p in positions]
    estimates, reported = [], []
    try:
        for index, (value, grad) in enumerate(zip(inputs, mine_grads, strict=True)):
            coords = fd_coordinates(np.shape(value), rng)
            estimates.append(finite_differences(loss, inputs, index, coords))
            reported.append(np.array([np.asarray(grad, np.float64)[c] for c in coords]))
    except Exception as error:
        layer.fail(layer.fd, case, error, "finite differences")
        return
    errors = [
        compare(r, e, rtol=FD_RTOL, atol=1e-4) for r, e in zip(reported, estimates, strict=True)
    ]
    passed = all(e.close for e in errors)
    note = "" if passed else "your backward disagrees with your own forward"
    layer.fd.rows.append(
        Row(case.name, passed, max(e.max_abs for e in errors), max(e.max_rel for e in errors),
            note, shapes(case.args))
    )  # fmt: skip


# ---------------------------------------------------------------------------- dropout


def _dropout_call(learner: Learner, x: np.ndarray, rate: float, seed: int):
    """(out, dx for dout = 1) of the learner's dropout, in either form."""
    if learner.form == "jax":
        key = jax.random.key(seed)
        out, pullback = jax.vjp(lambda x: learner.function(x, rate, key), jnp.asarray(x))
        return np.asarray(out), np.asarray(pullback(jnp.ones_like(out))[0])
    out, cache = learner.forward(x.astype(np.float64), rate, np.random.default_rng(seed))
    grads = learner.backward(np.ones(x.shape), cache)
    grads = grads[0] if isinstance(grads, tuple | list) else grads
    return np.asarray(out), np.asarray(grads)


def check_dropout(learner: Learner, report: Report, speed: bool) -> None:
    """Dropout is random: check its statistics and that its gradient is its own mask."""
    table = Table("statistics")
    x = np.random.default_rng(5).uniform(0.5, 1.5, (100, 200)).astype(np.float32)
    try:
        rows = _dropout_rows(learner, x, report)
    except Exception as error:
        rows = [Row("calling it", False, note=explain(error, learner.file), shapes="100x200")]
    table.rows += rows
    report.tables.append(table)
    if speed:
        report.speed = layer_speed(learner, get_entry("dropout"))


def _dropout_rows(learner: Learner, x: np.ndarray, report: Report) -> list[Row]:
    rate = 0.3
    out, dx = _dropout_call(learner, x, rate, 0)
    out_again, _ = _dropout_call(learner, x, rate, 1)
    identity, _ = _dropout_call(learner, x, 0.0, 0)
    dropped = float(np.mean(out == 0))
    spread = 5 * np.sqrt(rate * (1 - rate) / x.size)
    kept = out != 0
    scale = compare(out[kept], x[kept] / (1 - rate))
    rows = [
        Row("rate 0 returns x", compare(identity, x).close, *_errs(identity, x)),
        Row(f"drops a fraction {rate} (got {dropped:.3f})", abs(dropped - rate) < spread,
            abs(dropped - rate), abs(dropped - rate) / rate),
        Row("kept values are x / (1 - rate)", scale.close, scale.max_abs, scale.max_rel),
        Row("another key, another mask", not np.array_equal(out == 0, out_again == 0)),
        Row("gradient is out / x", compare(dx, out / x).close, *_errs(dx, out / x)),
    ]  # fmt: skip
    if abs(dropped - (1 - rate)) < spread:
        report.add_hints([known.Hint("rate is the keep probability",
            "you keep each element with probability `rate`; rate is the probability of "
            "DROPPING it (keep with 1 - rate)", "statistics")])  # fmt: skip
    if not scale.close and compare(out[kept], x[kept]).close:
        report.add_hints([known.Hint("not rescaled",
            "kept values are not scaled: inverted dropout divides them by 1 - rate so the "
            "expected output equals x (and evaluation needs no change)", "statistics")])  # fmt: skip
    return rows


def _errs(got, want) -> tuple[float, float]:
    error = compare(got, want)
    return error.max_abs, error.max_rel


# -------------------------------------------------------------------------- optimizers


def trajectory(tx, problem, steps: int = battery.STEPS, *, jit: bool = True) -> np.ndarray:
    """The parameters after each of `steps` updates, flattened: shape (steps + 1, P)."""
    grad = jax.jit(jax.grad(problem.loss))
    params = jax.tree.map(jnp.asarray, problem.start)

    def step(params, state):
        updates, state = tx.update(grad(params), state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    state = tx.init(params)
    path = [_flat(params)]
    for _ in range(steps):
        params, state = step(params, state)
        path.append(_flat(params))
    return np.stack(path)


def _flat(params) -> np.ndarray:
    return np.concatenate(
        [np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(params)]
    )


def _learner_trajectory(factory, case) -> tuple[np.ndarray, str]:
    """Jitted when it can be (as training runs it), else step by step (NumPy code)."""
    try:
        return trajectory(factory(*case.args), case.problem), "jit"
    except (jax.errors.JAXTypeError, TypeError, jax.errors.ConcretizationTypeError):
        return trajectory(factory(*case.args), case.problem, jit=False), "eager"


def _trajectory_row(case, mine: np.ndarray, want: np.ndarray) -> Row:
    error = compare(mine, want, TRAJ_RTOL, TRAJ_ATOL)
    note = ""
    if not error.close:
        step = next(
            i for i in range(len(mine)) if not compare(mine[i], want[i], TRAJ_RTOL, TRAJ_ATOL).close
        )
        note = f"first differs after step {step}"
    return Row(case.name, error.close, error.max_abs, error.max_rel, note, f"args {case.args}")


def check_optimizer(learner: Learner, entry: Entry, report: Report, speed: bool) -> None:
    table = Table(f"trajectory over {battery.STEPS} steps vs optax")
    looked = 0
    for case in battery.optimizer_cases(entry):
        want = trajectory(entry.reference(*case.args), case.problem)
        try:
            mine, how = _learner_trajectory(learner.function, case)
        except Exception as error:
            note = explain(error, learner.file)
            table.rows.append(Row(case.name, False, note=note, shapes=f"args {case.args}"))
            continue
        row = _trajectory_row(case, mine, want)
        table.rows.append(row)
        if not row.passed and not report.hints and looked < 2:
            looked += 1
            report.add_hints(_optimizer_hints(learner, entry, case, mine, want, how))
    report.tables.append(table)
    if speed:
        report.speed = optimizer_speed(learner, entry)


def _optimizer_hints(learner, entry, case, mine, want, how) -> list[known.Hint]:
    def same(path):
        return compare(mine, path, TRAJ_RTOL, TRAJ_ATOL).close

    found = []
    for name, factory, message in known.optimizer_variants(entry.name, entry.reference):
        if same(trajectory(factory(*case.args), case.problem)):
            found.append(known.Hint(name, message, case.name))
    if not found and how == "jit":
        eager = trajectory(learner.function(*case.args), case.problem, jit=False)
        if compare(eager, want, TRAJ_RTOL, TRAJ_ATOL).close:
            found.append(known.Hint("state outside the optimizer state",
                "right step by step but wrong under jax.jit: your update keeps something (a step "
                "counter?) in Python variables, which jit freezes at its first value; keep it in "
                "the state that update returns", case.name))  # fmt: skip
    return found
