"""Segmentation training (MwS/MwoS) on the tiny phantom cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def mwos_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path, tiny_cfg):
    from kidneyssl.training.finetune import train_segmentation

    return train_segmentation(tiny_cache, tmp_path_factory.mktemp("mwos") / "run", tiny_cfg, device="cpu")


def test_training_writes_history_checkpoints_and_plot(mwos_run, tiny_cfg) -> None:
    run = mwos_run.run_dir
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert {"train_loss", "val_dice", "w_bce", "w_dice", "seconds", "val_dice_per_case"} <= set(r)
        assert 0.0 <= r["val_dice"] <= 1.0 and len(r["val_dice_per_case"]) == 2
        assert r["val_dice"] == pytest.approx(np.mean(list(r["val_dice_per_case"].values())))
    # the paper's schedule: 0.6/0.4 at the first epoch, the configured end at the last
    assert (rows[0]["w_bce"], rows[0]["w_dice"]) == pytest.approx((0.6, 0.4))
    assert (rows[-1]["w_bce"], rows[-1]["w_dice"]) == pytest.approx((0.1, 0.9))
    last = load_checkpoint(run / "last.pt", kind="segmentation")
    best = load_checkpoint(run / "best.pt", kind="segmentation")
    assert last["epoch"] == 1 and best["metrics"]["val_dice"] == pytest.approx(max(r["val_dice"] for r in rows))
    assert last["config"]["preprocess"]["spacing_mm"] == [12.0, 6.0, 6.0]  # predict needs nothing else
    assert (run / "history.png").stat().st_size > 0 and (run / "config.yaml").is_file()
    split = json.loads((run / "split.json").read_text())
    assert split["val"] == list(rows[0]["val_dice_per_case"])
    assert mwos_run.best_dice == pytest.approx(best["metrics"]["val_dice"])


def test_mws_starts_from_the_siamese_encoder(pretrain_run: Path, tiny_cfg) -> None:
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.training.finetune import _load_init

    model = build_segmentation_model(tiny_cfg.model)
    report = _load_init(model, str(pretrain_run / "best.pt"), tiny_cfg)
    assert report["loaded"] > 0 and report["missing"] == []
    siamese = load_checkpoint(pretrain_run / "best.pt")["model_state"]
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, siamese[f"encoder.{key}"])


def test_init_from_another_architecture_fails_before_training(pretrain_run: Path, mwos_run, tiny_cache: Path,
                                                              tiny_cfg, tmp_path: Path) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation

    wider = apply_overrides(tiny_cfg, ["model.growth_rate=6"])
    with pytest.raises(CheckpointError, match="does not fit"):
        train_segmentation(tiny_cache, tmp_path / "run", wider, init=str(pretrain_run / "best.pt"), device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(CheckpointError, match="expected a siamese checkpoint"):
        train_segmentation(tiny_cache, tmp_path / "run2", tiny_cfg, init=str(mwos_run.run_dir / "best.pt"),
                           device="cpu")


def test_too_few_validation_cases_fail_before_training(tiny_cache: Path, tiny_cfg, tmp_path: Path) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation

    with pytest.raises(KidneySSLError, match="at least 2 are needed"):
        train_segmentation(tiny_cache, tmp_path / "run", apply_overrides(tiny_cfg, ["train.val_fraction=0.1"]),
                           device="cpu")
    assert not (tmp_path / "run").exists()


def test_extend_epochs_continues_a_finished_run(mwos_run, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.training.finetune import train_segmentation

    result = train_segmentation(None, mwos_run.run_dir, tiny_cfg, extend_epochs=1, device="cpu")
    rows = result.history
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["w_bce"] == pytest.approx(0.1)  # schedule over the new total of 3 epochs
    assert load_checkpoint(mwos_run.run_dir / "last.pt")["epoch"] == 2
