"""Several processes training one run, one per host (or per GPU): JAX's distributed runtime.

Every process runs the same `cnnlab train` command with the same coordinator and its own
process id (options, CNNLAB_* variables, or a cluster launcher such as Slurm's `srun`, which
`jax.distributed.initialize` reads by itself). Each loads the data, builds the same program and
computes the same permutations; the compiled call spans every process's devices. Process 0
alone writes the run folder, which must be on a filesystem all hosts share; checkpoints are
written by all of them together (orbax).

A process that dies ends the others with one line and a non-zero exit: at once when they
are waiting on it in a collective (`lost`), else when JAX's runtime, after HEARTBEAT_SECONDS
without news of it, ends them from C++ with a page of log. That page goes to a file; a small
watcher process turns it into the line (`watch`).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import UserError

HEARTBEAT_SECONDS = 20  # a process silent this long counts as dead, and the others stop
START_SECONDS = 120  # how long a process waits for all the others to start
SHUTDOWN_SECONDS = 60  # how long a finished process waits for the others to finish


@dataclass(frozen=True)
class Cluster:
    """Where process 0 listens, how many processes train the run, and which one this is."""

    coordinator: str
    num_processes: int
    process_id: int


def cluster_from(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> Cluster | None:
    """The options, else the CNNLAB_* variables (cnnlab.environment); None when neither is
    given. All three go together."""
    from cnnlab.environment import processes

    env = processes()
    given = {
        "coordinator": coordinator or env.get("coordinator"),
        "num_processes": num_processes if num_processes is not None else env.get("num_processes"),
        "process_id": process_id if process_id is not None else env.get("process_id"),
    }
    missing = [key for key, value in given.items() if value is None]
    if len(missing) == 3:
        return None
    if missing:
        names = ", ".join(f"--{key.replace('_', '-')} (or CNNLAB_{key.upper()})" for key in missing)
        raise UserError(
            f"several processes need --coordinator, --num-processes and --process-id; "
            f"give {names} too"
        )
    count = _whole(given["num_processes"], "--num-processes (CNNLAB_NUM_PROCESSES)")
    index = _whole(given["process_id"], "--process-id (CNNLAB_PROCESS_ID)")
    if count < 1 or not 0 <= index < count:
        raise UserError(
            f"--process-id {index} with --num-processes {count}: process ids run from 0 to "
            f"{max(count - 1, 0)}"
        )
    host, _, port = str(given["coordinator"]).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--coordinator {given['coordinator']!r}: expected HOST:PORT of process 0, "
            "e.g. node1:12355"
        )
    return Cluster(str(given["coordinator"]), count, index)


def _whole(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} {value!r}: expected a whole number") from None


def cluster_detected() -> bool:
    """Whether a launcher that jax.distributed.initialize recognises started several copies of
    this command (Slurm's srun, Open MPI's mpirun, or JAX's own JAX_COORDINATOR_ADDRESS)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "SLURM_JOB_ID" in env:
        return _tasks(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")) > 1
    return _tasks(env.get("OMPI_COMM_WORLD_SIZE")) > 1


def _tasks(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 1


def start(cluster: Cluster | None) -> None:
    """Join the other processes of the run, before JAX computes anything. Without a cluster
    (options, variables or a launcher), there is one process and nothing to do."""
    import jax

    if jax.distributed.is_initialized() or (cluster is None and not cluster_detected()):
        return
    where = cluster.coordinator if cluster else "the address the launcher gives"
    watch(cluster.process_id if cluster else int(os.environ.get("SLURM_PROCID", "0")))
    try:
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator if cluster else None,
            num_processes=cluster.num_processes if cluster else None,
            process_id=cluster.process_id if cluster else None,
            initialization_timeout=START_SECONDS,
            heartbeat_timeout_seconds=HEARTBEAT_SECONDS,
            shutdown_timeout_seconds=SHUTDOWN_SECONDS,
        )
    except Exception as error:  # the runtime raises several types, all meaning "not joined"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"could not join the other processes at {where} within {START_SECONDS} s ({reason}): "
            "start every process with the same --coordinator and --num-processes and its own "
            "--process-id"
        ) from None


def writes() -> bool:
    """Whether this process writes the run folder: process 0 alone."""
    import jax

    return jax.process_index() == 0


def shared_path(path: Path | None) -> Path:
    """Process 0's `path` on every process (the run folder it just created)."""
    import jax

    if jax.process_count() == 1:
        return path
    import numpy as np
    from jax.experimental import multihost_utils

    text = str(path or "").encode()
    buffer = np.zeros(4096, np.uint8)
    buffer[: len(text)] = np.frombuffer(text, np.uint8)
    value = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return Path(bytes(value[value != 0]).decode())


def wait_for_writer(name: str) -> None:
    """Every process waits here until all reach it: what process 0 wrote before it is there
    for the others to read (no-op on one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (on one process: the flag itself)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


# ---------------------------------------------------------------------------------------------
# One line when JAX ends this process


FATAL = re.compile(r"^F\d{4} [\d:.]+\s+\d+ \S+\] (.*)")
_watcher: dict = {}  # the pipe to the watcher and the runtime's log, once watched


def watch(process_id: int) -> Path:
    """Send the C++ runtime's log (file descriptor 2) to a file and keep Python's stderr on the
    terminal; fork a watcher that waits for this process to end and, if the runtime ended it
    (another process died, or the coordinator is gone), prints one line saying so."""
    from cnnlab.environment import cache_dir

    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"process{process_id}-", suffix=".log", dir=folder)
    log = Path(name)
    terminal = os.dup(2)
    sys.stderr.flush()
    os.dup2(handle, 2)
    os.close(handle)
    sys.stderr = open(terminal, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives on
    alive, ended = os.pipe()
    if os.fork() == 0:  # the watcher: reads until the trainer's end of the pipe closes
        os.close(ended)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
        said = os.read(alive, 1)  # b"": the trainer ended without saying why itself
        line = None if said else ended_by_runtime(log, process_id)
        if line:
            os.write(terminal, (line + "\n").encode())
        os._exit(0)
    os.close(alive)  # the trainer holds `ended` open until it exits, however it exits
    _watcher.update(pipe=ended, log=log, process_id=process_id)
    return log


def ended_by_runtime(log: Path, process_id: int) -> str | None:
    """The one line for a process the runtime ended, from its log; None if it did not."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    fatal = next((m.group(1) for m in map(FATAL.match, text.splitlines()) if m), None)
    if fatal is None:
        return None
    if "stopped sending heartbeats" in text:
        cause = f"another process sent no heartbeat for {HEARTBEAT_SECONDS} s (it died or hangs)"
    elif "Failed to send RPC to coordination service" in text:
        cause = "process 0 (the coordinator) cannot be reached"
    else:
        cause = fatal.rsplit("absl::Status: ", 1)[-1][:200]
    return stopped_line(process_id, cause, log)


def stopped_line(process_id: int, cause: str, log: Path) -> str:
    return (
        f"error: process {process_id} stopped: {cause}; every process of the run stops. Start "
        f"them all again with --resume RUN (the runtime's log: {log})"
    )


def lost(error: BaseException) -> str | None:
    """The one line for an error that says another process is gone (a collective whose peer
    closed its connection); None for any other error, or with one process."""
    if not _watcher or "jax" not in sys.modules:
        return None
    import jax

    text = str(error)
    peer_gone = any(
        sign in text for sign in ("Connection closed by peer", "Connection reset", "Socket closed")
    )
    if not isinstance(error, jax.errors.JaxRuntimeError) or not peer_gone:
        return None
    return stopped_line(_watcher["process_id"], "another process left the run", _watcher["log"])


def stop(line: str, code: int = 1):
    """Print `line`, tell the watcher it is said, and end now: JAX's orderly shutdown would
    wait for the processes that are gone."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if _watcher:
        os.write(_watcher["pipe"], b"said")
    os._exit(code)
