"""The one strategy decision: halves when they fit the memory budget, else a sliding window grown
within the budget; quiet per volume."""

from __future__ import annotations

import logging
import math

import pytest

from kidneyssl.config import InferenceConfig
from kidneyssl.inference.device import PAPER_BYTES_PER_VOXEL
from kidneyssl.inference.sliding_window import infer_volume
from kidneyssl.inference.strategy import choose_strategy, plan_inference


def test_auto_picks_sliding_when_halves_exceed_budget(box_predictor, blob_image):
    # half = 32*48*48 voxels; at 660 B/voxel that is ~46 MB
    small = InferenceConfig(memory_budget_mb=10, sw_roi_size=(16, 32, 32), half_context_mm=0.0)
    big = InferenceConfig(memory_budget_mb=100, half_context_mm=0.0)
    assert choose_strategy(blob_image.shape, 32, small, 1.0, PAPER_BYTES_PER_VOXEL) == "sliding"
    assert choose_strategy(blob_image.shape, 32, big, 1.0, PAPER_BYTES_PER_VOXEL) == "halves"
    infer_volume(box_predictor, blob_image, small, split_x=32, spacing_mm=(1, 1, 1))
    assert set(s[2:] for s in box_predictor.shapes) == {(16, 32, 32)}


def test_auto_budget_picks_halves_when_available_memory_allows_else_sliding(box_predictor, blob_image,
                                                                              monkeypatch):
    import kidneyssl.inference.device as device

    cfg = InferenceConfig(sw_roi_size=(16, 32, 32), half_context_mm=0.0)  # memory_budget_mb=0: auto
    half_mb = 32 * 48 * 32 * PAPER_BYTES_PER_VOXEL / 2**20  # the larger half, ~54 MB
    monkeypatch.setattr(device, "available_memory_mb", lambda device="cpu": 10 * half_mb)
    assert device.resolve_memory_budget_mb(cfg) == int(10 * half_mb * device.AVAILABLE_MEMORY_SHARE)
    assert choose_strategy(blob_image.shape, 32, cfg, 1.0, PAPER_BYTES_PER_VOXEL) == "halves"
    plan = plan_inference(blob_image.shape, 32, cfg, 1.0, precision="fp32")
    assert (plan.strategy, plan.precision, plan.roi_size) == ("halves", "fp32", None)

    monkeypatch.setattr(device, "available_memory_mb", lambda device="cpu": half_mb)  # budget 0.6 half
    assert choose_strategy(blob_image.shape, 32, cfg, 1.0, PAPER_BYTES_PER_VOXEL) == "sliding"
    plan = plan_inference(blob_image.shape, 32, cfg, 1.0, precision="fp32")
    assert plan.strategy == "sliding" and plan.roi_size is not None
    assert all(r >= lo for r, lo in zip(plan.roi_size, cfg.sw_roi_size))
    assert math.prod(plan.roi_size) * PAPER_BYTES_PER_VOXEL / 2**20 <= plan.budget_mb
    infer_volume(box_predictor, blob_image, cfg, split_x=32, spacing_mm=(1, 1, 1))
    assert plan.roi_size != cfg.sw_roi_size  # grown towards the half volume
    assert {s[2:] for s in box_predictor.shapes} == {plan.roi_size}

    # an explicit budget wins over the available memory
    fixed = InferenceConfig(memory_budget_mb=100_000, half_context_mm=0.0)
    assert choose_strategy(blob_image.shape, 32, fixed, 1.0, PAPER_BYTES_PER_VOXEL) == "halves"


def test_plan_needs_a_resolved_precision_and_keeps_forced_strategies(blob_image):
    cfg = InferenceConfig(memory_budget_mb=1, sw_roi_size=(16, 32, 32))
    with pytest.raises(ValueError, match="auto"):
        plan_inference(blob_image.shape, 32, cfg, 1.0, precision="auto")  # type: ignore[arg-type]
    assert plan_inference(blob_image.shape, 32, cfg, 1.0, strategy="halves").strategy == "halves"
    forced = plan_inference(blob_image.shape, 32, cfg, 1.0, strategy="sliding")
    assert forced.roi_size == cfg.sw_roi_size


def test_the_per_volume_line_is_debug_only(blob_image, caplog):
    cfg = InferenceConfig(memory_budget_mb=100, half_context_mm=0.0)
    with caplog.at_level(logging.INFO, logger="kidneyssl"):
        choose_strategy(blob_image.shape, 32, cfg, 1.0, PAPER_BYTES_PER_VOXEL)
    assert "half volume" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="kidneyssl"):
        choose_strategy(blob_image.shape, 32, cfg, 1.0, PAPER_BYTES_PER_VOXEL)
    assert "half volume" in caplog.text and ": halves" in caplog.text


@pytest.mark.parametrize(
    "half, budget_mb, expected",
    [
        ((64, 128, 96), 1e9, (64, 128, 96)),  # fits: the whole half volume
        ((64, 128, 96), 0.0, (32, 64, 64)),  # nothing fits: the minimum
        ((16, 32, 32), 0.0, (16, 32, 32)),  # half smaller than the minimum window
        ((64, 128, 96), 64 * 128 * 64 * 1e-6, (48, 112, 96)),  # relatively largest axis first
    ],
)
def test_sliding_window_roi(half, budget_mb, expected):
    from kidneyssl.inference.strategy import sliding_window_roi

    cfg = InferenceConfig(sw_roi_size=(32, 64, 64))
    assert sliding_window_roi(half, cfg, 2**20 * 1e-6, budget_mb) == expected


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"memory_budget_mb": -1},
                                 {"sw_overlap": 1.0}, {"sw_roi_size": (0, 8, 8)}])
def test_inference_config_validates(bad):
    from kidneyssl.config import ConfigError

    with pytest.raises(ConfigError):
        InferenceConfig(**bad)


def test_a_network_trained_on_crops_runs_on_windows_of_its_crop_size(trained_toy_model, make_blob_image, small_cfg):
    """GroupNorm normalises over the whole input, so a network trained on crops is run on windows
    of the crop size (validation, Table 1 and predict alike); asked for halves, it runs on halves."""
    import dataclasses

    from kidneyssl.inference.segment import segment_image

    cfg = dataclasses.replace(small_cfg, model=trained_toy_model.cfg)
    image = make_blob_image(shape=(16, 32, 48), seed=7)
    assert segment_image(trained_toy_model, image, cfg, spacing_mm=(1.0, 1.0, 1.0)).plan.strategy == "halves"
    cropped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, crop_size=(16, 16, 16)))
    plan = segment_image(trained_toy_model, image, cropped, spacing_mm=(1.0, 1.0, 1.0)).plan
    assert (plan.strategy, plan.roi_size) == ("sliding", (16, 16, 16))
    forced = segment_image(trained_toy_model, image, cropped, spacing_mm=(1.0, 1.0, 1.0), strategy="halves")
    assert forced.plan.strategy == "halves" and forced.mask.sum() > 100
