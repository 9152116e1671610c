"""The `cnnlab` command: thin Typer commands that parse, call one library function, and print.

jax, flax and tensorflow-datasets are imported inside the commands, so `cnnlab --help` stays fast.

Exit codes: 0 done; 1 a run that diverged, an overfit check that failed, or a write that failed
mid-work (disk full); 2 bad input, named in one `error:` line before any work starts; 130
interrupted (Ctrl-C), with the command that continues the run.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cnnlab import logs
from cnnlab.errors import SpecError, UserError

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
FAILED = {"diverged", "completed_not_learning"}  # `train` exits 1 for these
RunArg = Annotated[str, typer.Argument(help="Run folder, part of a run name, or 'latest'.")]


def friendly(command):
    """Bad input ends as one red line and exit code 2; a failed write mid-work as one line and
    exit 1; Ctrl-C as exit code 130; never a traceback. Library chatter goes to the log."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from cnnlab.environment import configure

        logs.quiet()
        try:
            configure()
            return command(*args, **kwargs)
        except UserError as error:
            fail(str(error), getattr(error, "exit_code", 2), getattr(error, "hint", None))
        except OSError as error:  # a write that failed after the checks (disk full, removed)
            from cnnlab.files import os_reason

            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{os_reason(error)}", 1, getattr(error, "hint", None))
        except KeyboardInterrupt as interrupt:
            errors.print("interrupted")
            if getattr(interrupt, "hint", None):
                errors.print(interrupt.hint, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as error:  # several processes: another one gone is one line too
            from cnnlab.processes import lost, stop

            line = lost(error)
            if line is None:
                raise
            stop(line)
        finally:
            say_file_notes()

    return run


def fail(message: str, code: int, hint: str | None = None):
    """The one `error:` line (and what to do next, when there is something to continue)."""
    errors.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        errors.print(hint, highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def say_file_notes() -> None:
    from cnnlab.files import take_notes

    for message in take_notes():
        errors.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def load(experiment: str | None, overrides: list[str] | None):
    from cnnlab.config import load_experiment

    return load_experiment(experiment, overrides or [])


def check_output(path: Path, suffixes: tuple[str, ...] = (".png",)) -> None:
    from cnnlab.files import check_output_file

    check_output_file(path, suffixes)


def check_writable(folder: Path, what: str) -> None:
    from cnnlab.files import check_folder_writable

    check_folder_writable(folder, what)


def say_notes(notes) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


def say_diagnosis(diagnosis, *, failing: bool) -> None:
    """The cause (its id), what was seen, and the fix; a note when the run itself succeeded."""
    from cnnlab.report import diagnosis_lines

    for line in diagnosis_lines(diagnosis, failing=failing):
        console.print(line, highlight=False, soft_wrap=True)


def quiet_numerics():
    """Overflow in a diverging run is reported by the run itself; numpy's RuntimeWarnings about
    it would only repeat it, out of place."""
    import warnings

    import numpy as np

    stack = contextlib.ExitStack()
    stack.enter_context(np.errstate(all="ignore"))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", RuntimeWarning)
    return stack


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
    from cnnlab import api
    from cnnlab.report import overfit_verdict

    exp = load(experiment, set_)
    console.print(f"overfit [bold]{exp.name}[/] on {samples} samples (budget {max_steps} steps)")
    with quiet_numerics():
        result = api.overfit(exp, samples, max_steps)
    say_notes(result.notes)
    console.print(overfit_verdict(result), highlight=False)
    say_diagnosis(result.diagnosis, failing=not result.memorised)
    if not result.memorised:
        raise typer.Exit(1)


@app.command()
@friendly
def train(
    experiment: Annotated[
        str | None, typer.Argument(help="Experiment file, or a name in experiments/.")
    ] = None,
    set_: Overrides = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue this run from its latest checkpoint.")
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(help="Several processes: HOST:PORT where process 0 listens (same for all)."),
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option(help="Several processes: how many train the run.")
    ] = None,
    process_id: Annotated[
        int | None, typer.Option(help="Several processes: this one's number, from 0.")
    ] = None,
):
    """Train an experiment into a new run folder under runs/ (or --resume a stopped run), on
    every device (train.devices), and with several processes on several machines.

    Exits 0 when done, 1 when training diverged or did not learn, 130 when interrupted (Ctrl-C:
    the run stops at the next checkpoint and prints the command that continues it)."""
    from cnnlab import api
    from cnnlab.files import WriteError
    from cnnlab.processes import cluster_from, start
    from cnnlab.report import TrainProgress, summary_table
    from cnnlab.runs import runs_dir

    cluster = cluster_from(coordinator, num_processes, process_id)
    if (experiment is None) == (resume is None):
        raise UserError("give an experiment file to train, or --resume RUN to continue a run")
    if resume and set_:
        raise UserError("--set cannot change a run being resumed; train a new run with the changes")
    stopped = api.open_run(resume) if resume else None
    exp = load(stopped.path / "config.yaml" if stopped else experiment, set_)
    if stopped:
        check_writable(stopped.path, "run folder")
    else:
        check_writable(runs_dir(), "runs folder")
    start(cluster)  # after the checks above, before JAX computes anything
    started = time.time()
    try:
        with quiet_numerics(), TrainProgress(console, exp.train.steps) as progress:
            run = (
                api.resume(stopped, progress=progress)
                if stopped
                else api.train(exp, progress=progress)
            )
    except (KeyboardInterrupt, UserError, OSError) as error:
        folder = stopped.path if stopped else newest_run(exp.name, started)
        logs.save(folder)
        interrupted = isinstance(error, (KeyboardInterrupt, OSError, WriteError))
        if isinstance(error, OSError) and not error.filename:
            error.filename = str(folder or runs_dir())  # a flush names no file: name the run
        if folder is not None and interrupted:
            error.hint = f"continue with: cnnlab train --resume {folder}"
        raise
    logs.save(run.path)
    summary = run.summary
    console.print(summary_table(summary))
    if summary["status"] == "interrupted":
        console.print(f"stopped at step {summary['steps']}; latest checkpoint saved")
        console.print(f"continue with: cnnlab train --resume {run.path}", highlight=False)
    console.print(f"run folder: {run.path}")
    if summary["status"] == "diverged":
        errors.print(f"[red]diverged:[/] {summary['failure']}", highlight=False, soft_wrap=True)
    if summary["status"] == "completed_not_learning":
        val = summary["final"]["val"].get("accuracy")
        seen = f"val accuracy {val:.4f} " if val is not None else ""
        errors.print(
            f"[red]did not learn:[/] {seen}is within noise of chance "
            f"({summary['chance_accuracy']:.4f}), or the loss never left its start",
            highlight=False,
            soft_wrap=True,
        )
    if summary["status"] in FAILED:  # diverged or did not learn: exit 1, so scripts can tell
        raise typer.Exit(1)
    if summary["status"] == "interrupted":
        raise typer.Exit(130)


def newest_run(name: str, since: float) -> Path | None:
    """The run folder a training run started at `since` made, if it got that far."""
    from cnnlab.runs import runs_dir

    root = runs_dir()
    made = (
        [p for p in root.glob(f"*_{name}*") if (p / "config.yaml").is_file()]
        if root.is_dir()
        else []
    )
    made = [p for p in made if p.stat().st_mtime >= since - 1]
    return max(made, key=lambda p: p.stat().st_mtime, default=None)


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
    from cnnlab.evaluation import evaluate_run
    from cnnlab.report import evaluation_tables
    from cnnlab.runs import find_run

    run_dir = find_run(run)
    check_writable(run_dir, "run folder")
    evaluation = evaluate_run(run_dir, split, checkpoint)
    logs.save(run_dir)
    console.print(f"run folder: {run_dir}")
    console.print(evaluation_tables(evaluation))
    from cnnlab.plots import plot_confusion

    picture = plot_confusion(evaluation, run_dir / f"confusion_{split}.png")
    console.print(f"confusion plot: {picture}")
    grid = run_dir / f"mistakes_{split}.png"
    if grid.is_file():
        console.print(f"most confident mistakes: {grid}")


@app.command()
@friendly
def sweep(
    sweep_file: Annotated[
        str, typer.Argument(help="Sweep file, or a name in experiments/sweeps/.")
    ],
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue this sweep folder (default: the newest unfinished one of the same trials)."
        ),
    ] = None,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new sweep folder, even if one is unfinished.")
    ] = False,
    parallel: Annotated[
        int, typer.Option(min=1, help="Train up to N compatible trials together in one program.")
    ] = 1,
    max_trials: Annotated[
        int | None,
        typer.Option(
            min=1, help="Allow a sweep of more trials than the default limit (see the README)."
        ),
    ] = None,
):
    """Train an experiment over a grid or random draws of settings and seeds; rank the settings."""
    from cnnlab import api
    from cnnlab.runs import runs_dir
    from cnnlab.sweeps import best_command, console_progress, load_sweep, sweep_table

    spec = load_sweep(sweep_file, max_trials=max_trials)  # bad files fail before any check
    check_writable(
        Path(resume) if resume else runs_dir(), "sweep folder" if resume else "runs folder"
    )
    result = api.sweep(
        spec,
        parallel,
        resume=Path(resume) if resume else None,
        new=new,
        progress=lambda spec: console_progress(console, spec),
        log=console.print,
    )
    if result.complete and not result.trained:
        console.print(
            f"sweep {spec.name} is finished (all {len(result.trials)} trials); its results follow. "
            "Train it again with --new.",
            highlight=False,
        )
    console.print(sweep_table(result))
    command = best_command(result)
    if command:
        console.print(f"best: {command}", highlight=False, soft_wrap=True)
    console.print(f"sweep folder: {result.folder} (sweep.csv, sweep_settings.csv, sweep.png)")


