"""evaluate never scores "anything > 0" as kidney: label values are checked against a policy."""

from __future__ import annotations

import json

import numpy as np

from kidneyssl.cli.main import main
from kidneyssl.evaluation import evaluate_folders, ground_truth_policy
from kidneyssl.io.geometry import Geometry
from kidneyssl.io.labels import KITS23_POLICY, parse_label_map
from kidneyssl.io.volumes import write_mask, write_volume
from kidneyssl.phantoms import kits_affine

SHAPE = (8, 20, 24)
GEOM = Geometry(kits_affine((3.0, 1.0, 1.0)), SHAPE)


def _kidneys() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 4:12, 2:8] = 1
    lab[2:6, 4:12, 15:21] = 1
    lab[3, 6:8, 3:5] = 2
    return lab


def test_multi_organ_float_and_label_5_fail_naming_file_and_values(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    kid = _kidneys()
    organs = kid.copy()
    organs[organs > 0] += 1          # kidney 2, tumour 3 ...
    organs[7, :, :] = 117            # ... and a multi-organ map up to 117
    write_mask(organs, gt / "organs.nii.gz", like=GEOM)
    write_mask(kid, pred / "organs.nii.gz", like=GEOM)
    five = kid.copy()
    five[0, 0, 0] = 5
    write_mask(five, gt / "five.nii.gz", like=GEOM)
    write_mask(kid, pred / "five.nii.gz", like=GEOM)
    write_mask(kid, gt / "prob.nii.gz", like=GEOM)
    write_volume(kid * np.float32(0.7), GEOM, pred / "prob.nii.gz")  # a probability map

    result = evaluate_folders(pred, gt)
    assert result.rows == [] and set(result.failed) == {"organs", "five", "prob"}
    assert str(gt / "organs.nii.gz") in result.failed["organs"] and "117" in result.failed["organs"]
    assert "{3, 117}" in result.failed["organs"] and "ground truth labels" in result.failed["organs"]
    assert str(gt / "five.nii.gz") in result.failed["five"] and "found {5} in 1 voxels" in result.failed["five"]
    assert str(pred / "prob.nii.gz") in result.failed["prob"] and "non-integer" in result.failed["prob"]
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--quiet"]) == 1

    # an explicit map scores the multi-organ file: kidney = 2, 3 (tumour inside)
    out = tmp_path / "e.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--quiet",
                 "--labels", "kidney=2,3", "--labels", "tumor=3", "--tumor"]) == 1  # prob still fails
    md = out.with_suffix(".md").read_text()
    assert "Kidney = ground-truth label 2, 3 (custom labels)" in md
    result = evaluate_folders(pred, gt, tumor=True,
                              policy=ground_truth_policy(gt, labels=parse_label_map(["kidney=2,3;tumor=3"])))
    by_id = {r["case_id"]: r for r in result.rows}
    assert by_id["organs"]["dice"] == 1.0 and by_id["organs"]["dice_tumor"] == 1.0
    assert by_id["five"]["dice"] < 0.2  # scored: 5 is background and 1 is not kidney under this map
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--labels", "liver=1"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_kits23_cyst_with_format_and_kidney_labels(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    lab = _kidneys()
    lab[4, 8:10, 16:18] = 3  # a cyst inside the left kidney
    write_mask(lab, gt / "case_00000" / "segmentation.nii.gz", like=GEOM)
    write_mask((lab > 0).astype(np.uint8), pred / "prediction_00000.nii.gz", like=GEOM)
    assert ground_truth_policy(gt) == KITS23_POLICY  # label 3 found: detected as KiTS23 (issue 20, item 9)
    as_kits19 = evaluate_folders(pred, gt, policy=ground_truth_policy(gt, "kits19"))
    assert "read it as KiTS23" in as_kits19.failed["case_00000"]
    assert as_kits19.remedy == ("data_format=kits23",)  # the CLI says: --format kits23
    policy = ground_truth_policy(gt, "kits23")
    assert policy == KITS23_POLICY
    assert evaluate_folders(pred, gt, policy=policy).rows[0]["dice"] == 1.0  # cyst counted
    no_cyst = evaluate_folders(pred, gt, policy=ground_truth_policy(gt, "kits23", (1, 2))).rows[0]["dice"]
    assert 0.9 < no_cyst < 1.0
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--format", "kits23", "--quiet"]) == 0


def test_nnunet_ground_truth_reads_dataset_json(tmp_path):
    gt, pred = tmp_path / "nn", tmp_path / "pred"
    kid = _kidneys()
    organs = np.where(kid == 1, 3, np.where(kid == 2, 4, 0)).astype(np.uint8)
    organs[0] = 1  # liver
    write_mask(organs, gt / "labelsTr" / "abd_001.nii.gz", like=GEOM)
    write_volume(np.zeros(SHAPE, np.int16), GEOM, gt / "imagesTr" / "abd_001_0000.nii.gz")
    (gt / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2,
                                                            "kidney": 3, "kidney tumour": 4}}))
    write_mask(kid, pred / "abd_001.nii.gz", like=GEOM)
    result = evaluate_folders(pred, gt, policy=ground_truth_policy(gt), tumor=True)
    assert result.policy.kidney == (3, 4) and result.rows[0]["dice"] == 1.0
    assert result.rows[0]["dice_tumor"] == 1.0
