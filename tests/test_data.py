"""Data sources: digits, TFDS datasets prepared from original-format files, image folders, cache."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import SOURCES, load_dataset, prepare, prepared_datasets, tfds_source
from cnnlab.data import folder as folder_module
from cnnlab.errors import SpecError, UserError

N_TRAIN, N_TEST = 20, 10


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every data and cache dir under tmp_path."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))


def tfds_order(count: int, split: str) -> list[int]:
    """The order TFDS stores examples in: sorted by md5(split name + key), key = index.

    The prepared datasets follow it, like those the stock builders write with TensorFlow.
    """
    return sorted(range(count), key=lambda i: hashlib.md5(f"{split}{i}".encode()).hexdigest())


def random_images(seed: int, count: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


# ---------------------------------------------------------------- writers of original formats


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.tobytes())


def write_mnist(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (random_images(1, N_TRAIN, (28, 28)), np.arange(N_TRAIN, dtype=np.uint8) % 10),
        "test": (random_images(2, N_TEST, (28, 28)), (np.arange(N_TEST, dtype=np.uint8) * 3) % 10),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data[split]
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels))
    return {split: (images[..., None], labels) for split, (images, labels) in data.items()}


def cifar_data(classes: int) -> dict:
    """split -> (images NHWC, fine labels, coarse labels)."""
    out = {}
    for seed, (split, count) in enumerate((("train", N_TRAIN), ("test", N_TEST))):
        labels = (np.arange(count) * 7 + seed) % classes
        out[split] = (random_images(10 + seed, count, (32, 32, 3)), labels, labels % 20)
    return out


def chw_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_files(files: dict[str, bytes], folder: Path, tarball: str | None) -> None:
    """Write `files` (relative names) into `folder`, or into `folder/tarball` as a .tar.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    if tarball is None:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return
    with tarfile.open(folder / tarball, "w:gz") as archive:
        for name, data in files.items():
            add_to_tar(archive, name, data)


