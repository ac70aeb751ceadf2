"""Items 2 and 4: every NIfTI that nibabel reads is read in HU after intensity scaling; headers
without a grid are refused, headers without orientation follow nibabel (loudly), oblique grids warn."""

from __future__ import annotations

import gzip
import logging
import struct

import nibabel as nib
import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.plausibility import scan_findings
from kidneyssl.io.volumes import read_volume, write_mask

from .conftest import ct_scan, error_lines, save_nifti, snapshot

AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def _stored(dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        hi = 255 if dtype == np.uint8 else 3000
        return rng.integers(0, hi, (20, 30, 40)).astype(dtype)
    return rng.normal(0.0, 500.0, (20, 30, 40)).astype(dtype)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype, slope, inter", [
    (np.uint16, 1.0, -1024.0),   # how many converters store CT
    (np.int16, 0.5, -10.0),
    (np.uint8, 4.0, -1024.0),
    (np.uint8, 1.0, 0.0),
    (np.float32, 1.0, 0.0),
    (np.float32, 2.0, -1.0),
    (np.float64, 1.0, 0.0),
    (np.float64, 2.0, -1.0),
], ids=["uint16+inter", "int16+slope", "uint8+slope", "uint8", "float32", "float32+slope", "float64",
        "float64+slope"])
def test_scaled_and_unscaled_data_read_as_nibabel_does(tmp_path, suffix, dtype, slope, inter):
    image = nib.Nifti1Image(_stored(dtype), AFFINE)
    image.header.set_data_dtype(dtype)
    image.header.set_slope_inter(slope, inter)
    path = tmp_path / f"scan{suffix}"
    nib.save(image, str(path))
    expected = nib.load(str(path)).get_fdata()
    volume = read_volume(path)
    scaled = (slope, inter) != (1.0, 0.0)
    assert volume.array.dtype == (np.dtype(dtype) if not scaled else
                                  np.float64 if dtype == np.float64 else np.float32)
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(volume.array, expected)  # exactly, in HU after scaling
    else:  # float data scaled in its own precision
        np.testing.assert_array_equal(volume.array, expected.astype(volume.array.dtype))
    np.testing.assert_allclose(volume.geometry.affine, nib.load(str(path)).affine, atol=1e-5)


def test_non_representable_slope_is_within_float32_precision(tmp_path):
    image = nib.Nifti1Image(_stored(np.int16), AFFINE)
    image.header.set_slope_inter(0.3, -1024.0)
    nib.save(image, str(tmp_path / "s.nii.gz"))
    expected = nib.load(str(tmp_path / "s.nii.gz")).get_fdata()
    np.testing.assert_array_equal(read_volume(tmp_path / "s.nii.gz").array, expected.astype(np.float32))


def test_truncated_scaled_file_is_still_caught(tmp_path):
    image = nib.Nifti1Image(_stored(np.uint16), AFFINE)
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, str(tmp_path / "t.nii.gz"))
    data = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.nii.gz: gzip"):
        read_volume(tmp_path / "t.nii.gz")


def test_scaled_ct_is_predicted(tmp_path, seg_checkpoint, kidneyssl):
    """The file of the report: uint16 with scl_inter = -1024 goes through predict."""
    arr, affine = ct_scan()
    image = nib.Nifti1Image((arr.astype(np.int32) + 1024).astype(np.uint16), affine)
    image.header.set_slope_inter(1.0, -1024.0)
    src = tmp_path / "scans" / "u16.nii.gz"
    src.parent.mkdir()
    nib.save(image, str(src))
    proc = kidneyssl("predict", "-q", "--model", seg_checkpoint, "--input", src, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert nib.load(str(tmp_path / "out" / "prediction_u16.nii.gz")).shape == arr.shape


def _patched_header(path, pixdim=None, qform_code=None, sform_code=None):
    """Write a NIfTI whose header fields are set byte-wise (nibabel would fix them on save)."""
    arr, affine = ct_scan()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp.nii")
    nib.save(nib.Nifti1Image(arr, affine), str(tmp))
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    if pixdim is not None:
        data[80:92] = struct.pack("<3f", *pixdim)
    if qform_code is not None:
        data[252:254] = struct.pack("<h", qform_code)
    if sform_code is not None:
        data[254:256] = struct.pack("<h", sform_code)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path, arr


def test_no_grid_in_the_header_is_refused(tmp_path, seg_checkpoint, kidneyssl):
    src, _ = _patched_header(tmp_path / "scans" / "nogrid.nii.gz", pixdim=(0, 0, 0), qform_code=0,
                             sform_code=0)
    with pytest.raises(DataError, match=r"nogrid.nii.gz: geometry: expected voxel sizes \(pixdim\) or a "
                                        r"qform/sform, found pixdim \[0.0, 0.0, 0.0\] and no qform/sform"):
        read_volume(src)
    before = snapshot(tmp_path, exclude=tmp_path / "out")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", src, "--out", tmp_path / "out")
    assert proc.returncode == 1  # the scan is reported as failed, nothing written for it
    assert f"{src}: geometry: expected voxel sizes" in proc.stderr
    assert not (tmp_path / "out" / "prediction_nogrid.nii.gz").exists()
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path, exclude=tmp_path / "out") == before


def test_no_orientation_follows_nibabel_loudly_and_writes_on_its_grid(tmp_path, caplog):
    src, arr = _patched_header(tmp_path / "noxform.nii", qform_code=0, sform_code=0)
    with caplog.at_level(logging.WARNING, logger="kidneyssl"):
        volume = read_volume(src)
    assert any("no qform/sform" in r.getMessage() and str(src) in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(volume.geometry.affine, nib.load(str(src)).affine)
    write_mask(np.zeros(arr.shape, np.uint8), tmp_path / "mask.nii.gz", like=volume.geometry)
    np.testing.assert_allclose(nib.load(str(tmp_path / "mask.nii.gz")).affine, nib.load(str(src)).affine,
                               atol=1e-5)


def test_sform_scales_disagreeing_with_pixdim_follow_nibabel(tmp_path, caplog):
    src, arr = _patched_header(tmp_path / "odd.nii", pixdim=(0, 0, 0), qform_code=0, sform_code=1)
    with caplog.at_level(logging.WARNING, logger="kidneyssl"):
        volume = read_volume(src)
    assert any("read this header differently" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(volume.geometry.affine, nib.load(str(src)).affine)


def test_oblique_scan_warns_with_the_angle(tmp_path, seg_checkpoint, kidneyssl):
    arr, _ = ct_scan()
    theta = np.radians(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-2.0, -2.5, 3.0])
    src = save_nifti(arr, affine, tmp_path / "scans" / "oblique.nii.gz")
    (finding,) = scan_findings(read_volume(src), src)
    assert finding.severity == "warning" and "oblique by 12.00 degrees" in str(finding)
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", src, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert f"{src}: orientation: expected voxel axes along the patient axes, found axes oblique by 12.00 " \
           "degrees" in proc.stderr
    assert not error_lines(proc.stderr)
    np.testing.assert_allclose(nib.load(str(tmp_path / "out" / "prediction_oblique.nii.gz")).affine, affine,
                               atol=1e-5)
