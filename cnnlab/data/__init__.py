"""Data sources -> one in-memory `Dataset` (uint8 NHWC images, int32 labels, class names).

Sources: scikit-learn's digits, the TFDS datasets mnist, fashion_mnist, cifar10 and cifar100
(prepared without TensorFlow, read through `tfds.data_source`) and image folders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnlab.data.dataset import Dataset, Split, split_validation
from cnnlab.data.tfds_source import TFDS_NAMES
from cnnlab.errors import SpecError
from cnnlab.registry import Registry

__all__ = [
    "SOURCES",
    "Dataset",
    "Split",
    "load_dataset",
    "prepare",
    "prepared_datasets",
    "split_validation",
]

_sources: Registry[Callable[..., Dataset]] = Registry("data source")


@_sources.register("digits")
def _digits(path, data_dir, splits) -> Dataset:
    from cnnlab.data.digits import load_digits

    return load_digits()  # bundled and tiny: both splits, always


def _tfds_loader(name: str) -> Callable[..., Dataset]:
    def load(path, data_dir, splits) -> Dataset:
        from cnnlab.data.tfds_source import load_tfds

        return load_tfds(name, data_dir, splits)

    return load


for _name in TFDS_NAMES:
    _sources.register(_name)(_tfds_loader(_name))


@_sources.register("folder")
def _folder(path, data_dir, splits) -> Dataset:
    from cnnlab.data.folder import load_folder

    if path is None:
        raise SpecError(
            ("path",), "the folder source needs a path: a folder or a .tar/.tar.gz/.tgz of one"
        )
    return load_folder(path, splits)


SOURCES: tuple[str, ...] = ("digits", *TFDS_NAMES, "folder")


def load_dataset(
    source: str,
    *,
    path: str | None = None,
    data_dir: str | None = None,
    splits: tuple[str, ...] = ("train", "test"),
) -> Dataset:
    """Load a dataset by source name.

    `path` is for the folder source (a folder or a tarball of train/<class>/ and test/<class>/
    images); `data_dir` is the TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    Of a cached dataset only `splits` are read; the others come back empty.
    """
    loader = _sources.get(source, ("source",))
    if path is not None and source != "folder":
        raise SpecError(("path",), f"only the folder source takes a path, not '{source}'")
    return loader(path, data_dir, tuple(splits))


def prepare(
    name: str,
    *,
    from_dir: str | None = None,
    data_dir: str | None = None,
    mirror: str | None = None,
    checksums: str | None = None,
) -> Path:
    """Prepare a TFDS dataset without TensorFlow (see `cnnlab.data.tfds_source.prepare`)."""
    from cnnlab.data.tfds_source import prepare as prepare_tfds

    return prepare_tfds(
        name, from_dir=from_dir, data_dir=data_dir, mirror=mirror, checksums=checksums
    )


def prepared_datasets(data_dir: str | None = None) -> list[dict]:
    """One dict per named dataset: name, prepared, location, splits (split -> example count)."""
    from cnnlab.data.digits import TEST_SIZE
    from cnnlab.data.tfds_source import describe

    digits = {
        "name": "digits",
        "prepared": True,
        "location": "bundled with scikit-learn",
        "splits": {"train": 1797 - TEST_SIZE, "test": TEST_SIZE},
    }
    return [digits, *(describe(name, data_dir) for name in TFDS_NAMES)]
