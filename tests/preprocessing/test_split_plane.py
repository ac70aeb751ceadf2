"""Left/right split plane (with and without a mask) and kidney location, on synthetic, phantom and real masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kidneyssl.io.geometry import Geometry, Side, Volume, to_canonical
from kidneyssl.preprocessing.split_plane import (
    KidneyLocation,
    body_midline_x,
    find_split_x,
    locate_kidneys,
)


def _mask(width: int = 64, boxes: list[tuple[slice, slice, slice]] = ()) -> np.ndarray:
    m = np.zeros((12, 20, width), dtype=np.uint8)
    for box in boxes:
        m[box] = 1
    return m


def _whole(mask: np.ndarray, split_x: int) -> None:
    """Every connected component lies wholly on one side of the plane."""
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    for i in range(1, n + 1):
        xs = np.nonzero(labels == i)[2]
        assert xs.max() < split_x or xs.min() >= split_x, (i, xs.min(), xs.max(), split_x)


# --- split plane ---------------------------------------------------------------------------------


def test_two_kidneys_split_in_gap_at_midline():
    m = _mask(64, [np.s_[2:10, 4:14, 10:22], np.s_[3:9, 5:15, 42:54]])
    assert find_split_x(m) == 32  # the image midline lies in the gap [22, 42]
    locs = locate_kidneys(m, 32)
    assert locs[Side.RIGHT] == KidneyLocation(center=(6, 9, 16), bbox=((2, 10), (4, 14), (10, 22)), voxels=960)
    assert locs[Side.LEFT] == KidneyLocation(center=(6, 10, 48), bbox=((3, 9), (5, 15), (42, 54)), voxels=720)


def test_kidney_crossing_midline_stays_whole():
    # Patient-right kidney spans columns 12..39, across the image midline 32; left kidney 44..55.
    m = _mask(64, [np.s_[2:10, 4:14, 12:40], np.s_[3:9, 5:15, 44:56]])
    split = find_split_x(m)
    assert split == 40  # the gap [40, 44] clamped towards the midline
    _whole(m, split)
    locs = locate_kidneys(m, split)
    assert locs[Side.RIGHT].bbox[2] == (12, 40) and locs[Side.LEFT].bbox[2] == (44, 56)


def test_overlapping_projections_cut_least_tissue():
    # x ranges overlap (different z): no clean plane; the cut through the thinner kidney wins.
    m = _mask(64, [np.s_[0:4, 0:4, 10:34], np.s_[6:12, 5:20, 31:54]])
    split = find_split_x(m)
    assert split == 31  # cuts 3 columns of the small (4x4) kidney rather than 3 of the big one
    locs = locate_kidneys(m, split)
    assert set(locs) == {Side.LEFT, Side.RIGHT}
    assert locs[Side.RIGHT].voxels == 4 * 4 * 21


@pytest.mark.parametrize(
    "box, side, expected",
    [
        (np.s_[2:10, 4:14, 28:50], Side.LEFT, 28),  # left kidney crossing the midline 32
        (np.s_[2:10, 4:14, 10:36], Side.RIGHT, 36),  # right kidney crossing the midline
        (np.s_[2:10, 4:14, 40:50], Side.LEFT, 32),  # well inside the left half: the midline
    ],
)
def test_single_kidney_kept_on_its_side(box, side, expected):
    m = _mask(64, [box])
    m[5, 5, 2] = 1  # a 1-voxel speck on the far right is ignored
    split = find_split_x(m)
    assert split == expected
    locs = locate_kidneys(m, split)
    assert list(locs) == [side]
    assert locs[side].voxels == int(m.sum()) - 1


def test_specks_do_not_move_the_plane_or_make_a_kidney():
    m = _mask(64, [np.s_[2:10, 4:14, 10:22], np.s_[3:9, 5:15, 42:54]])
    m[1, 1, 30:34] = 1  # 4-voxel speck straddling the midline
    assert find_split_x(m) == 32
    locs = locate_kidneys(m, 32)
    assert locs[Side.RIGHT].voxels == 960 and locs[Side.LEFT].voxels == 720


def test_mask_free_split_uses_body_centre():
    image = np.full((8, 30, 64), -1.0, dtype=np.float32)
    zz, yy, xx = np.mgrid[0:8, 0:30, 0:64]
    image[((yy - 15) / 12.0) ** 2 + ((xx - 40) / 18.0) ** 2 <= 1] = 1.5
    assert body_midline_x(image) == 40
    assert find_split_x(None, image) == 40
    padded = np.pad(image, ((0, 0), (0, 0), (0, 16)))  # zero padding does not count as body
    assert find_split_x(None, padded) == 40
    # With a mask, the reference midline is the body centre: a lone kidney left of it is "right".
    m = np.zeros(image.shape, np.uint8)
    m[2:6, 10:20, 30:36] = 1
    assert find_split_x(m, image) == 40
    assert list(locate_kidneys(m, 40)) == [Side.RIGHT]


def test_split_without_anything_or_with_empty_mask():
    with pytest.raises(ValueError, match="needs a label"):
        find_split_x(None, None)
    assert find_split_x(np.zeros((4, 5, 30), np.uint8)) == 15
    with pytest.raises(ValueError, match="differs"):
        find_split_x(np.zeros((4, 5, 30), np.uint8), np.zeros((4, 5, 31), np.float32))
    assert locate_kidneys(np.zeros((4, 5, 30), np.uint8), 15) == {}


def test_kidney_location_round_trips_through_dict():
    loc = KidneyLocation(center=(1, 2, 3), bbox=((0, 2), (1, 4), (2, 5)), voxels=7)
    assert KidneyLocation.from_dict(loc.to_dict()) == loc


# --- real data -----------------------------------------------------------------------------------


def _canonical_mask(path, stride: int = 2) -> tuple[np.ndarray, Geometry]:
    nib = pytest.importorskip("nibabel")
    img = nib.load(str(path))
    array = np.asarray(img.dataobj, dtype=np.uint8)
    vol, _ = to_canonical(Volume(array, Geometry(img.affine, array.shape)))
    geometry = vol.geometry
    if stride > 1:  # in-plane stride keeps the test fast; the affine follows
        affine = geometry.affine.copy()
        affine[:3, 1:3] *= stride
        array = vol.array[:, ::stride, ::stride]
        geometry = Geometry(affine, array.shape)
    else:
        array = vol.array
    return np.ascontiguousarray(array), geometry


def _world_x(geometry: Geometry, center) -> float:
    return float((geometry.affine @ np.array([*center, 1.0]))[0])


def test_real_ct_sides_match_anatomical_labels(real_ct_dir):
    # example_seg: 2 = right kidney, 3 = left kidney; stored RAS, so reorientation is exercised.
    seg, geometry = _canonical_mask(real_ct_dir / "example_seg.nii.gz", stride=1)
    nib = pytest.importorskip("nibabel")
    ct = nib.load(str(real_ct_dir / "example_ct_sm.nii.gz"))
    ct_vol, _ = to_canonical(Volume(np.asarray(ct.dataobj, dtype=np.float32), Geometry(ct.affine, ct.shape)))
    assert geometry.axcodes == ("I", "P", "L")
    kidneys = np.isin(seg, (2, 3)).astype(np.uint8)
    for image in (None, ct_vol.array):
        split = find_split_x(kidneys, image)
        right_x = np.nonzero(seg == 2)[2]
        left_x = np.nonzero(seg == 3)[2]
        assert right_x.max() < split <= left_x.min()
        locs = locate_kidneys(kidneys, split)
        assert locs[Side.RIGHT].voxels == int((seg == 2).sum())
        assert locs[Side.LEFT].voxels == int((seg == 3).sum())
    # RAS+ world x grows towards the patient's right: the right kidney has the larger world x.
    assert _world_x(geometry, locs[Side.RIGHT].center) > _world_x(geometry, locs[Side.LEFT].center) + 50
    # The mask-free plane (inference) separates the kidneys too: on raw HU, and on the windowed
    # image, where it does not change under z-scoring and zero padding (the preprocessed grid).
    windowed = np.clip(ct_vol.array, -80, 300)
    zscored = np.pad((windowed - windowed.mean()) / windowed.std(), ((0, 2), (0, 11), (0, 6)))
    for image in (ct_vol.array, windowed):
        mask_free = find_split_x(None, image)
        assert mask_free == body_midline_x(image)
        assert np.nonzero(seg == 2)[2].max() < mask_free <= np.nonzero(seg == 3)[2].min()
    assert find_split_x(None, zscored) == find_split_x(None, windowed)


@pytest.mark.parametrize(
    "case, sides",
    [
        ("case_00005", {Side.LEFT}),  # a single kidney
        ("case_00040", {Side.LEFT, Side.RIGHT}),  # right kidney crosses the image midline
        ("case_00056", {Side.LEFT, Side.RIGHT}),  # right kidney crosses the image midline
        ("case_00004", {Side.LEFT, Side.RIGHT}),
        ("case_00021", {Side.LEFT, Side.RIGHT}),
    ],
)
def test_kits_masks_keep_each_kidney_whole(kits_masks_dir, case, sides):
    mask, geometry = _canonical_mask(kits_masks_dir / case / "segmentation.nii.gz")
    split = find_split_x(mask)
    locs = locate_kidneys(mask, split)
    assert set(locs) == sides
    # Every non-speck component lies wholly in one half ...
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    for i in np.nonzero(sizes >= 0.005 * sizes.max())[0]:
        x = boxes[i][2]
        assert x.stop <= split or x.start >= split
    # ... and the halves hold all kidney voxels but specks.
    assert sum(loc.voxels for loc in locs.values()) >= 0.99 * int((mask > 0).sum())
    if len(locs) == 2:
        # Patient-left kidney at larger x; in world RAS+ coordinates at smaller x.
        assert locs[Side.LEFT].center[2] > locs[Side.RIGHT].center[2]
        assert _world_x(geometry, locs[Side.LEFT].center) < _world_x(geometry, locs[Side.RIGHT].center)
    if case in ("case_00040", "case_00056"):
        width = mask.shape[2]
        right = locs[Side.RIGHT].bbox[2]
        assert right[0] < width // 2 < right[1]  # it really crosses the image midline


@pytest.mark.parametrize("seed", [0, 1, 2])  # seed 0: a phantom with a single (right) kidney
def test_phantom_sides_match_the_anatomy(seed):
    phantoms = pytest.importorskip("kidneyssl.phantoms")
    image, label = phantoms.generate_case(seed, "demo")
    truth = set(phantoms.sample_anatomy(seed).kidneys)
    image, _ = to_canonical(image)
    label, _ = to_canonical(label)
    windowed = np.clip(image.array, -80, 300)
    split = find_split_x(label.array, windowed)
    locs = locate_kidneys(label.array, split)
    assert set(locs) == truth
    _whole(label.array, split)
    # The mask-free plane (what inference uses) keeps the phantom's kidneys on their sides too.
    mask_free = find_split_x(None, windowed)
    assert set(locate_kidneys(label.array, mask_free)) == truth
    _whole(label.array, mask_free)
