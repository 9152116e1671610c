"""The environment cnnlab reads, in one place, and the one-time set-up of JAX.

| variable | meaning | default |
|---|---|---|
| CNNLAB_RUNS_DIR | where run and sweep folders go | ./runs |
| CNNLAB_CACHE_DIR | decoded datasets and compiled programs | ~/.cache/cnnlab |
| TFDS_DATA_DIR | prepared TFDS datasets (TFDS's own variable) | ~/tensorflow_datasets |
| JAX_COMPILATION_CACHE_DIR | JAX's own; wins over the cache under CNNLAB_CACHE_DIR | |
| CNNLAB_COORDINATOR | HOST:PORT of process 0, for training on several processes | |
| CNNLAB_NUM_PROCESSES | how many processes train the run | |
| CNNLAB_PROCESS_ID | this process's number, 0 to CNNLAB_NUM_PROCESSES - 1 | |

Nothing happens at import: the CLI and the Python API call `configure()` before they work.
"""

from __future__ import annotations

import os
from pathlib import Path


def _path(variable: str, default: Path) -> Path:
    """The variable's value as a path; unset or empty means the default."""
    return Path(os.environ.get(variable) or default).expanduser()


def runs_dir() -> Path:
    return _path("CNNLAB_RUNS_DIR", Path("runs"))


def cache_dir() -> Path:
    return _path("CNNLAB_CACHE_DIR", Path.home() / ".cache" / "cnnlab")


def tfds_data_dir() -> Path:
    return _path("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets")


def processes() -> dict[str, str]:
    """The several-process settings that are set: coordinator, num_processes, process_id."""
    names = {
        "coordinator": "CNNLAB_COORDINATOR",
        "num_processes": "CNNLAB_NUM_PROCESSES",
        "process_id": "CNNLAB_PROCESS_ID",
    }
    return {key: os.environ[name] for key, name in names.items() if os.environ.get(name)}


# XLA:CPU's concurrency-optimised scheduler keeps the activations of every step of a multi-step
# call alive until it ends: 10 airbench steps of batch 1024 asked for 26 GB, 2.7 GB without it,
# and ran 5-8% faster without it (benchmarks/RESULTS.md). XLA reads it once, when it starts.
_XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def configure() -> None:
    """Keep compiled programs on disk, so a second run of an experiment skips most compiling,
    and add cnnlab's XLA flags (for a process whose JAX has not started computing yet; flags
    the user set win). A cache directory the user chose for JAX wins. Safe to call more than
    once."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in _XLA_FLAGS:
        if flag.partition("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
