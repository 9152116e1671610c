"""Optimizer and learning-rate schedule from the experiment's `optimizer:` mapping.

```yaml
optimizer:
  name: sgd                     # a supported optax optimizer (see OPTIMIZERS)
  lr: 0.1                       # peak learning rate, per batch as given
  args: {momentum: 0.9, nesterov: true}   # keyword arguments of the optax function
  schedule: {name: warmup_cosine, warmup_steps: 200}   # or just `schedule: cosine`
  clip_norm: 1.0                # clip gradients to this global norm
  weight_decay: 5.0e-4          # never applied to parameters with ndim <= 1 (biases, norm scales)
  ema_decay: 0.999              # evaluate with an exponential moving average of the weights
  lookahead: {sync_period: 5, slow_step_size: 0.5}   # ramp: 3 grows the slow weights' share
```

Weight decay: optimizers with a weight-decay argument of their own (adamw, nadamw, adamaxw, lion,
lamb, adan, lars, adadelta, adafactor) get `weight_decay` there and apply it as they define it
(for the AdamW family, lion, lamb and adan: decoupled, scaled by the learning rate but not by the
adaptive step). For all the others it is L2 regularisation added to the gradient (after
clipping, before the optimizer), as `weight_decay` means in PyTorch's SGD and Adam. Schedules give the learning rate at each step; decay lengths come from the
run's total steps. Evaluate with `eval_params(params, opt_state)`: the weight average when
`ema_decay` is set, the slow weights under lookahead, the trained weights otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
)

from cnnlab.errors import SpecError, suggest
from cnnlab.hyper import STATIC
from cnnlab.registry import Registry
from cnnlab.validation import validate

Schedule = Callable[[Any], jax.Array]  # step -> learning rate, jnp-traceable


def _no_bool(value: Any) -> Any:
    # pydantic reads `true` as 1.0; a flag where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, got true/false")
    return value


# Finite: an infinite rate (`.inf`) would pass `gt=0` and diverge at the first step.
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_no_bool)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class OptimizerKind:
    """An optax optimizer factory and the names of its own weight-decay arguments, if any."""

    factory: Callable[..., optax.GradientTransformation]
    decay_arg: str | None = None
    mask_arg: str | None = None


OPTIMIZERS: Registry[OptimizerKind] = Registry("optimizer")

# name -> (its weight-decay argument, its mask argument) for optimizers with their own decay
_OWN_DECAY = {
    "adamw": ("weight_decay", "mask"),
    "nadamw": ("weight_decay", "mask"),
    "adamaxw": ("weight_decay", "mask"),
    "lion": ("weight_decay", "mask"),
    "lamb": ("weight_decay", "mask"),
    "adan": ("weight_decay", "mask"),
    "lars": ("weight_decay", "weight_decay_mask"),
    "adadelta": ("weight_decay", "weight_decay_mask"),
    "adafactor": ("weight_decay_rate", "weight_decay_mask"),
}
_GRADIENT_DECAY = (
    "sgd", "adam", "adagrad", "rmsprop", "nadam", "adabelief", "adamax", "amsgrad", "radam",
    "yogi", "novograd", "fromage", "sign_sgd",
)  # fmt: skip
for _name in _GRADIENT_DECAY:
    OPTIMIZERS.register(_name)(OptimizerKind(getattr(optax, _name)))
for _name, (_decay_arg, _mask_arg) in _OWN_DECAY.items():
    OPTIMIZERS.register(_name)(OptimizerKind(getattr(optax, _name), _decay_arg, _mask_arg))

_DECAY_ARGS = ("weight_decay", "weight_decay_rate")
_MASK_ARGS = ("mask", "weight_decay_mask")


def _settable_args(kind: OptimizerKind) -> dict[str, inspect.Parameter]:
    """Keyword arguments a user may set in `args` (the rest have their own keys)."""
    reserved = {"learning_rate", *_DECAY_ARGS, *_MASK_ARGS}
    params = inspect.signature(kind.factory).parameters
    return {name: p for name, p in params.items() if name not in reserved}


def _reserved_reason(arg: str) -> str | None:
    if arg == "learning_rate":
        return "set the learning rate with 'lr' (and its shape with 'schedule')"
    if arg in _DECAY_ARGS:
        return "set weight decay with the 'weight_decay' key of the optimizer"
    if arg in _MASK_ARGS:
        return "the weight-decay mask is fixed: parameters with ndim <= 1 are not decayed"
    return None


def _check_arg_value(arg: str, value: Any, default: Any) -> Any:
    """Type-check one optimizer argument against its default; returns the value to pass."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError((arg,), f"expected true or false, got {value!r}")
        return value
    if isinstance(default, str) or arg.endswith("dtype"):
        if not isinstance(value, str) and value is not None:
            raise SpecError((arg,), f"expected a name, got {value!r}")
        return value
    if value is None and default is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-8 (no dot) as a string
        except ValueError:
            raise SpecError((arg,), f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError((arg,), f"expected a number, got {value!r}")
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _parse_args(name: str, kind: OptimizerKind, raw: Any) -> dict[str, Any]:
    """Validate `args` against the optax function's signature; loc is relative to `args`."""
    if raw is None:  # `args:` with nothing under it
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError((), f"expected a mapping of {name}'s arguments, got {raw!r}")
    settable = _settable_args(kind)
    args = {}
    for arg, value in raw.items():
        reason = _reserved_reason(arg)
        if reason is not None:
            raise SpecError((arg,), reason)
        if arg not in settable:
            raise SpecError((arg,), f"{name} has no argument '{arg}'; {suggest(arg, settable)}")
        args[arg] = _check_arg_value(arg, value, settable[arg].default)
    if name == "sgd" and args.get("nesterov") and not args.get("momentum"):
        raise SpecError(("nesterov",), "nesterov needs a momentum, e.g. momentum: 0.9")
    return args


# ----------------------------------------------------------------- schedules


class ScheduleSpec(_Frozen):
    """A learning-rate shape. `build(lr, total_steps)` gives step -> learning rate."""

    name: str

    def build(self, lr: float, total_steps: int) -> Schedule:
        raise NotImplementedError


class _WithWarmup(ScheduleSpec):
    warmup_steps: Count = Field(default=0, ge=0)  # linear rise to lr
    warmup_start: Number = Field(default=0.0, ge=0, le=1)  # from lr * warmup_start

    def build(self, lr: float, total_steps: int) -> Schedule:
        after = self.after_warmup(lr, total_steps)
        warmup = self.warmup_steps
        if warmup == 0:
            return after

        def schedule(step):
            start = lr * self.warmup_start
            rising = start + (lr - start) * jnp.asarray(step, jnp.float32) / warmup
            return jnp.where(step < warmup, rising, after(step))

        return schedule

    def after_warmup(self, lr: float, total_steps: int) -> Schedule:
        """The learning rate from step `warmup_steps` on, as a function of the absolute step."""
        raise NotImplementedError

    def decay_steps(self, total_steps: int) -> int:
        return max(1, total_steps - self.warmup_steps)


SCHEDULES: Registry[type[ScheduleSpec]] = Registry("schedule")


def _fraction(step, start, length) -> jax.Array:
    """How far `step` is through [start, start + length], clipped to [0, 1]."""
    return jnp.clip((jnp.asarray(step, jnp.float32) - start) / length, 0.0, 1.0)


def _cosine_between(high, low, fraction) -> jax.Array:
    """Half a cosine from `high` (fraction 0) to `low` (fraction 1)."""
    return low + (high - low) * 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


# Schedules are jnp formulas rather than optax's builders: those check their numbers in Python,
# and here the numbers are traced inputs (see cnnlab.hyper).


@SCHEDULES.register("constant")
class ConstantSchedule(_WithWarmup):
    def after_warmup(self, lr, total_steps):
        return lambda step: lr * jnp.ones((), jnp.float32)


@SCHEDULES.register("piecewise")
class PiecewiseSchedule(_WithWarmup):
    """Multiply the learning rate by `scales[i]` at step `boundaries[i]` (cumulative)."""

    boundaries: list[Count]  # steps, increasing
    scales: list[Annotated[Number, Field(gt=0)]]

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, boundaries: list[int]) -> list[int]:
        if any(b <= 0 for b in boundaries) or any(
            a >= b for a, b in zip(boundaries, boundaries[1:], strict=False)
        ):
            raise ValueError("boundaries must be positive steps in increasing order")
        return boundaries

    @field_validator("scales")
    @classmethod
    def _one_per_boundary(cls, scales: list[float], info) -> list[float]:
        boundaries = info.data.get("boundaries")
        if boundaries is not None and len(scales) != len(boundaries):
            raise ValueError(f"give one scale per boundary ({len(boundaries)})")
        return scales

    def after_warmup(self, lr, total_steps):
        def schedule(step):
            value = lr * jnp.ones((), jnp.float32)
            for boundary, scale in zip(self.boundaries, self.scales, strict=True):
                value = jnp.where(step >= boundary, value * scale, value)
            return value

        return schedule


