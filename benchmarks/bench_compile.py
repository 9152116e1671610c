"""Compile time: cnnlab's first call against the hand-written JAX loop's, in fresh processes.

    .venv/bin/python benchmarks/bench_compile.py [--rounds 5] [--models cnn_small airbench]
        [--append benchmarks/RESULTS.md]

bench_train.py times each contender's first call once, and one compile on this machine varies
by 10-40% from one process to the next. Here every round starts one new process per contender
(alternating which goes first) that builds the same contenders as bench_train.py, compiles the
call of 10 steps with the on-disk cache off, and reports the seconds; the table gives medians,
and the ratio is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import LoadWatch, Spread, append_section, machine, print_table

CONTENDERS = ("cnnlab", "hand JAX")


def first_call(model: str, contender: str) -> float:
    """One process's compile of `contender`'s call on `model` (see bench_train.py)."""
    import bench_train as bench

    workload = bench.WORKLOADS[model]
    split = bench.random_split(workload)
    kind = bench.CnnlabContender if contender == "cnnlab" else bench.HandJaxContender
    return kind(contender, workload, split, 10).prepare()


def in_fresh_process(model: str, contender: str) -> float:
    command = [sys.executable, __file__, "--one", model, contender]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def measure(models: list[str], rounds: int) -> list[list[str]]:
    rows = []
    for model in models:
        seconds = {name: [] for name in CONTENDERS}
        for round_ in range(rounds):
            order = CONTENDERS if round_ % 2 == 0 else CONTENDERS[::-1]
            for name in order:
                seconds[name].append(in_fresh_process(model, name))
            print(f"  {model} round {round_ + 1}: {seconds}", flush=True)
        ours, hand = (Spread.of(seconds[name]) for name in CONTENDERS)
        ratio = Spread.of([a / b for a, b in zip(*seconds.values(), strict=True)])
        rows.append(
            [
                model,
                f"{ours.median:.2f} ({ours.low:.2f}-{ours.high:.2f})",
                f"{hand.median:.2f} ({hand.low:.2f}-{hand.high:.2f})",
                f"{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f})",
            ]
        )
    return rows


HEADERS = ["model", "cnnlab first call (s)", "hand JAX first call (s)", "cnnlab / hand"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn_small", "resnet_small", "airbench"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--append", type=Path, help="append a markdown section to this file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"seconds": first_call(*args.one)}))
        return
    facts = machine()
    with LoadWatch() as load:
        rows = measure(args.models, args.rounds)
    print_table("First call, 10 steps of batch 128, fresh processes", HEADERS, rows)
    print(load.line())
    if args.append:
        note = (
            f"{facts['cores']} cores, {facts['cpu']}; jax {facts['jax']}. Medians (min-max) "
            "over rounds; the ratio is the median of per-round ratios."
        )
        title = f"Compile time ({args.rounds} rounds of fresh processes)"
        append_section(args.append, title, load, note, HEADERS, rows)
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
