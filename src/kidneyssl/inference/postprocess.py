"""Pure post-processing of kidney probabilities: threshold, and keep the largest connected
component on each patient side (kidneys come one per side).

Arrays are 3-D; ``split_x`` is the lateral split plane in the array's own voxel indices along
``lateral_axis`` (canonical arrays: axis 2, ``x < split_x`` = patient right). It may be
fractional when the plane comes from another grid (see :func:`kidneyssl.inference.predict`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kidneyssl.io.geometry import LATERAL_AXIS
from kidneyssl.preprocessing.spatial import bounding_box

__all__ = ["threshold_probabilities", "largest_component_per_side", "keep_kidney_components"]


def threshold_probabilities(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary ``uint8`` mask of ``prob >= threshold`` (same shape as ``prob``)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return (np.asarray(prob) >= threshold).astype(np.uint8)


def largest_component_per_side(mask: np.ndarray, split_x: float, lateral_axis: int = LATERAL_AXIS,
                               min_relative_size: float = 0.0) -> np.ndarray:
    """Keep the largest connected component on each side of the lateral plane.

    A component belongs to the side holding its centroid, so a kidney that crosses the plane is
    kept whole (cutting each half separately would keep only part of it). Connectivity is full
    (26-neighbourhood), as in MONAI's ``KeepLargestConnectedComponent``. Labelling runs on the
    mask's bounding box only, which is small for kidneys even in a full-resolution scan.

    Args:
        mask: 3-D binary mask (any integer/bool dtype; non-zero = foreground).
        split_x: plane position along ``lateral_axis``: voxel index ``i`` is on the low side when
            ``i < split_x`` (the plane lies at ``split_x - 0.5`` in voxel-centre coordinates).
        lateral_axis: the array axis crossing the patient's left/right.
        min_relative_size: drop a side's component when it is smaller than this fraction of the
            other side's kept component (0 keeps both; e.g. 0.1 removes a speck opposite a kidney).

    Returns:
        ``uint8`` mask of the same shape with at most one component per side.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = bounding_box(mask)
    if box is None:
        return out
    crop = mask[box] > 0
    labels, n = ndimage.label(crop, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:  # pragma: no cover - box is non-empty so n >= 1
        return out
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    coord = np.indices(crop.shape, sparse=True)[lateral_axis].astype(np.float64) + box[lateral_axis].start
    coord_full = np.broadcast_to(coord, crop.shape).ravel()
    sums = np.bincount(flat, weights=coord_full, minlength=n + 1)
    ids = np.arange(1, n + 1)
    centroid = sums[1:] / sizes[1:]
    low = centroid < split_x - 0.5
    keep: list[int] = []
    best_sizes: list[int] = []
    for side_sel in (low, ~low):
        if side_sel.any():
            cand = ids[side_sel]
            best = int(cand[np.argmax(sizes[cand])])
            keep.append(best)
            best_sizes.append(int(sizes[best]))
    if min_relative_size > 0.0 and len(keep) == 2:
        big = max(best_sizes)
        keep = [k for k, s in zip(keep, best_sizes) if s >= min_relative_size * big]
    out[box] = np.isin(labels, keep).astype(np.uint8)
    return out


def _dilate_keep_zone(keep: np.ndarray) -> np.ndarray:
    """``keep`` dilated by one voxel (26-neighbourhood), computed on its bounding box."""
    zone = np.zeros(keep.shape, dtype=bool)
    box = bounding_box(keep)
    if box is None:
        return zone
    grown = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, keep.shape))
    zone[grown] = ndimage.binary_dilation(keep[grown] > 0, structure=np.ones((3, 3, 3), bool))
    return zone


def keep_kidney_components(prob: np.ndarray, split_x: float, threshold: float = 0.5,
                           largest_component: bool = True) -> np.ndarray:
    """Post-process probabilities on the preprocessed grid, IN PLACE, and return the kept mask.

    With ``largest_component``, the largest connected component of the thresholded mask on each
    side of ``split_x`` is kept, and probabilities more than one voxel away from the kept
    components are set to 0, so that restoring them (trilinear) and thresholding on the original
    grid leaves the kept kidneys' boundaries unchanged (a trilinear stencil touching a kept
    component lies entirely inside that margin). Returns the thresholded (kept) uint8 mask.
    """
    mask = threshold_probabilities(prob, threshold)
    if largest_component:
        mask = largest_component_per_side(mask, split_x)
        prob[~_dilate_keep_zone(mask)] = 0.0
    return mask
