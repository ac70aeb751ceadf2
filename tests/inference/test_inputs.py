"""find_inputs naming rules and the DICOM series reader."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kidneyssl.errors import DataError
from kidneyssl.inference.inputs import find_inputs, read_dicom_series, read_input


def _touch_nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(path))
    return path


def test_naming_rules(tmp_path):
    _touch_nifti(tmp_path / "case_00007" / "imaging.nii.gz")
    (tmp_path / "case_00009").mkdir()
    _touch_nifti(tmp_path / "scan_a.nii.gz")
    _touch_nifti(tmp_path / "scan_b.nii")
    (tmp_path / "notes.txt").write_text("x")
    items = find_inputs(tmp_path)
    assert [(i.name, i.output_id) for i in items] == [
        ("case_00007", "00007"), ("case_00009", "00009"), ("scan_a.nii.gz", "scan_a"), ("scan_b.nii", "scan_b")]
    assert items[1].path == tmp_path / "case_00009" / "imaging.nii.gz"  # reported when read
    one = find_inputs(tmp_path / "case_00007" / "imaging.nii.gz")
    assert [(i.name, i.output_id) for i in one] == [("case_00007", "00007")]


def test_empty_missing_and_clashing_inputs(tmp_path):
    with pytest.raises(DataError, match="no scans"):
        find_inputs(tmp_path)
    with pytest.raises(DataError, match="missing"):
        find_inputs(tmp_path / "nothing.nii.gz")
    _touch_nifti(tmp_path / "x.nii.gz")
    _touch_nifti(tmp_path / "x.nii")
    with pytest.raises(DataError, match="prediction_x.nii.gz"):
        find_inputs(tmp_path)


def _write_dicom_series(array_zyx: np.ndarray, spacing_xyz, origin, folder):
    """Write a (Z, Y, X) int16 array as a DICOM series (one file per slice), axial LPS."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array_zyx.shape[0]):
        sl = image[:, :, k]
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (("0010|0010", "Phantom"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0008|0060", "CT"),
                           ("0020|0032", "\\".join(f"{v:.4f}" for v in pos)),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0018|0050", f"{spacing_xyz[2]:.4f}")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_reads_like_nifti(tmp_path):
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    rng = np.random.default_rng(0)
    arr = rng.integers(-100, 300, size=(6, 10, 12)).astype(np.int16)  # (z, y, x) in SimpleITK order
    try:
        _write_dicom_series(arr, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), tmp_path / "series1")
    finally:  # ITK's DICOM writer switches the C locale too
        locale.setlocale(locale.LC_ALL, saved)
    assert locale.setlocale(locale.LC_ALL) == saved
    items = find_inputs(tmp_path)
    assert [(i.name, i.output_id, i.kind) for i in items] == [("series1", "series1", "dicom")]
    assert [i.kind for i in find_inputs(tmp_path / "series1")] == ["dicom"]
    vol = read_input(items[0])
    # nibabel order (x, y, z) and RAS affine: LPS origin (10, -20, 30) -> RAS (-10, 20, 30)
    assert vol.array.shape == (12, 10, 6)
    np.testing.assert_array_equal(vol.array, arr.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.geometry.spacing, (0.8, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(vol.geometry.affine[:3, 3], (-10.0, 20.0, 30.0), atol=1e-3)
    assert vol.geometry.axcodes == ("L", "P", "S")
    assert locale.setlocale(locale.LC_ALL) == saved  # reading did not switch the locale
    with pytest.raises(DataError, match="no series"):
        read_dicom_series(tmp_path / "empty_dir_that_is_missing")


def test_folders_without_dicom_files_are_not_scanned(tmp_path):
    from kidneyssl.inference.inputs import _looks_like_dicom

    (tmp_path / "notes.json").write_text("{}")
    assert not _looks_like_dicom(tmp_path)
    (tmp_path / "raw").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    assert _looks_like_dicom(tmp_path)
