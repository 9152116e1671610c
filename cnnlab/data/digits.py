"""scikit-learn's bundled 8x8 digits: the dataset that needs no download."""

from __future__ import annotations

import numpy as np

from cnnlab.data.dataset import Dataset, Split

TEST_SIZE = 360  # of 1,797: leaves 1,437 for training
SPLIT_SEED = 0


def load_digits() -> Dataset:
    """1,437 train / 360 test images (8, 8, 1) uint8, a fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    # Pixel values run 0-16; spread them over 0-255 like every other source.
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    train_index, test_index = np.sort(train_index), np.sort(test_index)
    return Dataset(
        name="digits",
        class_names=tuple(str(d) for d in range(10)),
        train=Split(images[train_index], labels[train_index]),
        test=Split(images[test_index], labels[test_index]),
    )
