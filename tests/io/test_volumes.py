"""read_volume / write_volume / write_mask: equality with nibabel and SimpleITK, bad inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kidneyssl.errors import DataError
from kidneyssl.io.geometry import Geometry
from kidneyssl.io.volumes import fortran_order, read_geometry, read_volume, write_mask, write_volume

IPL = np.array([[0, 0, -0.8, 120.0], [0, -0.7, 0, 80.0], [-2.5, 0, 0, 30.0], [0, 0, 0, 1]])
RAS = np.array([[3.0, 0, 0, -170.0], [0, 2.0, 0, 10.0], [0, 0, 1.5, 90.0], [0, 0, 0, 1]])
OBLIQUE = np.array([[0.9 * np.cos(0.3), -0.9 * np.sin(0.3), 0, 5.0],
                    [0.9 * np.sin(0.3), 0.9 * np.cos(0.3), 0, -7.0],
                    [0, 0, 2.0, 11.0], [0, 0, 0, 1]])


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("affine", [IPL, RAS, OBLIQUE], ids=["IPL", "RAS", "oblique"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_read_volume_equals_nibabel(tmp_path, affine, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((7, 9, 11)) * 200).astype(dtype)
    path = _save(tmp_path / "a.nii.gz", array, affine)
    vol = read_volume(path)
    ref = nib.load(path)
    assert vol.array.shape == (7, 9, 11)
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(vol.geometry.affine, ref.affine, atol=1e-5)
    assert read_geometry(path).same_as(vol.geometry, atol=1e-6)
    vol.array[0, 0, 0] = 1  # writable, and the buffer outlives the SimpleITK image


def test_read_volume_real_files_equal_nibabel(real_ct_dir, kits_masks_dir):
    for path in (real_ct_dir / "example_ct_sm.nii.gz", kits_masks_dir / "case_00004" / "segmentation.nii.gz"):
        vol, ref = read_volume(path), nib.load(path)
        np.testing.assert_array_equal(vol.array, np.asanyarray(ref.dataobj))
        np.testing.assert_allclose(vol.geometry.affine, ref.affine, atol=1e-5)
    assert read_volume(real_ct_dir / "example_ct_sm.nii.gz").geometry.axcodes == ("R", "A", "S")
    assert read_volume(kits_masks_dir / "case_00004" / "segmentation.nii.gz").geometry.axcodes == ("I", "P", "L")


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nii"])
def test_write_volume_reads_back_with_nibabel_and_simpleitk(tmp_path, name):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    geom = Geometry(OBLIQUE, (4, 5, 6))
    path = write_volume(array, geom, tmp_path / name)
    ref = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(ref.dataobj), array)
    np.testing.assert_allclose(ref.affine, OBLIQUE, atol=1e-5)
    img = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), array)
    np.testing.assert_allclose(img.GetSpacing(), geom.spacing, atol=1e-5)
    # LPS origin = RAS origin with x and y negated
    np.testing.assert_allclose(img.GetOrigin(), [-5.0, 7.0, 11.0], atol=1e-4)
    back = read_volume(path)
    np.testing.assert_allclose(back.geometry.affine, OBLIQUE, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_write_mask_uint8_and_shape_check(tmp_path):
    geom = Geometry(IPL, (3, 4, 5))
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 2, 3] = True
    path = write_mask(mask, tmp_path / "m.nii.gz", like=geom)
    back = read_volume(path)
    assert back.array.dtype == np.uint8 and int(back.array.sum()) == 1 and back.array[1, 2, 3] == 1
    assert back.geometry.same_as(geom, atol=1e-5)
    with pytest.raises(ValueError, match="differs from the reference grid"):
        write_mask(np.zeros((3, 4, 6), np.uint8), tmp_path / "bad.nii.gz", like=geom)
    with pytest.raises(ValueError, match="0..255"):
        write_mask(np.full((3, 4, 5), 300), tmp_path / "bad.nii.gz", like=geom)
    with pytest.raises(ValueError, match="0..255"):
        write_mask(np.full((3, 4, 5), 0.5), tmp_path / "bad.nii.gz", like=geom)
    assert not (tmp_path / "bad.nii.gz").exists()


def _assert_error(path: Path, field: str) -> DataError:
    with pytest.raises(DataError) as info:
        read_volume(path)
    assert str(path) in str(info.value)
    assert info.value.field == field
    return info.value


def test_missing_file(tmp_path):
    _assert_error(tmp_path / "nope.nii.gz", "file")


def test_truncated_gzip(tmp_path):
    path = _save(tmp_path / "t.nii.gz", np.random.default_rng(1).normal(size=(20, 30, 40)).astype(np.float32), IPL)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_error(path, "gzip")


def test_corrupted_gzip_bytes(tmp_path):
    # SimpleITK alone would silently return garbled voxels here.
    path = _save(tmp_path / "c.nii.gz", np.random.default_rng(2).integers(0, 3, (20, 30, 40)).astype(np.uint8), IPL)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 40] = bytes(b ^ 0x5A for b in data[middle:middle + 40])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_volume(path)
    assert str(path) in str(info.value)
    # zlib may already fail while reading ahead for the header; either way the file is named
    assert info.value.field in ("gzip", "header")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti file at all" * 10))
    _assert_error(path, "header")


@pytest.mark.parametrize("shape", [(4, 5, 6, 2), (4, 5)])
def test_not_3d(tmp_path, shape):
    path = _save(tmp_path / "n.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    err = _assert_error(path, "dimensions")
    assert "3-D" in str(err)


def test_nan_voxels(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 1, 1] = np.nan
    path = _save(tmp_path / "nan.nii.gz", array, IPL)
    err = _assert_error(path, "values")
    assert "1 NaN" in str(err)
    assert read_volume(path, check_nan=False).array[1, 1, 1] == 0  # niftilib's NaN -> 0


@pytest.mark.parametrize("threads", [1, 3])
def test_fortran_order_copies_by_tiles_what_is_not_fortran_ordered(threads):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, size=(7, 45, 70), dtype=np.uint8)  # edges that are not whole tiles
    for source in (array, array[:, ::2, 1:], np.ascontiguousarray(array.transpose(1, 0, 2))):
        out = fortran_order(source, tile=16, threads=threads)
        assert out.flags.f_contiguous and out.shape == source.shape
        np.testing.assert_array_equal(out, source)
    already = np.asfortranarray(array)
    assert fortran_order(already) is already


def test_a_c_ordered_mask_is_written_as_its_values(tmp_path):
    geom = Geometry(IPL, (20, 40, 50))
    mask = (np.random.default_rng(1).random((20, 40, 50)) > 0.7).astype(np.uint8)
    assert mask.flags.c_contiguous
    back = read_volume(write_mask(mask, tmp_path / "m.nii.gz", like=geom))
    np.testing.assert_array_equal(back.array, mask)