@app.command()
@friendly
def runs(
    pattern: Annotated[
        str | None, typer.Argument(help="Show only runs whose folder name contains this.")
    ] = None,
):
    """List runs, newest first: dataset, model, steps, time, accuracies. See one with `cnnlab show RUN`."""
    from cnnlab.history import find_sweeps, list_runs, print_table, runs_table, sweeps_table
    from cnnlab.runs import runs_dir

    found, sweeps = list_runs(pattern), find_sweeps(pattern)
    if not found and not sweeps:
        where = f"matching '{pattern}' " if pattern else ""
        console.print(f"no runs {where}in {runs_dir()}/")
        return
    if found:
        print_table(console, runs_table(found, title=f"runs in {runs_dir()}/"))
    if sweeps:
        print_table(console, sweeps_table(sweeps))


@app.command()
@friendly
def show(run: RunArg = "latest"):
    """One run: its resolved config (YAML) and its results (summary, diagnosis, evaluations,
    plots). Given a sweep folder (or part of its name), the sweep's ranked table."""
    from cnnlab.history import find_sweeps, show_run
    from cnnlab.runs import find_run

    sweeps = [Path(run)] if (Path(run) / "sweep.json").is_file() else find_sweeps(run)
    if sweeps and run != "latest":
        from cnnlab.sweeps.results import show_sweep

        console.print(show_sweep(sweeps[0]))
        return
    console.print(show_run(find_run(run)))


