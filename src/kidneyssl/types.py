"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Any, Iterable, Tuple

import numpy as np

__all__ = ["Shape3", "Spacing3", "Affine", "Index3", "shape3", "spacing3"]

Shape3 = Tuple[int, int, int]
"""Array shape (z, y, x) in canonical axis order."""
Spacing3 = Tuple[float, float, float]
"""Voxel spacing in mm, array-axis order."""
Index3 = Tuple[int, int, int]
Affine = np.ndarray
"""4x4 voxel-to-world (RAS+) matrix, nibabel convention."""


def shape3(values: Iterable[Any]) -> Shape3:
    """Exactly three ints (a shape or an index) from any iterable; raises ValueError otherwise."""
    v = [int(x) for x in values]
    if len(v) != 3:
        raise ValueError(f"expected 3 values, got {len(v)}: {v}")
    return (v[0], v[1], v[2])


def spacing3(values: Iterable[Any]) -> Spacing3:
    """Exactly three floats (a spacing in mm) from any iterable; raises ValueError otherwise."""
    v = [float(x) for x in values]
    if len(v) != 3:
        raise ValueError(f"expected 3 values, got {len(v)}: {v}")
    return (v[0], v[1], v[2])
