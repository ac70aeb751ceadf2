"""``locate``: kidney masks for unlabeled scans, in a layout ``prepare`` reads, with confidence."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.cli.main import main
from kidneyssl.io.geometry import Geometry
from kidneyssl.io.volumes import read_volume, write_volume
from kidneyssl.metrics import dice
from kidneyssl.unlabeled import kidney_confidence, locate_scans

# Reuse the inference tests' scan phantom and box-filter "model" (bright blobs -> kidneys).
_spec = importlib.util.spec_from_file_location(
    "inference_fixtures", Path(__file__).resolve().parents[1] / "inference" / "conftest.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)  # type: ignore[union-attr]

#: Measured: 0.863-0.865 on these three scans (box-filter model, 4 x 3 x 3 mm network grid).
MIN_DICE = 0.85


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two KiTS-layout scans and one flat NIfTI scan, with their true masks."""
    root = tmp_path_factory.mktemp("scans")
    truth = {}
    for i, name in enumerate(("case_00003/imaging.nii.gz", "case_00010/imaging.nii.gz", "ct_b.nii.gz")):
        img, mask, aff = fx.kidney_scan(shape=(36, 56, 72), seed=i)
        if name.startswith("ct_"):
            img, aff2 = fx.reorient(img, aff, ("R", "A", "S"))
            mask, _ = fx.reorient(mask, aff, ("R", "A", "S"))
            aff = aff2
        write_volume(img, Geometry(aff, img.shape), root / name)
        truth[name.split("/")[0].replace(".nii.gz", "")] = mask
    return root, truth


def test_locate_scans_dice_confidence_and_prepare(scans, tmp_path):
    root, truth = scans
    out = tmp_path / "located"
    summary = locate_scans(fx.BoxModel(), fx.small_config(), root, out)
    assert summary.failed == {} and sorted(summary.cases) == ["case_00003", "case_00010", "ct_b"]
    info = json.loads((out / "locate.json").read_text())
    assert info["found"] == 3 and set(info["cases"]) == set(truth)
    for case_id, mask in truth.items():
        rec = info["cases"][case_id]
        located = read_volume(out / "labels" / f"{case_id}.nii.gz")
        image = read_volume(out / "images" / f"{case_id}.nii.gz")
        assert located.geometry.same_as(image.geometry)  # the mask lies on its scan's grid
        assert dice(np.asarray(located.array), mask) > MIN_DICE, case_id
        assert rec["kidney_voxels"] == int(np.asarray(located.array).sum()) and rec["components"] == 2
        assert 0.5 < rec["confidence"] <= 1.0 and rec["kidney_ml"] > 0
    assert (out / "images" / "ct_b.nii.gz").is_symlink()
    # the output is a dataset prepare reads (pairs format): located masks become labels
    assert main(["check", "--data", str(out), "--quiet"]) == 0
    from kidneyssl.config import PreprocessConfig
    from kidneyssl.data.cache import open_cache
    from kidneyssl.data.prepare import prepare_dataset

    cfg = PreprocessConfig(spacing_mm=(5.0, 4.0, 4.0))
    assert not prepare_dataset(out, tmp_path / "cache", cfg, workers=1).failed
    cache = open_cache(tmp_path / "cache")
    assert cache.info["data_format"] == "pairs" and cache.load("ct_b").label.sum() > 0


def test_kidney_confidence_table():
    prob = np.zeros((2, 3, 4), np.float32)
    mask = np.zeros(prob.shape, np.uint8)
    assert kidney_confidence(mask, prob, (1.0, 1.0, 1.0)) == {
        "kidney_voxels": 0, "kidney_ml": 0.0, "components": 0, "confidence": 0.0}
    mask[0, 0, :2] = 1
    mask[1, 2, 3] = 1
    prob[mask > 0] = [0.9, 0.7, 0.8]
    assert kidney_confidence(mask, prob, (10.0, 10.0, 10.0)) == {
        "kidney_voxels": 3, "kidney_ml": 3.0, "components": 2, "confidence": 0.8}


def test_cli_locate_with_a_checkpoint(scans, tmp_path, capsys):
    import torch

    from kidneyssl.config import config_to_dict
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models import build_segmentation_model

    cfg = fx.small_config()
    torch.manual_seed(0)
    ckpt = tmp_path / "seg.pt"
    save_checkpoint(ckpt, kind="segmentation", config=config_to_dict(cfg),
                    model_state=build_segmentation_model(cfg.model).state_dict(), epoch=0)
    root, truth = scans
    out = tmp_path / "o"
    assert main(["locate", "--model", str(ckpt), "--input", str(root / "ct_b.nii.gz"), "--out", str(out)]) == 0
    assert "1 scan(s) located" in capsys.readouterr().out
    info = json.loads((out / "locate.json").read_text())
    assert info["model"] == str(ckpt) and list(info["cases"]) == ["ct_b"]
    assert read_volume(out / "labels" / "ct_b.nii.gz").geometry.shape == truth["ct_b"].shape
    assert main(["locate", "--model", str(tmp_path / "none.pt"), "--input", str(root), "--out", str(out)]) == 2
    assert main(["locate", "--model", str(ckpt), "--input", str(root), "--out", str(root)]) == 2
