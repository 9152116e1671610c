"""Layer kinds of the layer-list models: arguments, output shapes, NNX modules, FLOPs.

Each kind knows three things about itself, so that parsing, shape checking, building and
`describe_model` all read the same table:
  - `Args`: a frozen pydantic model of its arguments (None: it takes none) and `short`, the
    argument a scalar sets (`{conv: 32}` is `{conv: {features: 32}}`);
  - `output_shape(args, shape, ctx)`: the per-image shape it produces, or `ShapeMismatch`;
  - `make(args, shape, ctx)`: its NNX module, and `flops(args, shape, out)`: forward FLOPs per
    image, a multiply-add counted as 2. Conv and dense are exact; elementwise layers, pools and
    norms count about one FLOP per element per operation.

Every layer that takes arguments also says how the optimizer treats its parameters (see
build.py): `trainable: false` freezes them, `trainable: [bias]` trains only those named,
`lr_scale: 64` multiplies their updates, and `freeze_at_step: 150` stops them from that step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

from cnnlab.errors import suggest
from cnnlab.hyper import IN_STATE
from cnnlab.models.initializers import (
    CONV_ONLY,
    DATA_INITIALIZERS,
    DENSE_COUNTERPART,
    INITIALIZERS,
    get_initializer,
)
from cnnlab.registry import Registry

Shape = tuple[int, ...]  # per image, without the batch axis: (H, W, C) or (features,)
Pair = tuple[PositiveInt, PositiveInt]


class ShapeMismatch(Exception):
    """A layer cannot take the shape it receives; the message says what it expected."""


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer. `loc` points at it in the raw model mapping; `body` holds the layers
    of a residual block."""

    kind: str
    args: Any = None
    body: tuple[LayerSpec, ...] = ()
    loc: tuple = field(default=(), compare=False)


@dataclass
class BuildContext:
    num_classes: int
    init: str  # the model-wide initialiser name
    rngs: nnx.Rngs | None = None


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # false: the optimizer leaves this layer's parameters as they are; a list: only these train
    trainable: bool | list[str] = True
    lr_scale: float = Field(1.0, gt=0)  # this layer's updates are multiplied by it
    freeze_at_step: PositiveInt | None = None  # its parameters stop training from this step on

    @property
    def default_training(self) -> bool:
        return self.trainable is True and self.lr_scale == 1.0 and self.freeze_at_step is None


def _pair(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, list) else value


def _init_name(value: str | None) -> str | None:
    valid = [*INITIALIZERS, *DATA_INITIALIZERS]
    if value is not None and value not in valid:
        raise ValueError(f"unknown initialiser '{value}'; {suggest(value, valid)}")
    return value


class LayerKind:
    """Base: a parameter-free layer that keeps its input shape."""

    Args: type[Args] | None = None
    short: str | None = None
    random = False  # takes `rngs` at call time (dropout, noise)

    def output_shape(self, args, shape: Shape, ctx: BuildContext) -> Shape:
        return shape

    def make(self, args, shape: Shape, ctx: BuildContext) -> nnx.Module:
        raise NotImplementedError

    def flops(self, args, shape: Shape, out: Shape) -> int:
        return math.prod(out)

    def label(self, args) -> str:
        return ""


LAYERS: Registry[LayerKind] = Registry("layer")


def layer(name: str):
    """Class decorator: register an instance of the layer kind under `name`."""

    def add(cls: type[LayerKind]) -> type[LayerKind]:
        LAYERS.register(name)(cls())
        return cls

    return add


def _needs_image(kind: str, shape: Shape) -> None:
    if len(shape) != 3:
        raise ShapeMismatch(
            f"needs an image (height, width, channels); put {kind} before flatten / global_avg_pool"
        )


