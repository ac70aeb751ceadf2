"""Surface metrics on binary 3-D masks: Hausdorff distance (max and percentile) in mm, boundary-length
difference, and the authors' normalised Hausdorff distance.

Definitions (all masks (Z, Y, X), spacing in mm in the same array-axis order):

* **Surface voxels** = ``mask & ~binary_erosion(mask, cross)``, with the 3-D cross (6-connected)
  structuring element and voxels outside the array counted as background. This is MONAI's
  ``get_mask_edges`` default (``scipy.ndimage.binary_erosion`` with its default structure), so our
  HD/HD95 equal MONAI's ``compute_hausdorff_distance(..., spacing=...)``.
* **Directed surface distances** P->G: for every surface voxel of P, the Euclidean distance in mm to
  the nearest surface voxel of G (exact; a KD-tree over voxel centres scaled by the spacing, which
  equals ``scipy.ndimage.distance_transform_edt(~surface_G, sampling=spacing)`` read at P's surface).
* **HD** = max of both directed maxima. **HD95** (``percentile=95``) = the larger of the two directed
  95th percentiles (linear interpolation), as MONAI does; not the percentile of the pooled distances.

Cropping: surfaces are extracted only inside the bounding box of ``pred | gt`` grown by one voxel.
This is exact, not an approximation: the 1-voxel margin makes the erosion inside the box identical
to the erosion of the full array (outside the array counts as background either way), and every
surface voxel of either mask lies inside the box, so no distance between them is cut off (a
distance transform run on the same box would be exact for the same reason: its feature voxels
are all inside, and a Euclidean distance does not travel through the image).

Empty-mask policy (tested; summaries count these cases, see :mod:`kidneyssl.metrics.summary`):

==================  ===========  ===========  ==============  ============
case                HD / HD95    BL%          normalised HD   (Dice)
==================  ===========  ===========  ==============  ============
both empty          0.0          0.0          0.0             1.0
empty prediction    NaN          100.0        NaN             0.0
empty ground truth  NaN          NaN          NaN             0.0
==================  ===========  ===========  ==============  ============

NaN (not inf) so that means fail loudly rather than becoming inf; no warning is emitted here, the
per-case row carries ``empty_pred`` / ``empty_gt`` flags instead.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from kidneyssl.metrics.overlap import as_binary_pair
from kidneyssl.preprocessing.spatial import bounding_box

__all__ = [
    "surface_voxels",
    "surface_distances",
    "hausdorff_distance",
    "surface_area_mm2",
    "slice_perimeter_mm",
    "boundary_length",
    "boundary_length_difference",
    "normalized_hausdorff",
]

_CROSS = ndimage.generate_binary_structure(3, 1)


def spacing3(spacing_mm: Sequence[float] | float) -> tuple[float, float, float]:
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be three positive numbers (z, y, x), got {spacing_mm!r}")
    return float(sp[0]), float(sp[1]), float(sp[2])


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X) map of the voxels of ``mask`` that touch the background (6-connectivity).

    Voxels on the array border count as surface (outside the array is background), as in MONAI.
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    # Exact nearest-neighbour distances in mm with a KD-tree over the (sparse) surface voxels, as
    # MONAI does on CPU: same values as an EDT of ~to_surface with sampling=spacing read at
    # from_surface, but ~10x faster on KiTS-size crops (1.1 s vs 0.1 s per direction, measured).
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    targets = np.argwhere(to_surface) * scale
    queries = np.argwhere(from_surface) * scale
    return cKDTree(targets, leafsize=32).query(queries, k=1)[0]


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float] | float
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, both ways.

    Args:
        pred, gt: (Z, Y, X) masks of equal shape (non-zero = foreground), both non-empty.
        spacing_mm: voxel size (z, y, x) in mm.

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: float64 arrays, one entry per surface voxel of ``pred``
        (resp. ``gt``).

    Raises:
        ValueError: if either mask is empty (distances are undefined), or on bad shapes/spacing.
    """
    spacing = spacing3(spacing_mm)
    p, g = as_binary_pair(pred, gt)
    box = bounding_box(p, g, margin=1)
    if box is None or not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    return surface_distances_between(surface_voxels(p[box]), surface_voxels(g[box]), spacing)


