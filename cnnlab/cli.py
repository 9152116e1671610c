"""The `cnnlab` command: thin Typer commands that parse, call one library function, and print.

jax, flax and tensorflow-datasets are imported inside the commands, so `cnnlab --help` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

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
RunArg = Annotated[str, typer.Argument(help="Run folder, part of a run name, or 'latest'.")]


def friendly(command):
    """Bad input ends as one red line and exit code 2; Ctrl-C as exit code 130, no traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from cnnlab.environment import configure

        try:
            configure()
            return command(*args, **kwargs)
        except UserError as error:
            errors.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            errors.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as error:  # several processes: another one gone is one line too
            from cnnlab.processes import lost, stop

            line = lost(error)
            if line is None:
                raise
            stop(line)

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
    from cnnlab import api
    from cnnlab.report import overfit_verdict

    exp = load(experiment, set_)
    console.print(f"overfit [bold]{exp.name}[/] on {samples} samples (budget {max_steps} steps)")
    result = api.overfit(exp, samples, max_steps)
    say_notes(result.notes)
    console.print(overfit_verdict(result), highlight=False)
    if not result.memorised:
        console.print(f"[bold]diagnosis:[/] {result.diagnosis}", highlight=False)
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
    every device (train.devices), and with several processes on several machines."""
    from cnnlab import api
    from cnnlab.processes import cluster_from, start
    from cnnlab.report import TrainProgress, summary_table

    cluster = cluster_from(coordinator, num_processes, process_id)
    if (experiment is None) == (resume is None):
        raise UserError("give an experiment file to train, or --resume RUN to continue a run")
    if resume and set_:
        raise UserError("--set cannot change a run being resumed; train a new run with the changes")
    stopped = api.open_run(resume) if resume else None
    exp = load(stopped.path / "config.yaml" if stopped else experiment, set_)
    start(cluster)  # after the checks above, before JAX computes anything
    with TrainProgress(console, exp.train.steps) as progress:
        run = (
            api.resume(stopped, progress=progress) if stopped else api.train(exp, progress=progress)
        )
    summary = run.summary
    console.print(summary_table(summary))
    if summary["status"] == "interrupted":
        console.print(f"stopped at step {summary['steps']}; latest checkpoint saved")
        console.print(f"continue with: cnnlab train --resume {run.path}")
    console.print(f"run folder: {run.path}")
    if summary["status"] == "diverged":
        errors.print(f"[red]diverged:[/] {summary['failure']}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


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
    evaluation = evaluate_run(run_dir, split, checkpoint)
    console.print(f"run folder: {run_dir}")
    console.print(evaluation_tables(evaluation))
    from cnnlab.plots import plot_confusion

    picture = plot_confusion(evaluation, run_dir / f"confusion_{split}.png")
    console.print(f"confusion plot: {picture}")


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
):
    """Train an experiment over a grid or random draws of settings and seeds; rank the settings."""
    from cnnlab import api
    from cnnlab.sweeps import best_command, console_progress, sweep_table

    result = api.sweep(
        sweep_file,
        parallel,
        resume=Path(resume) if resume else None,
        new=new,
        progress=lambda spec: console_progress(console, spec),
        log=console.print,
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
    from cnnlab.history import list_runs, print_table, runs_table
    from cnnlab.runs import runs_dir

    found = list_runs(pattern)
    if not found:
        where = f"matching '{pattern}' " if pattern else ""
        console.print(f"no runs {where}in {runs_dir()}/")
        return
    print_table(console, runs_table(found, title=f"runs in {runs_dir()}/"))


@app.command()
@friendly
def show(run: RunArg = "latest"):
    """One run: its resolved config (YAML) and its results (summary, evaluations, plots)."""
    from cnnlab.history import show_run
    from cnnlab.runs import find_run

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

    console.print(f"curves: {plot_curves(find_run(run))}")


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
    from cnnlab.runs import find_run, read_json, read_jsonl

    run_dir = find_run(run)
    rows = read_jsonl(run_dir / "diagnostics.jsonl")
    if not rows:
        raise UserError(f"run {run_dir.name} has no diagnostics yet (it logged nothing)")
    console.print(diagnostics_table(rows))
    summary = read_json(run_dir / "summary.json")
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if summary.get("failure"):
        console.print(f"[red]diverged:[/] {summary['failure']}", highlight=False)


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
