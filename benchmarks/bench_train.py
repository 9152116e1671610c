"""Training speed: cnnlab's compiled step against a hand-written JAX loop and PyTorch eager.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--rounds 5] [--models cnn_small]
        [--append benchmarks/RESULTS.md] [--bf16] [--no-torch] [--convs-only]

Three models, batch 128, SGD with momentum 0.9 and lr 0.01, random uint8 data of the datasets'
sizes: the two-conv CNN (`cnn_small`) on 28x28x1, the small resnet (`resnet_small`) and the
CIFAR-10 speedrun's net (`airbench`: batch norm, GELU, max pools of odd sides) on 32x32x3.
Contenders:

- cnnlab: the program built from an experiment (cnnlab.training.build_program), its compiled
  call of `steps_per_call` steps driven as the training loop drives it (batches gathered from a
  per-epoch permutation on the device, metrics, the non-finite guard, per-layer statistics at
  each log interval: everything a real run does per step);
- hand JAX: the same network written with lax.conv_general_dilated, reshape + max pooling and a
  hand GroupNorm; optax; `steps_per_call` steps per call in an unrolled lax.scan; YNNPACK fusion
  off; consecutive batches sliced from the same device array. The yardstick;
- with --convs-only, the hand JAX network without its norms and activations: what XLA's
  convolutions (and pooling) cost on their own;
- PyTorch eager on the CPU, channels_last, the same networks.

Each round times a window of whole calls per contender (synchronising once, at the end of the
window) and rotates the order; the table gives medians and the min-max over rounds. The machine
may be shared: only contenders measured in the same run are comparable.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    LoadWatch,
    Spread,
    alternate,
    append_section,
    machine,
    print_table,
)

from cnnlab.config import experiment_from_tree  # noqa: E402
from cnnlab.data.dataset import Split  # noqa: E402
from cnnlab.hyper import experiment_numbers  # noqa: E402
from cnnlab.step import (  # noqa: E402
    EpochOrders,
    channel_stats,
    device_numbers,
    init_state,
    steps_program,
    to_device,
)
from cnnlab.training import build_program  # noqa: E402

# Compile times are part of the result: no program may come from the on-disk cache.
jax.config.update("jax_enable_compilation_cache", False)

MODELS_DIR = Path(__file__).resolve().parent.parent / "experiments" / "models"
BATCH, CLASSES, LR, MOMENTUM = 128, 10, 0.01, 0.9
LOG_EVERY = 100  # steps between logs, as in the shipped experiments
# XLA:CPU trains convolutions 1.3-1.75x faster with YNNPACK fusion off (see the PERF notes).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@dataclass(frozen=True)
class Workload:
    model: str  # the fragment in experiments/models
    image_shape: tuple[int, int, int]
    examples: int  # training examples held on the device (the dataset's size)


WORKLOADS = {
    "cnn_small": Workload("cnn_small", (28, 28, 1), 60_000),
    "resnet_small": Workload("resnet_small", (32, 32, 3), 50_000),
    "airbench": Workload("airbench", (32, 32, 3), 50_000),
}


def random_split(workload: Workload, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (workload.examples, *workload.image_shape), dtype=np.uint8)
    return Split(images, rng.integers(0, CLASSES, workload.examples).astype(np.int32))


def block(tree) -> None:
    jax.block_until_ready(tree)


class Contender:
    """One way of training. `prepare()` builds and compiles (returns the seconds of the first
    call: compiling for JAX); `window(calls)` runs `calls` calls and returns images per second."""

    name: str
    steps_per_call: int

    def prepare(self) -> float:
        raise NotImplementedError

    def call(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def window(self, calls: int) -> tuple[float, float]:
        """(images per second, cores busy on average) over `calls` whole calls."""
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(calls):
            self.call()
        self.sync()
        seconds = time.perf_counter() - start
        cores = (time.process_time() - cpu_start) / seconds
        return calls * self.steps_per_call * BATCH / seconds, cores


# ---------------------------------------------------------------------------------------------
# cnnlab, through its public API


def experiment(workload: Workload, steps_per_call: int, precision: str = "float32"):
    model = yaml.safe_load((MODELS_DIR / f"{workload.model}.yaml").read_text())
    return experiment_from_tree(
        {
            "name": f"bench_{workload.model}",
            "data": {"source": "digits", "val_fraction": 0.0},
            "model": model,
            "optimizer": {"name": "sgd", "lr": LR, "args": {"momentum": MOMENTUM}},
            "train": {
                "steps": 1_000_000,
                "batch_size": BATCH,
                "steps_per_call": steps_per_call,
                "log_every_steps": steps_per_call,
                "eval_every_steps": steps_per_call,
                "precision": precision,
            },
        }
    )


class CnnlabContender(Contender):
    """cnnlab's compiled multi-step call, driven as its loop drives it: per-layer statistics on
    the call that ends each log interval of LOG_EVERY steps."""

    def __init__(self, name, workload, split, steps_per_call, precision=None):
        self.name, self.steps_per_call = name, steps_per_call
        exp = experiment(workload, steps_per_call, precision or "float32")
        self.program = build_program(exp, split.images.shape[1:], CLASSES, len(split))
        self.numbers = device_numbers(experiment_numbers(exp))
        self.norm = channel_stats(split.images)
        self.data = to_device(split.images, split.labels)
        self.param_count = sum(x.size for x in jax.tree.leaves(self.initial().params))
        self.calls = 0

    def initial(self):
        return init_state(self.program, 0, self.norm, self.numbers)

    def prepare(self) -> float:
        self.state = self.initial()
        block(self.state)
        start = time.perf_counter()
        self.compiled = steps_program(
            self.program, self.steps_per_call, self.state, self.data, self.numbers
        )
        seconds = time.perf_counter() - start
        self.orders = EpochOrders(self.program, self.state)
        self.call()
        self.sync()
        return seconds

    def call(self) -> None:
        step = self.calls * self.steps_per_call
        self.calls += 1
        report = np.bool_(self.calls * self.steps_per_call % LOG_EVERY == 0)
        upcoming = self.orders.upcoming(step, self.steps_per_call)
        self.state, self.metrics = self.compiled(
            self.state, upcoming, self.data, self.numbers, report
        )

    def sync(self) -> None:
        block((self.state, self.metrics))


# ---------------------------------------------------------------------------------------------
# The yardstick: plain JAX + optax


def conv(x, kernel, stride: int = 1, padding: str = "SAME"):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def max_pool2(x):
    """2x2 windows, stride 2; an odd last row or column is dropped (valid padding)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def group_norm(x, scale, bias, groups: int = 8, epsilon: float = 1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    variance = jnp.maximum((g * g).mean(axis=(1, 2, 4), keepdims=True) - mean * mean, 0.0)
    g = (g - mean) * jax.lax.rsqrt(variance + epsilon)
    return g.reshape(b, h, w, c) * scale + bias


def he(key, shape, fan_in):
    return jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_in)