def _conv_size(size: int, kernel: int, stride: int, padding) -> int:
    if padding == "same":
        return -(-size // stride)
    pad = 0 if padding == "valid" else padding
    return (size + 2 * pad - kernel) // stride + 1


def _hw(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}"


class ConvArgs(Args):
    features: PositiveInt
    kernel: Pair = (3, 3)
    stride: Pair = (1, 1)
    padding: Literal["same", "valid"] | NonNegativeInt = "same"
    bias: bool = True
    groups: PositiveInt = 1
    init: str | None = None

    @field_validator("kernel", "stride", mode="before")
    @classmethod
    def _pairs(cls, value):
        return _pair(value)

    @field_validator("init")
    @classmethod
    def _init(cls, value):
        return _init_name(value)


def _kernel_init(name: str | None, ctx: BuildContext, conv: bool):
    chosen = name or ctx.init
    if chosen in DENSE_COUNTERPART and not conv:
        chosen = DENSE_COUNTERPART[chosen]  # a model-wide conv-only init, met by a dense layer
    if chosen in DATA_INITIALIZERS:
        chosen = "zeros"  # until the model's data_init computes it
    return get_initializer(chosen)


def _check_whitening(args: ConvArgs, shape: Shape) -> None:
    (kh, kw), channels = args.kernel, shape[-1]
    directions = kh * kw * channels
    if args.groups != 1 or args.features % 2 or args.features > 2 * directions:
        raise ShapeMismatch(
            f"init: {args.init} gives each of at most {directions} patch directions "
            f"({kh}x{kw}x{channels}) as a +/- pair: features must be even and at most "
            f"{2 * directions}, with groups 1"
        )


@layer("conv")
class Conv(LayerKind):
    Args = ConvArgs
    short = "features"

    def output_shape(self, args, shape, ctx):
        _needs_image("conv", shape)
        h, w, c = shape
        (kh, kw), (sh, sw) = args.kernel, args.stride
        if c % args.groups or args.features % args.groups:
            raise ShapeMismatch(
                f"groups={args.groups} must divide both its {c} input channels and its "
                f"{args.features} features"
            )
        out_h = _conv_size(h, kh, sh, args.padding)
        out_w = _conv_size(w, kw, sw, args.padding)
        if out_h < 1 or out_w < 1:
            raise ShapeMismatch(
                f"kernel {kh}x{kw} is larger than its {_hw(shape)} input with padding "
                f"{args.padding}; use padding: same or a smaller kernel"
            )
        if args.init in DATA_INITIALIZERS:
            _check_whitening(args, shape)
        return (out_h, out_w, args.features)

    def make(self, args, shape, ctx):
        padding = args.padding.upper() if isinstance(args.padding, str) else args.padding
        return nnx.Conv(
            shape[-1],
            args.features,
            args.kernel,
            args.stride,
            padding=padding,
            feature_group_count=args.groups,
            use_bias=args.bias,
            kernel_init=_kernel_init(args.init, ctx, conv=True),
            rngs=ctx.rngs,
        )

    def flops(self, args, shape, out):
        kh, kw = args.kernel
        macs = math.prod(out) * kh * kw * shape[-1] // args.groups
        return 2 * macs + (math.prod(out) if args.bias else 0)

    def label(self, args):
        (kh, kw), (sh, sw) = args.kernel, args.stride
        stride = f" stride {sh}" if sh == sw else f" stride {sh}x{sw}"
        computed = f", {args.init}" if args.init in DATA_INITIALIZERS else ""
        return f"{kh}x{kw}{stride if (sh, sw) != (1, 1) else ''}, {args.features}{computed}"


class DenseArgs(Args):
    features: PositiveInt | Literal["classes"] = "classes"
    bias: bool = True
    init: str | None = None

    @field_validator("init")
    @classmethod
    def _dense_init(cls, value):
        if value in CONV_ONLY:
            raise ValueError(f"'{value}' initialises conv kernels only")
        return _init_name(value)


def dense_width(args: DenseArgs, ctx: BuildContext) -> int:
    return ctx.num_classes if args.features == "classes" else args.features


@layer("dense")
class Dense(LayerKind):
    Args = DenseArgs
    short = "features"

    def output_shape(self, args, shape, ctx):
        if len(shape) != 1:
            raise ShapeMismatch("needs a flat vector; add flatten or global_avg_pool before it")
        return (dense_width(args, ctx),)

    def make(self, args, shape, ctx):
        return nnx.Linear(
            shape[0],
            dense_width(args, ctx),
            use_bias=args.bias,
            kernel_init=_kernel_init(args.init, ctx, conv=False),
            rngs=ctx.rngs,
        )

    def flops(self, args, shape, out):
        return 2 * shape[0] * out[0] + (out[0] if args.bias else 0)

    def label(self, args):
        return "classes" if args.features == "classes" else str(args.features)


class Activation(nnx.Module):
    """An elementwise function picked by name (names keep the module's graph static)."""

    FUNCTIONS = {
        "relu": jax.nn.relu,
        "gelu": jax.nn.gelu,
        "silu": jax.nn.silu,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "softmax": jax.nn.softmax,
    }

    def __init__(self, name: str, negative_slope: float = 0.0):
        self.name = name
        self.negative_slope = negative_slope

    def __call__(self, x):
        if self.name == "leaky_relu":
            return jax.nn.leaky_relu(x, self.negative_slope)
        return self.FUNCTIONS[self.name](x)


class Elementwise(LayerKind):
    def __init__(self, name: str):
        self.name = name

    def make(self, args, shape, ctx):
        return Activation(self.name)


for _name in Activation.FUNCTIONS:
    LAYERS.register(_name)(Elementwise(_name))


class LeakyReluArgs(Args):
    negative_slope: float = 0.01


@layer("leaky_relu")
class LeakyRelu(LayerKind):
    Args = LeakyReluArgs
    short = "negative_slope"

    def make(self, args, shape, ctx):
        return Activation("leaky_relu", args.negative_slope)

    def label(self, args):
        return f"slope {args.negative_slope}"


class PreluArgs(Args):
    slope: float = 0.25  # the learned negative slope starts here (PyTorch's default)


@layer("prelu")
class Prelu(LayerKind):
    Args = PreluArgs
    short = "slope"

    def make(self, args, shape, ctx):
        return nnx.PReLU(negative_slope_init=args.slope)


class Pool(nnx.Module):
    """Max or average pooling. When the window equals the stride (and padding is valid), it is a
    crop to whole windows, a reshape and a reduction: its gradient is far cheaper on the CPU
    than reduce_window's (select-and-scatter with index arrays), and the result the same."""

    def __init__(self, reduce: str, window: tuple, stride: tuple, padding: str, fast: bool):
        self.reduce = reduce
        self.window = window
        self.stride = stride
        self.padding = padding
        self.fast = fast

    def __call__(self, x):
        if self.fast:
            b, h, w, c = x.shape
            (wh, ww) = self.window
            rows, cols = h // wh, w // ww
            whole = x[:, : rows * wh, : cols * ww]  # valid padding drops the partial windows
            blocks = whole.reshape(b, rows, wh, cols, ww, c)
            return blocks.max(axis=(2, 4)) if self.reduce == "max" else blocks.mean(axis=(2, 4))
        pool = nnx.max_pool if self.reduce == "max" else nnx.avg_pool
        return pool(x, self.window, strides=self.stride, padding=self.padding.upper())


class PoolArgs(Args):
    window: Pair = (2, 2)
    stride: Pair | None = None  # default: the window
    padding: Literal["valid", "same"] = "valid"

    @field_validator("window", "stride", mode="before")
    @classmethod
    def _pairs(cls, value):
        return None if value is None else _pair(value)


class Pooling(LayerKind):
    Args = PoolArgs
    short = "window"

    def __init__(self, reduce: str):
        self.reduce = reduce

    def output_shape(self, args, shape, ctx):
        _needs_image(f"{self.reduce}_pool", shape)
        h, w, c = shape
        (wh, ww), (sh, sw) = args.window, args.stride or args.window
        if args.padding == "valid" and (wh > h or ww > w):
            raise ShapeMismatch(
                f"window {wh}x{ww} is larger than its {_hw(shape)} input; "
                "use a smaller window or remove a pooling layer"
            )
        return (_conv_size(h, wh, sh, args.padding), _conv_size(w, ww, sw, args.padding), c)

    def make(self, args, shape, ctx):
        stride = args.stride or args.window
        fast = stride == args.window and args.padding == "valid"
        return Pool(self.reduce, args.window, stride, args.padding, fast)

    def flops(self, args, shape, out):
        return math.prod(out) * math.prod(args.window)

    def label(self, args):
        (wh, ww), stride = args.window, args.stride
        return f"{wh}x{ww}" + (f" stride {stride[0]}" if stride and stride != args.window else "")


LAYERS.register("max_pool")(Pooling("max"))
LAYERS.register("avg_pool")(Pooling("avg"))


class Reshape(nnx.Module):
    def __init__(self, how: str):
        self.how = how

    def __call__(self, x):
        if self.how == "flatten":
            return x.reshape(x.shape[0], -1)
        if self.how == "global_max_pool":
            return x.max(axis=(1, 2))
        return x.mean(axis=(1, 2))


@layer("flatten")
class Flatten(LayerKind):
    def output_shape(self, args, shape, ctx):
        return (math.prod(shape),)

    def make(self, args, shape, ctx):
        return Reshape("flatten")

    def flops(self, args, shape, out):
        return 0


@layer("global_avg_pool")
class GlobalAvgPool(LayerKind):
    def output_shape(self, args, shape, ctx):
        _needs_image("global_avg_pool", shape)
        return (shape[-1],)

    def make(self, args, shape, ctx):
        return Reshape("global_avg_pool")

    def flops(self, args, shape, out):
        return math.prod(shape)


@layer("global_max_pool")
class GlobalMaxPool(LayerKind):
    def output_shape(self, args, shape, ctx):
        _needs_image("global_max_pool", shape)
        return (shape[-1],)

    def make(self, args, shape, ctx):
        return Reshape("global_max_pool")

    def flops(self, args, shape, out):
        return math.prod(shape)


class Multiply(nnx.Module):
    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


class ScaleArgs(Args):
    factor: float


@layer("scale")
class Scale(LayerKind):
    """Multiplies by a constant, e.g. logits by 1/9 (a fixed temperature)."""

    Args = ScaleArgs
    short = "factor"

    def make(self, args, shape, ctx):
        return Multiply(args.factor)

    def label(self, args):
        return f"x {args.factor:g}"


class Rate(nnx.Variable):
    """A number a layer computes with, held in the model's state rather than its structure:
    one compiled program serves every value, and stacked trials each keep their own."""


class RateDropout(nnx.Module):
    """Zeroes each unit with probability `rate` while training (and scales the rest by
    1 / (1 - rate)); the identity in evaluation."""

    def __init__(self, rate: float):
        self.rate = Rate(jnp.asarray(rate, jnp.float32))
        self.deterministic = False  # set by Module.train() / .eval()

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        if self.deterministic:
            return x
        if rngs is None:
            raise ValueError("dropout needs a random key while training")
        keep = 1.0 - self.rate.value
        kept = jax.random.bernoulli(rngs.dropout(), keep, x.shape)
        return jnp.where(kept, x / keep, 0).astype(x.dtype)


class DropoutArgs(Args):
    rate: float = Field(0.5, ge=0, lt=1, json_schema_extra=IN_STATE)


@layer("dropout")
class Dropout(LayerKind):
    Args = DropoutArgs
    short = "rate"
    random = True

    def make(self, args, shape, ctx):
        return RateDropout(args.rate)

    def flops(self, args, shape, out):
        return 0  # nothing at evaluation time

    def label(self, args):
        return f"rate {args.rate}"


class GaussianNoise(nnx.Module):
    """Adds N(0, std^2) noise to activations while training; the identity in evaluation."""

    def __init__(self, std: float):
        self.std = Rate(jnp.asarray(std, jnp.float32))
        self.deterministic = False  # set by Module.train() / .eval()

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        if self.deterministic:
            return x
        if rngs is None:
            raise ValueError("noise needs a random key while training")
        noise = jax.random.normal(rngs.noise(), x.shape, x.dtype)
        return x + self.std.value.astype(x.dtype) * noise


class NoiseArgs(Args):
    std: float = Field(0.1, ge=0, json_schema_extra=IN_STATE)


@layer("noise")
class Noise(LayerKind):
    Args = NoiseArgs
    short = "std"
    random = True

    def make(self, args, shape, ctx):
        return GaussianNoise(args.std)

    def flops(self, args, shape, out):
        return 0

    def label(self, args):
        return f"std {args.std}"


class BatchNormArgs(Args):
    # running = momentum * running + (1 - momentum) * batch (PyTorch's momentum=0.1 is 0.9 here)
    momentum: float = Field(0.9, ge=0, lt=1)
    epsilon: float = Field(1e-5, gt=0)
    scale: bool = True  # a learned per-channel scale (false: fixed at 1)
    bias: bool = True  # a learned per-channel shift (false: fixed at 0)


@layer("batch_norm")
class BatchNorm(LayerKind):
    Args = BatchNormArgs

    def make(self, args, shape, ctx):
        return nnx.BatchNorm(
            shape[-1],
            momentum=args.momentum,
            epsilon=args.epsilon,
            use_scale=args.scale,
            use_bias=args.bias,
            rngs=ctx.rngs,
        )

    def label(self, args):
        fixed = [name for name in ("scale", "bias") if not getattr(args, name)]
        return f"no {' or '.join(fixed)}" if fixed else ""

    def flops(self, args, shape, out):
        return 2 * math.prod(out)  # evaluation: a scale and a shift per element


class GroupNormArgs(Args):
    groups: PositiveInt = 8
    epsilon: float = Field(1e-5, gt=0)


@layer("group_norm")
class GroupNorm(LayerKind):
    Args = GroupNormArgs
    short = "groups"

    def output_shape(self, args, shape, ctx):
        if shape[-1] % args.groups:
            raise ShapeMismatch(f"groups={args.groups} must divide its {shape[-1]} channels")
        return shape

    def make(self, args, shape, ctx):
        return nnx.GroupNorm(shape[-1], num_groups=args.groups, epsilon=args.epsilon, rngs=ctx.rngs)

    def flops(self, args, shape, out):
        return 7 * math.prod(out)  # mean, variance (2), normalise (2), scale, shift

    def label(self, args):
        return f"{args.groups} groups"


class LayerNormArgs(Args):
    epsilon: float = Field(1e-5, gt=0)


@layer("layer_norm")
class LayerNorm(LayerKind):
    """Normalises each position over its channels (the last axis)."""

    Args = LayerNormArgs

    def make(self, args, shape, ctx):
        return nnx.LayerNorm(shape[-1], epsilon=args.epsilon, rngs=ctx.rngs)

    def flops(self, args, shape, out):
        return 7 * math.prod(out)


class Residual(nnx.Module):
    """`body(x) + shortcut(x)`; the shortcut is a bias-free 1x1 conv (or dense) projection when
    the body changes the shape, else the identity."""

    def __init__(self, body: nnx.Module, projection: nnx.Module | None):
        self.body = body
        self.projection = projection

    def __call__(self, x, *, rngs: nnx.Rngs | None = None, taps: list | None = None):
        shortcut = x if self.projection is None else self.projection(x)
        return self.body(x, rngs=rngs, taps=taps) + shortcut


def projection_stride(shape: Shape, out: Shape) -> int:
    """The stride of a 1x1 conv that maps `shape`'s height and width onto `out`'s."""
    for stride in {max(1, shape[0] // out[0]), -(-shape[0] // out[0])}:
        if all(-(-shape[i] // stride) == out[i] for i in (0, 1)):
            return stride
    raise ShapeMismatch(
        f"its body maps {shape} to {out}: no 1x1 strided projection of the input matches that "
        "size, so the two cannot be added"
    )


def make_projection(shape: Shape, out: Shape, ctx: BuildContext) -> nnx.Module | None:
    if shape == out:
        return None
    if len(shape) != len(out):
        raise ShapeMismatch(
            f"its body maps {shape} to {out}; the input and output must both be images or "
            "both be vectors to be added"
        )
    if len(out) == 1:
        init = _kernel_init(None, ctx, conv=False)
        return nnx.Linear(shape[0], out[0], use_bias=False, kernel_init=init, rngs=ctx.rngs)
    stride = projection_stride(shape, out)
    init = _kernel_init(None, ctx, conv=True)
    return nnx.Conv(
        shape[-1],
        out[-1],
        (1, 1),
        (stride, stride),
        use_bias=False,
        kernel_init=init,
        rngs=ctx.rngs,
    )


def projection_flops(shape: Shape, out: Shape) -> int:
    if shape == out:
        return math.prod(out)  # the addition
    return 2 * math.prod(out) * shape[-1] + math.prod(out)