@SCHEDULES.register("step")
class StepSchedule(_WithWarmup):
    """Multiply the learning rate by `factor` every `every_steps` steps."""

    every_steps: Count = Field(gt=0)
    factor: Number = Field(default=0.1, gt=0)

    def after_warmup(self, lr, total_steps):
        return lambda step: lr * jnp.power(self.factor, jnp.floor_divide(step, self.every_steps))


@SCHEDULES.register("exponential")
class ExponentialSchedule(_WithWarmup):
    """Smooth decay: lr * decay_rate ** (step / transition_steps)."""

    decay_rate: Number = Field(gt=0)
    transition_steps: Count = Field(gt=0)

    def after_warmup(self, lr, total_steps):
        return lambda step: (
            lr * jnp.power(self.decay_rate, jnp.asarray(step, jnp.float32) / self.transition_steps)
        )


@SCHEDULES.register("cosine")
class CosineSchedule(_WithWarmup):
    """Half a cosine from lr (after warmup) down to lr * final_scale at the last step."""

    final_scale: Number = Field(default=0.0, ge=0, le=1)

    def after_warmup(self, lr, total_steps):
        length = self.decay_steps(total_steps)
        return lambda step: _cosine_between(
            lr, lr * self.final_scale, _fraction(step, self.warmup_steps, length)
        )


