import math

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric
from scipy.spatial.distance import cdist, directed_hausdorff

from kidneyssl.metrics import (
    boundary_length_difference,
    hausdorff_distance,
    normalized_hausdorff,
    slice_perimeter_mm,
    surface_area_mm2,
    surface_distances,
    surface_voxels,
)


def _voxels(shape, *points) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for p in points:
        m[p] = True
    return m


def _ellipsoid(shape, spacing, radius_mm, centre=None) -> np.ndarray:
    centre = [n / 2 - 0.5 for n in shape] if centre is None else centre
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) * s / radius_mm) ** 2 for g, c, s in zip(grids, centre, spacing))
    return r2 <= 1.0


# ----------------------------------------------------------------------------- Hausdorff
HD_CASES = [
    # (pred points, gt points, spacing, percentile, expected mm)
    ([(0, 0, 0)], [(2, 3, 4)], (2.0, 1.0, 0.5), None, math.sqrt(4.0**2 + 3.0**2 + 2.0**2)),
    ([(0, 0, 0)], [(2, 3, 4)], (2.0, 1.0, 0.5), 95, math.sqrt(29.0)),
    ([(0, 0, 0)], [(0, 0, 0)], (3.0, 1.0, 1.0), None, 0.0),
    # a 5-voxel line against its first voxel: directed distances [0, 1, 2, 3, 4] x 0.5 mm and [0]
    ([(0, 0, i) for i in range(5)], [(0, 0, 0)], (1.0, 1.0, 0.5), None, 2.0),
    ([(0, 0, i) for i in range(5)], [(0, 0, 0)], (1.0, 1.0, 0.5), 95, 0.95 * 4 * 0.5),  # linear percentile
    ([(0, 0, i) for i in range(5)], [(0, 0, 0)], (1.0, 1.0, 0.5), 50, 1.0),
]


@pytest.mark.parametrize("pred_pts, gt_pts, spacing, percentile, expected", HD_CASES)
def test_hausdorff_hand_computed(pred_pts, gt_pts, spacing, percentile, expected):
    shape = (3, 4, 5)
    pred, gt = _voxels(shape, *pred_pts), _voxels(shape, *gt_pts)
    assert hausdorff_distance(pred, gt, spacing, percentile) == pytest.approx(expected, abs=1e-9)
    # symmetric
    assert hausdorff_distance(gt, pred, spacing, percentile) == pytest.approx(expected, abs=1e-9)


def test_hausdorff_shifted_box_is_one_slice_thickness():
    gt = np.zeros((8, 8, 8), bool)
    gt[1:5, 1:5, 1:5] = True
    pred = np.roll(gt, 1, axis=0)
    assert hausdorff_distance(pred, gt, (3.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hausdorff_distance(pred, gt, (1.0, 0.7, 0.7)) == pytest.approx(1.0)


@pytest.mark.parametrize("percentile", [None, 95])
def test_hausdorff_empty_policy(percentile):
    gt = _voxels((4, 4, 4), (1, 1, 1))
    empty = np.zeros_like(gt)
    assert hausdorff_distance(empty, empty, (1, 1, 1), percentile) == 0.0
    assert math.isnan(hausdorff_distance(empty, gt, (1, 1, 1), percentile))
    assert math.isnan(hausdorff_distance(gt, empty, (1, 1, 1), percentile))


def test_surface_voxels_cross_erosion_and_border():
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    s = surface_voxels(m)
    assert s.sum() == 27 - 1 and not s[2, 2, 2]
    full = np.ones((3, 3, 3), bool)  # touches every border: only the centre is interior
    assert surface_voxels(full).sum() == 26


def _brute_force_hd(pred, gt, spacing, percentile):
    # Independent reference: surfaces on the full array, all pairwise distances.
    sp = np.argwhere(surface_voxels(pred)) * np.asarray(spacing)
    sg = np.argwhere(surface_voxels(gt)) * np.asarray(spacing)
    d = cdist(sp, sg)
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    if percentile is None:
        return max(d_pg.max(), d_gp.max())
    return max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile))


@pytest.mark.parametrize("percentile", [None, 95])
def test_hausdorff_matches_brute_force_and_crop_is_exact(blob_pairs, percentile):
    spacing = (2.5, 0.8, 1.1)
    for pred, gt in blob_pairs[:4]:
        ref = _brute_force_hd(pred, gt, spacing, percentile)
        assert hausdorff_distance(pred, gt, spacing, percentile) == pytest.approx(ref, abs=1e-9)
        big_p = np.zeros((40, 50, 60), bool)
        big_g = np.zeros_like(big_p)
        big_p[10:28, 15:37, 20:46] = pred
        big_g[10:28, 15:37, 20:46] = gt
        assert hausdorff_distance(big_p, big_g, spacing, percentile) == pytest.approx(ref, abs=1e-9)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own deprecation
@pytest.mark.parametrize("percentile", [None, 95])
def test_hausdorff_matches_monai(blob_pairs, percentile):
    spacing = (2.5, 0.8, 1.1)
    voxel_diagonal = math.sqrt(sum(s * s for s in spacing))
    metric = HausdorffDistanceMetric(include_background=True, percentile=percentile, reduction="none")
    for pred, gt in blob_pairs:
        ref = metric(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float(),
                     spacing=spacing)
        ours = hausdorff_distance(pred, gt, spacing, percentile)
        assert abs(ours - float(ref.item())) < voxel_diagonal  # the requirement
        assert ours == pytest.approx(float(ref.item()), abs=1e-3)  # in fact the same definition


