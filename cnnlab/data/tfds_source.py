"""TFDS datasets without TensorFlow: prepare from the original files, read through `tfds.data_source`.

Preparing uses subclasses of the stock TFDS builders (same name, version and features) whose
`_split_generators` / `_generate_examples` read the original files with numpy and encode PNGs
with Pillow, written in the `array_record` format. Afterwards plain `tfds.data_source(name)`
reads them, in the same order as a dataset built by the stock builder with TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.data import cache
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.originals import (
    CIFAR_LAYOUTS,
    IDX_FILES,
    Originals,
    find_cifar_archive,
    find_idx_files,
    read_cifar_originals,
    read_idx_originals,
)
from cnnlab.errors import UserError, suggest
from cnnlab.logs import disable_progress_bars

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")

# The original files each dataset is prepared from, as named in a `--from` folder.
ORIGINAL_FILES = {
    "mnist": tuple(IDX_FILES.values()),
    "fashion_mnist": tuple(IDX_FILES.values()),
    "cifar10": ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz", "or their extracted folders"),
    "cifar100": (
        "cifar-100-binary.tar.gz",
        "cifar-100-python.tar.gz",
        "or their extracted folders",
    ),
}

CACHE_FOLDER = "cnnlab_cache"
BATCH = 4096  # examples decoded per data-source call


def default_data_dir() -> Path:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default), read at call time."""
    from cnnlab.environment import tfds_data_dir

    return tfds_data_dir()


def _stock_builder_class(name: str):
    from tensorflow_datasets.image_classification import cifar, mnist

    return {
        "mnist": mnist.MNIST,
        "fashion_mnist": mnist.FashionMNIST,
        "cifar10": cifar.Cifar10,
        "cifar100": cifar.Cifar100,
    }[name]


# ---------------------------------------------------------------- preparing


class _OriginalsBuilderMixin:
    """Generates the splits from `Originals` that `self.read_originals(dl_manager)` returns."""

    read_originals: Callable  # (dl_manager) -> Originals, set on each instance
    download_urls: dict  # url -> UrlInfo handed to TFDS's download manager, set on each instance

    @property
    def url_infos(self):
        return self.download_urls

    def _split_generators(self, dl_manager):
        originals: Originals = self.read_originals(dl_manager)
        for feature, names in originals.label_names.items():
            self.info.features[feature].names = names
        return {
            "train": self._generate_examples("train", originals.train),
            "test": self._generate_examples("test", originals.test),
        }

    def _generate_examples(self, split: str, arrays: dict[str, np.ndarray]):
        from PIL import Image

        with_id = "id" in self.info.features
        for index, image in enumerate(arrays["image"]):
            png = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                png, format="PNG"
            )
            record = {key: int(values[index]) for key, values in arrays.items() if key != "image"}
            record["image"] = png.getvalue()
            if with_id:
                # Same ids as the stock CIFAR builders: the index within the split.
                record["id"] = f"{split}_{index:05d}"
            yield index, record


def _builder(name: str, data_dir: Path, read_originals: Callable, download_urls: dict):
    stock = _stock_builder_class(name)
    cls = type(
        f"Numpy{stock.__name__}",
        (_OriginalsBuilderMixin, stock),
        {"name": name},
        skip_registration=True,
    )
    builder = cls(data_dir=str(data_dir))
    builder.read_originals = read_originals
    builder.download_urls = download_urls
    return builder


def _local_reader(name: str, from_dir: Path) -> Callable:
    """Locate the originals in `from_dir` now (clear error before any work), read them later."""
    if from_dir.is_file():
        raise UserError(
            f"--from {from_dir}: a file; give the folder that holds {', '.join(ORIGINAL_FILES[name])}"
        )
    if not from_dir.is_dir():
        raise UserError(f"--from {from_dir}: no such folder")
    if name in CIFAR_LAYOUTS:
        layout = CIFAR_LAYOUTS[name]
        archive = find_cifar_archive(from_dir, layout)
        return lambda dl_manager: read_cifar_originals(archive, layout)
    files = find_idx_files(from_dir)
    return lambda dl_manager: read_idx_originals(files)


def stock_urls(name: str) -> dict:
    """url -> UrlInfo (size, sha256, file name) that TFDS registers for the stock builder."""
    return dict(_stock_builder_class(name).url_infos or {})