@SCHEDULES.register("warmup_cosine")
class WarmupCosineSchedule(CosineSchedule):
    warmup_steps: Count = Field(gt=0)


@SCHEDULES.register("linear")
class LinearSchedule(_WithWarmup):
    """Straight line from lr (after warmup) down to lr * final_scale at the last step."""

    final_scale: Number = Field(default=0.0, ge=0, le=1)

    def after_warmup(self, lr, total_steps):
        length = self.decay_steps(total_steps)

        def schedule(step):
            fraction = _fraction(step, self.warmup_steps, length)
            return lr + (lr * self.final_scale - lr) * fraction

        return schedule


@SCHEDULES.register("one_cycle")
class OneCycleSchedule(ScheduleSpec):
    """Cosine rise from lr / div_factor to lr at `peak_fraction` of the run, then cosine fall
    to lr / (div_factor * final_div_factor) at the end (PyTorch's OneCycleLR)."""

    # Where the peak falls is a step number, so it shapes the program rather than feeding it.
    peak_fraction: Number = Field(default=0.3, gt=0, lt=1, json_schema_extra=STATIC)
    div_factor: Number = Field(default=25.0, ge=1)
    final_div_factor: Number = Field(default=1e4, ge=1)

    def build(self, lr, total_steps):
        peak = max(1, int(self.peak_fraction * total_steps))
        start, end = lr / self.div_factor, lr / (self.div_factor * self.final_div_factor)

        def schedule(step):
            rising = _cosine_between(start, lr, _fraction(step, 0, peak))
            falling = _cosine_between(lr, end, _fraction(step, peak, max(1, total_steps - peak)))
            return jnp.where(step < peak, rising, falling)

        return schedule


# ----------------------------------------------------------------- the spec


class LookaheadSpec(_Frozen):
    """Every `sync_period` steps the slow weights move `slow_step_size` of the way to the fast
    ones, and the fast ones restart from there. With `ramp`, the share the slow weights keep,
    1 - slow_step_size, grows as (step / total steps) ** ramp from 0: early syncs are no-ops,
    the last ones average the most (airbench's schedule is ramp 3, slow_step_size 0.226)."""

    sync_period: Count = Field(default=5, ge=1)
    slow_step_size: Number = Field(default=0.5, gt=0, le=1)
    ramp: Number | None = Field(default=None, gt=0)

    def step_size(self, step, total_steps: int):
        if self.ramp is None:
            return self.slow_step_size
        progress = jnp.asarray(step, jnp.float32) / total_steps
        return 1.0 - (1.0 - self.slow_step_size) * jnp.power(progress, self.ramp)


