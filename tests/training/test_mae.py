"""MAE (``--method mae``): the patch mask covers the configured ratio in whole patches, masked
voxels are zero, the loss counts masked voxels only, and the loss falls on a tiny volume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kidneyssl.config import ConfigError, apply_overrides
from kidneyssl.data.subvolumes import CropIntensity
from kidneyssl.training.tasks.mae import MAETask, MaskCorruption, patch_mask
from kidneyssl.training.tasks.restoration import restoration_loss

from .conftest import RESTORATION_OVERRIDES, restoration_losses

UNIT = CropIntensity(0.0, 1.0, (-80.0, 300.0))


@pytest.mark.parametrize("ratio", [0.1, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("patch", [(8, 8, 8), (4, 8, 16)])
def test_the_mask_covers_the_ratio_in_whole_patches(ratio: float, patch: tuple[int, int, int]) -> None:
    shape = (16, 32, 32)
    mask = patch_mask(shape, patch, ratio, np.random.default_rng(3))
    n = int(np.prod([s // p for s, p in zip(shape, patch)]))
    assert mask.shape == shape and mask.dtype == bool
    assert abs(mask.mean() - ratio) <= 0.5 / n + 1e-12  # the nearest whole number of patches
    blocks = mask.reshape(shape[0] // patch[0], patch[0], shape[1] // patch[1], patch[1], shape[2] // patch[2],
                          patch[2])
    per_patch = blocks.mean(axis=(1, 3, 5))
    assert set(np.unique(per_patch)) <= {0.0, 1.0}  # every patch is masked whole or not at all


def test_the_mask_is_a_function_of_the_generator() -> None:
    a = patch_mask((16, 32, 32), (8, 8, 8), 0.75, np.random.default_rng(7))
    b = patch_mask((16, 32, 32), (8, 8, 8), 0.75, np.random.default_rng(7))
    c = patch_mask((16, 32, 32), (8, 8, 8), 0.75, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_masked_voxels_are_zero_and_only_they_are_weighted() -> None:
    crop = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32) + 3.0
    image, target, weight = MaskCorruption((8, 8, 8), 0.6)(crop, np.random.default_rng(1), UNIT)
    masked = weight > 0
    assert np.all(image[masked] == 0.0) and np.array_equal(image[~masked], crop[~masked])
    assert np.array_equal(target, crop) and set(np.unique(weight)) == {0.0, 1.0}
    assert abs(masked.mean() - 0.6) <= 0.5 / 32


def test_the_loss_ignores_unmasked_voxels() -> None:
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.normal(size=(2, 1, 16, 32, 32)).astype(np.float32))
    weight = torch.from_numpy(np.stack([patch_mask((16, 32, 32), (8, 8, 8), 0.75, rng)[None]
                                        for _ in range(2)]).astype(np.float32))
    prediction = (target + 0.5 * torch.randn_like(target)).requires_grad_(True)
    loss = restoration_loss(prediction, target, weight)
    expected = ((prediction - target) ** 2)[weight > 0].mean()
    assert torch.allclose(loss, expected)
    changed = prediction.detach() + 100.0 * (1 - weight) * torch.randn_like(target)  # unmasked voxels only
    assert torch.allclose(restoration_loss(changed, target, weight), loss)
    loss.backward()
    assert prediction.grad is not None and torch.all(prediction.grad[weight == 0] == 0)


def test_settings_are_validated_with_the_method_section(tiny_cfg) -> None:
    task = MAETask()
    cfg = apply_overrides(tiny_cfg, RESTORATION_OVERRIDES)
    assert task.method_settings(cfg).mask_ratio == 0.75  # nnssl's default
    for bad, needle in (("methods.mae.mask_ratio=1.5", "mask_ratio"), ("methods.mae.patch_size=[5,8,8]", "divide"),
                        ("methods.mae.masking=3", "unknown key")):
        with pytest.raises(ConfigError, match=needle) as err:
            task.method_settings(apply_overrides(cfg, [bad]))
        assert "methods.mae" in str(err.value)
    odd = apply_overrides(cfg, ["methods.mae.crop_size=[24,32,32]", "methods.mae.patch_size=[8,8,8]"])
    with pytest.raises(ConfigError, match="multiples of 16"):
        task.check_settings(task.method_settings(odd), 16)


def test_the_mae_loss_falls_on_a_tiny_volume(tiny_cfg, tiny_cache) -> None:
    cfg = apply_overrides(tiny_cfg, RESTORATION_OVERRIDES)
    losses = restoration_losses("mae", cfg, tiny_cache)
    assert losses[-1] < 0.8 * losses[0], losses


def test_with_epochs_changes_the_method_section_only(tiny_cfg) -> None:
    cfg = apply_overrides(tiny_cfg, RESTORATION_OVERRIDES)
    longer = MAETask().with_epochs(cfg, 9)
    assert longer.methods["mae"]["epochs"] == 9 and cfg.methods["mae"]["epochs"] == 2
    assert dataclasses.replace(longer, methods=cfg.methods) == cfg


def test_the_paper_preset_holds_the_defaults() -> None:
    from kidneyssl.config import load_preset
    from kidneyssl.training.tasks.mae import MAEConfig

    assert MAETask().method_settings(load_preset("paper")) == MAEConfig()
    demo = MAETask().method_settings(load_preset("demo"))
    MAETask().check_settings(demo, 16)  # the demo's crop fits the network
