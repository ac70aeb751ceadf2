"""Self-describing checkpoints: round trip, wrapper prefixes, clear errors."""

from __future__ import annotations

import pytest
import torch

from kidneyssl import __version__
from kidneyssl.config import ExperimentConfig, config_to_dict
from kidneyssl.errors import CheckpointError
from kidneyssl.io.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    save_checkpoint,
    strip_wrapper_prefixes,
)


def test_round_trip_strips_ddp_and_compile_prefixes(tmp_path):
    state = {"module._orig_mod.encoder.w": torch.ones(2), "head.b": torch.zeros(1)}
    path = tmp_path / "c.pt"
    save_checkpoint(path, kind="segmentation", config=config_to_dict(ExperimentConfig()), model_state=state,
                    epoch=3)
    ckpt = load_checkpoint(path, kind="segmentation")
    assert ckpt["format_version"] == CHECKPOINT_FORMAT
    assert ckpt["kidneyssl_version"] == __version__
    assert ckpt["epoch"] == 3
    assert set(ckpt["model_state"]) == {"encoder.w", "head.b"}
    assert strip_wrapper_prefixes({"module.a": 1}) == {"a": 1}


def test_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(CheckpointError, match="not a kidneyssl checkpoint"):
        load_checkpoint(other)
    siam = tmp_path / "s.pt"
    save_checkpoint(siam, kind="pretrain", config={}, model_state={})
    with pytest.raises(CheckpointError, match="expected a segmentation checkpoint"):
        load_checkpoint(siam, kind="segmentation")
    old = tmp_path / "old.pt"
    torch.save({"format_version": 0, "model_state": {}, "kidneyssl_version": "0.0.1"}, old)
    with pytest.raises(CheckpointError, match="format 0"):
        load_checkpoint(old)
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", kind="other", config={}, model_state={})
