"""Encoder transfer from the siamese network into the segmentation network."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from kidneyssl.config import ModelConfig
from kidneyssl.errors import CheckpointError
from kidneyssl.models import DenseUNet3D, SiameseNet, TransferReport, load_encoder


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def test_encoder_weights_transfer_exactly_and_nothing_else(demo_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    siamese = SiameseNet(demo_cfg)
    torch.manual_seed(1)
    seg = DenseUNet3D(demo_cfg)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    # as saved by a DDP + torch.compile run
    report = load_encoder(seg, _prefixed(siamese.state_dict(), "module._orig_mod."))
    assert isinstance(report, TransferReport)
    assert set(report.loaded) == set(siamese.encoder.state_dict())
    assert report.missing == () and report.unexpected == ()
    for key, value in siamese.encoder.state_dict().items():
        assert torch.equal(seg.encoder.state_dict()[key], value), key
    seg_state = seg.state_dict()
    sia_enc = siamese.encoder.state_dict()
    for key, value in seg_state.items():
        if key.startswith("encoder."):
            continue
        assert key.startswith(("decoder.", "reconstruction.")), key
        assert torch.equal(value, before[key]), f"{key} changed by the transfer"
    # decoder and reconstruction keep their fresh initialisation: differ from any siamese tensor
    # of the same shape (e.g. decoder convs vs encoder convs)
    conv_keys = [k for k in seg_state if k.endswith(".weight") and seg_state[k].dim() == 5
                 and not k.startswith("encoder.")]
    assert conv_keys
    for key in conv_keys:
        for other in sia_enc.values():
            if other.shape == seg_state[key].shape:
                assert not torch.equal(other, seg_state[key]), key
    # the encoders really differed before the transfer
    assert not all(torch.equal(before["encoder." + k], v) for k, v in sia_enc.items())


def test_transfer_from_checkpoint_dict_and_file(demo_cfg: ModelConfig, tmp_path) -> None:
    from kidneyssl.config import ExperimentConfig, config_to_dict
    from kidneyssl.io.checkpoint import save_checkpoint

    siamese = SiameseNet(demo_cfg)
    path = tmp_path / "siamese.pt"
    save_checkpoint(path, kind="pretrain", config=config_to_dict(ExperimentConfig()),
                    model_state=siamese.state_dict())
    for source in (path, {"model_state": siamese.state_dict(), "format_version": 1}):
        seg = DenseUNet3D(demo_cfg)
        report = load_encoder(seg, source)
        assert len(report.loaded) == len(siamese.encoder.state_dict())
        key = "stem.1.weight"
        assert torch.equal(seg.encoder.state_dict()[key], siamese.encoder.state_dict()[key])


def test_shape_mismatch_names_the_key(demo_cfg: ModelConfig) -> None:
    other = dataclasses.replace(demo_cfg, growth_rate=demo_cfg.growth_rate * 2)
    with pytest.raises(CheckpointError, match=r"shape mismatch: encoder\.\S+ \(checkpoint \(16, 8, 3, 3, 3\) vs model \(8, 8, 3, 3, 3\)\)"):
        load_encoder(DenseUNet3D(demo_cfg), SiameseNet(other).state_dict())


def test_nothing_matched_raises(demo_cfg: ModelConfig) -> None:
    seg = DenseUNet3D(demo_cfg)
    with pytest.raises(CheckpointError, match="no encoder weights"):
        load_encoder(seg, {"projection.0.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="no encoder weights"):
        load_encoder(seg, _prefixed(SiameseNet(demo_cfg).encoder.state_dict(), "backbone."))


def test_partial_state_reports_missing_and_unexpected(demo_cfg: ModelConfig, caplog) -> None:
    seg = DenseUNet3D(demo_cfg)
    state = SiameseNet(demo_cfg).state_dict()
    state.pop("encoder.stem.1.weight")
    state["encoder.extra.weight"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING):
        report = load_encoder(seg, state)
    assert report.missing == ("stem.1.weight",)
    assert report.unexpected == ("extra.weight",)
    assert "1 missing, 1 unexpected" in caplog.text