@app.command()
@friendly
def compare(
    runs_: Annotated[
        list[str], typer.Argument(metavar="RUN...", help="Two or more runs (folders or names).")
    ],
    out: Annotated[
        str, typer.Option(help="Where to write the overlay of the curves (PNG).")
    ] = "compare.png",
    plot: Annotated[bool, typer.Option(help="Write the PNG of the curves.")] = True,
):
    """Compare runs: the config keys that differ, their results, and their curves overlaid.

    The PNG (--out, default ./compare.png) draws loss and accuracy against step, one colour per run, training solid and validation dashed."""
    from cnnlab.history import compare_table, print_table, resolve_runs

    run_dirs = resolve_runs(runs_)
    if plot:
        check_output(Path(out))
    print_table(console, compare_table(run_dirs))
    if plot:
        from cnnlab.plots import plot_compare

        console.print(f"curves: {plot_compare(run_dirs, Path(out))}")


@app.command()
@friendly
def plot(run: RunArg = "latest"):
    """Draw a run's loss and accuracy curves (training and validation) into curves.png in it."""
    from cnnlab.plots import plot_curves
    from cnnlab.runs import find_run

    run_dir = find_run(run)
    check_writable(run_dir, "run folder")
    console.print(f"curves: {plot_curves(run_dir)}")


