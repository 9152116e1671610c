"""Numbers: how close two arrays are, and gradients by central finite differences.

Tolerances are those of float32 arithmetic summed in a different order: a learner's result
within them is the reference's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RTOL = 1e-4
ATOL = 1e-5  # times max(1, the largest reference value)
FD_RTOL = 1e-3  # finite differences are estimates: looser
FD_POINTS = 12  # coordinates per input checked by finite differences
FD_STEP = 1e-6


@dataclass(frozen=True)
class Error:
    """How far `got` is from `want`: max absolute and relative error, and whether it passes."""

    close: bool
    max_abs: float
    max_rel: float


def as_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def compare(got, want, rtol: float = RTOL, atol: float = ATOL) -> Error:
    """Elementwise |got - want| <= atol * scale + rtol * |want|; non-finite values where the
    reference is finite fail (nan and inf compare as infinitely far)."""
    got, want = as_array(got), as_array(want)
    if got.shape != want.shape:
        return Error(False, float("inf"), float("inf"))
    if got.size == 0:
        return Error(True, 0.0, 0.0)
    diff = np.abs(got - want)
    diff = np.where(np.isfinite(got) | ~np.isfinite(want), diff, np.inf)
    diff = np.where(np.isnan(diff) & (np.isnan(got) != np.isnan(want)), np.inf, diff)
    diff = np.nan_to_num(diff, nan=0.0)
    scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))
    with np.errstate(over="ignore", invalid="ignore"):
        rel = diff / np.maximum(np.abs(want), 1e-12 * scale)
    close = bool(np.all(diff <= atol * scale + rtol * np.abs(want)))
    return Error(close, float(diff.max()), float(rel.max()))


def close(got, want, rtol: float = RTOL, atol: float = ATOL) -> bool:
    try:
        return compare(got, want, rtol, atol).close
    except (TypeError, ValueError):
        return False


def fd_coordinates(shape: tuple, rng: np.random.Generator) -> list[tuple]:
    """Up to FD_POINTS distinct coordinates of an array of `shape` (all of them when few)."""
    size = int(np.prod(shape))
    picked = rng.choice(size, min(size, FD_POINTS), replace=False)
    return [np.unravel_index(int(i), shape) for i in picked]


def finite_differences(
    loss: Callable[[list[np.ndarray]], float], inputs: list[np.ndarray], index: int, coords
) -> np.ndarray:
    """d loss / d inputs[index] at `coords` by central differences, in float64."""
    estimates = []
    for coord in coords:
        shifted = [np.array(a, dtype=np.float64, copy=True) for a in inputs]
        original = shifted[index][coord]
        shifted[index][coord] = original + FD_STEP
        up = loss(shifted)
        shifted[index][coord] = original - FD_STEP
        down = loss(shifted)
        estimates.append((up - down) / (2 * FD_STEP))
    return np.array(estimates)
