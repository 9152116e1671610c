"""Data-parallel throughput: cnnlab's compiled call on 1, 2, 4 and 8 devices (`train.devices`).

    .venv/bin/python benchmarks/bench_scale.py [--model cnn_small] [--per-device 128]
        [--steps-per-call 10] [--calls 20]

Weak scaling: each device computes `--per-device` images per step, so the global batch grows
with the device count. On a machine without accelerators XLA pretends to have 8 CPU devices
(--xla_force_host_platform_device_count); they share the same cores, so there the numbers only
show that the path works, not a speed-up. On GPUs or TPUs it measures the real thing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# Before JAX starts: 8 pretend CPU devices (ignored when a GPU or TPU backend is the default).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import CLASSES, WORKLOADS, experiment, random_split  # noqa: E402
from common import machine, markdown_table  # noqa: E402

from cnnlab.hyper import experiment_numbers  # noqa: E402
from cnnlab.mesh import data_mesh  # noqa: E402
from cnnlab.step import (  # noqa: E402
    EpochOrders,
    channel_stats,
    device_numbers,
    init_state,
    steps_program,
    to_device,
)
from cnnlab.training import build_program  # noqa: E402


def images_per_second(workload, split, devices: int, per_device: int, per_call: int, calls: int):
    """(images/s, seconds to compile) of the multi-step call on `devices` devices."""
    batch = per_device * devices
    base = experiment(workload, per_call)  # bench_train's experiment, with this global batch
    exp = replace(base, train=base.train.model_copy(update={"batch_size": batch}))
    mesh = data_mesh(devices, batch)
    program = build_program(exp, split.images.shape[1:], CLASSES, len(split), mesh=mesh)
    numbers = device_numbers(experiment_numbers(exp), mesh)
    data = to_device(split.images, split.labels, mesh)
    state = init_state(program, 0, channel_stats(split.images), numbers)
    started = time.perf_counter()
    call = steps_program(program, per_call, state, data, numbers)
    compile_seconds = time.perf_counter() - started
    orders = EpochOrders(program, state)
    state, metrics = call(state, orders.upcoming(0, per_call), data, numbers, np.bool_(False))
    jax.block_until_ready((state, metrics))  # warm
    started = time.perf_counter()
    for index in range(1, calls + 1):
        upcoming = orders.upcoming(index * per_call, per_call)
        state, metrics = call(state, upcoming, data, numbers, np.bool_(False))
    jax.block_until_ready((state, metrics))
    return calls * per_call * batch / (time.perf_counter() - started), compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small", choices=sorted(WORKLOADS))
    parser.add_argument("--per-device", type=int, default=128, help="images per device per step")
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    workload = WORKLOADS[args.model]
    split = random_split(workload)
    device = jax.devices()[0]
    facts = machine()
    print(
        f"{args.model}, {args.per_device} images per device per step; {jax.device_count()} "
        f"{device.platform} devices ({device.device_kind}); {facts['cores']} cores, "
        f"{facts['cpu']}; jax {facts['jax']}"
    )
    if device.platform == "cpu":
        print(
            "note: these are pretend CPU devices sharing the same cores: the numbers show the "
            "sharded path works, not a speed-up. Run this on a GPU machine to measure scaling."
        )
    rows, base = [], None
    for devices in (1, 2, 4, 8):
        if devices > jax.device_count():
            rows.append([str(devices), "-", "-", "-", "-"])
            continue
        speed, compiled = images_per_second(
            workload, split, devices, args.per_device, args.steps_per_call, args.calls
        )
        base = base or speed
        rows.append(
            [
                str(devices),
                str(args.per_device * devices),
                f"{speed:,.0f}",
                f"{speed / base:.2f}",
                f"{compiled:.1f}",
            ]
        )
    headers = ["devices", "global batch", "images/s", "vs 1 device", "compile s"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