@app.command()
@friendly
def predict(
    run: Annotated[str, typer.Argument(help="Run folder, part of a run name, or 'latest'.")],
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="PNG or JPEG files.")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 5,
    checkpoint: Annotated[
        str, typer.Option(help="best (by validation accuracy) or latest.")
    ] = "best",
):
    """Classify PNG or JPEG files with a trained run: the top-k classes and probabilities.

    Images of any size are converted to the run's channels (greyscale or RGB) and resized (stretched, not cropped) to its input size."""
    from cnnlab.prediction import predict_files, predictions_table
    from cnnlab.runs import find_run

    run_dir = find_run(run)
    predictions = predict_files(run_dir, [Path(p) for p in images], top_k, checkpoint)
    logs.save(run_dir)
    first = predictions[0]
    console.print(f"run folder: {run_dir} ({first.checkpoint} checkpoint, step {first.step})")
    console.print(predictions_table(predictions))


DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
    ),
]


@data_app.command("prepare")
@friendly
def data_prepare(
    name: Annotated[str, typer.Argument(help="mnist, fashion_mnist, cifar10 or cifar100.")],
    from_dir: Annotated[
        str | None,
        typer.Option(
            "--from", help="Folder holding the original files; without it they are downloaded."
        ),
    ] = None,
    data_dir: DataDir = None,
    mirror: Annotated[
        str | None,
        typer.Option(help="Base URL serving the original files under their original names."),
    ] = None,
    checksums: Annotated[
        str | None, typer.Option(help="Checksums file for the mirror (TFDS url_checksums format).")
    ] = None,
):
    """Prepare a TFDS dataset without TensorFlow, from original files or by download."""
    from cnnlab.data import prepare

    location = prepare(
        name, from_dir=from_dir, data_dir=data_dir, mirror=mirror, checksums=checksums
    )
    console.print(f"{name} is prepared at {location}")


@data_app.command("list")
@friendly
def data_list(data_dir: DataDir = None):
    """Which datasets are ready to load, where, and how many examples each split holds."""
    from cnnlab.data import prepared_datasets
    from cnnlab.data.listing import datasets_table

    console.print(datasets_table(prepared_datasets(data_dir)))


@app.command()
@friendly
def diagnostics(run: RunArg = "latest"):
    """Per-layer parameter and gradient norms, update ratios and dead ReLUs of a run, with trends."""
    from cnnlab.report import diagnostics_table
    from cnnlab.runs import find_run, read_diagnostics, read_json

    run_dir = find_run(run)
    rows = read_diagnostics(run_dir)
    if not rows:
        raise UserError(f"run {run_dir.name} has no diagnostics yet (it logged nothing)")
    summary = read_json(run_dir / "summary.json")  # read first: a damaged one is the only line
    from cnnlab.history import print_table

    print_table(console, diagnostics_table(rows, *run_layer_names(run_dir, summary)))
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if summary.get("failure"):
        console.print(f"[red]diverged:[/] {summary['failure']}", highlight=False)
    say_diagnosis(summary.get("diagnosis"), failing=summary.get("status") in FAILED)


def run_layer_names(run_dir: Path, summary: dict) -> tuple[dict[str, str], list[str] | None]:
    """Layer numbers of a run's model to 'index kind detail' names ({} when unknown), and for a
    Python model its layers in the order the forward pass calls them ('0 conv2' first)."""
    from cnnlab.config import load_experiment
    from cnnlab.diagnostics import call_order
    from cnnlab.models import PythonModelSpec, build_model, describe_model
    from cnnlab.report import layer_names

    dataset = summary.get("dataset") or {}
    if not dataset.get("image_shape"):
        return {}, None
    shape, classes = tuple(dataset["image_shape"]), len(dataset["classes"])
    try:
        experiment = load_experiment(run_dir / "config.yaml")
        if isinstance(experiment.model, PythonModelSpec):
            order = call_order(build_model(experiment.model, shape, classes), shape)
            return {layer: f"{i} {layer}" for i, layer in enumerate(order)}, order
        model = describe_model(experiment.model, shape, classes)
    except (UserError, SpecError, OSError):
        return {}, None
    return layer_names(model), None


