"""Where the patient's left/right split plane lies, and where each kidney is.

All arrays here are on a canonical ``(Z, Y, X)`` grid (:mod:`kidneyssl.io.geometry`): axis 2 is
the lateral axis and runs towards the patient's LEFT, so columns ``x < split_x`` form the
patient-RIGHT half and columns ``x >= split_x`` the patient-LEFT half. The paper trains on the
two halves of each volume cut along the sagittal plane; the proxy task uses one crop per kidney.

Split rule (:func:`find_split_x`):

* **With a mask** (training data): the sagittal plane is chosen so that no kidney is cut.
  Connected components of ``label > 0`` (26-connectivity; specks smaller than ``min_fraction`` of
  the largest component are ignored) are scored per candidate plane by the number of voxels the
  plane cuts off from their component, ``sum_c min(left_c, right_c)``. Among planes that leave
  kidney tissue on both sides (each side holds the majority of components weighing at least
  ``min_side_fraction`` of the largest one), the one with the fewest cut voxels wins, ties broken
  by the distance to the reference midline (below). So two kidneys are separated in the gap
  between them closest to the midline, even when one of them crosses the image midline. When no
  such plane exists (a single kidney), the kidney is assigned to the side of the midline holding
  its centroid and the plane moves the least distance from the midline that keeps it whole.
* **Without a mask** (inference): the reference midline itself. With an ``image``, that is the
  body's lateral centre, the median x of the body voxels; body voxels are those above
  ``lo + 0.25 * (p99 - lo)`` where ``lo`` is the image minimum and ``p99`` its 99th percentile,
  exact zeros (zero padding) excluded. On the preprocessed grid (HU window [-80, 300], so air and
  fat sit at the minimum) that is soft tissue above ~15 HU; the rule is unchanged by z-scoring and
  zero padding, so ``prepare`` and ``predict`` agree. Without an image: the image midline ``X // 2``.

The mask-free plane is what inference must use; on the real RAS CT in ``../shared/real-ct`` it
separates the kidneys as well (tests). The masked plane only differs where a kidney would be cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage

from kidneyssl.io.geometry import LATERAL_AXIS, Side
from kidneyssl.preprocessing.spatial import bounding_box
from kidneyssl.types import shape3

__all__ = [
    "KidneyLocation",
    "body_midline_x",
    "find_split_x",
    "locate_kidneys",
    "check_3d",
]

#: Components smaller than this fraction of the largest kidney component are ignored as specks.
MIN_FRACTION = 0.005
#: Each half must hold this fraction of the largest component for a case to count as bilateral.
MIN_SIDE_FRACTION = 0.1
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class KidneyLocation:
    """Where one kidney lies on the canonical grid.

    Attributes:
        center: (z, y, x) voxel index of the centre of ``bbox`` (``(lo + hi) // 2`` per axis).
        bbox: ((z0, z1), (y0, y1), (x0, x1)), half-open voxel ranges holding the kidney.
        voxels: number of kidney voxels (specks excluded).
    """

    center: tuple[int, int, int]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    voxels: int

    def to_dict(self) -> dict:
        return {"center": list(self.center), "bbox": [list(b) for b in self.bbox], "voxels": self.voxels}

    @classmethod
    def from_dict(cls, data: Mapping) -> "KidneyLocation":
        return cls(
            center=shape3(data["center"]),
            bbox=tuple((int(a), int(b)) for a, b in data["bbox"]),  # type: ignore[arg-type]
            voxels=int(data["voxels"]),
        )


def check_3d(array: np.ndarray, name: str) -> None:
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (Z, Y, X) array, got shape {array.shape}")


def body_midline_x(image: np.ndarray) -> int:
    """Lateral centre of the body in a canonical ``(Z, Y, X)`` image: median x of body voxels.

    Body voxels are above ``lo + 0.25 * (p99 - lo)`` (``lo`` = image minimum), zeros (padding)
    excluded. Falls back to the image midline ``X // 2`` when no voxel qualifies. Works on HU or
    z-scored images alike (the rule only uses the image's own intensity range).
    """
    check_3d(image, "image")
    width = image.shape[LATERAL_AXIS]
    # Subsample for speed: the median column of a body is insensitive to it.
    sub = np.asarray(image[::2, ::2, :], dtype=np.float32)
    values = sub[sub != 0]
    if values.size == 0:
        return width // 2
    lo = float(values.min())
    hi = float(np.percentile(values, 99))
    if hi <= lo:
        return width // 2
    body = (sub > lo + 0.25 * (hi - lo)) & (sub != 0)
    counts = body.sum(axis=(0, 1)).astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return width // 2
    # Median column: the first x at which the cumulative count reaches half of the body.
    return int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))


def _components(mask: np.ndarray, min_fraction: float) -> tuple[np.ndarray, list[int]]:
    """Label 26-connected components; return the labels and the ids of non-speck components."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
    if n == 0:
        return labels, []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = [i for i in range(1, n + 1) if sizes[i] >= min_fraction * sizes.max()]
    return labels, keep


def find_split_x(
    label: np.ndarray | None,
    image: np.ndarray | None = None,
    min_fraction: float = MIN_FRACTION,
    min_side_fraction: float = MIN_SIDE_FRACTION,
) -> int:
    """Lateral split plane of a canonical ``(Z, Y, X)`` volume (rule in the module docstring).

    Args:
        label: kidney mask or KiTS labels (kidney = ``label > 0``), or ``None`` at inference.
        image: the image on the same grid, used for the body's lateral centre (optional).
        min_fraction: components below this fraction of the largest are ignored as specks.
        min_side_fraction: kidney mass each side must hold, as a fraction of the largest
            component, for the case to count as having two kidneys.

    Returns:
        ``split_x`` in ``[1, X - 1]`` (``[0, X]`` for ``X < 2``): columns ``x < split_x`` are the
        patient-RIGHT half, ``x >= split_x`` the patient-LEFT half.

    Raises:
        ValueError: when neither array is given, an array is not 3-D, or the shapes differ.
    """
    if label is None and image is None:
        raise ValueError("find_split_x needs a label, an image, or both")
    if label is not None:
        check_3d(label, "label")
    if image is not None:
        check_3d(image, "image")
        if label is not None and label.shape != image.shape:
            raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    shape = (label if label is not None else image).shape  # type: ignore[union-attr]
    width = shape[LATERAL_AXIS]
    lo_s, hi_s = (1, width - 1) if width >= 2 else (0, width)
    midline = body_midline_x(image) if image is not None else width // 2
    midline = int(np.clip(midline, lo_s, hi_s))
    if label is None:
        return midline

    full_mask = np.asarray(label) > 0
    box = bounding_box(full_mask)
    if box is None:
        return midline
    mask = full_mask[box]
    labels, keep = _components(mask, min_fraction)
    if not keep:
        return midline

    # Per-component voxel counts per column -> voxels left of each candidate plane s = 0..width.
    xs = np.nonzero(mask)[LATERAL_AXIS] + box[LATERAL_AXIS].start
    comp = labels[mask]
    hist = np.zeros((len(keep), width), dtype=np.int64)
    for row, cid in enumerate(keep):
        hist[row] = np.bincount(xs[comp == cid], minlength=width)
    n_total = hist.sum(axis=1, keepdims=True)
    left_of = np.concatenate([np.zeros((len(keep), 1), np.int64), np.cumsum(hist, axis=1)], axis=1)
    cut = np.minimum(left_of, n_total - left_of).sum(axis=0)  # (width + 1,)
    candidates = np.arange(width + 1)
    in_range = (candidates >= lo_s) & (candidates <= hi_s)
    # A plane is "bilateral" when each side holds the majority of components that together weigh
    # at least ``min_side_fraction`` of the largest component (kidney tissue on both sides).
    majority_right = 2 * left_of > n_total  # (components, planes): component mostly at x < s
    largest = int(n_total.max())
    mass_r = (majority_right * n_total).sum(axis=0)
    mass_l = (~majority_right * n_total).sum(axis=0)
    need = min_side_fraction * largest
    bilateral = (mass_r >= need) & (mass_l >= need) & in_range
    if bilateral.any():
        cost = np.where(bilateral, cut, np.iinfo(np.int64).max)
        best = cost.min()
        ties = np.nonzero(cost == best)[0]
        return int(ties[np.argmin(np.abs(ties - midline))])

    # Single kidney (or one clump): keep it whole on the side of the midline holding its centroid.
    centroid_x = float((hist.sum(axis=0) * np.arange(width)).sum() / max(1, int(n_total.sum())))
    x_min = int(np.nonzero(hist.sum(axis=0))[0].min())
    x_max = int(np.nonzero(hist.sum(axis=0))[0].max())
    if centroid_x < midline:  # patient-right kidney: must lie in x < split_x
        split = max(midline, x_max + 1)
    else:  # patient-left kidney: must lie in x >= split_x
        split = min(midline, x_min)
    return int(np.clip(split, lo_s, hi_s))


def locate_kidneys(
    label: np.ndarray, split_x: int, min_fraction: float = MIN_FRACTION
) -> dict[Side, KidneyLocation]:
    """Locate the kidney of each half of a canonical ``(Z, Y, X)`` label array.

    Kidney voxels are ``label > 0``; the RIGHT kidney is the part at ``x < split_x``, the LEFT one
    at ``x >= split_x``. 26-connected components smaller than ``min_fraction`` of the largest
    component (over both halves) are dropped as specks; a side with nothing left is absent.
    """
    check_3d(label, "label")
    width = label.shape[LATERAL_AXIS]
    if not 0 <= split_x <= width:
        raise ValueError(f"split_x {split_x} outside [0, {width}]")
    mask = np.asarray(label) > 0
    box = bounding_box(mask)
    if box is None:
        return {}
    # Work inside the mask's bounding box; offsets bring coordinates back to the full grid.
    lo = [b.start for b in box]
    x_cut = int(np.clip(split_x - lo[LATERAL_AXIS], 0, box[LATERAL_AXIS].stop - lo[LATERAL_AXIS]))
    sub = mask[box]
    # Label each half on its own, so a component cut by the plane counts once per side.
    labels_r, n_r = ndimage.label(sub[:, :, :x_cut], structure=_STRUCTURE_26)
    labels_l, n_l = ndimage.label(sub[:, :, x_cut:], structure=_STRUCTURE_26)
    sizes_r = np.bincount(labels_r.ravel(), minlength=n_r + 1)[1:]
    sizes_l = np.bincount(labels_l.ravel(), minlength=n_l + 1)[1:]
    largest = max([0, *sizes_r.tolist(), *sizes_l.tolist()])
    found: dict[Side, KidneyLocation] = {}
    for side, labels, sizes, x_offset in (
        (Side.RIGHT, labels_r, sizes_r, 0),
        (Side.LEFT, labels_l, sizes_l, x_cut),
    ):
        keep = np.nonzero(sizes >= max(1, min_fraction * largest))[0] + 1
        if keep.size == 0:
            continue
        kept = np.isin(labels, keep)
        coords = np.nonzero(kept)
        offsets = [lo[0], lo[1], lo[2] + x_offset]
        bbox = tuple((int(c.min()) + o, int(c.max()) + 1 + o) for c, o in zip(coords, offsets))
        center = tuple((a + b) // 2 for a, b in bbox)
        found[side] = KidneyLocation(center=center, bbox=bbox, voxels=int(coords[0].size))  # type: ignore[arg-type]
    return found
