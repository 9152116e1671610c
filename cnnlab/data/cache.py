"""Decoded datasets kept as uncompressed .npz files (no pickle), keyed by a fingerprint of the source."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset, Split

SPLITS = ("train", "test")


def folder_cache_dir() -> Path:
    """$CNNLAB_CACHE_DIR, else ~/.cache/cnnlab: where decoded image folders are kept."""
    from cnnlab.environment import cache_dir

    return cache_dir()


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cache_file(cache_dir: Path, identity: str, name: str, fingerprint: str) -> Path:
    """`<name>-<hash of identity>-<hash of fingerprint>.npz`: one live file per source."""
    return Path(cache_dir) / f"{name}-{_digest(identity, 10)}-{_digest(fingerprint, 16)}.npz"


def load(path: Path, splits: tuple[str, ...] = SPLITS) -> Dataset | None:
    """The cached dataset at `path`, or None when it is absent or unreadable. Only the `splits`
    asked for are read from the file (each is a separate array in it); the others come back
    empty, shaped like the images of one read."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            read = {s: Split(arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in splits}
            name, classes = str(arrays["name"]), tuple(str(n) for n in arrays["class_names"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    shown = next(iter(read.values()))
    empty = shown.take(np.arange(0))
    return Dataset(name, classes, read.get("train", empty), read.get("test", empty))


def store(path: Path, dataset: Dataset) -> None:
    """Write atomically and drop older files of the same source; a read-only place is skipped."""
    path = Path(path)
    stem_prefix = path.name.rsplit("-", 1)[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as out:
            np.savez(
                out,
                name=np.array(dataset.name),
                class_names=np.array(dataset.class_names, dtype=np.str_),
                train_images=dataset.train.images,
                train_labels=dataset.train.labels,
                test_images=dataset.test.images,
                test_labels=dataset.test.labels,
            )
        os.replace(partial, path)
        for old in path.parent.glob(f"{stem_prefix}-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        return
