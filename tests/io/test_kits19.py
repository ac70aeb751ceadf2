"""KiTS19 case discovery and integrity checks: one test per bad input, each naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.kits19 import (
    BACKGROUND,
    KIDNEY,
    TUMOR,
    Case,
    check_case,
    find_cases,
    load_case,
)

AFFINE = np.array([[0, 0, -0.9, 100.0], [0, -0.9, 0, 50.0], [-3.0, 0, 0, 20.0], [0, 0, 0, 1]])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path


def _good_case(root: Path, case_id: str = "case_00000", shape=(8, 12, 14)) -> Case:
    image = np.full(shape, -100, np.int16)
    label = np.zeros(shape, np.uint8)
    label[3:5, 4:7, 2:5] = KIDNEY
    label[3:5, 4:7, 9:12] = KIDNEY
    label[4, 5, 10] = TUMOR
    folder = root / case_id
    return Case(case_id, _save(folder / "imaging.nii.gz", image),
                _save(folder / "segmentation.nii.gz", label))


def _single_error(case: Case, field: str, path: Path) -> DataError:
    errors = check_case(case)
    assert len(errors) == 1, [str(e) for e in errors]
    err = errors[0]
    assert err.field == field
    assert str(path) in str(err)
    return err


def test_label_constants():
    assert (BACKGROUND, KIDNEY, TUMOR) == (0, 1, 2)


def test_find_cases_sorted_with_missing_files(tmp_path):
    _good_case(tmp_path, "case_00002")
    _good_case(tmp_path, "case_00000")
    (tmp_path / "case_00001").mkdir()
    _save(tmp_path / "case_00001" / "imaging.nii.gz", np.zeros((2, 2, 2), np.int16))
    (tmp_path / "notes").mkdir()
    (tmp_path / "case_1").mkdir()
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00002"]
    assert cases[1].segmentation is None and not cases[1].annotated
    assert cases[0].imaging == tmp_path / "case_00000" / "imaging.nii.gz"


def test_find_cases_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_cases(tmp_path / "absent")
    with pytest.raises(DataError, match="case_XXXXX"):
        find_cases(tmp_path)


def test_good_case_has_no_errors(tmp_path):
    case = _good_case(tmp_path)
    assert check_case(case) == []
    image, label, errors = load_case(case)
    assert errors == [] and image.array.shape == (8, 12, 14) and int(label.array.max()) == TUMOR


def test_unannotated_case_is_fine(tmp_path):
    case = _good_case(tmp_path)
    assert check_case(Case(case.case_id, case.imaging, None)) == []


def test_missing_imaging(tmp_path):
    case = _good_case(tmp_path)
    case.imaging.unlink()
    case = find_cases(tmp_path)[0]
    _single_error(case, "imaging", tmp_path / "case_00000" / "imaging.nii.gz")
    assert check_case(case, require_imaging=False) == []


def test_corrupt_gzip(tmp_path):
    case = _good_case(tmp_path, shape=(30, 40, 50))
    image = np.random.default_rng(0).normal(0, 100, (30, 40, 50)).astype(np.int16)
    _save(case.imaging, image)
    data = case.imaging.read_bytes()
    case.imaging.write_bytes(data[: int(len(data) * 0.7)])
    _single_error(case, "gzip", case.imaging)


def test_not_3d(tmp_path):
    case = _good_case(tmp_path)
    _save(case.imaging, np.zeros((8, 12, 14, 2), np.int16))
    err = _single_error(case, "dimensions", case.imaging)
    assert "8, 12, 14, 2" in str(err)


def test_shape_mismatch(tmp_path):
    case = _good_case(tmp_path)
    label = np.zeros((8, 12, 15), np.uint8)
    label[4, 4, 4] = 1
    _save(case.segmentation, label)
    err = _single_error(case, "shape", case.segmentation)
    assert "expected 8x12x14" in str(err) and "found 8x12x15" in str(err)


def test_affine_mismatch(tmp_path):
    case = _good_case(tmp_path)
    label = np.asanyarray(nib.load(case.segmentation).dataobj)
    moved = AFFINE.copy()
    moved[0, 3] += 2.5
    _save(case.segmentation, label, moved)
    err = _single_error(case, "affine", case.segmentation)
    assert "2.5" in str(err)


def test_label_values_outside(tmp_path):
    case = _good_case(tmp_path)
    label = np.asanyarray(nib.load(case.segmentation).dataobj).copy()
    label[0, 0, :3] = 7
    _save(case.segmentation, label)
    err = _single_error(case, "labels", case.segmentation)
    assert "{7} in 3 voxels" in str(err)


def test_no_kidney(tmp_path):
    case = _good_case(tmp_path)
    _save(case.segmentation, np.zeros((8, 12, 14), np.uint8))
    _single_error(case, "kidney", case.segmentation)


def test_nan_in_imaging(tmp_path):
    case = _good_case(tmp_path)
    image = np.zeros((8, 12, 14), np.float32)
    image[2, 2, 2] = np.nan
    _save(case.imaging, image)
    _single_error(case, "values", case.imaging)


def test_several_problems_are_all_reported(tmp_path):
    case = _good_case(tmp_path)
    _save(case.segmentation, np.zeros((8, 12, 14), np.uint8))
    image = np.zeros((8, 12, 14), np.float32)
    image[0, 0, 0] = np.nan
    _save(case.imaging, image)
    assert sorted(e.field for e in check_case(case)) == ["kidney", "values"]


def test_real_kits_masks_pass(kits_masks_dir):
    cases = [c for c in find_cases(kits_masks_dir) if c.case_id in ("case_00004", "case_00005")]
    assert len(cases) == 2
    for case in cases:
        assert case.imaging is None
        assert check_case(case, require_imaging=False) == []
        assert [e.field for e in check_case(case)] == ["imaging"]