@app.command("lr-find")
@friendly
def lr_find(
    experiment: Experiment = None,
    steps: Annotated[int, typer.Option(min=10, help="Steps of the range test.")] = 200,
    min_lr: Annotated[float, typer.Option(help="Rate at the first step.")] = 1e-6,
    max_lr: Annotated[float, typer.Option(help="Rate at the last step.")] = 10.0,
    out: Annotated[Path, typer.Option(help="Where to write the loss-against-rate plot.")] = Path(
        "lr_find.png"
    ),
    set_: Overrides = None,
):
    """Learning-rate range test: loss against an exponentially rising rate, and a suggested rate."""
    from cnnlab.lr_find import lr_find as range_test
    from cnnlab.lr_find import plot_range_test

    exp = load(experiment, set_)
    check_output(out)
    console.print(f"lr-find [bold]{exp.name}[/]: {steps} steps, rate {min_lr:g} -> {max_lr:g}")
    result = range_test(exp, min_lr=min_lr, max_lr=max_lr, steps=steps)
    plot_range_test(result, out)
    console.print(f"lowest smoothed loss at lr {result.lowest_loss_lr:.3g}; plot: {out}")
    console.print(f"[green]suggested lr: {result.suggestion:.3g}[/]", highlight=False)
    console.print(
        f"try: cnnlab train {experiment or 'digits'} --set optimizer.lr={result.suggestion:.2g}"
    )


@app.command()
@friendly
def inspect(
    experiment: Experiment = None,
    set_: Overrides = None,
    html: Annotated[
        Path | None,
        typer.Option(help="Also write the network in 3D as a self-contained HTML file."),
    ] = None,
):
    """Layer by layer: output shape, parameters and forward FLOPs per image, with totals; and
    the devices it trains on, with the batch each computes."""
    from cnnlab.models import describe_model, render_model_summary
    from cnnlab.training import load_data

    exp = load(experiment, set_)
    dataset = load_data(exp)
    try:
        summary = describe_model(exp.model, dataset.image_shape, dataset.num_classes)
    except SpecError as error:
        raise exp.user_error(error.within("model")) from None
    console.print(render_model_summary(summary))
    say_notes(summary.notes)
    from cnnlab.diagnosis import Evidence, check_no_nonlinearity

    structure = tuple((row.name, row.kind) for row in summary.rows)
    found = check_no_nonlinearity(Evidence(dataset.num_classes, (), structure=structure))
    if found:
        say_notes([f"{found.message}; {found.fix}"])

    from cnnlab.mesh import describe
    from cnnlab.report import mesh_line
    from cnnlab.training import training_mesh

    batch = min(exp.train.batch_size, len(dataset.train))
    layout = describe(training_mesh(exp, batch), batch)
    console.print(f"trains on {mesh_line(layout)} (batch {batch})", highlight=False)
    if html:
        from cnnlab.ui.netview import network_data, write_html

        console.print(f"network in 3D: {write_html(network_data(summary, exp.name), html)}")


@app.command()
@friendly
def augment(
    experiment: Experiment = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("augment_grid.png"),
    n: Annotated[int, typer.Option(min=1, max=64, help="Images (rows).")] = 8,
    draws: Annotated[int, typer.Option(min=1, max=32, help="Augmented draws per image.")] = 8,
    set_: Overrides = None,
):
    """Draw a grid: each row a training image, then draws of the experiment's augmentation."""
    import numpy as np

    from cnnlab.augment import build_augment, save_grid
    from cnnlab.training import load_data

    exp = load(experiment, set_)
    check_output(out)
    dataset = load_data(exp)
    try:
        pipeline = build_augment(exp.augment, dataset.image_shape, dataset.num_classes)
    except SpecError as error:
        raise exp.user_error(error.within("augment")) from None
    n = min(n, len(dataset.train))
    rows = np.random.default_rng(exp.train.seed).choice(len(dataset.train), n, replace=False)
    save_grid(dataset.train.images[np.sort(rows)], pipeline, exp.train.seed, draws, out)
    console.print(f"{n} images x {draws} draws of {len(exp.augment)} transforms: {out}")


