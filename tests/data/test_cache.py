"""prepare_dataset / open_cache: layout, skip and resume, bad cases, config mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidneyssl.config import PreprocessConfig, config_to_dict
from kidneyssl.data.cache import open_cache
from kidneyssl.data.prepare import prepare_dataset
from kidneyssl.errors import DataError, KidneySSLError

CFG = PreprocessConfig(spacing_mm=(4.0, 2.0, 2.0), pad_multiple=16)
SHAPE = (20, 48, 64)
AFFINE = np.array([[0, 0, -1.0, 30.0], [0, -1.0, 0, 20.0], [-2.5, 0, 0, 10.0], [0, 0, 0, 1]])


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), path)


def _write_case(root: Path, case_id: str, label: str = "two") -> None:
    """A small (I, P, L) case; kidneys as boxes: right at low x, left at high x."""
    rng = np.random.default_rng(int(case_id[-5:]))
    image = rng.normal(0, 20, SHAPE).astype(np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    if label in ("two", "right"):
        seg[6:14, 18:30, 8:20] = 1
    if label == "two":
        seg[5:13, 18:30, 44:56] = 1
        seg[8, 22, 48] = 2
    if label == "bad":
        seg[6:14, 18:30, 8:20] = 5
    image[seg > 0] = 150
    _save(root / case_id / "imaging.nii.gz", image)
    if label != "none":
        _save(root / case_id / "segmentation.nii.gz", seg)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    _write_case(root, "case_00000", "two")
    _write_case(root, "case_00001", "right")
    _write_case(root, "case_00002", "none")
    _write_case(root, "case_00003", "bad")
    return root


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_prepare_layout_meta_and_summary(dataset, tmp_path):
    before = _listing(dataset)
    out = tmp_path / "cache"
    summary = prepare_dataset(dataset, out, CFG, workers=1)
    assert _listing(dataset) == before  # nothing written into the input
    assert summary.ok == ["case_00000", "case_00001", "case_00002"] and summary.skipped == []
    assert list(summary.failed) == ["case_00003"]
    assert "segmentation.nii.gz: labels: expected values in {0, 1, 2}" in summary.failed["case_00003"][0]
    info = json.loads((out / "cache.json").read_text())
    assert info["format_version"] == 1 and info["preprocess"] == config_to_dict(CFG)
    assert info["cases"] == ["case_00000", "case_00001", "case_00002"]
    assert not (out / "case_00003" / "meta.json").exists()

    cache = open_cache(out, expected=CFG)
    assert cache.case_ids == info["cases"] and len(cache) == 3
    case = cache.load("case_00000")
    assert isinstance(case.image, np.memmap) and not case.image.flags.writeable
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape == (16, 32, 32)  # 12.5x24x32 voxels, padded
    assert set(np.unique(case.label)) == {0, 1}
    meta = case.meta
    assert meta["case_id"] == "case_00000" and meta["has_label"] is True
    assert set(meta["kidneys"]) == {"left", "right"}
    right, left = meta["kidneys"]["right"], meta["kidneys"]["left"]
    assert right["center"][2] < meta["split_x"] <= left["bbox"][2][0]
    assert right["voxels"] > 0 and len(right["bbox"]) == 3
    assert case.record.shape == case.image.shape
    assert case.record.original.shape == SHAPE
    assert list(cache.load("case_00001").meta["kidneys"]) == ["right"]
    unannotated = cache.load("case_00002")
    assert unannotated.label is None and unannotated.meta["kidneys"] == {}
    assert 0 < unannotated.meta["split_x"] < 32
    assert not isinstance(cache.load("case_00000", mmap=False).image, np.memmap)
    with pytest.raises(KidneySSLError, match="not in this cache"):
        cache.load("case_00003")


def test_rerun_skips_done_cases_and_redoes_interrupted_ones(dataset, tmp_path):
    out = tmp_path / "cache"
    prepare_dataset(dataset, out, CFG, workers=1)
    image_mtime = (out / "case_00000" / "image.npy").stat().st_mtime_ns
    # a run killed mid-case leaves no meta.json (written last) and maybe a temp file
    (out / "case_00001" / "meta.json").unlink()
    (out / "case_00001" / ".image.npy.xyz.tmp.npy").write_bytes(b"partial")
    summary = prepare_dataset(dataset, out, CFG, workers=1)
    assert summary.skipped == ["case_00000", "case_00002"]
    assert summary.ok == ["case_00001"]
    assert (out / "case_00000" / "image.npy").stat().st_mtime_ns == image_mtime
    # a changed input is redone
    _write_case(dataset, "case_00002", "two")
    assert prepare_dataset(dataset, out, CFG, workers=1).ok == ["case_00002"]
    assert open_cache(out).load("case_00002").label is not None
    assert prepare_dataset(dataset, out, CFG, workers=1, force=True).ok == ["case_00000", "case_00001", "case_00002"]


def test_config_mismatch_is_refused_and_named(dataset, tmp_path):
    out = tmp_path / "cache"
    prepare_dataset(dataset, out, CFG, workers=1, case_ids=["case_00001"])
    other = PreprocessConfig(spacing_mm=(3.0, 2.0, 2.0), pad_multiple=8)
    with pytest.raises(KidneySSLError) as info:
        open_cache(out, expected=other)
    assert "spacing_mm" in str(info.value) and "pad_multiple" in str(info.value)
    assert "window_hu" not in str(info.value)
    with pytest.raises(KidneySSLError, match="rebuild it") as err:
        prepare_dataset(dataset, out, other, workers=1)
    assert err.value.remedy == ("force", "out")
    summary = prepare_dataset(dataset, out, other, workers=1, force=True, case_ids=["case_00001"])
    assert summary.ok == ["case_00001"]
    assert open_cache(out, expected=other).load("case_00001").image.shape[0] % 8 == 0


def test_output_inside_input_and_missing_cache_are_refused(dataset, tmp_path):
    with pytest.raises(DataError, match="outside the dataset"):
        prepare_dataset(dataset, dataset / "cache", CFG, workers=1)
    with pytest.raises(DataError, match="outside the dataset"):
        prepare_dataset(dataset, dataset, CFG, workers=1)
    with pytest.raises(DataError, match="does not contain"):
        prepare_dataset(dataset, tmp_path, CFG, workers=1)
    with pytest.raises(DataError, match="cache.json"):
        open_cache(tmp_path / "nothing")
    assert not (dataset / "cache").exists()


def test_worker_processes(dataset, tmp_path):
    summary = prepare_dataset(dataset, tmp_path / "cache", CFG, workers=2, case_ids=["case_00000", "case_00003"])
    assert summary.ok == ["case_00000"] and list(summary.failed) == ["case_00003"]
    serial = prepare_dataset(dataset, tmp_path / "serial", CFG, workers=1, case_ids=["case_00000"])
    assert serial.ok == ["case_00000"]
    a = open_cache(tmp_path / "cache").load("case_00000")
    b = open_cache(tmp_path / "serial").load("case_00000")
    np.testing.assert_array_equal(a.image, b.image)
    assert a.meta["kidneys"] == b.meta["kidneys"] and a.meta["split_x"] == b.meta["split_x"]
