"""``kidneyssl evaluate`` end to end on small NIfTI masks written here (KiTS19 layout and flat)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.cli.main import main
from kidneyssl.evaluation import evaluate_folders, pair_cases
from kidneyssl.io.geometry import Geometry
from kidneyssl.io.volumes import write_mask
from kidneyssl.reporting.tables import read_case_table

SPACING = (3.0, 0.8, 0.8)  # (z, y, x) mm
# KiTS19-like affine (RAS+): array axes point inferior, posterior, patient-left = axcodes (I, P, L)
AFFINE = np.array([[0.0, 0.0, -0.8, 10.0],   # x index -> towards patient left (R decreases)
                   [0.0, -0.8, 0.0, 20.0],   # y index -> posterior
                   [-3.0, 0.0, 0.0, 30.0],   # z index -> inferior
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (10, 24, 28)


def _label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint8)
    z0, y0, x0 = rng.integers(1, 3), rng.integers(2, 6), rng.integers(2, 6)
    lab[z0:z0 + 6, y0:y0 + 12, x0:x0 + 10] = 1
    lab[z0 + 2:z0 + 4, y0 + 3:y0 + 6, x0 + 2:x0 + 5] = 2  # tumour inside the kidney
    return lab


def _write_gt(root: Path, ids: list[int]) -> dict[int, np.ndarray]:
    labels = {}
    for i in ids:
        labels[i] = _label(i)
        write_mask(labels[i], root / f"case_{i:05d}" / "segmentation.nii.gz", like=Geometry(AFFINE, SHAPE))
    return labels


def test_ground_truth_as_prediction_scores_perfectly(tmp_path, capsys):
    gt = tmp_path / "gt"
    _write_gt(gt, [0, 1])
    out = tmp_path / "eval" / "scores.csv"
    assert main(["evaluate", "--pred", str(gt), "--gt", str(gt), "--out", str(out), "--tumor"]) == 0
    printed = capsys.readouterr().out
    rows = read_case_table(out)
    assert [r["case_id"] for r in rows] == ["case_00000", "case_00001"]
    for r in rows:
        assert r["dice"] == 1.0 and r["hd_mm"] == 0.0 and r["hd95_mm"] == 0.0 and r["bl_pct"] == 0.0
        assert r["nhd"] == 0.0 and r["dice_tumor"] == 1.0 and r["missing_prediction"] is False
    md = out.with_suffix(".md").read_text()
    assert "| Dice (DC) | 1.000 ± 0.000 |" in md and "| Dice (tumour) | 1.000 ± 0.000 |" in md
    assert "| HD (mm) | 0.000 ± 0.000 |" in md
    assert md in printed  # the summary is printed too


def test_shift_missing_and_mismatch(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    labels = _write_gt(gt, [0, 1, 2, 3])
    geom = Geometry(AFFINE, SHAPE)
    write_mask(labels[0], pred / "prediction_00000.nii.gz", like=geom)  # exact
    write_mask(np.roll(labels[1], 1, axis=0), pred / "prediction_00001.nii.gz", like=geom)  # one slice off
    # case 2: no prediction at all
    shifted = AFFINE.copy()
    shifted[:3, 3] += 5.0
    write_mask(labels[3], pred / "prediction_00003.nii.gz", like=Geometry(shifted, SHAPE))  # wrong affine
    write_mask(labels[0], pred / "prediction_00099.nii.gz", like=geom)  # no ground truth

    result = evaluate_folders(pred, gt)
    assert result.csv_path == pred / "evaluation.csv" and result.md_path == pred / "evaluation.md"
    by_id = {r["case_id"]: r for r in result.rows}
    assert set(by_id) == {"case_00000", "case_00001", "case_00002"}
    assert by_id["case_00000"]["dice"] == 1.0
    assert by_id["case_00001"]["hd_mm"] == pytest.approx(SPACING[0])  # a slice in mm, from the header
    missed = by_id["case_00002"]
    assert missed["missing_prediction"] and missed["empty_pred"] and missed["dice"] == 0.0
    assert math.isnan(missed["hd95_mm"])
    msg = result.failed["case_00003"]
    assert "prediction_00003.nii.gz" in msg and str(gt / "case_00003" / "segmentation.nii.gz") in msg
    assert "affine" in msg
    assert [p.name for p in result.unmatched] == ["prediction_00099.nii.gz"]
    s = result.summary
    assert s["n_cases"] == 3 and s["n_missed"] == 1 and s["n_missing_prediction"] == 1 and s["n_failed"] == 1
    assert s["hd95_mm"]["n_nan"] == 1 and s["incomplete"] is True
    md = result.md_path.read_text()
    assert "Missing predictions, scored as empty: case_00002" in md and "case_00003" in md
    assert "prediction_00099.nii.gz" in md
    # the CLI reports the failure with exit status 1
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--quiet", "--missing-hd", "max"]) == 1
    rows = read_case_table(pred / "evaluation.csv")
    assert next(r for r in rows if r["case_id"] == "case_00002")["diag_mm"] > 0


def test_shape_mismatch_names_both_files(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write_gt(gt, [5])
    small = (SHAPE[0] - 1, SHAPE[1], SHAPE[2])
    write_mask(np.zeros(small, np.uint8), pred / "prediction_00005.nii.gz", like=Geometry(AFFINE, small))
    result = evaluate_folders(pred, gt, out_csv=tmp_path / "e.csv")
    msg = result.failed["case_00005"]
    assert "prediction_00005.nii.gz" in msg and "case_00005/segmentation.nii.gz" in msg and "shape" in msg
    assert result.rows == [] and result.summary["n_cases"] == 0


def test_flat_folders_pair_by_stem(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    geom = Geometry(AFFINE, SHAPE)
    lab = _label(7)
    write_mask(lab, gt / "case_00007.nii.gz", like=geom)
    write_mask(lab, gt / "scan_a.nii.gz", like=geom)
    write_mask((lab > 0).astype(np.uint8), pred / "case_00007.nii.gz", like=geom)  # binary prediction
    write_mask(lab, pred / "prediction_scan_a.nii.gz", like=geom)
    write_mask(lab, pred / "probability_scan_a.nii.gz", like=geom)  # ignored
    pairs, unmatched = pair_cases(pred, gt)
    assert [(c, p.name if p else None) for c, p, _ in pairs] == [
        ("case_00007", "case_00007.nii.gz"), ("scan_a", "prediction_scan_a.nii.gz")]
    assert unmatched == []
    result = evaluate_folders(pred, gt, tumor=True)
    by_id = {r["case_id"]: r for r in result.rows}
    assert by_id["case_00007"]["dice"] == 1.0  # kidney = label > 0 in both
    assert by_id["case_00007"]["dice_tumor"] == 0.0  # binary prediction has no tumour label
    assert by_id["scan_a"]["dice_tumor"] == 1.0


def test_missing_folder_is_a_clean_error(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path / "empty")]) == 2