def mirrored_urls(name: str, mirror: str | None, checksums: str | Path | None) -> dict:
    """The download table: stock URLs, or the same file names under `mirror`.

    A mirror serving the original files keeps the registered checksums. A checksums file (TFDS's
    format: url, size, sha256 and file name separated by tabs, one line a file) replaces them.
    """
    from tensorflow_datasets.core.download import checksums as tfds_checksums

    if mirror is not None and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise UserError(f"--mirror {mirror}: not a URL; give one such as https://host/path")
    if checksums is not None:
        table = _load_checksums(tfds_checksums, Path(checksums).expanduser())
        if mirror is None:
            return table
        by_file = {info.filename or url.rsplit("/", 1)[-1]: info for url, info in table.items()}
    else:
        stock = stock_urls(name)
        if mirror is None:
            return stock
        by_file = {info.filename or url.rsplit("/", 1)[-1]: info for url, info in stock.items()}
    return {mirror.rstrip("/") + "/" + file: info for file, info in by_file.items()}


def _load_checksums(tfds_checksums, path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--checksums {path}: no such file")
    try:
        return tfds_checksums.load_url_infos(path)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise UserError(
            f"--checksums {path}: not a TFDS checksums file (url, size, sha256 and file name "
            f"separated by tabs, one line a file): {str(error).splitlines()[0]}"
        ) from None


def _download_reader(name: str, urls: dict) -> Callable:
    def read(dl_manager) -> Originals:
        if name in CIFAR_LAYOUTS:
            (url,) = urls
            return read_cifar_originals(Path(dl_manager.download(url)), CIFAR_LAYOUTS[name])
        by_file = {url.rsplit("/", 1)[-1]: url for url in urls}
        paths = dl_manager.download({key: by_file[file] for key, file in IDX_FILES.items()})
        return read_idx_originals({key: Path(path) for key, path in paths.items()})

    return read


def prepare(
    name: str,
    *,
    from_dir: str | None = None,
    data_dir: str | None = None,
    mirror: str | None = None,
    checksums: str | None = None,
) -> Path:
    """Prepare a TFDS dataset without TensorFlow and return its directory.

    With `from_dir`, the original files are read from that folder (no checksums: repackaged
    copies such as Debian's are fine). Without it, TFDS's download manager fetches them and
    checks them against the registered sizes and sha256 sums. Behind a mirror that serves the
    original files under their original names, pass `mirror="https://host/path"`; a mirror
    with other bytes also needs `checksums`, a file in TFDS's url_checksums format. A dataset
    already prepared is left as it is.
    """
    from tensorflow_datasets.core import download as tfds_download
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    check_tfds_name(name)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if from_dir is not None:
        reader, urls = _local_reader(name, Path(from_dir).expanduser()), {}
    else:
        urls = mirrored_urls(name, mirror, checksums)
        check_reachable(name, urls)
        reader = _download_reader(name, urls)
    builder = _builder(name, root, reader, urls)
    if is_prepared(builder):
        return Path(builder.data_dir)
    config = tfds_download.DownloadConfig(force_checksums_validation=True, try_download_gcs=False)
    disable_progress_bars()
    try:
        # TFDS prints a banner to stdout ("Downloading and preparing dataset Unknown size");
        # it goes to the log instead, so an error is the only line on the terminal.
        with contextlib.redirect_stdout(_LogWriter()):
            builder.download_and_prepare(download_config=config, file_format="array_record")
    except NonMatchingChecksumError as error:
        raise UserError(
            f"{name}: a downloaded file does not match its registered checksum: {error}"
        ) from None
    except OSError as error:
        raise UserError(
            f"{name}: download failed ({error}); with the original files at hand run "
            f"`cnnlab data prepare {name} --from DIR`"
        ) from None
    return Path(builder.data_dir)


class _LogWriter(io.StringIO):
    def write(self, text: str) -> int:
        if text.strip():
            logging.getLogger("tensorflow_datasets").info(text.strip())
        return len(text)


def check_reachable(name: str, urls, timeout_s: float = 10) -> None:
    """Connect to every host once: TFDS's own download retries an unreachable host for minutes."""
    for host, port in sorted({_host_port(url) for url in urls}):
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as error:
            raise UserError(
                f"{name}: cannot reach {host}:{port} ({error}); with the original files at hand "
                f"run `cnnlab data prepare {name} --from DIR`"
            ) from None


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def check_tfds_name(name: str) -> None:
    if name not in TFDS_NAMES:
        raise UserError(
            f"cannot prepare '{name}': not a TFDS dataset here; {suggest(name, TFDS_NAMES)}"
        )


# ---------------------------------------------------------------- reading


def _prepared_builder(name: str, data_dir: Path):
    """The builder of a prepared dataset, or a UserError within seconds saying how to prepare it."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    if is_prepared(builder) or _under_mock_data():
        return builder
    flag = f" --data-dir {data_dir}" if data_dir != default_data_dir() else ""
    raise UserError(
        f"{name} is not prepared: nothing at {builder.data_dir}. Run `cnnlab data prepare {name}{flag}` "
        f"to download it, or `cnnlab data prepare {name} --from DIR{flag}` with DIR holding "
        f"{', '.join(ORIGINAL_FILES[name])}"
    )


def is_prepared(builder) -> bool:
    # Looking for dataset_info.json first spares TFDS's warning about a missing one.
    return (Path(builder.data_dir) / "dataset_info.json").exists() and builder.is_prepared()


def _under_mock_data() -> bool:
    """Whether `tfds.testing.mock_data` is active: it serves random examples without any files."""
    from tensorflow_datasets.core.dataset_builder import DatasetBuilder

    return (
        getattr(DatasetBuilder.as_data_source, "__module__", "")
        == "tensorflow_datasets.testing.mocking"
    )


def _fingerprint(builder) -> str:
    """Changes whenever the prepared files are rewritten (re-prepared, other version)."""
    folder = Path(builder.data_dir)
    stamps = [f"{builder.name} {builder.version} {folder}"]
    for path in sorted(folder.iterdir()):
        stat = path.stat()
        stamps.append(f"{path.name} {stat.st_size} {stat.st_mtime_ns}")
    return "\n".join(stamps)


def load_tfds(name: str, data_dir: str | None = None, splits=cache.SPLITS) -> Dataset:
    """A prepared TFDS dataset as arrays, from the cache under the data dir when it is current
    (only `splits` are read from it; decoding reads both, to write the cache)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    builder = _prepared_builder(name, root)
    if _under_mock_data():
        return read_dataset(name, root)
    path = cache.cache_file(root / CACHE_FOLDER, str(builder.data_dir), name, _fingerprint(builder))
    cached = cache.load(path, splits)
    if cached is not None:
        return cached
    dataset = read_dataset(name, root)
    cache.store(path, dataset)
    return dataset


def read_dataset(name: str, data_dir: Path) -> Dataset:
    """Decode both splits through `tfds.data_source`."""
    import tensorflow_datasets as tfds

    mocked = _under_mock_data()
    # Decoding the PNG bytes here is about twice as fast as TFDS's per-example decoding; the
    # random examples of mock_data come only decoded.
    decoders = None if mocked else {"image": tfds.decode.SkipDecoding()}
    sources = tfds.data_source(
        name, split=["train", "test"], data_dir=str(data_dir), download=False, decoders=decoders
    )
    class_names = tuple(sources[0].dataset_info.features["label"].names)
    train, test = (read_split(source, encoded=not mocked) for source in sources)
    return Dataset(name=name, class_names=class_names, train=train, test=test)


def read_split(source, encoded: bool = True) -> Split:
    """Every example of one data source as a Split (images NHWC uint8, labels int32)."""
    count = len(source)
    images, labels = [], []
    for start in range(0, count, BATCH):
        for example in _get_examples(source, range(start, min(start + BATCH, count))):
            images.append(decode_image(example["image"]) if encoded else example["image"])
            labels.append(example["label"])
    if not images:
        raise UserError(f"{source} holds no examples")
    return Split(np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int32))


def decode_image(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> HxWxC uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _get_examples(source, keys: range) -> list[dict]:
    try:
        return source.__getitems__(list(keys))
    except TypeError:
        # tfds.testing.mock_data's sources only answer one key at a time.
        return [source[key] for key in keys]


# ---------------------------------------------------------------- listing


def describe(name: str, data_dir: str | None = None) -> dict:
    """name, prepared, location and split sizes of one TFDS dataset."""
    import tensorflow_datasets as tfds

    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    builder = tfds.builder(name, data_dir=str(root))
    prepared = is_prepared(builder)
    splits = {}
    if prepared:
        splits = {split: info.num_examples for split, info in builder.info.splits.items()}
    return {"name": name, "prepared": prepared, "location": str(builder.data_dir), "splits": splits}
