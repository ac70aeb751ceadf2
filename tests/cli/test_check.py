"""``kidneyssl check``: one line per bad case, exit status 1 if any, summary line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from kidneyssl.cli.main import main

AFFINE = np.diag([-0.8, -0.8, 2.0, 1.0])


def _case(root: Path, case_id: str, label_value: int = 1, label_shape=(6, 8, 10)) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((6, 8, 10), np.int16), AFFINE), folder / "imaging.nii.gz")
    seg = np.zeros(label_shape, np.uint8)
    seg[2:4, 2:4, 2:4] = label_value
    nib.save(nib.Nifti1Image(seg, AFFINE), folder / "segmentation.nii.gz")
    return folder


def test_check_good_dataset(tmp_path, capsys):
    _case(tmp_path, "case_00000")
    _case(tmp_path, "case_00001")
    assert main(["check", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"checked 2 case(s) in {tmp_path}: 2 ok, 0 bad"]


def test_check_reports_one_line_per_bad_case(tmp_path, capsys):
    _case(tmp_path, "case_00000")
    bad_values = _case(tmp_path, "case_00001", label_value=4)
    bad_shape = _case(tmp_path, "case_00002", label_shape=(6, 8, 11))
    no_imaging = _case(tmp_path, "case_00003")
    (no_imaging / "imaging.nii.gz").unlink()
    assert main(["check", "--data", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{bad_values / 'segmentation.nii.gz'}: labels: expected values in {{0, 1, 2}}, found {{4}}")
    assert lines[1].startswith(f"{bad_shape / 'segmentation.nii.gz'}: shape: expected 6x8x10 (as imaging), found 6x8x11")
    assert lines[2] == (f"{no_imaging / 'imaging.nii.gz'}: imaging: expected an imaging file, found missing "
                        f"({no_imaging} holds: segmentation.nii.gz)")  # what the folder holds instead
    assert lines[3] == f"checked 4 case(s) in {tmp_path}: 1 ok, 3 bad"
    # a folder of masks only passes with --masks-only
    assert main(["check", "--data", str(tmp_path), "--masks-only"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("2 ok, 2 bad")


def test_check_missing_folder_exits_2(tmp_path, capsys):
    assert main(["check", "--data", str(tmp_path / "absent")]) == 2
    assert "absent: dataset: expected a folder of case_XXXXX folders, found no such folder" in capsys.readouterr().err


def test_check_says_what_it_skipped(tmp_path, capsys):
    _case(tmp_path, "case_00000")
    _case(tmp_path, "case_1")
    _case(tmp_path, "Case_00002")
    assert main(["check", "--data", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'Case_00002'}: skipped: a case folder name must be case_")
    assert lines[1].startswith(f"{tmp_path / 'case_1'}: skipped")
    assert lines[2] == f"checked 1 case(s) in {tmp_path}: 1 ok, 0 bad, 2 skipped"


def test_check_formats_and_kidney_labels(tmp_path, capsys):
    _case(tmp_path, "case_00000", label_value=3)  # a KiTS23 cyst-only "kidney"
    # Label 3 exists only in KiTS21/KiTS23, so a folder without a marker is read as KiTS23 and said so.
    assert main(["check", "--data", str(tmp_path)]) == 0
    assert "kits23 format, kidney = label 1, 2, 3" in capsys.readouterr().err
    assert main(["check", "--data", str(tmp_path), "--format", "kits19"]) == 1
    assert "read it as KiTS23) (--format kits23)" in capsys.readouterr().out
    assert main(["check", "--data", str(tmp_path), "--format", "kits23"]) == 0
    capsys.readouterr()
    assert main(["check", "--data", str(tmp_path), "--format", "kits23", "--kidney-labels", "1"]) == 1
    assert "kidney: expected at least one kidney voxel (label 1), found none" in capsys.readouterr().out
    assert main(["check", "--data", str(tmp_path), "--kidney-labels", "x"]) == 2
    assert "--kidney-labels" in capsys.readouterr().err
