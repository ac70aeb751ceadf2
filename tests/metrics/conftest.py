"""Fixtures for metric tests: seeded random blob masks (smoothed noise, thresholded)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def make_blob(rng: np.random.Generator, shape=(18, 22, 26), sigma=2.5, fill=0.25) -> np.ndarray:
    """A random smooth (Z, Y, X) bool mask with about ``fill`` of the voxels set."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1.0 - fill)


@pytest.fixture
def blob_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Eight (pred, gt) pairs of overlapping random blobs, some touching the array border."""
    rng = np.random.default_rng(1234)
    pairs = []
    for _ in range(8):
        gt = make_blob(rng)
        pred = ndimage.binary_dilation(gt, iterations=int(rng.integers(0, 2))) ^ (make_blob(rng, fill=0.05))
        pairs.append((pred, gt))
    return pairs
