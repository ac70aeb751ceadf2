"""open_dataset / detect_format: every reader on tiny cases written by kidneyssl.phantoms.formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.datasets import detect_format, open_dataset
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.kits19 import check_case, load_case
from kidneyssl.phantoms import kits_affine
from kidneyssl.phantoms.formats import (
    NNUNET_LABELS,
    write_case_as,
    write_format_metadata,
)

SHAPE = (8, 16, 20)


def tiny_case(seed: int = 0) -> tuple[Volume, Volume]:
    """int16 image with a bone voxel row; 0/1/2 label: two kidney boxes, tumour in the right one."""
    rng = np.random.default_rng(seed)
    geom = Geometry(kits_affine((3.0, 2.0, 2.0)), SHAPE)
    image = rng.normal(0, 10, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 4:10, 2:7] = 1
    label[2:6, 4:10, 13:18] = 1
    label[3, 5:7, 3:5] = 2
    image[label > 0] = 200
    image[7, 14, :] = 600  # "spine"
    return Volume(image, geom), Volume(label, geom)


def write_tiny(root: Path, data_format: str, n: int = 2) -> Path:
    for i in range(n):
        name = f"phantom_{i:03d}" if data_format == "pairs" else f"case_{i:05d}"
        write_case_as(*tiny_case(i), root, data_format, name)
    write_format_metadata(root, data_format, n)
    return root


@pytest.mark.parametrize("data_format, kidney", [
    ("kits19", (1, 2)), ("kits23", (1, 2, 3)), ("nnunet", (2, 3, 4)), ("pairs", (1, 2))])
def test_each_reader_finds_cases_and_target(tmp_path, data_format, kidney):
    root = write_tiny(tmp_path / data_format, data_format)
    assert detect_format(root) == data_format
    ds = open_dataset(root)
    assert ds.format == data_format and ds.policy.kidney == kidney and ds.skipped == []
    assert len(ds.cases) == 2 and all(c.annotated and c.imaging for c in ds.cases)
    _, true_label = tiny_case(0)
    for case in ds.cases[:1]:
        image, label, errors = load_case(case, policy=ds.policy)
        assert errors == [], [str(e) for e in errors]
        # the kidney target is the same whatever the format's label map
        np.testing.assert_array_equal(ds.policy.target(label.array), true_label.array > 0)


def test_kits23_cyst_is_kidney_but_not_in_kits19(tmp_path):
    root = write_tiny(tmp_path / "k23", "kits23", n=1)
    label = load_case(open_dataset(root).cases[0], policy=open_dataset(root).policy)[1].array
    assert (label == 3).any()
    (root / "kits23.json").unlink()  # without the marker the labels decide: label 3 -> KiTS23 (issue 20, item 9)
    assert open_dataset(root).format == "kits23"
    ds = open_dataset(root, "kits19")
    err = check_case(ds.cases[0], policy=ds.policy)
    assert len(err) == 1 and "read it as KiTS23" in str(err[0]) and err[0].remedy == ("data_format=kits23",)
    assert check_case(ds.cases[0], policy=open_dataset(root, "kits23").policy) == []
    only_kidney = open_dataset(root, "kits23", kidney_labels=(1,))
    assert only_kidney.policy.kidney == (1,) and only_kidney.policy.allowed == (0, 1, 2, 3)


def test_kits21_file_names(tmp_path):
    write_tiny(tmp_path, "kits19", n=1)
    seg = tmp_path / "case_00000" / "segmentation.nii.gz"
    seg.rename(seg.with_name("aggregated_MAJ_seg.nii.gz"))
    ds = open_dataset(tmp_path)
    assert ds.format == "kits23" and ds.cases[0].segmentation.name == "aggregated_MAJ_seg.nii.gz"


def test_nnunet_multi_organ_and_unlabelled(tmp_path):
    root = write_tiny(tmp_path, "nnunet", n=2)
    label = load_case(open_dataset(root).cases[0], policy=open_dataset(root).policy)[1].array
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}  # spine, both kidneys, tumour
    (root / "imagesTs").mkdir()
    (root / "imagesTr" / "case_00001_0000.nii.gz").rename(root / "imagesTs" / "case_00009_0000.nii.gz")
    (root / "imagesTs" / "odd.nii.gz").write_bytes(b"")
    ds = open_dataset(root)
    by_id = {c.case_id: c for c in ds.cases}
    assert set(by_id) == {"case_00000", "case_00001", "case_00009"}
    assert by_id["case_00009"].segmentation is None  # test image: unannotated
    assert by_id["case_00001"].imaging is None  # label without image: reported by check
    err = check_case(by_id["case_00001"], policy=ds.policy)
    assert err[0].field == "imaging" and "case_00001_0000.nii.gz" in str(err[0])
    assert "imagesTr holds: case_00000_0000.nii.gz" in str(err[0])
    assert any("odd.nii.gz" in s for s in ds.skipped)
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = {"background": 0, "liver": 1}
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="dataset.json.*named as a kidney"):
        open_dataset(root)
    explicit = open_dataset(root, kidney_labels=(2, 3)).policy  # names not needed when told
    assert explicit.kidney == (2, 3) and explicit.allowed == (0, 1, 2, 3)
    assert NNUNET_LABELS["adrenal gland"] == 5


def test_pairs_flat_folder(tmp_path):
    image, label = tiny_case()
    from kidneyssl.phantoms.dataset import write_nifti

    write_nifti(image, tmp_path / "scan_a.nii.gz")
    write_nifti(label, tmp_path / "scan_a_seg.nii.gz")
    write_nifti(image, tmp_path / "scan_b.nii.gz")  # no label: unannotated
    write_nifti(label, tmp_path / "scan_c_mask.nii.gz")  # no image
    ds = open_dataset(tmp_path)
    assert ds.format == "pairs"
    assert [(c.case_id, bool(c.imaging), bool(c.segmentation)) for c in ds.cases] == [
        ("scan_a", True, True), ("scan_b", True, False), ("scan_c", False, True)]
    assert [e.field for e in check_case(ds.cases[2], policy=ds.policy)] == ["imaging"]


def test_skipped_folders_are_reported(tmp_path):
    write_tiny(tmp_path, "kits19", n=1)
    for name in ("case_1", "Case_00002"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes").mkdir()
    ds = open_dataset(tmp_path)
    assert [c.case_id for c in ds.cases] == ["case_00000"]
    assert len(ds.skipped) == 2
    assert all(str(tmp_path) in s and "case_ and 5 digits" in s for s in ds.skipped)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        open_dataset(tmp_path / "absent")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds: readme.txt"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="format"):
        open_dataset(tmp_path, "kits99")
    with pytest.raises(DataError, match="labels"):
        (tmp_path / "dataset.json").write_text("{}")
        open_dataset(tmp_path, "nnunet")
