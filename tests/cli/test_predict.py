"""``kidneyssl predict`` end to end: good scans written, a corrupt one reported, exit codes."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from kidneyssl.cli.main import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from kidneyssl.config import PreprocessConfig, config_to_dict, load_preset
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models import build_segmentation_model

    cfg = load_preset("demo")
    cfg = dataclasses.replace(cfg, preprocess=PreprocessConfig(spacing_mm=(8.0, 6.0, 6.0)),  # small arrays
                              train=dataclasses.replace(cfg.train, crop_size=None))  # trained on halves
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model)
    path = tmp_path_factory.mktemp("cli_ckpt") / "seg.pt"
    save_checkpoint(path, kind="segmentation", config=config_to_dict(cfg), model_state=model.state_dict())
    return path


def _scan(path, shape=(24, 40, 48), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.normal(0, 50, size=shape).astype(np.int16)
    aff = np.diag([-2.0, -2.5, 3.0, 1.0])  # L, P, S
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return path


def test_cli_predict_reports_a_corrupt_file_and_writes_the_others(checkpoint, tmp_path, capsys):
    data = tmp_path / "scans"
    data.mkdir()
    _scan(data / "a.nii.gz")
    _scan(data / "c.nii", seed=1)
    (data / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), "--input", str(data), "--out", str(out),
                 "--threads", "1", "--tta", "--save-probabilities", "--probability-format", "uint8"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 torch threads" in err
    assert "b.nii.gz" in err and "1 scan(s) failed" in err
    for stem, name in (("a", "a.nii.gz"), ("c", "c.nii")):
        pred = nib.load(str(out / f"prediction_{stem}.nii.gz"))
        src = nib.load(str(data / name))
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        assert (out / f"probability_{stem}.nii.gz").is_file()
    assert not (out / "prediction_b.nii.gz").exists()


def test_cli_predict_all_good_exits_zero(checkpoint, tmp_path):
    src = _scan(tmp_path / "one.nii.gz")
    code = main(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(tmp_path / "o"),
                 "--no-largest-component", "--memory-budget-mb", "1", "--quiet"])
    assert code == 0
    assert (tmp_path / "o" / "prediction_one.nii.gz").is_file()
    saved = json.loads((tmp_path / "o" / "predict_summary.json").read_text())
    assert saved["strategy"] == {"one.nii.gz": "sliding"}  # a 1 MB budget forces windows


def test_cli_predict_bad_checkpoint_is_one_line_exit_2(checkpoint, tmp_path, capsys):
    payload = torch.load(checkpoint, weights_only=False)
    torch.save(dict(payload, format_version=0), tmp_path / "old.pt")
    src = _scan(tmp_path / "one.nii.gz")
    code = main(["predict", "--model", str(tmp_path / "old.pt"), "--input", str(src), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "kidneyssl predict: error:" in err and "format 0" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "prediction_one.nii.gz").exists()


def test_cli_predict_missing_input(checkpoint, tmp_path, capsys):
    code = main(["predict", "--model", str(checkpoint), "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_predict_then_evaluate_round_trip_on_phantoms(checkpoint, tmp_path):
    pytest.importorskip("kidneyssl.cli.evaluate")
    import csv

    from kidneyssl.phantoms import write_dataset

    data = tmp_path / "phantoms"
    write_dataset(data, cases=2, seed=3)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(checkpoint), "--input", str(data), "--out", str(out), "--quiet"]) == 0
    table = tmp_path / "eval.csv"
    assert main(["evaluate", "--pred", str(out), "--gt", str(data), "--out", str(table), "--quiet"]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(table.open())}
    assert sorted(rows) == ["case_00000", "case_00001"]
    for case_id, row in rows.items():
        gt = nib.load(str(data / case_id / "segmentation.nii.gz"))
        pred = nib.load(str(out / f"prediction_{case_id[5:]}.nii.gz"))
        assert pred.shape == gt.shape
        np.testing.assert_allclose(pred.affine, gt.affine, atol=1e-4)
        p, g = np.asarray(pred.dataobj) > 0, np.asarray(gt.dataobj) > 0
        expected = 2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum())
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
