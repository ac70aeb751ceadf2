"""Issue 20, items 6-9 and 15: wrong data is refused, and nothing is skipped silently.

6. a test dataset sharing cases with the training dataset (by id or image content);
7. nnU-Net ``dataset.json`` label values that are not integers >= 0;
8. pairs datasets with two files for one case;
9. KiTS23 case folders without a marker are read as KiTS23 (from their labels), and it is said;
15. broken symbolic links, scans without a label, evaluate without (matching) predictions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.datasets import check_disjoint_cases, open_dataset
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.phantoms import kits_affine
from kidneyssl.phantoms.formats import NNUNET_LABELS, write_case_as, write_format_metadata

from .conftest import TRAIN_SETS, ct_scan, error_lines, save_nifti

SHAPE = (8, 16, 20)


def _case(seed: int = 0) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    geom = Geometry(kits_affine((3.0, 2.0, 2.0)), SHAPE)
    image = rng.normal(0, 10, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 4:10, 2:7] = 1
    label[2:6, 4:10, 13:18] = 1
    label[3, 5:7, 3:5] = 2
    image[label > 0] = 200
    image[7, 14, :] = 600
    return Volume(image, geom), Volume(label, geom)


def _dataset(root: Path, data_format: str, n: int = 2, first: int = 0) -> Path:
    for i in range(first, first + n):
        image, label = _case(i)
        write_case_as(image, label, root, data_format, f"case_{i:05d}" if data_format != "pairs" else f"p{i}")
    write_format_metadata(root, data_format, n)
    return root


def _one_error(proc, verb: str) -> str:
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kidneyssl {verb}: error: "), lines[0]
    return lines[0]


# -- item 6 ------------------------------------------------------------------------------------------------

def test_check_disjoint_cases_by_id_file_and_content(tmp_path):
    train = open_dataset(_dataset(tmp_path / "train", "kits19", n=2))
    check_disjoint_cases(train, open_dataset(_dataset(tmp_path / "test", "kits19", n=2, first=2)))
    with pytest.raises(DataError, match=r"case_00000 \(same case id\), case_00001 \(same case id\)"):
        check_disjoint_cases(train, train)
    renamed = tmp_path / "renamed"  # the same scans under other ids
    for i, name in enumerate(("case_00007", "case_00008")):
        shutil.copytree(tmp_path / "train" / f"case_{i:05d}", renamed / name)
    with pytest.raises(DataError, match=r"case_00007 \(the same image content as training case case_00000\)"):
        check_disjoint_cases(train, open_dataset(renamed))
    linked = tmp_path / "linked" / "case_00009"
    linked.mkdir(parents=True)
    os.symlink(tmp_path / "train" / "case_00001" / "imaging.nii.gz", linked / "imaging.nii.gz")
    with pytest.raises(DataError, match=r"case_00009 \(the image file of training case case_00001\)") as err:
        check_disjoint_cases(train, open_dataset(tmp_path / "linked"))
    assert str(tmp_path / "linked") in str(err.value) and "never be trained" in str(err.value)


@pytest.mark.slow
def test_experiment_refuses_a_test_dataset_that_is_the_training_dataset(tmp_path, tiny_cache, kidneyssl):
    data = tmp_path / "data"
    for i in range(6):  # enough cases for a dry run (4 training, 2 validation)
        shutil.copytree(tiny_cache.parent / "data" / f"case_{i % 4:05d}", data / f"case_{i:05d}")
    proc = kidneyssl("experiment", "--data", data, "--test-data", data, "--out", tmp_path / "exp",
                     "--dry-run", "--no-probe", "--workers", "1", *TRAIN_SETS, "--set", "train.val_fraction=0.34")
    assert proc.returncode == 2
    assert "case_00000 (same case id)" in _one_error(proc, "experiment")


# -- item 7 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [True, 2.5, "abc", None, [1, "x"], [], -1, [[1]]],
                         ids=["true", "2.5", "abc", "null", "list-with-text", "empty-list", "negative", "nested"])
def test_nnunet_label_values_must_be_integers(tmp_path, value, kidneyssl):
    root = _dataset(tmp_path / "nn", "nnunet", n=1)
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = {**NNUNET_LABELS, "spine": value}
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"integer values >= 0 .* found 'spine': "):
        open_dataset(root)
    proc = kidneyssl("check", "--data", root)
    assert proc.returncode == 2
    assert f"'spine': {json.dumps(value)}" in _one_error(proc, "check")


def test_nnunet_region_lists_and_v1_labels_still_read(tmp_path):
    root = _dataset(tmp_path / "nn", "nnunet", n=1)
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = {"background": 0, "spine": 1, "kidneys": [2, 3, 4], "adrenal gland": 5}
    (root / "dataset.json").write_text(json.dumps(info))
    assert open_dataset(root).policy.kidney == (2, 3, 4)
    info["labels"] = {"0": "background", "1": "spine", "2": "right kidney", "3": "left kidney"}
    (root / "dataset.json").write_text(json.dumps(info))
    assert open_dataset(root).policy.kidney == (2, 3)


# -- item 8 ------------------------------------------------------------------------------------------------

def test_pairs_with_two_files_for_one_case_are_refused(tmp_path, kidneyssl):
    root = _dataset(tmp_path / "dirs", "pairs", n=2)
    shutil.copy(root / "images" / "p0.nii.gz", root / "images" / "p0.nii")
    with pytest.raises(DataError, match=r"p0.nii and p0.nii.gz for p0|p0.nii.gz and p0.nii for p0"):
        open_dataset(root)
    flat = tmp_path / "flat"
    image, label = _case()
    for name in ("a.nii.gz", "a_seg.nii.gz", "a_mask.nii.gz"):
        save_nifti((label if "_" in name else image).array, image.geometry.affine, flat / name)
    with pytest.raises(DataError, match=r"one label file per case, found a_mask.nii.gz and a_seg.nii.gz for a"):
        open_dataset(flat)
    proc = kidneyssl("check", "--data", flat)
    assert proc.returncode == 2 and "remove or rename one" in _one_error(proc, "check")


# -- item 9 ------------------------------------------------------------------------------------------------

def test_kits23_case_folders_without_a_marker_are_read_as_kits23_and_said(tmp_path, kidneyssl):
    root = _dataset(tmp_path / "k23", "kits23", n=2)
    (root / "kits23.json").unlink()
    proc = kidneyssl("check", "--data", root)
    assert proc.returncode == 0, proc.stdout
    assert "2 ok, 0 bad" in proc.stdout
    assert "label 3 (cyst) in" in proc.stderr and "read as KiTS23" in proc.stderr
    k19 = _dataset(tmp_path / "k19", "kits19", n=2)
    proc = kidneyssl("check", "--data", k19)
    assert proc.returncode == 0 and "no label 3 in 2 sampled segmentation(s): read as KiTS19" in proc.stderr


# -- item 15 -----------------------------------------------------------------------------------------------

def test_check_counts_scans_without_a_label(tmp_path, kidneyssl):
    root = _dataset(tmp_path / "pairs", "pairs", n=4)
    (root / "labels" / "p1.nii.gz").unlink()
    (root / "labels" / "p3.nii.gz").unlink()
    proc = kidneyssl("check", "--data", root)
    assert proc.returncode == 0
    assert "2 case(s) without a label (p1, p3): no label file, so not used to train or score" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith("4 ok, 0 bad")


def test_broken_links_are_reported_not_skipped(tmp_path, seg_checkpoint, kidneyssl):
    root = _dataset(tmp_path / "pairs", "pairs", n=2)
    os.symlink(tmp_path / "gone.nii.gz", root / "labels" / "p1.nii.gz.tmp")
    (root / "labels" / "p1.nii.gz").unlink()
    os.rename(root / "labels" / "p1.nii.gz.tmp", root / "labels" / "p1.nii.gz")  # a label link to nowhere
    proc = kidneyssl("check", "--data", root)
    assert proc.returncode == 1
    assert f"{root / 'labels' / 'p1.nii.gz'}: file: expected an existing NIfTI file, found a broken symbolic link" \
        in proc.stdout
    scans = tmp_path / "scans"
    arr, affine = ct_scan()
    save_nifti(arr, affine, scans / "a.nii.gz")
    os.symlink(tmp_path / "moved.nii.gz", scans / "b.nii.gz")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", scans, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert "1 failed: b.nii.gz" in proc.stderr and "broken symbolic link to" in proc.stderr


@pytest.fixture
def gt_and_pred(tmp_path):
    gt = _dataset(tmp_path / "gt", "kits19", n=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    return gt, pred


def test_evaluate_with_no_prediction_at_all_is_an_error(gt_and_pred, kidneyssl):
    gt, pred = gt_and_pred
    proc = kidneyssl("evaluate", "--pred", pred, "--gt", gt)
    assert proc.returncode == 2
    line = _one_error(proc, "evaluate")
    assert f"{pred}: predictions: expected masks named after the 2 ground-truth case(s)" in line
    assert "prediction_00000.nii.gz" in line and "found none" in line
    assert not (pred / "evaluation.csv").exists()
    shutil.copy(gt / "case_00000" / "segmentation.nii.gz", pred / "other_name.nii.gz")  # no matching name
    proc = kidneyssl("evaluate", "--pred", pred, "--gt", gt)
    assert proc.returncode == 2
    assert "found none of them (1 mask(s) without ground truth)" in _one_error(proc, "evaluate")


def test_evaluate_counts_missing_and_unmatched_predictions(gt_and_pred, kidneyssl):
    gt, pred = gt_and_pred
    shutil.copy(gt / "case_00000" / "segmentation.nii.gz", pred / "prediction_00000.nii.gz")
    shutil.copy(gt / "case_00000" / "segmentation.nii.gz", pred / "stray.nii.gz")
    proc = kidneyssl("evaluate", "--pred", pred, "--gt", gt)
    assert proc.returncode == 0
    assert "1 of 2 ground-truth case(s) have no prediction" in proc.stderr
    assert "1 prediction(s) without ground truth, not scored: stray.nii.gz" in proc.stderr
    assert "Missing predictions, scored as empty: case_00001." in proc.stdout
