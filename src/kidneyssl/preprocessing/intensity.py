"""Intensity preprocessing: HU window clipping and per-volume z-score (pure array functions)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["clip_window", "zscore_stats", "zscore", "zscore_to_window_unit", "window_unit_to_zscore"]


def clip_window(array: np.ndarray, window_hu: Sequence[float],
                out: np.ndarray | None = None) -> np.ndarray:
    """Clip intensities to ``window_hu = (low, high)`` (Hounsfield units).

    Args:
        array: image of any shape and numeric dtype.
        window_hu: (low, high) with low < high.
        out: optional float32 array of the same shape to write into (may be ``array`` itself
            when it is float32); by default a new float32 array is returned.

    Returns:
        float32 array with values in [low, high].
    """
    low, high = float(window_hu[0]), float(window_hu[1])
    if not low < high:
        raise ValueError(f"window_hu must be (low, high) with low < high, got {tuple(window_hu)}")
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    return np.clip(array, low, high, out=out, casting="unsafe")


def zscore_stats(array: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``array`` (accumulated in float64)."""
    if array.size == 0:
        raise ValueError("cannot normalise an empty array")
    mean = float(np.mean(array, dtype=np.float64))
    std = float(np.std(array, dtype=np.float64))
    return mean, std


def zscore(array: np.ndarray, mean: float | None = None, std: float | None = None,
           eps: float = 1e-8, out: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """Z-score ``(array - mean) / std`` as float32; statistics from ``array`` unless given.

    A constant volume (std < ``eps``) is only centred (divided by 1), never divided by zero.

    Returns:
        (normalised float32 array, mean, std used).
    """
    if mean is None or std is None:
        mean, std = zscore_stats(array)
    divisor = std if std >= eps else 1.0
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    np.subtract(array, np.float32(mean), out=out, casting="unsafe")
    out /= np.float32(divisor)
    return out, float(mean), float(std)


def zscore_to_window_unit(array: np.ndarray, mean: float, std: float, window_hu: Sequence[float]) -> np.ndarray:
    """A z-scored, windowed volume back on the window's unit scale: ``(HU - low) / (high - low)``
    with ``HU = z * std + mean`` (the inverse of :func:`zscore` with the volume's own statistics),
    so the window's lower bound is 0 and its upper bound 1. Padding (z = 0) maps to the volume's
    mean. Returns float32.

    Args:
        array: z-scored image (any shape).
        mean, std: the volume's z-score statistics (its ``PreprocessRecord``).
        window_hu: the HU window the volume was clipped to.
    """
    low, high = float(window_hu[0]), float(window_hu[1])
    divisor = std if std >= 1e-8 else 1.0  # as zscore: a constant volume was only centred
    hu = np.asarray(array, dtype=np.float32) * np.float32(divisor) + np.float32(mean)
    return ((hu - np.float32(low)) / np.float32(high - low)).astype(np.float32, copy=False)


def window_unit_to_zscore(array: np.ndarray, mean: float, std: float, window_hu: Sequence[float]) -> np.ndarray:
    """The inverse of :func:`zscore_to_window_unit`: window unit scale back to the volume's z-scores."""
    low, high = float(window_hu[0]), float(window_hu[1])
    divisor = std if std >= 1e-8 else 1.0
    hu = np.asarray(array, dtype=np.float32) * np.float32(high - low) + np.float32(low)
    return ((hu - np.float32(mean)) / np.float32(divisor)).astype(np.float32, copy=False)