def test_surface_distances_needs_two_masks():
    m = _voxels((3, 3, 3), (1, 1, 1))
    d_pg, d_gp = surface_distances(m, m, (1, 1, 1))
    assert d_pg.tolist() == [0.0] and d_gp.tolist() == [0.0]
    with pytest.raises(ValueError):
        surface_distances(m, np.zeros_like(m), (1, 1, 1))


@pytest.mark.parametrize("bad", [(1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_bad_spacing_raises(bad):
    m = _voxels((3, 3, 3), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(m, m, bad)


def test_bad_percentile_raises():
    m = _voxels((3, 3, 3), (1, 1, 1))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(m, m, (1, 1, 1), percentile=120)


# ----------------------------------------------------------------------------- boundary length
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (2.5, 1.0, 0.7)])
def test_surface_area_of_sphere_within_2_percent(spacing):
    shape = tuple(int(60 / s) + 4 for s in spacing)
    ball = _ellipsoid(shape, spacing, 25.0)
    assert surface_area_mm2(ball, spacing) == pytest.approx(4 * math.pi * 25.0**2, rel=0.02)


def test_slice_perimeter_of_cylinder_within_2_percent():
    spacing = (2.0, 0.7, 0.9)
    disk = _ellipsoid((1, 90, 70), (1.0, 0.7, 0.9), 25.0, centre=(0, 44.5, 34.5))
    cylinder = np.repeat(disk, 12, axis=0)
    assert slice_perimeter_mm(cylinder, spacing) == pytest.approx(12 * 2 * math.pi * 25.0, rel=0.02)


def test_slice_perimeter_tiling_equals_per_slice_sum(blob_pairs):
    spacing = (1.5, 0.9, 0.6)
    mask = blob_pairs[0][1]
    per_slice = sum(slice_perimeter_mm(mask[k : k + 1], spacing) for k in range(mask.shape[0]))
    assert slice_perimeter_mm(mask, spacing) == pytest.approx(per_slice, rel=1e-9)


@pytest.mark.parametrize("mode", ["surface", "perimeter"])
def test_boundary_length_difference_exact_cases(mode):
    spacing = (2.0, 0.8, 0.8)
    gt = np.zeros((12, 20, 30), bool)
    gt[2:9, 3:15, 2:12] = _ellipsoid((7, 12, 10), spacing, 6.0)
    twice = gt | np.roll(gt, 15, axis=2)  # two separate copies: exactly twice the boundary
    empty = np.zeros_like(gt)
    assert boundary_length_difference(gt, gt, spacing, mode) == 0.0
    assert boundary_length_difference(twice, gt, spacing, mode) == pytest.approx(100.0, abs=1e-9)
    assert boundary_length_difference(gt, twice, spacing, mode) == pytest.approx(50.0, abs=1e-9)
    assert boundary_length_difference(empty, gt, spacing, mode) == 100.0  # missed
    assert math.isnan(boundary_length_difference(gt, empty, spacing, mode))  # empty ground truth
    assert boundary_length_difference(empty, empty, spacing, mode) == 0.0


def test_boundary_length_difference_of_spheres():
    spacing = (1.0, 1.0, 1.0)
    gt = _ellipsoid((50, 50, 50), spacing, 20.0)
    pred = _ellipsoid((50, 50, 50), spacing, 22.0)
    assert boundary_length_difference(pred, gt, spacing) == pytest.approx((22**2 / 20**2 - 1) * 100, abs=3.0)


def test_boundary_length_difference_bad_mode():
    m = _voxels((3, 3, 3), (1, 1, 1))
    with pytest.raises(ValueError, match="mode"):
        boundary_length_difference(m, m, (1, 1, 1), mode="volume")


# ----------------------------------------------------------------------------- normalised HD
def test_normalized_hausdorff_hand_computed():
    line = _voxels((3, 4, 5), *[(0, 0, i) for i in range(5)])
    first = _voxels((3, 4, 5), (0, 0, 0))
    assert normalized_hausdorff(line, first) == pytest.approx(4 / 5)  # spacing never enters
    assert normalized_hausdorff(first, line) == 0.0  # directed: pred inside gt
    empty = np.zeros_like(line)
    assert normalized_hausdorff(empty, empty) == 0.0
    assert math.isnan(normalized_hausdorff(empty, line))
    assert math.isnan(normalized_hausdorff(line, empty))


def test_normalized_hausdorff_matches_scipy_directed_hausdorff(blob_pairs):
    for pred, gt in blob_pairs:
        ref = directed_hausdorff(np.argwhere(pred), np.argwhere(gt))[0] / pred.sum()
        assert normalized_hausdorff(pred, gt) == pytest.approx(ref, rel=1e-12)


def test_normalized_hausdorff_farthest_voxel_can_be_inside_prediction():
    # gt is a spherical shell, pred a ball at its centre: the farthest predicted voxel is the
    # centre, not a surface voxel of pred; the KD-tree pruning must still find it.
    shape = (41, 41, 41)
    gt = _ellipsoid(shape, (1, 1, 1), 19.0) & ~_ellipsoid(shape, (1, 1, 1), 17.0)
    pred = _ellipsoid(shape, (1, 1, 1), 9.0)
    pred[20, 20, 3] = True  # plus a stray voxel near the shell
    ref = directed_hausdorff(np.argwhere(pred), np.argwhere(gt))[0] / pred.sum()
    assert normalized_hausdorff(pred, gt) == pytest.approx(ref, rel=1e-12)
    far = np.zeros((30, 30, 120), bool)
    far[5:25, 5:25, 90:118] = True  # a big blob far from gt: many pruned cells
    g2 = np.zeros_like(far)
    g2[10:20, 10:20, 2:12] = True
    ref = directed_hausdorff(np.argwhere(far), np.argwhere(g2))[0] / far.sum()
    assert normalized_hausdorff(far, g2) == pytest.approx(ref, rel=1e-12)