def cifar10_names() -> list[str]:
    return [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


def write_cifar10(folder: Path, form: str) -> dict:
    data = cifar_data(10)
    names = cifar10_names()
    train_images, train_labels, _ = data["train"]
    files = {}
    if form.startswith("binary"):
        top = "cifar-10-batches-bin/"
        for batch in range(5):
            part = slice(batch * 4, batch * 4 + 4)
            rows = np.concatenate([train_labels[part, None], chw_rows(train_images[part])], axis=1)
            files[f"{top}data_batch_{batch + 1}.bin"] = rows.astype(np.uint8).tobytes()
        test_images, test_labels, _ = data["test"]
        rows = np.concatenate([test_labels[:, None], chw_rows(test_images)], axis=1)
        files[f"{top}test_batch.bin"] = rows.astype(np.uint8).tobytes()
        files[f"{top}batches.meta.txt"] = ("\n".join(names) + "\n\n").encode()
        write_files(files, folder, "cifar-10-binary.tar.gz" if form == "binary-tar" else None)
    else:
        top = "cifar-10-batches-py/"
        for batch in range(5):
            part = slice(batch * 4, batch * 4 + 4)
            batch_dict = {
                b"data": chw_rows(train_images[part]),
                b"labels": train_labels[part].tolist(),
            }
            files[f"{top}data_batch_{batch + 1}"] = pickle.dumps(batch_dict, protocol=2)
        test_images, test_labels, _ = data["test"]
        test_dict = {b"data": chw_rows(test_images), b"labels": test_labels.tolist()}
        files[f"{top}test_batch"] = pickle.dumps(test_dict, protocol=2)
        files[f"{top}batches.meta"] = pickle.dumps(
            {b"label_names": [n.encode() for n in names]}, protocol=2
        )
        write_files(files, folder, "cifar-10-python.tar.gz" if form == "pickle-tar" else None)
    return data


def write_cifar100(folder: Path, form: str) -> dict:
    data = cifar_data(100)
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    files = {}
    if form.startswith("binary"):
        top = "cifar-100-binary/"
        for split, file in (("train", "train.bin"), ("test", "test.bin")):
            images, labels, coarse_labels = data[split]
            rows = np.concatenate(
                [coarse_labels[:, None], labels[:, None], chw_rows(images)], axis=1
            )
            files[top + file] = rows.astype(np.uint8).tobytes()
        files[top + "fine_label_names.txt"] = "\n".join(fine).encode()
        files[top + "coarse_label_names.txt"] = "\n".join(coarse).encode()
        write_files(files, folder, "cifar-100-binary.tar.gz" if form == "binary-tar" else None)
    else:
        top = "cifar-100-python/"
        for split in ("train", "test"):
            images, labels, coarse_labels = data[split]
            batch = {
                b"data": chw_rows(images),
                b"fine_labels": labels.tolist(),
                b"coarse_labels": coarse_labels.tolist(),
            }
            files[top + split] = pickle.dumps(batch, protocol=2)
        meta = {
            b"fine_label_names": [n.encode() for n in fine],
            b"coarse_label_names": [n.encode() for n in coarse],
        }
        files[top + "meta"] = pickle.dumps(meta, protocol=2)
        write_files(files, folder, "cifar-100-python.tar.gz" if form == "pickle-tar" else None)
    return data


def assert_matches(split, images: np.ndarray, labels: np.ndarray, split_name: str) -> None:
    order = tfds_order(len(labels), split_name)
    np.testing.assert_array_equal(split.images, images[order])
    np.testing.assert_array_equal(split.labels, np.asarray(labels)[order])


# ---------------------------------------------------------------- digits and the registry


def test_digits_split_is_fixed_stratified_and_scaled():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert (len(first.train), len(first.test)) == (1437, 360)
    assert first.image_shape == (8, 8, 1)
    assert first.class_names == tuple(str(d) for d in range(10))
    assert first.train.images.max() == 255 and first.train.images.dtype == np.uint8
    np.testing.assert_array_equal(first.test.images, second.test.images)
    np.testing.assert_array_equal(first.train.labels, second.train.labels)
    assert set(np.bincount(first.test.labels)) <= {35, 36, 37}


def test_unknown_source_is_a_spec_error_with_suggestion():
    with pytest.raises(SpecError) as error:
        load_dataset("mnsit")
    assert error.value.loc == ("source",)
    assert "mnist" in str(error.value)
    assert set(SOURCES) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder"}


def test_folder_without_path_is_a_spec_error():
    with pytest.raises(SpecError) as error:
        load_dataset("folder")
    assert error.value.loc == ("path",)


# ---------------------------------------------------------------- TFDS datasets


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_prepare_and_load(tmp_path, name):
    written = write_mnist(tmp_path / "originals")
    location = prepare(name, from_dir=str(tmp_path / "originals"))
    assert location.is_relative_to(tmp_path / "tfds")
    dataset = load_dataset(name)
    assert dataset.name == name and dataset.image_shape == (28, 28, 1)
    for split in ("train", "test"):
        assert_matches(getattr(dataset, split), *written[split], split)
    if name == "fashion_mnist":
        assert dataset.class_names[0] == "T-shirt/top"


@pytest.mark.parametrize("form", ["binary-tar", "binary-folder", "pickle-tar", "pickle-folder"])
def test_cifar10_prepare_and_load(tmp_path, form):
    written = write_cifar10(tmp_path / "originals", form)
    prepare("cifar10", from_dir=str(tmp_path / "originals"), data_dir=str(tmp_path / "data"))
    dataset = load_dataset("cifar10", data_dir=str(tmp_path / "data"))
    assert dataset.class_names == tuple(cifar10_names())
    for split in ("train", "test"):
        images, labels, _ = written[split]
        assert_matches(getattr(dataset, split), images, labels, split)


@pytest.mark.parametrize("form", ["binary-tar", "pickle-tar", "pickle-folder"])
def test_cifar100_prepare_and_load_with_coarse_labels(tmp_path, form):
    import tensorflow_datasets as tfds

    written = write_cifar100(tmp_path / "originals", form)
    prepare("cifar100", from_dir=str(tmp_path / "originals"))
    dataset = load_dataset("cifar100")
    assert dataset.num_classes == 100 and dataset.class_names[:2] == ("fine0", "fine1")
    images, labels, coarse = written["test"]
    assert_matches(dataset.test, images, labels, "test")
    assert_matches(dataset.train, *written["train"][:2], "train")
    source = tfds.data_source("cifar100", split="test", data_dir=str(tmp_path / "tfds"))
    order = tfds_order(N_TEST, "test")
    assert [source[i]["coarse_label"] for i in range(N_TEST)] == coarse[order].tolist()
    assert source.dataset_info.features["coarse_label"].names[0] == "coarse0"


def test_prepare_from_folder_without_the_files_names_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        prepare("mnist", from_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="cifar-10-binary.tar.gz"):
        prepare("cifar10", from_dir=str(tmp_path / "empty"))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    write_cifar10(tmp_path / "originals", "pickle-folder")
    evil = pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4, b"run": partial(print, "x")}
    )
    (tmp_path / "originals" / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    with pytest.raises(UserError, match="refusing"):
        prepare("cifar10", from_dir=str(tmp_path / "originals"))


def test_unprepared_dataset_fails_fast_naming_the_command(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UserError) as error:
        load_dataset("cifar10", data_dir=str(tmp_path / "elsewhere"))
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "cnnlab data prepare cifar10 --from DIR" in message
    assert str(tmp_path / "elsewhere") in message


def test_prepared_datasets_lists_counts(tmp_path):
    write_mnist(tmp_path / "originals")
    prepare("mnist", from_dir=str(tmp_path / "originals"))
    rows = {row["name"]: row for row in prepared_datasets()}
    assert rows["mnist"]["prepared"] and rows["mnist"]["splits"] == {
        "train": N_TRAIN,
        "test": N_TEST,
    }
    assert not rows["cifar10"]["prepared"] and rows["cifar10"]["splits"] == {}
    assert rows["digits"]["splits"] == {"train": 1437, "test": 360}


def test_mock_data_is_read_one_example_at_a_time_and_not_cached(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        dataset = load_dataset("fashion_mnist")
    assert dataset.image_shape == (28, 28, 1) and len(dataset.train) == 6 and len(dataset.test) == 6
    assert dataset.train.images.std() > 0
    assert not (tmp_path / "tfds" / tfds_source.CACHE_FOLDER).exists()


def test_tfds_cache_hit_skips_decoding_and_follows_a_new_prepare(tmp_path, monkeypatch):
    written = write_mnist(tmp_path / "originals")
    prepare("mnist", from_dir=str(tmp_path / "originals"))
    first = load_dataset("mnist")
    assert list((tmp_path / "tfds" / tfds_source.CACHE_FOLDER).glob("mnist-*.npz"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as patch:
        patch.setattr(tfds_source, "decode_image", no_decoding)
        second = load_dataset("mnist")
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert second.class_names == first.class_names

    # A re-prepared dataset (other files) must not be served from the old cache.
    import shutil

    shutil.rmtree(tmp_path / "tfds" / "mnist")
    images, labels = written["train"]
    (tmp_path / "originals" / "train-labels-idx1-ubyte.gz").write_bytes(
        idx_bytes((labels + 1) % 10)
    )
    prepare("mnist", from_dir=str(tmp_path / "originals"))
    third = load_dataset("mnist")
    assert_matches(third.train, images, (labels + 1) % 10, "train")
    assert len(list((tmp_path / "tfds" / tfds_source.CACHE_FOLDER).glob("mnist-*.npz"))) == 1


# ---------------------------------------------------------------- download through a local server


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; shut down when the test ends."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/datasets"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def checksums_file(path: Path, base_url: str, files: list[Path]) -> Path:
    """A checksums table in TFDS's url_checksums format: url, size, sha256, file name."""
    lines = []
    for file in files:
        data = file.read_bytes()
        lines.append(
            f"{base_url}/{file.name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\t{file.name}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_download_from_a_mirror_with_checksums(tmp_path, file_server):
    served, base_url = file_server
    written = write_mnist(served / "datasets")
    table = checksums_file(
        tmp_path / "checksums.tsv", base_url, sorted((served / "datasets").iterdir())
    )
    prepare("mnist", mirror=base_url, checksums=str(table))
    dataset = load_dataset("mnist")
    assert_matches(dataset.test, *written["test"], "test")


def test_download_of_cifar_rejects_a_wrong_checksum(tmp_path, file_server):
    served, base_url = file_server
    write_cifar10(served / "datasets", "binary-tar")
    tarball = served / "datasets" / "cifar-10-binary.tar.gz"
    table = checksums_file(tmp_path / "checksums.tsv", base_url, [tarball])
    tarball.write_bytes(tarball.read_bytes() + b"\0")
    with pytest.raises(UserError, match="checksum"):
        prepare("cifar10", mirror=base_url, checksums=str(table))
    assert not load_dataset_prepared("cifar10")


def load_dataset_prepared(name: str) -> bool:
    return {row["name"]: row["prepared"] for row in prepared_datasets()}[name]


def test_mirror_keeps_the_registered_checksums():
    urls = tfds_source.mirrored_urls("cifar10", "https://mirror.example/kriz/", None)
    stock = tfds_source.stock_urls("cifar10")
    assert list(urls) == ["https://mirror.example/kriz/cifar-10-binary.tar.gz"]
    assert list(urls.values()) == list(stock.values())


# ---------------------------------------------------------------- image folders


def save_image(path: Path, array: np.ndarray, suffix: str = ".png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path.with_suffix(suffix))


def make_folder(root: Path, mode: str = "RGB", size=(6, 5), with_test: bool = True) -> dict:
    """train/{cat,dog}/ and test/{cat,dog}/ of small PNGs; returns file -> pixels."""
    rng = np.random.default_rng(3)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = {}
    for split, count in (("train", 3), ("test", 2) if with_test else ("train", 0)):
        for label in ("dog", "cat"):
            for i in range(count):
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                save_image(root / split / label / f"{i}.png", array)
                pixels[f"{split}/{label}/{i}"] = array
    return pixels


def test_folder_of_rgb_pngs(tmp_path):
    pixels = make_folder(tmp_path / "pets")
    dataset = load_dataset("folder", path=str(tmp_path / "pets"))
    assert dataset.name == "pets" and dataset.class_names == ("cat", "dog")
    assert dataset.image_shape == (5, 6, 3) and (len(dataset.train), len(dataset.test)) == (6, 4)
    np.testing.assert_array_equal(dataset.train.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(dataset.train.images[3], pixels["train/dog/0"])


def test_greyscale_folder_keeps_one_channel_and_mixed_modes_become_rgb(tmp_path):
    pixels = make_folder(tmp_path / "grey", mode="L")
    grey = load_dataset("folder", path=str(tmp_path / "grey"))
    assert grey.image_shape == (5, 6, 1)
    np.testing.assert_array_equal(grey.test.images[0, ..., 0], pixels["test/cat/0"])
    save_image(tmp_path / "grey" / "train" / "cat" / "9", np.zeros((5, 6, 3), np.uint8), ".jpg")
    mixed = load_dataset("folder", path=str(tmp_path / "grey"))
    assert mixed.image_shape == (5, 6, 3) and len(mixed.train) == 7
    np.testing.assert_array_equal(mixed.test.images[0, ..., 1], pixels["test/cat/0"])


@pytest.mark.parametrize("wrapped", [True, False])
def test_tarball_of_a_folder(tmp_path, wrapped):
    pixels = make_folder(tmp_path / "pets")
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as archive:
        for split in ("test", "train"):
            archive.add(tmp_path / "pets" / split, arcname=f"pets/{split}" if wrapped else split)
        add_to_tar(archive, "._junk.png" if not wrapped else "pets/._junk.png", b"not an image")
    dataset = load_dataset("folder", path=str(tmp_path / "pets.tar.gz"))
    assert dataset.name == "pets" and dataset.class_names == ("cat", "dog")
    np.testing.assert_array_equal(dataset.test.images[3], pixels["test/dog/1"])


def test_images_outside_the_layout(tmp_path):
    make_folder(tmp_path / "pets")
    save_image(tmp_path / "pets" / "preview", np.zeros((9, 9, 3), np.uint8))
    assert len(load_dataset("folder", path=str(tmp_path / "pets")).train) == 6
    save_image(tmp_path / "pets" / "train" / "stray", np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(UserError, match="train/stray.png is not in train/<class>/"):
        load_dataset("folder", path=str(tmp_path / "pets"))


def test_images_of_another_size_are_named(tmp_path):
    make_folder(tmp_path / "pets")
    save_image(tmp_path / "pets" / "train" / "dog" / "odd", np.zeros((7, 6, 3), np.uint8))
    with pytest.raises(UserError, match=r"train/dog/odd.png is 6x7 .*\(6x5 expected\)"):
        load_dataset("folder", path=str(tmp_path / "pets"))


def test_folder_without_test_split(tmp_path):
    make_folder(tmp_path / "pets", with_test=False)
    with pytest.raises(UserError, match="no test/ folder"):
        load_dataset("folder", path=str(tmp_path / "pets"))


def test_missing_folder_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as error:
        load_dataset("folder", path=str(tmp_path / "nowhere"))
    assert error.value.loc == ("path",)


def test_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    make_folder(tmp_path / "pets")
    first = load_dataset("folder", path=str(tmp_path / "pets"))
    assert list((tmp_path / "cache").glob("pets-*.npz"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as patch:
        patch.setattr(folder_module, "decode_images", no_decoding)
        second = load_dataset("folder", path=str(tmp_path / "pets"))
    np.testing.assert_array_equal(first.train.images, second.train.images)

    white = np.full((5, 6, 3), 255, np.uint8)
    save_image(tmp_path / "pets" / "test" / "cat" / "0", white)
    third = load_dataset("folder", path=str(tmp_path / "pets"))
    np.testing.assert_array_equal(third.test.images[0], white)


def test_a_cached_dataset_reads_only_the_splits_asked_for(tmp_path):
    make_folder(tmp_path / "pets")
    full = load_dataset("folder", path=str(tmp_path / "pets"))  # decodes and caches both
    test_only = load_dataset("folder", path=str(tmp_path / "pets"), splits=("test",))
    np.testing.assert_array_equal(test_only.test.images, full.test.images)
    np.testing.assert_array_equal(test_only.test.labels, full.test.labels)
    assert len(test_only.train) == 0 and test_only.train.images.shape[1:] == full.image_shape
    assert test_only.class_names == full.class_names


def test_unreachable_mirror_fails_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach 127.0.0.1:1 .*--from DIR"):
        prepare("fashion_mnist", mirror="http://127.0.0.1:1/files")
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------- command line


def test_cli_data_prepare_and_list(tmp_path):
    from typer.testing import CliRunner

    from cnnlab.cli import app

    write_mnist(tmp_path / "originals")
    runner = CliRunner()
    prepared = runner.invoke(
        app, ["data", "prepare", "mnist", "--from", str(tmp_path / "originals")]
    )
    assert prepared.exit_code == 0, prepared.output
    assert "mnist is prepared at" in prepared.output
    listing = runner.invoke(app, ["data", "list", "--data-dir", str(tmp_path / "tfds")])
    assert listing.exit_code == 0
    mnist_row = next(line for line in listing.output.splitlines() if " mnist " in line)
    assert "yes" in mnist_row and "20" in mnist_row
    wrong = runner.invoke(app, ["data", "prepare", "cifar11"])
    assert wrong.exit_code == 2 and "cifar10" in wrong.output