def cnn_init(key, shape):
    k = jax.random.split(key, 4)
    c = shape[-1]
    flat = (shape[0] // 4) * (shape[1] // 4) * 64
    return {
        "conv1": {"w": he(k[0], (3, 3, c, 32), 9 * c), "b": jnp.zeros(32)},
        "conv2": {"w": he(k[1], (3, 3, 32, 64), 9 * 32), "b": jnp.zeros(64)},
        "dense1": {"w": he(k[2], (flat, 128), flat), "b": jnp.zeros(128)},
        "dense2": {"w": he(k[3], (128, CLASSES), 128), "b": jnp.zeros(CLASSES)},
    }


def cnn_apply(p, x, act=jax.nn.relu, norm=None):
    x = max_pool2(act(conv(x, p["conv1"]["w"]) + p["conv1"]["b"]))
    x = max_pool2(act(conv(x, p["conv2"]["w"]) + p["conv2"]["b"]))
    x = act(x.reshape(x.shape[0], -1) @ p["dense1"]["w"] + p["dense1"]["b"])
    return x @ p["dense2"]["w"] + p["dense2"]["b"]


RESNET_STAGES = ((64, 1), (128, 2), (256, 2))  # (width, stride) of each stage's block


def norm_params(width):
    return {"scale": jnp.ones(width), "bias": jnp.zeros(width)}


def resnet_init(key, shape):
    keys = iter(jax.random.split(key, 16))
    params = {
        "stem": he(next(keys), (3, 3, shape[-1], 64), 9 * shape[-1]),
        "stem_norm": norm_params(64),
    }
    width_in = 64
    for index, (width, stride) in enumerate(RESNET_STAGES):
        blk = {
            "conv1": he(next(keys), (3, 3, width_in, width), 9 * width_in),
            "norm1": norm_params(width),
            "conv2": he(next(keys), (3, 3, width, width), 9 * width),
            "norm2": norm_params(width),
        }
        if stride != 1 or width != width_in:
            blk["project"] = he(next(keys), (1, 1, width_in, width), width_in)
        params[f"block{index}"] = blk
        width_in = width
    params["head"] = {"w": he(next(keys), (width_in, CLASSES), width_in), "b": jnp.zeros(CLASSES)}
    return params


def resnet_apply(p, x, act=jax.nn.relu, norm=group_norm):
    x = act(norm(conv(x, p["stem"]), **p["stem_norm"]))
    for index, (_, stride) in enumerate(RESNET_STAGES):
        blk = p[f"block{index}"]
        y = act(norm(conv(x, blk["conv1"], stride), **blk["norm1"]))
        y = norm(conv(y, blk["conv2"]), **blk["norm2"])
        shortcut = conv(x, blk["project"], stride) if "project" in blk else x
        x = act(y + shortcut)
    return x.mean(axis=(1, 2)) @ p["head"]["w"] + p["head"]["b"]


AIRBENCH_WIDTHS = ((24, 64), (64, 256), (256, 256))  # (in, out) of each conv group


def batch_norm(x, bias, epsilon: float = 1e-5):
    """Batch statistics and a learned shift, no scale (airbench's); no running averages."""
    mean = x.mean(axis=(0, 1, 2))
    variance = jnp.maximum((x * x).mean(axis=(0, 1, 2)) - mean * mean, 0.0)
    return (x - mean) * jax.lax.rsqrt(variance + epsilon) + bias


def airbench_init(key, shape):
    keys = iter(jax.random.split(key, 8))
    params = {"whiten": he(next(keys), (2, 2, shape[-1], 24), 4 * shape[-1]), "bias": jnp.zeros(24)}
    for index, (width_in, width) in enumerate(AIRBENCH_WIDTHS):
        params[f"group{index}"] = {
            "conv1": he(next(keys), (3, 3, width_in, width), 9 * width_in),
            "norm1": jnp.zeros(width),
            "conv2": he(next(keys), (3, 3, width, width), 9 * width),
            "norm2": jnp.zeros(width),
        }
    params["head"] = he(next(keys), (256, CLASSES), 256)
    return params


def airbench_apply(p, x, act=jax.nn.gelu, norm=batch_norm):
    whiten = jax.lax.stop_gradient(p["whiten"])  # fixed, as in the recipe
    x = act(conv(x, whiten, padding="VALID") + p["bias"])  # 31x31
    for index in range(len(AIRBENCH_WIDTHS)):
        group = p[f"group{index}"]
        x = act(norm(max_pool2(conv(x, group["conv1"])), group["norm1"]))
        x = act(norm(conv(x, group["conv2"]), group["norm2"]))
    return x.max(axis=(1, 2)) @ p["head"] / 9


HAND_MODELS = {
    "cnn_small": (cnn_init, cnn_apply),
    "resnet_small": (resnet_init, resnet_apply),
    "airbench": (airbench_init, airbench_apply),
}


def unchanged(x, *_, **__):
    return x


class HandJaxContender(Contender):
    """`convs_only`: the same network with its norms and activations removed, which shows how
    much of the step XLA's convolutions (and pooling) alone take."""

    def __init__(
        self, name, workload: Workload, split: Split, steps_per_call: int, convs_only=False
    ):
        self.name, self.steps_per_call = name, steps_per_call
        init, apply = HAND_MODELS[workload.model]
        if convs_only:
            apply = functools.partial(apply, act=unchanged, norm=unchanged)
        self.tx = optax.sgd(LR, momentum=MOMENTUM)
        self.params = init(jax.random.key(0), workload.image_shape)
        self.param_count = sum(x.size for x in jax.tree.leaves(self.params))
        self.images, self.labels = jax.device_put(split.images), jax.device_put(split.labels)
        scaled = split.images.reshape(-1, split.images.shape[-1]) / 255.0
        mean, std = scaled.mean(0).astype(np.float32), scaled.std(0).astype(np.float32)
        batches = workload.examples // BATCH

        def run(params, opt_state, index, images, labels):
            def step(carry, _):
                params, opt_state, index = carry
                start = (index % batches) * BATCH
                x = jax.lax.dynamic_slice_in_dim(images, start, BATCH)
                y = jax.lax.dynamic_slice_in_dim(labels, start, BATCH)
                x = (x.astype(jnp.float32) / 255.0 - mean) / std

                def loss_fn(params):
                    logits = apply(params, x)
                    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

                loss, grads = jax.value_and_grad(loss_fn)(params)
                updates, opt_state = self.tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state, index + 1), loss

            return jax.lax.scan(
                step, (params, opt_state, index), None, length=steps_per_call, unroll=True
            )

        options = CPU_OPTIONS if jax.default_backend() == "cpu" else None
        self.jitted = jax.jit(run, donate_argnums=(0, 1), compiler_options=options)

    def prepare(self) -> float:
        self.carry = (self.params, self.tx.init(self.params), jnp.zeros((), jnp.int32))
        start = time.perf_counter()
        self.compiled = self.jitted.lower(*self.carry, self.images, self.labels).compile()
        seconds = time.perf_counter() - start
        self.call()
        self.sync()
        return seconds

    def call(self) -> None:
        self.carry, self.losses = self.compiled(*self.carry, self.images, self.labels)

    def sync(self) -> None:
        block((self.carry, self.losses))


