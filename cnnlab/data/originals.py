"""Readers for the original distribution files of MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100.

Plain numpy, gzip, tarfile and a restricted pickle: no TensorFlow, no TFDS. Each reader returns
`Originals`, the arrays the TFDS builders in `tfds_source` turn into a prepared dataset.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

# What a truncated or damaged gzip, tar or pickle raises: each becomes one line naming the file.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


def damaged(path: Path, error: BaseException) -> UserError:
    lines = str(error).splitlines()
    reason = getattr(error, "strerror", None) or (lines[0] if lines else type(error).__name__)
    if isinstance(error, EOFError):
        reason = f"it ends early, probably a cut-off download ({reason})"
    elif isinstance(error, tarfile.ReadError):  # its message lists each method it tried
        reason = "not a tar archive, or a damaged one"
    return UserError(f"cannot read {path}: {reason}; download it again")


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE


@dataclass
class Originals:
    """Arrays of one dataset: per split a feature -> array dict ("image" is NHWC uint8)."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    label_names: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel feature -> names


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its files, in the binary and the pickle distributions."""

    binary_tarball: str
    binary_folder: str
    binary_train: tuple[str, ...]
    binary_test: str
    binary_label_files: dict[str, str]  # feature -> names file
    pickle_tarball: str
    pickle_folder: str
    pickle_train: tuple[str, ...]
    pickle_test: str
    pickle_meta: str
    pickle_label_keys: dict[str, bytes]  # feature -> key of the labels in a batch
    pickle_name_keys: dict[str, bytes]  # feature -> key of the names in the meta file

    @property
    def label_features(self) -> tuple[str, ...]:
        """Label features in the order their bytes precede each binary record."""
        return tuple(self.binary_label_files)


CIFAR10 = CifarLayout(
    binary_tarball="cifar-10-binary.tar.gz",
    binary_folder="cifar-10-batches-bin",
    binary_train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    binary_test="test_batch.bin",
    binary_label_files={"label": "batches.meta.txt"},
    pickle_tarball="cifar-10-python.tar.gz",
    pickle_folder="cifar-10-batches-py",
    pickle_train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    pickle_test="test_batch",
    pickle_meta="batches.meta",
    pickle_label_keys={"label": b"labels"},
    pickle_name_keys={"label": b"label_names"},
)

CIFAR100 = CifarLayout(
    binary_tarball="cifar-100-binary.tar.gz",
    binary_folder="cifar-100-binary",
    binary_train=("train.bin",),
    binary_test="test.bin",
    binary_label_files={"coarse_label": "coarse_label_names.txt", "label": "fine_label_names.txt"},
    pickle_tarball="cifar-100-python.tar.gz",
    pickle_folder="cifar-100-python",
    pickle_train=("train",),
    pickle_test="test",
    pickle_meta="meta",
    pickle_label_keys={"label": b"fine_labels", "coarse_label": b"coarse_labels"},
    pickle_name_keys={"label": b"fine_label_names", "coarse_label": b"coarse_label_names"},
)

CIFAR_LAYOUTS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


# ---------------------------------------------------------------- MNIST and Fashion-MNIST (IDX)


def find_idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files in `folder` (gzipped, or already gunzipped), or a UserError naming them."""
    found, missing = {}, []
    for key, name in IDX_FILES.items():
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(name)
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)} (the original IDX files)")
    return found


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array of the shape its header gives."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except ARCHIVE_ERRORS as error:
        raise damaged(path, error) from None
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {data.size} bytes, its header promises {shape}")
    return data.reshape(shape)


def read_idx_originals(files: dict[str, Path]) -> Originals:
    """MNIST-format arrays from the four IDX files (keys as in IDX_FILES)."""

    def split(prefix: str) -> dict[str, np.ndarray]:
        images, labels = read_idx(files[f"{prefix}_images"]), read_idx(files[f"{prefix}_labels"])
        if len(images) != len(labels):
            raise UserError(
                f"{files[f'{prefix}_images']} has {len(images)} images but {len(labels)} labels"
            )
        return {"image": images[..., None], "label": labels.astype(np.int64)}

    return Originals(train=split("train"), test=split("test"))


# ---------------------------------------------------------------- CIFAR (binary and pickle)


