"""Issue 20, items 3 and 5: a DICOM series with a missing, duplicated or shifted slice, or a folder
holding two series, is refused with a message naming the series and the positions (never read on
a guessed, evenly spaced grid); the input files are unchanged and nothing is written for it."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from kidneyssl.errors import DataError
from kidneyssl.inference.inputs import read_dicom_series

from .conftest import snapshot

SERIES = "1.2.826.0.1.3680043.2.1125.20"


def write_series(folder: Path, z_mm: list[float], series_uid: str = SERIES, seed: int = 0,
                 prefix: str = "slice") -> Path:
    """One axial CT slice (int16, 0.8 x 0.9 mm pixels) per entry of ``z_mm`` (ImagePositionPatient z)."""
    saved = locale.setlocale(locale.LC_ALL)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    try:
        for k, z in enumerate(z_mm):
            sl = sitk.GetImageFromArray(rng.integers(-100, 300, size=(10, 12)).astype(np.int16))
            sl.SetSpacing((0.8, 0.9))
            for tag, value in (("0010|0010", "Phantom"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                               ("0020|000e", series_uid), ("0008|0060", "CT"),
                               ("0008|0018", f"{series_uid}.{k + 1}"),
                               ("0020|0032", f"10.0000\\-20.0000\\{z:.4f}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                               ("0020|0013", str(k + 1)), ("0018|0050", "4.8")):
                sl.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
            writer.Execute(sl)
    finally:  # ITK's DICOM writer switches the C locale
        locale.setlocale(locale.LC_ALL, saved)
    return folder


REGULAR = [4.8 * k for k in range(8)]


@pytest.mark.parametrize("z_mm, found", [
    (REGULAR[:4] + REGULAR[5:], "a step of 9.600 mm from 14.400 to 24.000 mm"),  # one slice missing
    (REGULAR[:4] + [REGULAR[3]] + REGULAR[4:], "two slices at 14.400 mm"),  # one duplicated
    (REGULAR[:4] + [z + 5.2 for z in REGULAR[4:]], "a step of 10.000 mm from 14.400 to 24.400 mm"),  # a 10 mm jump
], ids=["missing", "duplicated", "jump"])
def test_irregular_slice_positions_are_refused_naming_series_and_positions(tmp_path, z_mm, found,
                                                                           seg_checkpoint, kidneyssl):
    series = write_series(tmp_path / "scans" / "ct", z_mm)
    with pytest.raises(DataError) as err:
        read_dicom_series(series)
    message = str(err.value)
    assert str(series) in message and SERIES in message and found in message
    assert "median step 4.800 mm" in message
    before = snapshot(tmp_path / "scans")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", tmp_path / "scans", "--out", tmp_path / "out")
    assert proc.returncode == 1 and found in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(tmp_path / "scans") == before
    assert not list((tmp_path / "out").glob("prediction_*"))


def test_regular_and_slightly_rounded_positions_are_read(tmp_path):
    vol = read_dicom_series(write_series(tmp_path / "a", REGULAR))
    assert vol.array.shape == (12, 10, 8)
    np.testing.assert_allclose(vol.geometry.spacing, (0.8, 0.9, 4.8), atol=1e-4)
    rounded = [round(z + (0.01 if k % 2 else -0.01), 2) for k, z in enumerate(REGULAR)]  # +-0.01 mm
    assert read_dicom_series(write_series(tmp_path / "b", rounded)).array.shape == (12, 10, 8)


def test_a_folder_with_two_series_is_refused_naming_both_uids(tmp_path, seg_checkpoint, kidneyssl):
    folder = write_series(tmp_path / "scans" / "ct", REGULAR)
    write_series(folder, [z + 0.5 for z in REGULAR], series_uid=SERIES + ".2", seed=1, prefix="other")
    with pytest.raises(DataError, match="2 series: ") as err:
        read_dicom_series(folder)
    assert SERIES in str(err.value) and SERIES + ".2" in str(err.value) and "folder of its own" in str(err.value)
    before = snapshot(tmp_path / "scans")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", folder, "--out", tmp_path / "out")
    assert proc.returncode == 1 and "one DICOM series per folder" in proc.stderr
    assert snapshot(tmp_path / "scans") == before


def test_predict_out_inside_a_dicom_series_folder_is_refused(tmp_path, seg_checkpoint, kidneyssl):
    """Item 1 for predict: the only input folder an output could lie in is a series folder."""
    series = write_series(tmp_path / "ct", REGULAR)
    before = snapshot(tmp_path)
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", series, "--out", series)
    assert proc.returncode == 2 and f"a path inside the input folder {series}" in proc.stderr
    assert snapshot(tmp_path) == before