def surface_distances_between(p_surface: np.ndarray, g_surface: np.ndarray,
                       spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    return _directed(p_surface, g_surface, spacing), _directed(g_surface, p_surface, spacing)


def hd_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, percentile: float | None) -> float:
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hausdorff_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float] | float,
    percentile: float | None = None,
) -> float:
    """Symmetric Hausdorff distance between the surfaces of two masks, in mm.

    Args:
        pred, gt: (Z, Y, X) masks of equal shape; non-zero is foreground.
        spacing_mm: voxel size (z, y, x) in mm.
        percentile: None for the maximum (HD); e.g. 95 for HD95 = max of the two directed 95th
            percentiles (MONAI's convention).

    Returns:
        Distance in mm. Both empty -> 0.0; exactly one empty -> NaN.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}")
    spacing = spacing3(spacing_mm)
    p, g = as_binary_pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if not (has_p and has_g):
        return float("nan")
    d_pg, d_gp = surface_distances(p, g, spacing)
    return hd_from_distances(d_pg, d_gp, percentile)


def _sitk_perimeter(mask: np.ndarray, spacing_xyz: tuple[float, ...]) -> float:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.SetComputePerimeter(True)
    stats.Execute(image)
    return float(stats.GetPerimeter(1)) if stats.HasLabel(1) else 0.0


def _crop_to_foreground(mask: np.ndarray) -> np.ndarray | None:
    box = bounding_box(mask)
    return None if box is None else mask[box]


def surface_area_mm2(mask: np.ndarray, spacing_mm: Sequence[float] | float) -> float:
    """Surface area of a 3-D mask in mm².

    Estimator: ITK's ``LabelShapeStatistics`` perimeter (via SimpleITK, a project dependency), a
    Crofton-formula count of boundary intercepts along 13 directions weighted for the voxel
    spacing (Legland et al. 2007). We use it because scikit-image's marching cubes is not a
    dependency and the plain voxel-face count overestimates curved surfaces by ~50% (sphere of
    radius 25 mm: faces +51%, this estimator +0.5% at 1 mm and -0.3% at 3 x 0.8 x 0.8 mm).
    Its weak spot is axis-aligned flat faces, which it underestimates (a 10-voxel cube: -13%);
    kidneys are smooth curved organs, and BL% compares two areas from the same estimator.
    """
    spacing = spacing3(spacing_mm)
    mask = np.asarray(mask, dtype=bool)
    crop = _crop_to_foreground(mask)
    if crop is None:
        return 0.0
    # ITK treats outside the image as background, so cropping to the foreground is exact.
    return _sitk_perimeter(crop, spacing[::-1])


def slice_perimeter_mm(mask: np.ndarray, spacing_mm: Sequence[float] | float) -> float:
    """Sum over axial slices (array axis 0) of each slice's 2-D boundary length in mm.

    Per-slice perimeters use the same ITK Crofton estimator in 2-D (4 directions; a disk of radius
    25 mm: +0.2%). All slices are measured in one ITK call by tiling them side by side with a
    one-voxel background gap, which gives exactly the per-slice sum (checked in the tests).
    """
    spacing = spacing3(spacing_mm)
    mask = np.asarray(mask, dtype=bool)
    crop = _crop_to_foreground(mask)
    if crop is None:
        return 0.0
    nz, ny, nx = crop.shape
    tiled = np.zeros((ny, nz, nx + 1), dtype=np.uint8)
    tiled[:, :, :nx] = crop.transpose(1, 0, 2)
    return _sitk_perimeter(tiled.reshape(ny, nz * (nx + 1)), (spacing[2], spacing[1]))


BoundaryMode = Literal["surface", "perimeter"]


def boundary_length(mask: np.ndarray, spacing_mm: Sequence[float] | float, mode: BoundaryMode = "surface") -> float:
    """B(mask): surface area in mm² (``mode="surface"``) or summed axial perimeter in mm (``"perimeter"``)."""
    if mode == "surface":
        return surface_area_mm2(mask, spacing_mm)
    if mode == "perimeter":
        return slice_perimeter_mm(mask, spacing_mm)
    raise ValueError(f"mode must be 'surface' or 'perimeter', got {mode!r}")


def boundary_length_difference(
    pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float] | float, mode: BoundaryMode = "surface"
) -> float:
    """BL% = |B(pred) - B(gt)| / B(gt) x 100, the paper's boundary-length difference.

    The paper does not define B. ``mode="surface"`` (default) reads it as the surface area in mm²
    of the 3-D mask; ``mode="perimeter"`` as the boundary length in mm summed over axial slices
    (the 2-D reading of "boundary length"). See :func:`surface_area_mm2` for the estimator.

    Returns:
        Percentage >= 0. Empty ground truth -> NaN (0.0 if the prediction is empty too);
        empty prediction with non-empty ground truth -> 100.0.
    """
    p, g = as_binary_pair(pred, gt)
    b_gt = boundary_length(g, spacing_mm, mode)
    b_pred = boundary_length(p, spacing_mm, mode)
    if b_gt == 0.0:
        return 0.0 if b_pred == 0.0 else float("nan")
    return abs(b_pred - b_gt) / b_gt * 100.0


def normalized_hausdorff(pred: np.ndarray, gt: np.ndarray) -> float:
    """The authors' normalised HD: directed Hausdorff distance pred -> gt in voxel units, divided by
    the number of predicted foreground voxels.

    Computed over all foreground voxels (not surfaces), in index units whatever the spacing: equal
    to ``scipy.spatial.distance.directed_hausdorff(argwhere(pred), argwhere(gt))[0] / pred.sum()``,
    but via a KD-tree over the ground truth's surface (exact, see the comment in the body). It is
    **not a physical distance**: it has units of 1/voxel-count and shrinks as predictions grow; it
    exists only to compare with the paper's Table 1 HD column (0.303 MwoS / 0.291 MwS).

    Returns:
        Both empty -> 0.0; empty prediction or empty ground truth (not both) -> NaN.
    """
    p, g = as_binary_pair(pred, gt)
    box = bounding_box(p, g, margin=1)
    if box is None:
        return 0.0
    p, g = p[box], g[box]
    return normalized_hausdorff_of_surfaces(p, g, surface_voxels(g))


def normalized_hausdorff_of_surfaces(p: np.ndarray, g: np.ndarray, g_surface: np.ndarray) -> float:
    n_p = int(np.count_nonzero(p))
    has_g = bool(g_surface.any())
    if n_p == 0 and not has_g:
        return 0.0
    if n_p == 0 or not has_g:
        return float("nan")
    # Only predicted voxels outside gt contribute (the rest are at distance 0), and the gt voxel
    # nearest to an outside point is always a gt surface voxel (a step towards the point from an
    # interior voxel stays inside gt and gets closer), so a KD-tree over gt's surface is exact.
    outside = p & ~g
    if not outside.any():
        return 0.0
    return _max_distance_to(np.argwhere(outside), np.argwhere(g_surface)) / n_p


def _max_distance_to(queries: np.ndarray, targets: np.ndarray, block: int = 8) -> float:
    """max over ``queries`` of the distance to the nearest of ``targets`` (voxel units), exactly.

    Branch and bound, because a far false-positive blob has ~1e5 voxels whose KD-tree queries are
    slow: group queries in ``block``^3 cells, query one representative per cell; as distance is
    1-Lipschitz, a cell cannot beat the best representative unless representative distance + cell
    radius exceeds it, and only such cells are queried in full.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(targets.astype(np.float64), leafsize=32)
    cell = queries // block
    dims = cell.max(axis=0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    cell_of = np.cumsum(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) - 1  # cell index, sorted order
    pts = queries[order].astype(np.float64)
    reps = pts[starts]
    rep_dist = tree.query(reps, k=1)[0]
    cell_radius = np.maximum.reduceat(np.linalg.norm(pts - reps[cell_of], axis=1), starts)
    best = float(rep_dist.max())
    todo = pts[(rep_dist + cell_radius > best)[cell_of]]
    if len(todo):
        best = max(best, float(tree.query(todo, k=1)[0].max()))
    return best
