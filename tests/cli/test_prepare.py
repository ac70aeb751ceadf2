"""``kidneyssl prepare``: checks first, caches, skips on re-run, never writes into --data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from kidneyssl.cli.main import main

AFFINE = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])


def _case(root: Path, case_id: str, label_value: int = 1) -> None:
    folder = root / case_id
    folder.mkdir(parents=True)
    image = np.full((12, 40, 48), -50, np.int16)
    seg = np.zeros((12, 40, 48), np.uint8)
    seg[4:8, 15:25, 6:16] = label_value
    seg[4:8, 15:25, 32:42] = label_value
    image[seg > 0] = 200
    nib.save(nib.Nifti1Image(image, AFFINE), folder / "imaging.nii.gz")
    nib.save(nib.Nifti1Image(seg, AFFINE), folder / "segmentation.nii.gz")


def test_prepare_end_to_end(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "cache"
    _case(data, "case_00000")
    _case(data, "case_00001", label_value=9)
    args = ["prepare", "--data", str(data), "--out", str(out), "--workers", "1", "--preset", "demo",
            "--set", "preprocess.spacing_mm=[6.0,2.0,2.0]"]
    assert main(args) == 1  # one bad case
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{data / 'case_00001' / 'segmentation.nii.gz'}: labels:")
    assert "1 prepared, 0 skipped (already done), 1 failed" in lines[-1]
    info = json.loads((out / "cache.json").read_text())
    assert info["cases"] == ["case_00000"] and info["preprocess"]["spacing_mm"] == [6.0, 2.0, 2.0]
    image = np.load(out / "case_00000" / "image.npy")
    assert image.shape == (16, 32, 32)  # 6x20x24 voxels padded to 16
    assert sorted(p.name for p in data.rglob("*")) == sorted(
        ["case_00000", "case_00001"] + ["imaging.nii.gz", "segmentation.nii.gz"] * 2)
    (data / "case_00001" / "segmentation.nii.gz").unlink()  # now an unannotated, valid case
    assert main(args) == 0
    assert "1 prepared, 1 skipped (already done), 0 failed" in capsys.readouterr().out


def test_prepare_refuses_output_inside_data(tmp_path, capsys):
    data = tmp_path / "data"
    _case(data, "case_00000")
    assert main(["prepare", "--data", str(data), "--out", str(data / "cache"), "--workers", "1"]) == 2
    assert "outside the dataset" in capsys.readouterr().err
    assert not (data / "cache").exists()
    assert main(["prepare", "--data", str(data), "--out", str(data), "--workers", "1"]) == 2
