"""Issue 20, items 4, 10 and 16: NIfTI headers that would be read with a guessed geometry (a zero
voxel size beside a qform, a singular sform) or that claim more voxels than the file holds are
refused in one line before any voxel memory is allocated; +-inf voxels are refused like NaN;
NIfTI-2 is read like NIfTI-1."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kidneyssl.errors import DataError
from kidneyssl.io.volumes import read_geometry, read_volume

from .conftest import ct_scan, error_lines, run_cli, save_nifti

AFFINE = np.diag([-2.0, -2.5, 3.0, 1.0])
_PIXDIM = 76  # byte offset of pixdim[8] (float32) in a NIfTI-1 header; dim[8] (int16) is at 40


def _nifti_bytes(array: np.ndarray, affine=AFFINE, qform_only=False) -> bytearray:
    image = nib.Nifti1Image(array, affine)
    if qform_only:
        image.set_sform(None, code=0)
        image.set_qform(affine, code=1)
    image.header["vox_offset"] = 352
    return bytearray(image.header.binaryblock + b"\0" * 4 + array.tobytes(order="F"))


def _write(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(data), compresslevel=1) if path.name.endswith(".gz") else bytes(data))
    return path


def _set_pixdim(data: bytearray, axis: int, value: float) -> bytearray:
    pixdim = list(struct.unpack("<8f", data[_PIXDIM:_PIXDIM + 32]))
    pixdim[axis] = value
    data[_PIXDIM:_PIXDIM + 32] = struct.pack("<8f", *pixdim)
    return data


def _set_dims(data: bytearray, dims: tuple[int, int, int]) -> bytearray:
    data[40:56] = struct.pack("<8h", 3, *dims, 1, 1, 1, 1)
    return data


# -- item 4: pixdim[3] = 0 beside a valid qform ----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_zero_voxel_size_with_a_qform_is_refused_not_read_as_1_mm(tmp_path, suffix):
    arr, _ = ct_scan()
    path = _write(_set_pixdim(_nifti_bytes(arr, qform_only=True), 3, 0.0), tmp_path / f"scan{suffix}")
    assert nib.load(str(path)).header.get_zooms()[2] == 1.0  # what nibabel (and the old reader) made of it
    with pytest.raises(DataError, match=r"pixdim\[1..3\]\) > 0 for the qform, found pixdim \[2.0, 2.5, 0.0\]"):
        read_geometry(path)


def test_zero_voxel_size_fails_the_case_in_predict(tmp_path, seg_checkpoint, kidneyssl):
    arr, _ = ct_scan()
    path = _write(_set_pixdim(_nifti_bytes(arr, qform_only=True), 3, 0.0), tmp_path / "scans" / "a.nii.gz")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", path, "--out", tmp_path / "out")
    assert proc.returncode == 1 and "a zero voxel size would be read as 1 mm" in proc.stderr
    assert not (tmp_path / "out" / "prediction_a.nii.gz").exists()


# -- item 10: the header's size against the file's, before any allocation ---------------------------

@pytest.fixture
def no_voxel_read(monkeypatch):
    """SimpleITK's voxel read (the allocation of what the header claims) must not happen."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("voxel data read (and allocated) before the size check")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dims, found", [
    ((1000, 1000, 1000), "decompresses to at most"),  # 2 GB claimed by a small file
    ((2000, 2000, 2000), "decompresses to at most"),  # 16 GB
    ((40, 48, 48), "decompressed bytes"),  # twice the voxels the file holds: counted in a bounded stream
])
def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_before_reading(
        tmp_path, no_voxel_read, suffix, dims, found):
    arr, _ = ct_scan()  # 40 x 48 x 24 int16
    path = _write(_set_dims(_nifti_bytes(arr), dims), tmp_path / f"big{suffix}")
    with pytest.raises(DataError) as err:
        read_volume(path)
    message = str(err.value)
    needed = 352 + 2 * int(np.prod(dims))
    assert f"{path}: size: expected {needed} bytes of header and voxel data ({'x'.join(map(str, dims))} voxels" \
        in message
    assert (found if suffix == ".nii.gz" else f"found a file of {path.stat().st_size} bytes") in message
    assert "\n" not in message


def test_an_intact_file_passes_the_size_check(tmp_path):
    arr, _ = ct_scan()
    for suffix in (".nii", ".nii.gz"):
        vol = read_volume(_write(_nifti_bytes(arr), tmp_path / f"ok{suffix}"))
        np.testing.assert_array_equal(vol.array, arr)


# -- item 16: +-inf, NIfTI-2, a singular sform ------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_infinite_voxels_are_refused_like_nan(tmp_path, suffix):
    arr = ct_scan()[0].astype(np.float32)
    arr[1, 2, 3], arr[4, 5, 6] = np.inf, -np.inf
    path = save_nifti(arr, AFFINE, tmp_path / f"inf{suffix}")
    with pytest.raises(DataError, match="expected finite voxels .* found 2 infinite voxels"):
        read_volume(path)
    arr[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="found 1 NaN and 2 infinite voxels"):
        read_volume(save_nifti(arr, AFFINE, tmp_path / f"nan_inf{suffix}"))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_is_read_like_nifti1(tmp_path, suffix):
    arr, _ = ct_scan()
    one = read_volume(save_nifti(arr, AFFINE, tmp_path / f"one{suffix}"))
    path = tmp_path / f"two{suffix}"
    nib.save(nib.Nifti2Image(arr, AFFINE), str(path))
    two = read_volume(path)
    np.testing.assert_array_equal(two.array, one.array)
    np.testing.assert_allclose(two.geometry.affine, one.geometry.affine)
    assert read_geometry(path).shape == arr.shape
    scaled = nib.Nifti2Image(arr, AFFINE)
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, str(tmp_path / f"scaled{suffix}"))
    np.testing.assert_allclose(read_volume(tmp_path / f"scaled{suffix}").array, arr - 1024.0)


def test_truncated_nifti2_gzip_is_refused(tmp_path):
    arr, _ = ct_scan()
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(arr, AFFINE), str(path))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(DataError, match=f"{path}: (size|gzip|data): "):  # not "unreadable header"
        read_volume(path)


def test_a_singular_sform_is_one_line_with_no_matrix_dump(tmp_path):
    arr, _ = ct_scan()
    root = tmp_path / "pairs"
    root.mkdir()
    for name, qform in (("sform_only", False), ("with_qform", True)):
        image = nib.Nifti1Image(arr, AFFINE)
        header = image.header
        header.set_qform(AFFINE if qform else None, code=1 if qform else 0)
        header["sform_code"] = 1
        header["srow_x"], header["srow_y"], header["srow_z"] = [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 0]
        nib.save(nib.Nifti1Image(arr, None, header), str(root / f"{name}.nii.gz"))
        label = np.zeros(arr.shape, np.uint8)
        label[8:16, 10:20, 6:14] = 1
        save_nifti(label, AFFINE, root / f"{name}_seg.nii.gz")
        with pytest.raises(DataError, match="expected an invertible sform/qform .* found a singular one"):
            read_geometry(root / f"{name}.nii.gz")
    proc = run_cli("check", "--data", root, "--format", "pairs")
    assert proc.returncode == 1, proc.stderr
    bad = [ln for ln in proc.stdout.splitlines() if "found a singular one" in ln]
    assert len(bad) == 2 and all("found a singular one [[1.0, 1.0, 0.0, 0.0]" in ln for ln in bad)
    assert not error_lines(proc.stderr) and "WARNING" not in proc.stderr and "vnl" not in proc.stderr.lower()
