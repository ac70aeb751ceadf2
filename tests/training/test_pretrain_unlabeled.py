"""``pretrain --unlabeled``: located scans without masks join the proxy training pairs, filtered by
confidence, reported, and refused when their locator saw a held-out case of the split."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.cli.main import main
from kidneyssl.io.checkpoint import load_checkpoint
from kidneyssl.training.split import load_split

from .conftest import TINY_OVERRIDES

#: (case id, confidence, has a kidney) of the hand-made locate output: two kept, one below the
#: default minimum confidence (0.5), one without a located kidney.
LOCATED = [("scan_a", 0.91, True), ("scan_b", 0.83, True), ("scan_c", 0.2, True), ("scan_d", 0.0, False)]


@pytest.fixture(scope="module")
def unlabeled_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four more phantoms (another seed), KiTS19 layout; their masks play the located masks."""
    from kidneyssl.phantoms import write_dataset

    out = tmp_path_factory.mktemp("unlabeled_phantoms")
    write_dataset(out, 4, seed=11, resolution="demo", workers=2)
    return out


def _located(root: Path, phantoms: Path, touched: list[str] | None) -> Path:
    """A ``kidneyssl locate`` output made by hand: images/ (links), labels/ (0/1), locate.json."""
    from kidneyssl.io.volumes import read_volume, write_mask

    (root / "images").mkdir(parents=True)
    cases = {}
    for (name, confidence, has_kidney), case in zip(LOCATED, sorted(phantoms.glob("case_*"))):
        seg = read_volume(case / "segmentation.nii.gz")
        mask = (np.asarray(seg.array) > 0).astype(np.uint8) * has_kidney
        write_mask(mask, root / "labels" / f"{name}.nii.gz", like=seg.geometry)
        os.symlink((case / "imaging.nii.gz").resolve(), root / "images" / f"{name}.nii.gz")
        cases[name] = {"kidney_voxels": int(mask.sum()), "confidence": confidence}
    (root / "locate.json").write_text(json.dumps({"model": "locator.pt", "touched_cases": touched,
                                                  "cases": cases, "failed": {}}))
    return root


def _pretrain(*args: str) -> tuple[int, str]:
    sets = [a for item in TINY_OVERRIDES for a in ("--set", item)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["pretrain", "--preset", "demo", *sets, "--device", "cpu", "--yes", "--no-probe", *args])
    return rc, err.getvalue()


def test_located_scans_join_the_proxy_pairs(tiny_cache: Path, pretrain_run: Path, unlabeled_phantoms: Path,
                                            tmp_path: Path) -> None:
    split = load_split(pretrain_run / "split.json")
    located = _located(tmp_path / "located", unlabeled_phantoms, touched=list(split.train))
    out = tmp_path / "run"
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(out), "--unlabeled", str(located))
    assert rc == 0, err[-3000:]
    info = json.loads((out / "run.json").read_text())["unlabeled"]
    assert info["used"] == 2 and info["cases"] == ["scan_a", "scan_b"]
    assert (info["scans"], info["below_confidence"], info["no_kidney"]) == (4, 1, 1)
    assert info["kidneys"]["right"] + info["kidneys"]["left"] == 4  # phantoms have two kidneys each
    assert info["held_out_cases_touched_by_locator"] == []
    assert "unlabeled scans used 2 of 4" in err
    # the run's touched cases: its proxy cases and its locator's training cases, nothing held out
    touched = set(load_checkpoint(out / "last.pt")["touched_cases"])
    assert set(split.train) <= touched and not touched & split.held_out

    # the pairs read the located scans' crops through the union of the two caches
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.data.cache import CacheUnion, open_cache
    from kidneyssl.data.pairs import KidneyPairDataset
    from kidneyssl.preprocessing.crops import kidney_crop

    cfg = apply_overrides(load_preset("demo"), TINY_OVERRIDES)
    extra = open_cache(out / "unlabeled_cache")
    union = CacheUnion(open_cache(tiny_cache), {"unlabeled/": extra})
    pairs = KidneyPairDataset(union, ["unlabeled/scan_a", "unlabeled/scan_b", *split.train], n_pairs=16,
                              seed=0, crop_size=cfg.pretrain.crop_size)
    assert {cid for cid, _ in pairs.items} >= {"unlabeled/scan_a", "unlabeled/scan_b"}
    case = extra.load("scan_a")
    side = next(iter(case.meta["kidneys"]))
    np.testing.assert_array_equal(
        pairs.crop("unlabeled/scan_a", side),
        kidney_crop(case.image, case.meta["kidneys"][side]["center"], cfg.pretrain.crop_size))

    # a higher minimum confidence keeps fewer scans; none left is a clear error, not a silent run
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(tmp_path / "strict"), "--unlabeled",
                        str(located), "--min-confidence", "0.95")
    assert rc == 2 and "confidence >= 0.95" in err and "locate.json" in err


def test_a_locator_that_saw_held_out_cases_is_refused(tiny_cache: Path, pretrain_run: Path,
                                                      unlabeled_phantoms: Path, tmp_path: Path) -> None:
    split = load_split(pretrain_run / "split.json")
    leaky = _located(tmp_path / "leaky", unlabeled_phantoms, touched=list(split.train) + [split.val[0]])
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(tmp_path / "run"), "--unlabeled", str(leaky))
    assert rc == 2 and "locator was trained on 1 case(s)" in err and split.val[0] in err
    assert not (tmp_path / "run" / "last.pt").exists()
    unknown = _located(tmp_path / "unknown", unlabeled_phantoms, touched=None)
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(tmp_path / "run2"), "--unlabeled", str(unknown))
    assert rc == 2 and "does not record which cases the locator" in err
    # experts may accept it; the run records what the locator touched
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(tmp_path / "run3"), "--unlabeled", str(leaky),
                        "--allow-locator-overlap")
    assert rc == 0, err[-3000:]
    info = json.loads((tmp_path / "run3" / "run.json").read_text())["unlabeled"]
    assert info["held_out_cases_touched_by_locator"] == [split.val[0]] and info["allow_locator_overlap"]


def test_unlabeled_scans_without_locate_json_need_a_locator(tiny_cache: Path, unlabeled_phantoms: Path,
                                                            tmp_path: Path) -> None:
    rc, err = _pretrain("--cache", str(tiny_cache), "--out", str(tmp_path / "run"), "--unlabeled",
                        str(unlabeled_phantoms))
    assert rc == 2 and "locate.json" in err and "locator" in err
