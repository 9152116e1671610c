"""The one in-memory dataset type every source produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int32

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels {self.labels.shape} do not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: Split
    test: Split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a stratified validation split from `train`: the same fraction of every class."""
    if fraction <= 0:
        return train, Split(train.images[:0], train.labels[:0])
    rng = np.random.default_rng(seed)
    val_index = []
    for label in np.unique(train.labels):
        members = np.flatnonzero(train.labels == label)
        count = int(round(len(members) * fraction))
        val_index.append(rng.permutation(members)[:count])
    val_index = np.sort(np.concatenate(val_index))
    keep = np.ones(len(train), dtype=bool)
    keep[val_index] = False
    return train.take(np.flatnonzero(keep)), train.take(val_index)
