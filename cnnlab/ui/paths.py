"""Names from requests to folders inside the runs folder, and nowhere else.

A run is named by its path relative to the runs folder (`2026-11-22_14-03-11_digits`, or
`<sweep folder>/trials/<trial>` for a sweep's trial). Each part must be a plain folder name,
and the resolved folder (symbolic links followed) must still lie inside the runs folder."""

from __future__ import annotations

import re
from pathlib import Path

from cnnlab.errors import UserError

PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+,-]*$")  # no '..', no leading dot, no separators
MAX_NAME = 400


class NotFound(UserError):
    """A name that is well formed but names nothing (answered with 404)."""


def inside(root: Path, name: str) -> Path:
    """`root/name` resolved, if `name` is a relative path of plain parts that stays in `root`."""
    parts = name.split("/")
    if not name or len(name) > MAX_NAME or not all(PART.match(part) for part in parts):
        raise UserError(
            f"bad name {name[:80]!r}: give a run or sweep folder name from the runs list"
        )
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):  # a symbolic link pointing out of the runs folder
        raise UserError(f"bad name {name[:80]!r}: it leads outside the runs folder")
    return path


def run_folder(root: Path, name: str) -> Path:
    """The run folder `name` (it has a config.yaml), or NotFound."""
    path = inside(root, name)
    config = path / "config.yaml"
    if not config.is_file() or not config.resolve().is_relative_to(root.resolve()):
        raise NotFound(f"no run '{name}' in the runs folder (see the runs list)")
    return path


def sweep_folder(root: Path, name: str) -> Path:
    """The sweep folder `name` (it has a sweep.json), or NotFound."""
    path = inside(root, name)
    if not (path / "sweep.json").is_file():
        raise NotFound(f"no sweep '{name}' in the runs folder (see the sweeps list)")
    return path


def contained(root: Path, path: Path) -> bool:
    """Whether `path` (links followed) and its config.yaml lie inside `root`: listings leave
    out links that point elsewhere, as requests for them are refused."""
    base = root.resolve()
    config = path / "config.yaml"
    return path.resolve().is_relative_to(base) and (
        not config.exists() or config.resolve().is_relative_to(base)
    )


def relative_name(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()
