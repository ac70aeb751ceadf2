"""The experiment plans every remaining stage (seeds x proxy variants) before its first training
step; ``--dry-run`` stops there, with no run of any stage written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

TINY = ["preprocess.spacing_mm=[12.0,6.0,6.0]", "pretrain.crop_size=[16,32,32]", "train.crop_size=null", "model.init_features=4",
        "model.growth_rate=4", "model.norm_groups=2", "model.embedding_dim=8", "train.val_fraction=0.25",
        "protocol.test_fraction=0.25", "inference.half_context_mm=16", "pretrain.epochs=1",
        "pretrain.pairs_per_epoch=8", "pretrain.val_pairs=4", "pretrain.batch_size=2", "train.epochs=3",
        "protocol.seeds=[0, 1]", "protocol.proxy_variants=[region, masked]"]


def test_dry_run_plans_every_stage_and_trains_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.training.plan import PlanOptions
    from kidneyssl.workflows.experiment import run_experiment

    write_dataset(tmp_path / "data", 8, seed=2, resolution="demo", workers=2)
    cfg = apply_overrides(load_preset("demo"), TINY)
    with caplog.at_level(logging.INFO, logger="kidneyssl"):
        result = run_experiment(tmp_path / "data", tmp_path / "run", cfg, device="cpu",
                                plan=PlanOptions(dry_run=True))
    assert result is None
    text = caplog.text
    assert "plan: 10 stage(s)" in text  # 2 seeds x (2 pretrainings + 3 segmentation runs)
    for stage in ("seed_0/pretrain_region", "seed_1/pretrain_masked", "seed_0/train_MwS-region",
                  "seed_1/train_MwoS"):
        assert f"  {stage} (" in text, stage
    assert "epochs 1-3" in text and "s per iteration" in text and "total: ~" in text and "ends ~" in text
    assert "dry run" in text
    run = tmp_path / "run"
    assert not list(run.glob("seed_*")) and not (run / "report").exists()  # nothing trained or scored
