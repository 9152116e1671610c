"""Throughput of N sweep trials trained together (`--parallel N`, one vmapped program) against
the same N trials trained one after another. Both include compiling, as a user waits for it.

    python benchmarks/bench_parallel.py [--trials 8] [--steps 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
from common import LoadWatch

from cnnlab.config import load_experiment
from cnnlab.parallel import train_stacked
from cnnlab.training import train

REPO = Path(__file__).resolve().parent.parent


def experiments(trials: int, steps: int):
    rates = [10 ** (-4 + 2.5 * i / max(trials - 1, 1)) for i in range(trials)]
    overrides = [
        f"train.steps={steps}",
        f"train.eval_every_steps={steps}",
        "train.log_every_steps=50",
    ]
    return [
        load_experiment(
            REPO / "experiments" / "digits.yaml", [*overrides, f"optimizer.lr={lr:.3g}"]
        )
        for lr in rates
    ]


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    exps = experiments(args.trials, args.steps)
    images = args.trials * args.steps * exps[0].train.batch_size
    jax.config.update("jax_compilation_cache_dir", None)  # measure compiling, as a first run does
    together, one_by_one = [], []
    load = LoadWatch()
    for _ in range(args.rounds):  # alternate the two contenders
        with tempfile.TemporaryDirectory() as folder:
            dirs = [Path(folder) / f"t{i}" for i in range(args.trials)]
            together.append(timed(lambda dirs=dirs: train_stacked(exps, dirs, log=lambda m: None)))
        with tempfile.TemporaryDirectory() as folder:
            one_by_one.append(
                timed(
                    lambda: [train(e, run_dir=Path(folder) / f"s{i}") for i, e in enumerate(exps)]
                )
            )
    load.stop()
    device = jax.devices()[0]
    print(load.line())
    print(
        f"{args.trials} trials x {args.steps} steps, batch {exps[0].train.batch_size}, digits cnn_small, {device.platform}"
    )
    print("| mode | wall s (median) | images/s | speed-up |")
    print("|---|---|---|---|")
    seq, par = statistics.median(one_by_one), statistics.median(together)
    print(
        f"| one after another | {seq:.1f} (runs: {', '.join(f'{t:.1f}' for t in one_by_one)}) | {images / seq:,.0f} | 1.00 |"
    )
    print(
        f"| --parallel {args.trials} | {par:.1f} (runs: {', '.join(f'{t:.1f}' for t in together)}) | {images / par:,.0f} | {seq / par:.2f} |"
    )


if __name__ == "__main__":
    main()
