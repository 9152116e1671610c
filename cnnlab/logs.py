"""Third-party noise off the terminal: what orbax, absl, asyncio, TFDS, tqdm, Pillow and Python's
warnings say goes to a buffer, saved as `cnnlab.log` in the run folder, and never before or
around cnnlab's own one-line messages.

Libraries talk through four channels: Python logging (orbax through absl, asyncio's "Task
exception was never retrieved"), the warnings module (Pillow, JAX, TFDS), tracebacks of
background threads (orbax's save threads when the disk is full) and progress bars (tqdm, TFDS).
Each is routed here; cnnlab itself prints through rich and is not touched.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import traceback
from pathlib import Path

LOG_FILE = "cnnlab.log"
KEEP = 5000  # records kept in memory until a run folder is known

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Buffer(logging.Handler):
    """The latest records, formatted, until `save` writes them into a run folder."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(_FORMAT.format(record))


_buffer = _Buffer()


def quiet() -> None:
    """Route every library channel into the buffer (idempotent; called by each command)."""
    # Set before TFDS and tqdm are imported (the commands import them later).
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging._warn_preinit_stderr = False  # "WARNING: Logging before flag parsing"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if _to_terminal(handler):
            root.removeHandler(handler)
    if _buffer not in root.handlers:
        root.addHandler(_buffer)
    root.setLevel(logging.INFO)
    for name in ("absl", "orbax", "asyncio", "tensorflow_datasets", "jax", "PIL", "etils"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # absl and TFDS add stderr handlers of their own
            if _to_terminal(handler):
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)
    threading.excepthook = _thread_failed
    sys.unraisablehook = _unraisable


def _to_terminal(handler: logging.Handler) -> bool:
    """Handlers that print (absl's, logging's default): others, such as a test's capture, stay."""
    if type(handler).__name__ == "ABSLHandler":
        return True
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )


def _thread_failed(args) -> None:
    # orbax's save threads fail with tracebacks when the disk is full; the error itself reaches
    # the main thread as one line, so the traceback belongs in the log.
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    logging.getLogger("cnnlab.threads").error("thread %s failed:\n%s", args.thread, text)


def _unraisable(args) -> None:
    logging.getLogger("cnnlab.unraisable").warning(
        "%s: %r", args.err_msg or "exception ignored", args.exc_value
    )


def save(run_dir: Path | None) -> None:
    """Append what the libraries said to `run_dir/cnnlab.log` (nothing when there is no run
    folder or nothing was said; a folder that cannot be written keeps its old log)."""
    lines = list(_buffer.lines)
    _buffer.lines.clear()
    if run_dir is None or not lines or not Path(run_dir).is_dir():
        return
    with contextlib.suppress(OSError), open(Path(run_dir) / LOG_FILE, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def disable_progress_bars() -> None:
    """TFDS draws tqdm bars and prints a banner while preparing a dataset."""
    with contextlib.suppress(Exception):
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
