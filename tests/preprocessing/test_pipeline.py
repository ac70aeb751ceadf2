"""preprocess_image / preprocess_label / PreprocessRecord.restore: geometry round trips."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from kidneyssl.config import PreprocessConfig
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.volumes import read_volume, write_mask
from kidneyssl.preprocessing.pipeline import (
    PreprocessRecord,
    preprocess_image,
    preprocess_label,
)
from kidneyssl.preprocessing.spatial import unpad

CFG = PreprocessConfig(spacing_mm=(4.0, 2.0, 2.0), pad_multiple=16)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _canonical_phantom(shape=(40, 90, 120), spacing=(2.5, 0.9, 0.8)):
    """CT-like image and labels on an (I, P, L) grid: body, right kidney (low x), left kidney."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    cz, cy, cx = [(n - 1) * s / 2 for n, s in zip(shape, spacing)]
    body = ((y - cy) / 30) ** 2 + ((x - cx) / 40) ** 2 < 1
    image = np.where(body, 40.0, -1000.0) + 30 * np.sin(z / 7.0)
    label = np.zeros(shape, np.uint8)
    right = ((z - cz - 8) / 30) ** 2 + ((y - cy - 6) / 16) ** 2 + ((x - cx + 21) / 14) ** 2 < 1
    left = ((z - cz + 6) / 32) ** 2 + ((y - cy - 6) / 16) ** 2 + ((x - cx - 22) / 13) ** 2 < 1
    label[right | left] = 1
    label[((z - cz + 6) / 10) ** 2 + ((y - cy - 6) / 8) ** 2 + ((x - cx - 22) / 8) ** 2 < 1] = 2
    image[label > 0] = 180.0
    affine = np.array([[0, 0, -spacing[2], 110.0], [0, -spacing[1], 0, 60.0],
                       [-spacing[0], 0, 0, 40.0], [0, 0, 0, 1]])
    return image.astype(np.int16), label, affine


def _reorient(array: np.ndarray, affine: np.ndarray, codes: str):
    ornt = nio.ornt_transform(nio.axcodes2ornt(tuple("IPL")), nio.axcodes2ornt(tuple(codes)))
    return np.ascontiguousarray(nio.apply_orientation(array, ornt)), affine @ nio.inv_ornt_aff(ornt, array.shape)


@pytest.fixture(scope="module")
def phantom():
    return _canonical_phantom()


ORIENTATIONS = ["IPL", "RAS", "LPS", "PIR", "ASL"]


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_same_anatomy_same_result_in_any_orientation(phantom, codes):
    image, label, affine = phantom
    ref, ref_rec = preprocess_image(Volume(image, Geometry(affine, image.shape)), CFG)
    arr, aff = _reorient(image, affine, codes)
    vol = Volume(arr, Geometry(aff, arr.shape))
    assert vol.geometry.axcodes == tuple(codes)
    out, rec = preprocess_image(vol, CFG)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(rec.geometry.affine, ref_rec.geometry.affine, atol=1e-6)
    assert rec.geometry.axcodes == ("I", "P", "L")
    lab, laff = _reorient(label, affine, codes)
    a = preprocess_label(Volume(lab, Geometry(laff, lab.shape)), rec, CFG)
    b = preprocess_label(Volume(label, Geometry(affine, label.shape)), ref_rec, CFG)
    assert (a != b).sum() <= 2  # only float ties at the 0.5 threshold may differ