class OptimizerSpec(_Frozen):
    """The validated `optimizer:` mapping; `args` are checked against the optax signature."""

    name: str
    python: str | None = None  # 'file.py:factory', an optimizer written in Python (name 'python')
    lr: Number = Field(gt=0)
    args: dict[str, Any] = Field(default_factory=dict)
    schedule: SerializeAsAny[ScheduleSpec] = ConstantSchedule(name="constant")
    clip_norm: Number | None = Field(default=None, gt=0)
    weight_decay: Number = Field(default=0.0, ge=0)
    ema_decay: Number | None = Field(default=None, gt=0, lt=1)
    lookahead: LookaheadSpec | None = None


class _RawSpec(_Frozen):
    name: str | None = None
    python: str | None = None
    lr: Number = Field(gt=0)
    args: Any = {}
    schedule: Any = "constant"
    clip_norm: Number | None = Field(default=None, gt=0)
    weight_decay: Number = Field(default=0.0, ge=0)
    ema_decay: Number | None = Field(default=None, gt=0, lt=1)
    lookahead: LookaheadSpec | None = None


def _parse_schedule(raw: Any) -> ScheduleSpec:
    """`cosine` or `{name: cosine, ...}`; loc relative to the schedule value."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SpecError((), f"expected a schedule name or mapping, got {raw!r}")
    if "name" not in raw:
        raise SpecError((), f"a schedule needs a 'name'; valid: {', '.join(SCHEDULES)}")
    kind = SCHEDULES.get(raw["name"], ("name",))
    return validate(kind, raw)


def parse_optimizer_spec(raw: Mapping) -> OptimizerSpec:
    """Validate the `optimizer:` mapping; errors are SpecError with loc relative to `raw`."""
    fields = validate(_RawSpec, raw)
    if fields.python is not None:
        return _parse_python(fields, raw)
    if fields.name is None:
        raise SpecError(("name",), "missing required key (or python: my_optim.py:adam)")
    kind = OPTIMIZERS.get(fields.name, ("name",))
    try:
        args = _parse_args(fields.name, kind, fields.args)
    except SpecError as error:
        raise error.within("args") from None
    try:
        schedule = _parse_schedule(fields.schedule)
    except SpecError as error:
        raise error.within("schedule") from None
    try:
        kind.factory(fields.lr, **args)
    except (TypeError, ValueError) as error:
        raise SpecError(("args",), f"{fields.name} rejects these arguments: {error}") from None
    return OptimizerSpec(**{**fields.model_dump(), "args": args, "schedule": schedule})


def _parse_python(fields: _RawSpec, raw: Mapping) -> OptimizerSpec:
    """`{python: my_optim.py:adam, lr: 1e-3, args: {...}}`: a factory(lr, **args) returning an
    optax.GradientTransformation; the schedule scales its updates (see `_python_kind`)."""
    from cnnlab.models.custom import _check_args
    from cnnlab.models.python_layer import load_target, resolve_file

    if fields.name is not None:
        raise SpecError(("python",), "give name (a built-in optimizer) or python, not both")
    target = resolve_file(fields.python, getattr(raw, "where", {}).get("python"))
    factory = load_target(target)
    if not callable(factory):
        raise SpecError(("python",), f"{target} is not a function")
    args = dict(fields.args or {})
    _check_args(factory, 1, (), args, target.rpartition("/")[2])
    try:
        schedule = _parse_schedule(fields.schedule)
    except SpecError as error:
        raise error.within("schedule") from None
    data = {**fields.model_dump(), "name": "python", "python": target, "args": args}
    return OptimizerSpec(**{**data, "schedule": schedule})


def _python_kind(spec: OptimizerSpec, lr: float) -> OptimizerKind:
    """The learner's factory gets the peak rate as a number; a schedule scales its updates by
    schedule(step) / lr (exact for optimizers whose step is linear in lr, as all of the
    catalogue's are). Weight decay is L2 on the gradient, as for optimizers without their own."""
    from cnnlab.models.python_layer import load_target

    user = load_target(spec.python)

    def factory(schedule, **args):
        scale = optax.scale_by_schedule(lambda step: schedule(step) / lr)
        return optax.chain(user(lr, **args), scale)

    return OptimizerKind(factory)


# ------------------------------------------------------------- building


def decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def build_schedule(spec: OptimizerSpec, total_steps: int) -> Schedule:
    """step -> learning rate; cosine, linear and one-cycle span `total_steps` (train.steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return spec.schedule.build(spec.lr, total_steps)


def build_optimizer(
    spec: OptimizerSpec, total_steps: int, update_scale: Callable[..., Any] | None = None
) -> tuple[optax.GradientTransformation, Schedule]:
    """The full update rule (clipping, weight decay, optimizer, lookahead, weight average)
    and its learning-rate schedule (step -> lr, for logging). `update_scale(params, step)`
    multiplies each parameter's update (0: frozen) before lookahead and the weight average.

    `update` must be given the current params. Evaluate with `eval_params(params, opt_state)`.
    """
    schedule = build_schedule(spec, total_steps)
    kind = _python_kind(spec, spec.lr) if spec.python else OPTIMIZERS.get(spec.name)
    args = dict(spec.args)
    native_decay = kind.decay_arg is not None
    if native_decay:
        args[kind.decay_arg] = spec.weight_decay
        args[kind.mask_arg] = decay_mask
    parts = []
    if spec.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(spec.clip_norm))
    if not native_decay:  # always present: its rate is a number the step takes as data
        parts.append(optax.add_decayed_weights(spec.weight_decay, decay_mask))
    parts.append(kind.factory(schedule, **args))
    if update_scale is not None:
        parts.append(_scaled_per_parameter(update_scale))
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if spec.lookahead is not None:
        tx = _with_lookahead(tx, spec.lookahead, total_steps)
    if spec.ema_decay is not None:
        tx = _with_weight_average(tx, spec.ema_decay)
    return tx, schedule


class ScaledState(NamedTuple):
    count: jax.Array  # steps taken


def _scaled_per_parameter(update_scale: Callable[..., Any]) -> optax.GradientTransformation:
    def init(params):
        return ScaledState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        scales = update_scale(updates, state.count)
        # where, not a product: a frozen parameter stays exactly as it is
        scaled = jax.tree.map(
            lambda u, k: jnp.where(k == 0, 0, u * k).astype(u.dtype), updates, scales
        )
        return scaled, ScaledState(state.count + 1)

    return optax.GradientTransformation(init, update)


class LookaheadState(NamedTuple):
    inner: optax.OptState
    count: jax.Array
    slow: Any  # the slow weights, evaluated instead of the trained (fast) ones


def _with_lookahead(tx: optax.GradientTransformation, spec: LookaheadSpec, total_steps: int):
    """Lookahead (Zhang et al. 2019) with plain params: the slow weights live in the state."""

    def init(params):
        return LookaheadState(tx.init(params), jnp.zeros([], jnp.int32), params)

    def update(grads, state, params=None):
        _require(params, "lookahead")
        updates, inner_state = tx.update(grads, state.inner, params)
        fast = optax.apply_updates(params, updates)
        count = state.count + 1
        sync = count % spec.sync_period == 0
        size = jnp.where(sync, spec.step_size(count, total_steps), 0.0)
        slow = jax.tree.map(lambda s, f: (s + size * (f - s)).astype(s.dtype), state.slow, fast)
        restarted = jax.tree.map(lambda f, s: jnp.where(sync, s, f), fast, slow)
        updates = jax.tree.map(lambda r, p: (r - p).astype(p.dtype), restarted, params)
        return updates, LookaheadState(inner_state, count, slow)

    return optax.GradientTransformation(init, update)


class WeightAverageState(NamedTuple):
    inner: optax.OptState
    count: jax.Array
    average: Any  # exponential moving average of the params after each update


def _with_weight_average(tx: optax.GradientTransformation, decay: float):
    def init(params):
        return WeightAverageState(tx.init(params), jnp.zeros([], jnp.int32), params)

    def update(grads, state, params=None):
        _require(params, "ema_decay")
        updates, inner_state = tx.update(grads, state.inner, params)
        new_params = optax.apply_updates(params, updates)
        # Early on the average would sit near the initial weights for ~1/(1-decay) steps;
        # ramp the decay up as TensorFlow's ExponentialMovingAverage does with num_updates.
        step = state.count.astype(jnp.float32)
        rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        average = jax.tree.map(
            lambda a, p: (rate * a + (1.0 - rate) * p).astype(a.dtype), state.average, new_params
        )
        return updates, WeightAverageState(inner_state, state.count + 1, average)

    return optax.GradientTransformation(init, update)


def _require(params: Any, feature: str) -> None:
    if params is None:
        raise ValueError(f"{feature} needs the params: call tx.update(grads, state, params)")


def eval_params(params: Any, opt_state: Any) -> Any:
    """The weights to evaluate: the moving average (ema_decay), else the slow lookahead
    weights, else `params` itself. Traceable; works inside jit."""
    if isinstance(opt_state, WeightAverageState):
        return opt_state.average
    if isinstance(opt_state, LookaheadState):
        return opt_state.slow
    return params