@app.command()
@friendly
def check(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="FILE.py:NAME", help="Your layer or optimizer, e.g. my_conv.py:conv2d."
        ),
    ] = None,
    against: Annotated[
        str | None, typer.Option(help="Catalogue entry to check against (default: NAME).")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the catalogue and exit.")] = False,
    template: Annotated[
        str | None, typer.Option(help="Print a file with NAME's contract to fill in.")
    ] = None,
    numpy: Annotated[
        bool, typer.Option("--numpy", help="With --template: the NumPy form (forward/backward).")
    ] = False,
    json_: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report as JSON here ('-': stdout only)."),
    ] = None,
    speed: Annotated[bool, typer.Option(help="Time yours against the reference.")] = True,
):
    """Check your own layer or optimizer against the reference: values, gradients, edge cases,
    speed, and a hint naming the likely bug. Exit 0 when all pass, 1 when any fails."""
    import json

    from cnnlab.check import check as run_check
    from cnnlab.check import template as make_template
    from cnnlab.check.report import catalogue_table, render, to_json

    if list_:
        console.print(catalogue_table())
        return
    if template:
        typer.echo(make_template(template, numpy), nl=False)
        return
    if target is None:
        raise UserError("give FILE.py:NAME to check, --list for the catalogue, or --template NAME")
    report = run_check(target, against, speed=speed)
    if str(json_) == "-":
        typer.echo(json.dumps(to_json(report), indent=2))
    else:
        for part in render(report):
            console.print(part, highlight=False)
        if json_ is not None:
            json_.write_text(json.dumps(to_json(report), indent=2))
            console.print(f"report: {json_}")
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@friendly
def ui(
    runs: Annotated[
        Path | None, typer.Option(help="Runs folder (default $CNNLAB_RUNS_DIR, else ./runs).")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to listen on; anything but 127.0.0.1 opens it to others.")
    ] = "127.0.0.1",
):
    """A local web page: runs and sweeps, the network in 3D, and drawing a digit for a run."""
    from cnnlab.runs import runs_dir
    from cnnlab.ui import require_server

    require_server()
    from cnnlab.ui.server import serve

    root = runs or runs_dir()
    if host not in ("127.0.0.1", "localhost", "::1"):
        errors.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine "
            "can see your runs and make it compute",
            highlight=False,
        )
    console.print(f"cnnlab ui: http://{host}:{port}/ (runs in {root}/; Ctrl-C stops it)")
    serve(root, host, port)


ImageArg = Annotated[Path, typer.Argument(help="PNG or JPEG file.")]
OutOption = Annotated[Path, typer.Option(help="PNG to write.")]
Checkpoint = Annotated[str, typer.Option(help="best (by validation accuracy) or latest.")]


@app.command()
@friendly
def activations(
    run: RunArg,
    image: ImageArg,
    out: OutOption = Path("maps.png"),
    channels: Annotated[int, typer.Option(min=1, max=256, help="Channels drawn per layer.")] = 16,
    checkpoint: Checkpoint = "best",
):
    """Draw the feature maps of every conv layer for one image (the first --channels of each)."""
    from cnnlab.runs import find_run
    from cnnlab.ui import pictures, probe

    picture = probe.open_image_file(image)
    found = probe.load_probe(find_run(run), checkpoint)
    probe.require_image_input(found)
    layers = probe.activations(found, probe.model_input(found, picture))
    sheet = pictures.feature_maps_sheet(layers, channels)
    console.print(
        f"feature maps of {len(pictures.spatial_layers(layers))} conv layers: "
        f"{pictures.save(sheet, out)}"
    )


@app.command()
@friendly
def filters(run: RunArg, out: OutOption = Path("filters.png"), checkpoint: Checkpoint = "best"):
    """Draw the first conv layer's filters of a run (red positive, blue negative)."""
    from cnnlab.runs import find_run
    from cnnlab.ui import pictures, probe

    found = probe.load_probe(find_run(run), checkpoint)
    first = probe.first_filters(found)
    if first is None:
        raise UserError(f"run {found.run_dir.name} has no conv layer, so no filters to draw")
    row, kernel = first
    path = pictures.save(pictures.filters_picture(kernel), out)
    console.print(f"filters of layer {row.name} ({row.detail}), kernel {kernel.shape}: {path}")


@app.command()
@friendly
def saliency(
    run: RunArg,
    image: ImageArg,
    out: OutOption = Path("saliency.png"),
    checkpoint: Checkpoint = "best",
):
    """Draw where an image most moves the score of its top class (gradient w.r.t. the input)."""
    from cnnlab.runs import find_run
    from cnnlab.ui import pictures, probe

    picture = probe.open_image_file(image)
    found = probe.load_probe(find_run(run), checkpoint)
    probe.require_image_input(found)
    pixels = probe.model_input(found, picture)
    top, gradient = probe.saliency(found, pixels)
    path = pictures.save(pictures.saliency_picture(pixels, gradient), out)
    console.print(f"saliency of class '{found.class_names[top]}' (input, map, both): {path}")


def main() -> None:
    app()
