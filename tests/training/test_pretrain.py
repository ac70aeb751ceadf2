"""Siamese pretraining on the tiny phantom cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.io.checkpoint import load_checkpoint


def test_pretrain_writes_history_checkpoints_and_split(pretrain_run: Path, tiny_cfg) -> None:
    rows = [json.loads(line) for line in (pretrain_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert {"train_loss", "val_loss", "val_accuracy", "seconds"} <= set(r)
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
        assert 0.0 <= r["val_accuracy"] <= 1.0
    split = json.loads((pretrain_run / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 4
    last = load_checkpoint(pretrain_run / "last.pt", kind="siamese")
    best = load_checkpoint(pretrain_run / "best.pt", kind="siamese")
    assert last["epoch"] == 1 and {"optimizer", "rng"} <= set(last)
    assert best["epoch"] == last["best"]["epoch"]
    assert best["metrics"]["val_loss"] == pytest.approx(min(r["val_loss"] for r in rows))
    assert last["config"]["model"]["init_features"] == 4
    assert (pretrain_run / "config.yaml").is_file() and (pretrain_run / "history.png").stat().st_size > 0
    info = json.loads((pretrain_run / "run.json").read_text())
    assert info["kind"] == "pretrain" and info["method"] == "side" and info["status"] == "finished"


def test_proxy_cases_are_training_cases_only(pretrain_run: Path, tiny_cache: Path, tiny_cfg) -> None:
    """Pretraining validates (and picks best.pt) on a held-out part of the TRAINING cases; the
    segmentation validation cases are never read, and the checkpoint records what it touched."""
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.tasks.side import SideTask

    task = SideTask(tiny_cache)
    task.setup(tiny_cfg, None, None, init_distributed("cpu"))
    split, proxy = task.split, task.proxy
    assert set(proxy.train) | set(proxy.val) == set(split.train)
    assert not set(proxy.train) & set(proxy.val) and len(proxy.val) == 2
    pairs = task.val_pairs
    cases = {i.split(":")[0] for k in range(len(pairs)) for i in pairs[k]["ids"]}
    assert cases and cases <= set(proxy.val)
    assert tuple(pairs[0]["a"].shape) == (1, *tiny_cfg.pretrain.crop_size)
    for name in ("best.pt", "last.pt"):
        touched = set(load_checkpoint(pretrain_run / name)["touched_cases"])
        assert touched == set(split.train) and not touched & split.held_out
    info = json.loads((pretrain_run / "run.json").read_text())
    assert info["proxy_val_cases"] == list(proxy.val) and info["proxy_input"] == "region"


def test_pretrain_refuses_a_cache_of_another_config(tiny_cache: Path, tiny_cfg, tmp_path: Path) -> None:
    import dataclasses

    from kidneyssl.errors import KidneySSLError
    from kidneyssl.training.pretrain import pretrain_siamese

    other = dataclasses.replace(tiny_cfg, preprocess=dataclasses.replace(tiny_cfg.preprocess,
                                                                         spacing_mm=(6.0, 3.0, 3.0)))
    with pytest.raises(KidneySSLError):
        pretrain_siamese(tiny_cache, tmp_path / "run", other, device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()