def test_preprocess_image_values_and_record(phantom):
    image, label, affine = phantom
    out, rec = preprocess_image(Volume(image, Geometry(affine, image.shape)), CFG)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert all(n % 16 == 0 for n in out.shape) and out.shape == rec.shape
    assert rec.resampled_shape == (25, 40, 48)  # round(40*2.5/4), round(90*.9/2), round(120*.8/2)
    assert rec.spacing_mm == pytest.approx((4.0, 90 * 0.9 / 40, 120 * 0.8 / 48))
    inner = unpad(out, rec.padding)
    assert float(inner.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(inner.std()) == pytest.approx(1.0, abs=1e-4)
    assert (out == 0).sum() >= out.size - inner.size  # zero padding
    # the window is applied before the z-score: -1000 HU air became the window floor
    assert float(inner.min()) == pytest.approx((-80.0 - rec.mean) / rec.std, abs=1e-4)
    assert rec.window_hu == (-80.0, 300.0)


def test_record_geometry_maps_kidneys_to_the_same_world_position(phantom):
    image, label, affine = phantom
    vol = Volume(image, Geometry(affine, image.shape))
    out, rec = preprocess_image(vol, CFG)
    small = preprocess_label(Volume(label, Geometry(affine, label.shape)), rec, CFG)
    world_full = affine @ [*np.argwhere(label > 0).mean(axis=0), 1]
    world_small = rec.geometry.affine @ [*np.argwhere(small > 0).mean(axis=0), 1]
    np.testing.assert_allclose(world_small[:3], world_full[:3], atol=1.0)  # mm


@pytest.mark.parametrize("codes", ["IPL", "RAS", "LPS", "PIR"])
def test_restore_reproduces_original_grid(tmp_path, phantom, codes):
    image, label, affine = phantom
    arr, aff = _reorient(image, affine, codes)
    lab, _ = _reorient(label, affine, codes)
    geom = Geometry(aff, arr.shape)
    _, rec = preprocess_image(Volume(arr, geom), CFG)
    small = preprocess_label(Volume(lab, geom), rec, CFG)
    back = rec.restore(small)
    assert back.shape == arr.shape and back.dtype == np.uint8
    assert _dice(back, lab > 0) > 0.97
    soft = preprocess_label(Volume(lab, geom), rec, CFG, soft=True)
    assert soft.dtype == np.float32 and 0.0 <= soft.min() and soft.max() <= 1.0
    assert _dice(rec.restore(soft, threshold=0.5), lab > 0) > 0.99
    path = write_mask(back, tmp_path / "pred.nii.gz", like=rec.original)
    written = nib.load(path)
    assert written.shape == arr.shape
    np.testing.assert_allclose(written.affine, aff, atol=1e-5)


def test_keep_tumor_labels_and_nearest(phantom):
    image, label, affine = phantom
    geom = Geometry(affine, image.shape)
    cfg = dataclasses.replace(CFG, keep_tumor=True)
    _, rec = preprocess_image(Volume(image, geom), cfg)
    small = preprocess_label(Volume(label, geom), rec, cfg)
    assert set(np.unique(small)) == {0, 1, 2}
    back = rec.restore(small, order="nearest")
    assert set(np.unique(back)) == {0, 1, 2}
    assert _dice(back == 2, label == 2) > 0.8
    with pytest.raises(ValueError, match="soft"):
        preprocess_label(Volume(label, geom), rec, cfg, soft=True)


def test_record_serialisation_and_errors(phantom):
    image, label, affine = phantom
    geom = Geometry(affine, image.shape)
    out, rec = preprocess_image(Volume(image, geom), CFG)
    again = PreprocessRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again.shape == rec.shape and again.padding == rec.padding
    np.testing.assert_allclose(again.geometry.affine, rec.geometry.affine)
    np.testing.assert_array_equal(again.restore(np.zeros(rec.shape, np.uint8)), np.zeros(image.shape))
    with pytest.raises(ValueError, match="version"):
        PreprocessRecord.from_dict({**rec.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="preprocessed shape"):
        rec.restore(np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        rec.restore(np.zeros(rec.shape, np.uint8), threshold=0.5)
    moved = affine.copy()
    moved[0, 3] += 5
    with pytest.raises(ValueError, match="differs"):
        preprocess_label(Volume(label, Geometry(moved, label.shape)), rec, CFG)
    probs = rec.restore(np.full(rec.shape, 0.25, np.float32))
    assert probs.dtype == np.float32 and probs.shape == image.shape
    np.testing.assert_allclose(probs, 0.25, atol=1e-6)


PAPER = PreprocessConfig()


@pytest.mark.parametrize("case_id", ["case_00004", "case_00000"])  # 4 mm slices; 0.5 mm, 611x512x512
def test_real_kits_mask_round_trip(kits_masks_dir, case_id):
    vol = read_volume(kits_masks_dir / case_id / "segmentation.nii.gz")
    assert vol.geometry.axcodes == ("I", "P", "L")
    gt = np.asarray(vol.array) > 0
    _, rec = preprocess_image(vol, PAPER)  # the mask as a stand-in image: geometry only
    np.testing.assert_allclose(rec.original.affine, nib.load(kits_masks_dir / case_id / "segmentation.nii.gz").affine, atol=1e-5)
    # A soft map (what a network outputs) comes back with Dice > 0.99 ...
    soft = preprocess_label(vol, rec, PAPER, soft=True)
    restored = rec.restore(soft, threshold=0.5)
    assert restored.shape == vol.array.shape and restored.dtype == np.uint8
    assert _dice(restored, gt) > 0.99
    if case_id == "case_00004":  # (binary path once; the 0.5 mm case is big)
        # ... a binary mask at 3.22 x 1.62 x 1.62 mm cannot hold more than ~0.98-0.99 (KiTS19)
        back = rec.restore(preprocess_label(vol, rec, PAPER))
        assert back.shape == vol.array.shape
        assert _dice(back, gt) > 0.975


def test_real_ras_ct_left_right_and_round_trip(real_ct_dir, tmp_path):
    ct = read_volume(real_ct_dir / "example_ct_sm.nii.gz")
    seg = read_volume(real_ct_dir / "example_seg.nii.gz")
    assert ct.geometry.axcodes == ("R", "A", "S")
    kidneys = np.where(seg.array == 2, 1, np.where(seg.array == 3, 2, 0)).astype(np.uint8)  # 1 right, 2 left
    cfg = dataclasses.replace(PAPER, keep_tumor=True)
    image, rec = preprocess_image(ct, cfg)
    assert rec.geometry.axcodes == ("I", "P", "L")
    small = preprocess_label(Volume(kidneys, seg.geometry), rec, cfg)
    x_right = np.argwhere(small == 1)[:, 2].mean()
    x_left = np.argwhere(small == 2)[:, 2].mean()
    assert x_right < x_left  # canonical: patient-left has the larger x index
    back = rec.restore(small)
    assert back.shape == ct.array.shape
    assert _dice(back == 1, kidneys == 1) > 0.9 and _dice(back == 2, kidneys == 2) > 0.9
    path = write_mask(back, tmp_path / "ct_pred.nii.gz", like=rec.original)
    np.testing.assert_allclose(nib.load(path).affine, nib.load(real_ct_dir / "example_ct_sm.nii.gz").affine, atol=1e-5)
    inner = unpad(image, rec.padding)
    assert abs(float(inner.mean())) < 1e-4 and float(inner.std()) == pytest.approx(1.0, abs=1e-3)
