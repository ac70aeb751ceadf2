"""CUDA paths of training and prediction (mixed precision, GPU windows). Skipped without CUDA;
run on a GPU machine with ``bash benchmarks/gpu_checks.sh``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_amp_segmentation_training_on_cuda(tmp_path: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.io.checkpoint import load_checkpoint
    from kidneyssl.training.finetune import train_segmentation

    cfg = apply_overrides(tiny_cfg, ["train.amp=true"])
    result = train_segmentation(tiny_cache, tmp_path / "run", cfg, device="cuda")
    rows = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.train.epochs
    assert all(math.isfinite(r["train_loss"]) and 0.0 <= r["val_dice"] <= 1.0 for r in rows)
    last = load_checkpoint(result.run_dir / "last.pt", kind="segmentation")
    assert all(t.device.type == "cpu" for t in last["model_state"].values())
    assert last.get("scaler") is not None


def test_amp_pretraining_and_mws_on_cuda(tmp_path: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.pretrain import pretrain_siamese

    cfg = apply_overrides(tiny_cfg, ["train.amp=true"])
    pre = pretrain_siamese(tiny_cache, tmp_path / "pre", cfg, device="cuda")
    assert math.isfinite(pre.best_val_loss)
    mws = train_segmentation(tiny_cache, tmp_path / "mws", cfg, init=str(tmp_path / "pre" / "best.pt"),
                             device="cuda")
    assert (mws.run_dir / "best.pt").is_file()


def test_predict_on_cuda_matches_cpu(tmp_path: Path, phantom_data: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.inference.predict import load_model, predict_volume
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.training.finetune import train_segmentation

    run = train_segmentation(tiny_cache, tmp_path / "run", tiny_cfg, device="cpu").run_dir
    volume = read_volume(phantom_data / "case_00000" / "imaging.nii.gz")
    masks = {}
    for device in ("cpu", "cuda"):
        model, cfg = load_model(run / "last.pt", device)
        masks[device] = predict_volume(model, volume, cfg, device=device, sw_device=device).mask
    a, b = masks["cpu"].astype(bool), masks["cuda"].astype(bool)
    assert a.shape == b.shape == volume.array.shape
    inter = np.logical_and(a, b).sum()
    denom = a.sum() + b.sum()
    assert denom == 0 or 2 * inter / denom > 0.99
