"""Item 8: SIGKILL ``prepare`` and ``predict`` while they write; no final-named file is ever partial,
a rerun removes the temporary files and completes, and ``predict --out`` equal to the input folder
never takes its own outputs (or temporary files) as inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from kidneyssl.io.paths import is_temp_name

from .conftest import TRAIN_SETS, start_cli

STALE_DIR = ".image.npy.abcd1234.kstmp"  # what an atomic write leaves when killed
STALE_OLD = ".prediction_x.nii.gz.k2j3l4m5.tmp.nii.gz"  # the naming of earlier versions


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


def _kill_when(child, root: Path, event, timeout: float = 120.0) -> bool:
    """SIGKILL ``child`` as soon as ``event(root)`` is true; False when it ended first."""
    deadline = time.time() + timeout
    while child.poll() is None and time.time() < deadline:
        try:
            if event(root):
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
        except (FileNotFoundError, OSError):  # a temp folder vanished while we looked
            pass
        time.sleep(0.002)
    child.kill()
    child.wait()
    return False


def _writing(root: Path) -> bool:
    """A temporary folder exists: a write is in progress."""
    return root.is_dir() and any(_temps(root))


def _final_files_read_back(root: Path) -> int:
    """Every final-named .npy / .json / .nii.gz under ``root`` reads completely; returns the count."""
    n = 0
    for path in root.rglob("*"):
        if is_temp_name(path.name) or any(is_temp_name(p.name) for p in path.parents):
            continue
        if path.name.endswith(".npy"):
            np.load(path)  # raises on a short file
        elif path.name.endswith(".json"):
            json.loads(path.read_text())
        elif path.name.endswith(".nii.gz"):
            np.asarray(nib.load(str(path)).dataobj)  # gzip CRC and length checked
        else:
            continue
        n += 1
    return n


def _digest(paths) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in paths}


def test_sigkill_prepare_and_predict_then_rerun(tmp_path, tiny_cache, seg_checkpoint, kidneyssl):
    data = tmp_path / "data"
    for i in range(3):  # small CT-like cases (tiny_cache's sources)
        shutil.copytree(tiny_cache.parent / "data" / f"case_{i:05d}", data / f"case_{i:05d}")
    inputs = sorted(data.rglob("*.nii.gz"))
    before = _digest(inputs)
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, path in enumerate(sorted(data.glob("case_*/imaging.nii.gz"))):
        shutil.copy(path, scans / f"s{i}.nii.gz")
    scan_digest = _digest(sorted(scans.iterdir()))

    cache = tmp_path / "cache"
    prepare = ["prepare", "-q", "--data", data, "--out", cache, "--workers", "1", *TRAIN_SETS]
    predict = ["predict", "-q", "--model", seg_checkpoint, "--input", scans, "--out", scans,
               "--save-probabilities", "--probability-format", "uint8"]

    def done(root: Path) -> int:
        return len(list(root.glob("case_*/meta.json")))

    # prepare, first kill: mid-write (at the latest once case 0 is done); predict (into its own
    # input folder) killed mid-write or at its first output, alongside
    first, other = start_cli(*prepare), start_cli(*predict)
    assert _kill_when(first, cache, lambda root: _writing(root) or done(root) >= 1)
    assert _kill_when(other, scans, lambda root: _writing(root) or any(root.glob("prediction_*")))
    # prepare, second kill: in a later case
    assert _kill_when(start_cli(*prepare), cache,
                      lambda root: (done(root) >= 1 and _writing(root)) or done(root) >= 2)
    _final_files_read_back(cache)
    _final_files_read_back(scans)

    # -- reruns: temporary files of ours (also planted ones) removed, everything completes -----
    (cache / "case_00001").mkdir(parents=True, exist_ok=True)
    (cache / "case_00001" / STALE_DIR).mkdir()
    (cache / "case_00001" / STALE_DIR / "image.npy").write_bytes(b"\x93NUMPY half")
    proc = kidneyssl(*prepare)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _temps(cache) == []
    assert _final_files_read_back(cache) == 1 + 3 * 3  # cache.json + image, label, meta per case
    assert json.loads((cache / "cache.json").read_text())["cases"] == ["case_00000", "case_00001",
                                                                        "case_00002"]

    (scans / STALE_OLD).write_bytes(b"\x1f\x8b half")  # an earlier version's leftover
    for _ in range(2):  # a rerun, and a rerun over a complete folder: same outputs, no new inputs
        proc = kidneyssl(*predict)
        assert proc.returncode == 0, proc.stderr
        names = sorted(p.name for p in scans.iterdir())
        assert names == sorted([f"s{i}.nii.gz" for i in range(3)] + [f"prediction_s{i}.nii.gz" for i in range(3)]
                               + [f"probability_s{i}.nii.gz" for i in range(3)] + ["predict_summary.json"])
        assert sorted(json.loads((scans / "predict_summary.json").read_text())["written"]) == \
            [f"s{i}.nii.gz" for i in range(3)]
    assert _final_files_read_back(scans) == 3 * 3 + 1
    assert _digest(sorted(scans.glob("s*.nii.gz"))) == scan_digest  # inputs untouched
    assert _digest(inputs) == before  # the dataset too
