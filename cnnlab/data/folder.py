"""Image folders: train/<class>/*.png|jpg|jpeg and test/<class>/..., as a folder or a tarball."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.data import cache
from cnnlab.data.dataset import Dataset, Split
from cnnlab.errors import SpecError, UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
GREY_MODES = {"L", "1"}
LAYOUT = "train/<class>/*.png|jpg|jpeg and test/<class>/..."


def is_tarball(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def folder_name(path: Path) -> str:
    """The dataset's name: the folder's name, or the tarball's without its suffix."""
    name = path.name
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_folder(path: str, splits: tuple[str, ...] = cache.SPLITS) -> Dataset:
    """An image folder or a tarball of one (optionally wrapped in one top folder) as arrays.

    Images become one channel mode (greyscale when every image is, else RGB) and must share one
    size. Classes are the sorted names of the train/ subfolders. Decoded arrays are cached in
    $CNNLAB_CACHE_DIR (default ~/.cache/cnnlab), keyed by path, size and modification time;
    from the cache only `splits` are read (decoding reads both, to write the cache).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise SpecError(("path",), f"no such folder or tarball: {source}")
    if not source.is_dir() and not is_tarball(source):
        raise SpecError(
            ("path",), f"{source} is neither a folder nor a .tar, .tar.gz or .tgz tarball"
        )
    name = folder_name(source)
    cache_path = cache.cache_file(
        cache.folder_cache_dir(), str(source.resolve()), name, _fingerprint(source)
    )
    cached = cache.load(cache_path, splits)
    if cached is not None:
        return cached
    dataset = decode_images(
        name, source, _tar_images(source) if is_tarball(source) else _folder_images(source)
    )
    cache.store(cache_path, dataset)
    return dataset


def _fingerprint(source: Path) -> str:
    """Path, size and mtime of the tarball, or of every file in the folder."""
    paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    stamps = [str(source.resolve())]
    for path in paths:
        stat = path.stat()
        stamps.append(f"{path} {stat.st_size} {stat.st_mtime_ns}")
    return "\n".join(stamps)


def _wanted(parts: tuple[str, ...]) -> bool:
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in parts)
    return not hidden and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES


def _folder_images(root: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and _wanted(parts):
            yield parts, path.read_bytes()


def _tar_images(tarball: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    try:
        # Streaming mode: one pass over the compressed data, members in archive order.
        with tarfile.open(tarball, "r|*") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                parts = parts[1:] if parts and parts[0] == "." else parts
                if member.isfile() and parts and _wanted(parts):
                    yield parts, archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"cannot read {tarball} as a tarball: {error}") from None


def _place(parts: tuple[str, ...], where: str) -> tuple[tuple[str, ...], str, str] | None:
    """(wrapper folders, split, class) of an image at train|test/<class>/<file>; None elsewhere."""
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[:-3], parts[-3], parts[-2]
    if any(part in SPLITS for part in parts[:-1]):
        raise UserError(f"{where}: {'/'.join(parts)} is not in {LAYOUT}")
    return None


def decode_images(
    name: str, source: Path, images: Iterator[tuple[tuple[str, ...], bytes]]
) -> Dataset:
    """Decode (relative path parts, file bytes) pairs into a Dataset, checking layout and sizes."""
    from cnnlab.files import read_image

    arrays, keys, wrappers = [], [], set()
    first = None  # (size, file) of the first image: every other must match
    for parts, data in images:
        place = _place(parts, str(source))
        if place is None:
            continue
        wrapper, split, label = place
        wrappers.add(wrapper)
        file = "/".join(parts)
        # errors name the image by its path, not by the in-memory file holding its bytes
        with read_image(io.BytesIO(data), f"{source}/{file}") as image:
            size, grey = image.size, image.mode in GREY_MODES
            array = np.asarray(image.convert("L" if grey else "RGB"))
        if first is None:
            first = (size, file)
        elif size != first[0]:
            raise UserError(
                f"{source}: {file} is {size[0]}x{size[1]} but {first[1]} is {first[0][0]}x{first[0][1]}; "
                f"all images must have one size ({first[0][0]}x{first[0][1]} expected)"
            )
        arrays.append(array)
        keys.append((split, label, file))
    if len(wrappers) > 1:
        tops = ", ".join(sorted("/".join(w) or "." for w in wrappers))
        raise UserError(
            f"{source}: images sit under several top folders ({tops}); expected one {LAYOUT}"
        )
    return _assemble(name, source, arrays, keys)


def _assemble(
    name: str, source: Path, arrays: list[np.ndarray], keys: list[tuple[str, str, str]]
) -> Dataset:
    for split in SPLITS:
        if not any(key[0] == split for key in keys):
            raise UserError(
                f"{source} has no {split}/ folder with images; an image folder holds {LAYOUT}"
            )
    class_names = tuple(sorted({label for split, label, _ in keys if split == "train"}))
    if len(class_names) < 2:
        raise UserError(
            f"{source}: train/ holds one class ({class_names[0]}); a classifier needs at least "
            "two class folders, train/<class>/ for each"
        )
    unknown = sorted({label for split, label, _ in keys if split == "test"} - set(class_names))
    if unknown:
        raise UserError(f"{source}: test/ has classes that train/ lacks: {', '.join(unknown)}")
    rgb = any(array.ndim == 3 for array in arrays)
    images = np.stack([_channels(array, rgb) for array in arrays])
    labels = np.array([class_names.index(label) for _, label, _ in keys], dtype=np.int32)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    splits = {}
    for split in SPLITS:
        index = np.array([i for i in order if keys[i][0] == split])
        splits[split] = Split(images[index], labels[index])
    return Dataset(name=name, class_names=class_names, train=splits["train"], test=splits["test"])


def _channels(array: np.ndarray, rgb: bool) -> np.ndarray:
    """HxW grey -> HxWx1, or HxWx3 when the dataset mixes in colour images."""
    if array.ndim == 3:
        return array
    return np.repeat(array[..., None], 3, axis=-1) if rgb else array[..., None]
