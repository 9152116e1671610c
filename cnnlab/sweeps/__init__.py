"""Sweeps: one experiment trained over a grid or random draws of settings, each over seeds.

```yaml
# cnnlab sweep experiments/sweeps/lr.yaml
base: ../digits.yaml            # the experiment file, relative to this file
metric: best_val_accuracy       # what ranks the settings: one of METRICS
grid:                           # dotted keys -> lists of values: every combination
  optimizer.lr: [0.0003, 0.001, 0.003]
random:                         # seeded draws, crossed with the grid
  trials: 4                     # settings drawn
  seed: 0                       # the same seed draws the same settings
  params:
    optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    optimizer.args.b1: {uniform: [0.8, 0.95]}
    train.batch_size: {int_uniform: [32, 128]}
    model.preset: {choice: [tiny, small]}
seeds: [0, 1, 2]                # every setting is trained once per seed (sets train.seed)
set: {train.steps: 300}         # overrides for every trial
```

Values go into the base experiment the way `--set` does, so every trial is validated like any
experiment, and a bad value is reported at its line in the sweep file. Numbers written as
`1e-4` (which YAML reads as text) are read as numbers.

A sweep folder `runs/<time>_sweep_<name>/` holds `sweep.yaml` (the file as run), `sweep.json`
(the trials), `trials/<trial id>/` (one full run per trial: config.yaml, metrics, checkpoints,
summary.json), and the results: `sweep.csv` (one row per trial), `sweep_settings.csv` (one row
per setting, ranked: mean and sample std of the metric over the finished seeds) and `sweep.png`
(the metric against each swept parameter, error bars over seeds; a log axis for log_uniform
draws and for grids of positive numbers spanning a decade or more).

Resuming: `cnnlab sweep FILE` continues the newest sweep folder made from exactly the same
trials (same values, seeds and resolved experiments) that still has unfinished trials, and
otherwise starts a new folder. `--resume DIR` continues DIR with the file's current trials (to
add values or seeds to a sweep); `--new` always starts afresh. A trial is finished when its
summary.json says `completed`; an unfinished trial folder is deleted and trained from scratch.
"""

from cnnlab.sweeps.results import (
    SweepResult,
    best_command,
    collect_results,
    sweep_table,
    write_results,
)
from cnnlab.sweeps.runner import console_progress, run_sweep, train_trial, trial_dir
from cnnlab.sweeps.spec import Sweep, Trial, load_sweep

__all__ = [
    "Sweep",
    "SweepResult",
    "Trial",
    "best_command",
    "collect_results",
    "console_progress",
    "load_sweep",
    "run_sweep",
    "sweep_table",
    "train_trial",
    "trial_dir",
    "write_results",
]
