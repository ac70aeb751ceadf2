"""Item 5: nonsense in is refused (predict) or said (check, prepare), with one line naming the
file; a resampled array is sized before it is allocated."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.plausibility import check_resampled_size, scan_findings
from kidneyssl.preprocessing.pipeline import preprocess_image

from .conftest import ct_scan, save_nifti, snapshot

CT, CT_AFFINE = ct_scan()


def _bad(name):
    """(array, affine) of one kind of implausible scan."""
    arr, aff = CT.copy(), CT_AFFINE.copy()
    if name == "tiny 4x4x4":
        return arr[:4, :4, :4].copy(), np.diag([1.0, 1.0, 1.0, 1.0])
    if name == "0.01 mm spacing":
        return arr, np.diag([-0.01, -0.01, 0.01, 1.0])
    if name == "x100 spacing":
        return arr, CT_AFFINE @ np.diag([100.0, 100.0, 100.0, 1.0])
    if name == "all zero":
        return np.zeros_like(arr), aff
    if name == "constant":
        return np.full_like(arr, 40), aff
    if name == "uint8 display values":
        return np.clip(arr / 8 + 128, 0, 255).astype(np.uint8), aff
    if name == "mask as image":
        return (arr > 200).astype(np.uint8), aff
    raise KeyError(name)


BAD = {  # name -> the field the one-line message names
    "tiny 4x4x4": "field of view",
    "0.01 mm spacing": "spacing",
    "x100 spacing": "spacing",
    "all zero": "intensities",
    "constant": "intensities",
    "uint8 display values": "intensities",
    "mask as image": "intensities",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_implausible_scan_is_refused_by_predict(tmp_path, seg_checkpoint, kidneyssl, name):
    arr, aff = _bad(name)
    src = save_nifti(arr, aff, tmp_path / "scans" / "bad.nii.gz")
    before = snapshot(tmp_path, exclude=tmp_path / "out")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", src, "--out", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if f"{src}: {BAD[name]}: expected" in ln]
    assert lines, proc.stderr
    assert not (tmp_path / "out" / "prediction_bad.nii.gz").exists()
    assert snapshot(tmp_path, exclude=tmp_path / "out") == before


def test_no_body_voxels_is_refused():
    arr = np.full(CT.shape, -1000, np.int16)
    arr[0, 0, :5] = 300  # a few bright voxels: not constant, max >= 100, but no body
    (finding,) = scan_findings(Volume(arr, Geometry(CT_AFFINE, arr.shape)), "air.nii.gz")
    assert finding.severity == "error" and "body: expected body voxels" in str(finding)


def test_check_and_prepare_say_it_on_stderr_and_go_on(tmp_path, kidneyssl):
    arr, aff = _bad("constant")
    save_nifti(arr, aff, tmp_path / "data" / "case_00000" / "imaging.nii.gz")
    img = tmp_path / "data" / "case_00000" / "imaging.nii.gz"
    proc = kidneyssl("check", "--data", tmp_path / "data")
    assert proc.returncode == 0  # the user's dataset: said, not refused
    assert f"{img}: intensities: expected a CT image, found a constant volume (every voxel 40)" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("1 ok, 0 bad")


def test_resampled_size_is_checked_before_allocating():
    with pytest.raises(KidneySSLError, match=r"would make a 250000x375000x1 array .* GiB limit"):
        check_resampled_size((100, 150, 1), (2.5e3, 2.5e3, 1.0), (250000, 375000, 1))
    # the spacing check misses a huge field of view at a plausible spacing: the guard does not
    from kidneyssl.config import PreprocessConfig

    arr = np.zeros((4000, 4000, 2), np.int8)  # 32 MB in, 16 m x 16 m at 4 mm
    vol = Volume(arr, Geometry(np.diag([4.0, 4.0, 4.0, 1.0]), arr.shape))
    with pytest.raises(KidneySSLError, match="GiB limit"):
        preprocess_image(vol, dataclasses.replace(PreprocessConfig(), spacing_mm=(0.2, 0.2, 0.2)))
