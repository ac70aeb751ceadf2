"""Geometry, Volume and canonical reorientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from kidneyssl.io.geometry import (
    CANONICAL_AXCODES,
    LATERAL_AXIS,
    Geometry,
    Reorientation,
    Side,
    Volume,
    from_canonical,
    to_canonical,
)


def _affine_for(axcodes, spacing=(2.0, 3.0, 4.0), origin=(10.0, -20.0, 30.0)):
    ornt = nio.axcodes2ornt(axcodes)  # voxel axis i -> world axis ornt[i,0], sign ornt[i,1]
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, flip) in enumerate(ornt):
        affine[int(axis), i] = flip * spacing[i]
    affine[:3, 3] = origin
    return affine


def test_geometry_derives_spacing_and_axcodes():
    g = Geometry(_affine_for(("I", "P", "L"), spacing=(5.0, 0.8, 0.7)), (10, 20, 30))
    assert g.spacing == pytest.approx((5.0, 0.8, 0.7))
    assert g.axcodes == ("I", "P", "L")
    assert Geometry.from_dict(g.to_dict()).same_as(g)


def test_volume_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        Volume(np.zeros((2, 3, 4)), Geometry(np.eye(4), (2, 3, 5)))
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((2, 3)), Geometry(np.eye(4), (2, 3, 1)))


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("L", "P", "S"), ("A", "S", "R"),
                                      ("S", "L", "P")])
def test_to_canonical_preserves_world_positions_and_inverts(axcodes):
    rng = np.random.default_rng(0)
    shape = (5, 6, 7)
    array = rng.integers(0, 1000, size=shape).astype(np.int16)
    vol = Volume(array, Geometry(_affine_for(axcodes), shape))
    canon, record = to_canonical(vol)
    assert canon.geometry.axcodes == CANONICAL_AXCODES
    # every voxel keeps its world position
    for idx in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        world = vol.geometry.affine @ np.array([*idx, 1.0])
        cidx = np.round(np.linalg.inv(canon.geometry.affine) @ world).astype(int)[:3]
        assert canon.array[tuple(cidx)] == array[idx]
    np.testing.assert_array_equal(from_canonical(canon.array, record), array)
    again = Reorientation.from_dict(record.to_dict())
    np.testing.assert_array_equal(from_canonical(canon.array, again), array)
    assert array.flags.writeable  # input untouched


def test_lateral_axis_points_to_patient_left():
    # RAS+ world: +x is the patient's right. A voxel with larger canonical x must lie further left.
    vol = Volume(np.zeros((4, 4, 4)), Geometry(_affine_for(("R", "A", "S")), (4, 4, 4)))
    canon, _ = to_canonical(vol)
    a = canon.geometry.affine
    idx0 = np.array([1, 1, 0, 1.0])
    idx1 = idx0.copy()
    idx1[LATERAL_AXIS] += 1
    assert (a @ idx1)[0] < (a @ idx0)[0]
    assert Side.LEFT.opposite is Side.RIGHT


def test_real_ct_kidneys_land_on_their_sides(real_ct_dir):
    img = nib.load(str(real_ct_dir / "example_seg.nii.gz"))
    vol = Volume(np.asarray(img.dataobj), Geometry(img.affine, img.shape))
    canon, _ = to_canonical(vol)
    right_x = np.nonzero(canon.array == 2)[LATERAL_AXIS].mean()
    left_x = np.nonzero(canon.array == 3)[LATERAL_AXIS].mean()
    assert left_x > right_x


def test_kits_mask_is_already_canonical(kits_masks_dir):
    img = nib.load(str(kits_masks_dir / "case_00004" / "segmentation.nii.gz"))
    g = Geometry(img.affine, img.shape)
    assert g.axcodes == CANONICAL_AXCODES
    _, record = to_canonical(Volume(np.zeros(img.shape, np.uint8), g))
    assert record.is_identity