class Archive:
    """The files of one CIFAR batch folder, read from the folder or from a tarball of it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.names = {p.name for p in self.path.iterdir() if p.is_file()}
            self._tar = None
        else:
            try:
                self._tar = tarfile.open(self.path)  # noqa: SIM115 - Archive.close() closes it
                members = self._tar.getmembers()  # reads to the end: a cut-off file fails here
            except ARCHIVE_ERRORS as error:
                raise damaged(self.path, error) from None
            self._members = {Path(m.name).name: m for m in members if m.isfile()}
            self.names = set(self._members)

    def read(self, name: str) -> bytes:
        try:
            if self._tar is None:
                return (self.path / name).read_bytes()
            return self._tar.extractfile(self._members[name]).read()
        except ARCHIVE_ERRORS as error:
            raise damaged(self.path, error) from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def cifar_format(archive: Archive, layout: CifarLayout) -> str | None:
    """'binary', 'pickle' or None, from the files the archive holds."""
    if set(layout.binary_train) | {layout.binary_test} <= archive.names:
        return "binary"
    if set(layout.pickle_train) | {layout.pickle_test, layout.pickle_meta} <= archive.names:
        return "pickle"
    return None


def find_cifar_archive(folder: Path, layout: CifarLayout) -> Path:
    """The first of the known CIFAR files or folders present in `folder` (or `folder` itself)."""
    candidates = [
        folder / layout.binary_tarball,
        folder / layout.binary_folder,
        folder / layout.pickle_tarball,
        folder / layout.pickle_folder,
    ]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    archive = Archive(folder)
    if cifar_format(archive, layout):
        return folder
    wanted = ", ".join(c.name for c in candidates)
    raise UserError(f"{folder} holds none of {wanted} (the original CIFAR files)")


def read_cifar_originals(path: Path, layout: CifarLayout) -> Originals:
    """CIFAR arrays from a binary or pickle distribution, as a tarball or an extracted folder."""
    archive = Archive(path)
    try:
        kind = cifar_format(archive, layout)
        if kind == "binary":
            return _read_cifar_binary(archive, layout)
        if kind == "pickle":
            return _read_cifar_pickle(archive, layout)
        wanted = ", ".join((*layout.binary_train, layout.binary_test))
        raise UserError(
            f"{path} holds neither {wanted} nor the pickle batches of {layout.pickle_folder}/"
        )
    finally:
        archive.close()


def _read_cifar_binary(archive: Archive, layout: CifarLayout) -> Originals:
    features = layout.label_features
    record = len(features) + CIFAR_PIXELS

    def split(names) -> dict[str, np.ndarray]:
        raw = b"".join(archive.read(name) for name in names)
        if len(raw) % record:
            raise UserError(
                f"{archive.path}: {', '.join(names)} is not a whole number of {record}-byte records"
            )
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
        out = {"image": _chw_to_hwc(rows[:, len(features) :])}
        for i, feature in enumerate(features):
            out[feature] = rows[:, i].astype(np.int64)
        return out

    names = {}
    for feature, file in layout.binary_label_files.items():
        if file in archive.names:
            names[feature] = [
                line.strip() for line in archive.read(file).decode().splitlines() if line.strip()
            ]
    return Originals(
        train=split(layout.binary_train), test=split([layout.binary_test]), label_names=names
    )


def _read_cifar_pickle(archive: Archive, layout: CifarLayout) -> Originals:
    def split(names) -> dict[str, np.ndarray]:
        batches = [_load_pickle(archive, name) for name in names]
        out = {
            "image": _chw_to_hwc(
                np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
            )
        }
        for feature, key in layout.pickle_label_keys.items():
            out[feature] = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        return out

    meta = _load_pickle(archive, layout.pickle_meta)
    names = {
        feature: [_text(n) for n in meta[key]] for feature, key in layout.pickle_name_keys.items()
    }
    return Originals(
        train=split(layout.pickle_train), test=split([layout.pickle_test]), label_names=names
    )


def _chw_to_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1).copy()


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only: a pickle may run any code otherwise."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(archive: Archive, name: str) -> dict:
    try:
        # CIFAR's pickles come from Python 2: byte-string keys, hence encoding="bytes".
        return _ArrayUnpickler(io.BytesIO(archive.read(name)), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(f"{archive.path}: cannot read CIFAR batch {name}: {error}") from None
