"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["Shape3", "Spacing3", "Affine", "Index3"]

Shape3 = Tuple[int, int, int]
"""Array shape (z, y, x) in canonical axis order."""
Spacing3 = Tuple[float, float, float]
"""Voxel spacing in mm, array-axis order."""
Index3 = Tuple[int, int, int]
Affine = np.ndarray
"""4x4 voxel-to-world (RAS+) matrix, nibabel convention."""
