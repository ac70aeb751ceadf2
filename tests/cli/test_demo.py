"""``kidneyssl demo`` end to end at a reduced size (the full-size timing is a benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidneyssl.cli.main import main


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "-q", "--out", str(out), "--device", "cpu",
               "--set", "synth.cases=8", "--set", "train.val_fraction=0.25",
               "--set", "preprocess.spacing_mm=[12.0,6.0,6.0]", "--set", "pretrain.crop_size=[16,32,32]",
               "--set", "train.crop_size=[16,16,16]",  # the demo's crop training and windowed inference
               "--set", "model.init_features=4", "--set", "model.growth_rate=4", "--set", "model.norm_groups=2",
               "--set", "model.embedding_dim=8", "--set", "inference.half_context_mm=16",
               "--set", "pretrain.epochs=1", "--set", "pretrain.pairs_per_epoch=8", "--set", "pretrain.val_pairs=4",
               "--set", "train.epochs=1"])
    printed = capsys.readouterr().out
    assert rc == 0
    report = out / "run" / "report" / "report.md"
    assert f"report: {report}" in printed
    assert "MwS-region/test: Dice" in printed and "MwoS/test: Dice" in printed
    assert "MwS-region - MwoS (test) Dice" in printed
    assert "demo finished in" in printed
    assert report.stat().st_size > 0 and (report.parent / "report.html").stat().st_size > 0
    assert len(sorted((out / "data").glob("case_*"))) == 8
    assert "synth" in (out / "run" / "config.yaml").read_text()