# ---------------------------------------------------------------------------------------------
# PyTorch eager


def torch_model(model: str, channels: int):
    from torch import nn

    if model == "cnn_small":
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(128),
            nn.ReLU(),
            nn.Linear(128, CLASSES),
        )

    if model == "airbench":
        from airbench_reference import Net

        return Net(CLASSES, channels)

    class Block(nn.Module):
        def __init__(self, width_in, width, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(width_in, width, 3, stride, 1, bias=False),
                nn.GroupNorm(8, width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, 1, 1, bias=False),
                nn.GroupNorm(8, width),
            )
            same = stride == 1 and width == width_in
            self.project = (
                nn.Identity() if same else nn.Conv2d(width_in, width, 1, stride, bias=False)
            )

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.project(x))

    layers = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.GroupNorm(8, 64), nn.ReLU()]
    width_in = 64
    for width, stride in RESNET_STAGES:
        layers.append(Block(width_in, width, stride))
        width_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, CLASSES)]
    return nn.Sequential(*layers)


class TorchContender(Contender):
    def __init__(self, name, workload: Workload, split: Split, steps_per_call: int):
        import torch

        self.torch = torch
        self.name, self.steps_per_call = name, steps_per_call
        torch.manual_seed(0)
        channels = workload.image_shape[-1]
        self.model = torch_model(workload.model, channels)
        self.model(torch.zeros(1, channels, *workload.image_shape[:2]))  # sizes LazyLinear
        self.model = self.model.to(memory_format=torch.channels_last)
        self.param_count = sum(p.numel() for p in self.model.parameters())
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trained, lr=LR, momentum=MOMENTUM)
        # NHWC uint8 seen as NCHW: a channels_last view, no copy.
        self.images = torch.from_numpy(split.images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(split.labels.astype(np.int64))
        scaled = split.images.reshape(-1, channels) / 255.0
        self.mean = torch.tensor(scaled.mean(0), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(scaled.std(0), dtype=torch.float32).view(1, -1, 1, 1)
        self.batches = workload.examples // BATCH
        self.index = 0

    def step(self) -> None:
        start = (self.index % self.batches) * BATCH
        self.index += 1
        x = (self.images[start : start + BATCH].float() / 255.0 - self.mean) / self.std
        x = x.contiguous(memory_format=self.torch.channels_last)
        y = self.labels[start : start + BATCH]
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()

    def prepare(self) -> float:
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start

    def call(self) -> None:
        for _ in range(self.steps_per_call):
            self.step()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Result:
    name: str
    params: int
    first_call_s: float
    images_per_s: list[float]
    cores_busy: list[float]  # this process's CPU seconds per wall second, per round


def measure(workload: Workload, args) -> list[Result]:
    split = random_split(workload)
    spc = args.steps_per_call
    contenders: list[Contender] = [CnnlabContender("cnnlab", workload, split, spc)]
    if args.bf16:
        contenders.append(CnnlabContender("cnnlab bf16", workload, split, spc, precision="bf16"))
    contenders.append(HandJaxContender("hand JAX", workload, split, spc))
    if args.convs_only:
        contenders.append(HandJaxContender("JAX convs only", workload, split, spc, True))
    if not args.no_torch:
        contenders.append(TorchContender("PyTorch eager", workload, split, spc))
    first = {}
    for contender in contenders:
        first[contender.name] = contender.prepare()
        print(f"  {contender.name}: first call {first[contender.name]:.2f} s", flush=True)
    calls = args.calls or (CALLS_QUICK if args.quick else CALLS)[workload.model]
    windows = alternate({c.name: lambda c=c: c.window(calls) for c in contenders}, args.rounds)
    return [
        Result(
            c.name,
            c.param_count,
            first[c.name],
            [speed for speed, _ in windows[c.name]],
            [cores for _, cores in windows[c.name]],
        )
        for c in contenders
    ]


# Calls (of steps_per_call steps) per timed window: a few seconds each on a 2-core CPU.
CALLS = {"cnn_small": 8, "resnet_small": 2, "airbench": 2}
CALLS_QUICK = {"cnn_small": 3, "resnet_small": 1, "airbench": 1}


def paired_ratio(a: Result, b: Result) -> Spread:
    """Per-round ratio a/b: both measured back to back, so shared-machine drift cancels."""
    return Spread.of([x / y for x, y in zip(a.images_per_s, b.images_per_s, strict=True)])


def versus(result: Result, other: Result | None) -> str:
    if other is None:
        return "-"
    if other is result:
        return "1.00"
    ratio = paired_ratio(result, other)
    return f"{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f})"


def rows_for(model: str, results: list[Result]) -> list[list[str]]:
    by_name = {r.name: r for r in results}
    hand, torch = by_name.get("hand JAX"), by_name.get("PyTorch eager")
    rows = []
    for r in results:
        speed = Spread.of(r.images_per_s)
        rows.append(
            [
                model,
                r.name,
                f"{speed.median:,.0f}",
                f"{speed.low:,.0f}-{speed.high:,.0f}",
                f"{r.first_call_s:.2f}",
                f"{statistics.median(r.cores_busy):.2f}",
                versus(r, hand),
                versus(r, torch),
            ]
        )
    return rows


HEADERS = [
    "model",
    "contender",
    "images/s (median)",
    "min-max",
    "compile / first call (s)",
    "cores busy",
    "vs hand JAX",
    "vs PyTorch",
]


def append_markdown(path: Path, args, rows, facts: dict[str, str], load: LoadWatch) -> None:
    mode = "quick" if args.quick else "full"
    note = (
        f"{facts['cores']} cores, {facts['cpu']}; Python {facts['python']}, jax {facts['jax']}, "
        f"jaxlib {facts['jaxlib']}, flax {facts['flax']}, optax {facts['optax']}, "
        f"torch {facts['torch']}. Batch {BATCH}, SGD momentum {MOMENTUM}, lr {LR}, "
        f"{args.steps_per_call} steps per call, random data. Ratios are medians of per-round "
        "ratios (range in brackets); compile is the first call's lowering and compiling for "
        "JAX, and the first step for PyTorch eager; cores busy is the process's CPU time per "
        f"wall second (of {facts['cores']}): well below that, other work shared the machine."
    )
    title = f"Training speed ({mode}: {args.rounds} alternating rounds)"
    append_section(path, title, load, note, HEADERS, rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 3)")
    parser.add_argument("--calls", type=int, default=None, help="calls per timed window")
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows")
    parser.add_argument("--bf16", action="store_true", help="add cnnlab with precision: bf16")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--convs-only", action="store_true", help="add hand JAX without norms and activations"
    )
    parser.add_argument("--append", type=Path, help="append a markdown section to this file")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            parser.error("PyTorch is not installed: pip install torch (or pass --no-torch)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    facts = machine()
    print(
        f"{facts['cores']} cores, {facts['cpu']}; jax {facts['jax']}, torch {facts['torch']}; "
        f"backend {jax.default_backend()}; {args.rounds} rounds",
        flush=True,
    )
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with LoadWatch() as load:
        for model in args.models:
            print(f"{model}:", flush=True)
            results = measure(WORKLOADS[model], args)
            rows += rows_for(model, results)
            params = {r.name: r.params for r in results}
            if len(set(params.values())) > 1:
                print(f"  parameter counts differ: {params}")
    print_table("Training throughput, batch 128", HEADERS, rows)
    print(load.line())
    print(
        "Medians over alternating rounds; ratios are per-round (paired). The machine may be "
        "shared: compare only contenders of one run."
    )
    if args.append:
        append_markdown(args.append, args, rows, facts, load)
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
