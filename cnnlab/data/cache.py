"""Decoded datasets kept as uncompressed .npz files (no pickle), keyed by a fingerprint of the source."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset, Split


def folder_cache_dir() -> Path:
    """$CNNLAB_CACHE_DIR, else ~/.cache/cnnlab: where decoded image folders are kept."""
    from cnnlab.environment import cache_dir

    return cache_dir()


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cache_file(cache_dir: Path, identity: str, name: str, fingerprint: str) -> Path:
    """`<name>-<hash of identity>-<hash of fingerprint>.npz`: one live file per source."""
    return Path(cache_dir) / f"{name}-{_digest(identity, 10)}-{_digest(fingerprint, 16)}.npz"


def load(path: Path) -> Dataset | None:
    """The cached dataset at `path`, or None when it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return Dataset(
                name=str(arrays["name"]),
                class_names=tuple(str(n) for n in arrays["class_names"]),
                train=Split(arrays["train_images"], arrays["train_labels"]),
                test=Split(arrays["test_images"], arrays["test_labels"]),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


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
