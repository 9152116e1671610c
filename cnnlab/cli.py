"""The `cnnlab` command: thin Typer commands that parse, call one library function, and print.

jax, flax and tensorflow-datasets are imported inside the commands, so `cnnlab --help` stays fast.
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console

from cnnlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learn to build and train convolutional networks in JAX: one YAML file and one command per rep.",
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare datasets and see which are ready.")
app.add_typer(data_app, name="data")

console = Console()
errors = Console(stderr=True)

Experiment = Annotated[
    str | None, typer.Argument(help="Experiment file, or a name in experiments/.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set optimizer.lr=3e-4 (repeatable)."),
]
RunArg = Annotated[str, typer.Argument(help="Run folder, part of a run name, or 'latest'.")]


def friendly(command):
    """Bad input ends as one red line and exit code 2; Ctrl-C as exit code 130, no traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            errors.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            errors.print("interrupted")
            raise typer.Exit(130) from None

    return run


def load(experiment: str | None, overrides: list[str] | None):
    from cnnlab.config import load_experiment

    return load_experiment(experiment, overrides or [])


def say_notes(notes) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command()
@friendly
def overfit(
    experiment: Experiment = None,
    samples: Annotated[int, typer.Option(min=1, help="How many training samples to memorise.")] = 4,
    max_steps: Annotated[
        int, typer.Option(min=1, help="Step budget before declaring failure.")
    ] = 1000,
    set_: Overrides = None,
):
    """Sanity check: can the model memorise a few training samples? Prints a verdict."""
    from cnnlab.report import overfit_verdict
    from cnnlab.train import overfit as run_overfit

    exp = load(experiment, set_)
    console.print(f"overfit [bold]{exp.name}[/] on {samples} samples (budget {max_steps} steps)")
    result = run_overfit(exp, samples, max_steps)
    say_notes(result.notes)
    console.print(overfit_verdict(result), highlight=False)
    if not result.memorised:
        raise typer.Exit(1)


@app.command()
@friendly
def train(
    experiment: Annotated[str, typer.Argument(help="Experiment file, or a name in experiments/.")],
    set_: Overrides = None,
):
    """Train an experiment into a new run folder under runs/."""
    from cnnlab.report import TrainProgress, summary_table
    from cnnlab.train import train as run_train

    exp = load(experiment, set_)
    with TrainProgress(console, exp.train.steps) as progress:
        result = run_train(exp, progress=progress)
    console.print(summary_table(result.summary))
    if result.summary["status"] == "interrupted":
        console.print(
            f"stopped at step {result.summary['steps']}; latest checkpoint saved in {result.run_dir}/checkpoints"
        )
    console.print(f"run folder: {result.run_dir}")


@app.command("eval")
@friendly
def eval_(
    run: RunArg = "latest",
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    checkpoint: Annotated[
        str, typer.Option(help="best (by validation accuracy) or latest.")
    ] = "best",
):
    """Top-1/top-5, per-class accuracy and the confusion matrix of a run; saved as JSON in it."""
    from cnnlab.evaluate import evaluate_run
    from cnnlab.report import evaluation_tables
    from cnnlab.runs import find_run

    run_dir = find_run(run)
    evaluation = evaluate_run(run_dir, split, checkpoint)
    console.print(f"run folder: {run_dir}")
    console.print(evaluation_tables(evaluation))


def main() -> None:
    app()
