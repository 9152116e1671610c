"""Convolution by convolution: XLA:CPU against PyTorch on the three benchmark models.

    .venv/bin/python benchmarks/bench_convs.py [--repeats 9] [--append benchmarks/RESULTS.md]

bench_train.py compares whole training steps; this shows how much of the gap the convolution
kernels alone make. Each convolution of cnn_small, resnet_small and airbench (batch 128) is
timed on its own in its three parts: the forward pass, the gradient for its input and the
gradient for its kernel. XLA runs them as the training step does (NHWC, YNNPACK fusion off);
PyTorch as bench_train.py's PyTorch contender does (channels_last). Each part alternates
between the two and takes the median of `repeats` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import jax
import torch
from common import LoadWatch, append_section, machine, median_seconds, print_table

from cnnlab.step import compiler_options

BATCH = 128


class Conv(NamedTuple):
    model: str
    name: str
    size: int  # input height and width
    channels: int
    features: int
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"
    input_grad: bool = True  # False for a network's first conv: images need no gradient
    count: int = 1  # how many of it the model has


CONVS = [
    Conv("cnn_small", "conv1", 28, 1, 32, input_grad=False),
    Conv("cnn_small", "conv2", 14, 32, 64),
    Conv("resnet_small", "stem", 32, 3, 64, input_grad=False),
    Conv("resnet_small", "block0 conv1, conv2", 32, 64, 64, count=2),
    Conv("resnet_small", "block1 conv1", 32, 64, 128, stride=2),
    Conv("resnet_small", "block1 conv2", 16, 128, 128),
    Conv("resnet_small", "block1 project", 32, 64, 128, kernel=1, stride=2),
    Conv("resnet_small", "block2 conv1", 16, 128, 256, stride=2),
    Conv("resnet_small", "block2 conv2", 8, 256, 256),
    Conv("resnet_small", "block2 project", 16, 128, 256, kernel=1, stride=2),
    Conv("airbench", "group0 conv1", 31, 24, 64),
    Conv("airbench", "group0 conv2", 15, 64, 64),
    Conv("airbench", "group1 conv1", 15, 64, 256),
    Conv("airbench", "group1 conv2", 7, 256, 256),
    Conv("airbench", "group2 conv1", 7, 256, 256),
    Conv("airbench", "group2 conv2", 3, 256, 256),
]
PARTS = ("forward", "input grad", "kernel grad")


def xla_parts(conv: Conv):
    """The three parts as compiled XLA calls on random data."""

    def apply(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (conv.stride,) * 2, conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (BATCH, conv.size, conv.size, conv.channels))
    w = jax.random.normal(keys[1], (conv.kernel, conv.kernel, conv.channels, conv.features))
    dy = jax.random.normal(keys[2], jax.eval_shape(apply, x, w).shape)
    options = compiler_options()

    def part(index):
        fn = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy)[index], compiler_options=options)
        return lambda: jax.block_until_ready(fn(x, w, dy))

    forward = jax.jit(apply, compiler_options=options)
    return [lambda: jax.block_until_ready(forward(x, w)), part(0), part(1)]


def torch_parts(conv: Conv):
    import torch.nn.grad as grad

    last = torch.channels_last
    x = torch.randn(BATCH, conv.channels, conv.size, conv.size).contiguous(memory_format=last)
    w = torch.randn(conv.features, conv.channels, conv.kernel, conv.kernel)
    w = w.contiguous(memory_format=last)
    padding = conv.kernel // 2 if conv.padding == "SAME" else 0
    args = {"stride": conv.stride, "padding": padding}
    y = torch.nn.functional.conv2d(x, w, **args)
    dy = torch.randn_like(y).contiguous(memory_format=last)
    return [
        lambda: torch.nn.functional.conv2d(x, w, **args),
        lambda: grad.conv2d_input(x.shape, w, dy, **args),
        lambda: grad.conv2d_weight(x, w.shape, dy, **args),
    ]


def measure(repeats: int) -> list[list[str]]:
    rows, totals = [], {}
    for conv in CONVS:
        parts = []  # (XLA, PyTorch) seconds of each part, None where the model has no such part
        for index, pair in enumerate(zip(xla_parts(conv), torch_parts(conv), strict=True)):
            if index == 1 and not conv.input_grad:
                parts.append(None)
                continue
            order = pair if index % 2 == 0 else pair[::-1]
            for run in order:
                run()  # compiles, or warms the caches
            timed = {run: median_seconds(run, repeats) for run in order}
            parts.append((timed[pair[0]], timed[pair[1]]))
        xla, pytorch = (sum(p[side] for p in parts if p) * 1e3 for side in (0, 1))
        model = totals.setdefault(conv.model, [0.0, 0.0])
        model[0] += conv.count * xla
        model[1] += conv.count * pytorch
        text = " / ".join(f"{p[0] * 1e3:.1f} vs {p[1] * 1e3:.1f}" if p else "none" for p in parts)
        rows.append([conv.model, _shape(conv), text, *_compared(xla, pytorch)])
    for model, (xla, pytorch) in totals.items():
        rows.append([model, "**all its convolutions**", "", *_compared(xla, pytorch)])
    return rows


def _compared(xla: float, pytorch: float) -> list[str]:
    return [f"{xla:.1f}", f"{pytorch:.1f}", f"{xla / pytorch:.2f}"]


def _shape(conv: Conv) -> str:
    stride = f" stride {conv.stride}" if conv.stride != 1 else ""
    kernel = f"{conv.kernel}x{conv.kernel}"
    return (
        f"{conv.name}: {conv.size}x{conv.size}x{conv.channels} -> {conv.features}, {kernel}{stride}"
    )


HEADERS = [
    "model",
    "convolution",
    "ms: forward / input grad / kernel grad, XLA vs PyTorch",
    "XLA ms",
    "PyTorch ms",
    "XLA / PyTorch",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--append", type=Path, help="append a markdown section to this file")
    args = parser.parse_args()
    facts = machine()
    with LoadWatch() as load:
        rows = measure(args.repeats)
    title = "Convolutions alone, XLA:CPU against PyTorch"
    print_table(f"{title}, batch {BATCH}", HEADERS, rows)
    print(load.line())
    if args.append:
        note = (
            f"{facts['cores']} cores, {facts['cpu']}; jax {facts['jax']}, torch {facts['torch']}. "
            f"Batch {BATCH}, float32; medians of {args.repeats} runs of each part. A first conv "
            "has no input gradient (its images need none); airbench's fixed whitening conv is left out."
        )
        append_section(args.append, f"{title} (`bench_convs.py`)", load, note, HEADERS, rows)
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
