"""Soft Dice, weighted BCE + Dice, the weight schedule and the full segmentation loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kidneyssl.config import SegTrainConfig
from kidneyssl.losses import BCEDiceLoss, SoftDiceLoss, bce_dice_weights, segmentation_loss
from kidneyssl.models import SegmentationOutput


def test_soft_dice_hand_values() -> None:
    p = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    g = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    loss = SoftDiceLoss(smooth=0.0, sigmoid=False)
    # 1 - 2*1 / (2 + 1)
    assert float(loss(p, g)) == pytest.approx(1 - 2 / 3)
    assert float(loss(g, g)) == pytest.approx(0.0)
    # squared probabilities in the denominator (Milletari): p = 0.5 everywhere, g one voxel
    half = torch.full((1, 1, 4), 0.5)
    assert float(loss(half, g)) == pytest.approx(1 - 2 * 0.5 / (4 * 0.25 + 1))
    # smoothing: both empty -> loss 0
    assert float(SoftDiceLoss(smooth=1.0, sigmoid=False)(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))) == 0.0


def test_soft_dice_is_per_sample_mean() -> None:
    p = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    g = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    assert float(SoftDiceLoss(smooth=0.0, sigmoid=False)(p, g)) == pytest.approx((1 / 3 + 0) / 2)


def test_soft_dice_from_logits_and_gradcheck() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 3, 3, 2, dtype=torch.double, requires_grad=True)
    target = (torch.rand(2, 1, 3, 3, 2) > 0.5).double()
    loss = SoftDiceLoss()
    assert torch.allclose(loss(logits, target), SoftDiceLoss(sigmoid=False)(torch.sigmoid(logits), target))
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))
    probs = torch.rand(2, 1, 3, 3, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: SoftDiceLoss(sigmoid=False)(x, target), (probs,))


def test_bce_dice_loss_combines_weighted_terms() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 4, 4, 4)
    target = (torch.rand(1, 1, 4, 4, 4) > 0.7).float()
    crit = BCEDiceLoss(pos_weight=3.0)
    bce, dice = crit.components(logits, target)
    expected_bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))
    # by hand: -(3 g log s + (1 - g) log(1 - s))
    s = torch.sigmoid(logits)
    by_hand = -(3 * target * torch.log(s) + (1 - target) * torch.log(1 - s)).mean()
    assert torch.allclose(bce, expected_bce) and torch.allclose(bce, by_hand, atol=1e-6)
    assert torch.allclose(dice, SoftDiceLoss()(logits, target))
    assert torch.allclose(crit(logits, target, 0.6, 0.4), 0.6 * bce + 0.4 * dice)


def test_shape_mismatch_and_bad_options() -> None:
    with pytest.raises(ValueError, match="same shape"):
        BCEDiceLoss()(torch.zeros(1, 1, 4), torch.zeros(1, 1, 5), 0.5, 0.5)
    with pytest.raises(ValueError):
        BCEDiceLoss(pos_weight=0.0)
    with pytest.raises(ValueError):
        SoftDiceLoss(smooth=-1.0)


def test_weight_schedule() -> None:
    cfg = SegTrainConfig()  # 0.6/0.4 -> 0.1/0.9
    assert bce_dice_weights(0, 200, cfg) == pytest.approx((0.6, 0.4))
    assert bce_dice_weights(199, 200, cfg) == pytest.approx((0.1, 0.9))
    assert bce_dice_weights(2, 5, cfg) == pytest.approx((0.35, 0.65))
    weights = [bce_dice_weights(e, 11, cfg) for e in range(11)]
    steps = [weights[i + 1][0] - weights[i][0] for i in range(10)]
    assert all(s == pytest.approx(-0.05) for s in steps)  # linear
    assert all(w_b + w_d == pytest.approx(1.0) for w_b, w_d in weights)  # equal and opposite
    assert bce_dice_weights(0, 1, cfg) == pytest.approx((0.6, 0.4))
    custom = dataclasses.replace(cfg, bce_weight_end=0.3, dice_weight_end=0.7)
    assert bce_dice_weights(3, 4, custom) == pytest.approx((0.3, 0.7))
    for epoch, n in [(-1, 5), (5, 5), (0, 0)]:
        with pytest.raises(ValueError):
            bce_dice_weights(epoch, n, cfg)


def test_segmentation_loss_dict() -> None:
    torch.manual_seed(0)
    cfg = SegTrainConfig(recon_weight=0.5, pos_weight=2.0)
    image = torch.randn(1, 1, 4, 4, 4)
    target = (torch.rand(1, 1, 4, 4, 4) > 0.5).float()
    logits = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    recon = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    out = segmentation_loss(SegmentationOutput(logits, recon), image, target, 0, 3, cfg)
    bce, dice = BCEDiceLoss(2.0).components(logits, target)
    mse = F.mse_loss(recon, image)
    assert set(out) == {"total", "bce", "dice", "recon"}
    assert torch.allclose(out["total"], 0.6 * bce + 0.4 * dice + 0.5 * mse)
    assert torch.allclose(out["recon"], mse)
    out["total"].backward()
    assert recon.grad is not None and logits.grad is not None
    # eval output: no reconstruction term
    out = segmentation_loss(SegmentationOutput(logits.detach()), image, target, 2, 3, cfg)
    assert float(out["recon"]) == 0.0
    assert torch.allclose(out["total"], 0.1 * bce + 0.9 * dice)


def test_unresolved_auto_pos_weight_is_refused() -> None:
    """``auto`` is computed from the training data by the trainer; the loss will not guess it."""
    cfg = SegTrainConfig()
    assert cfg.pos_weight == "auto"
    x = torch.randn(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="auto"):
        segmentation_loss(SegmentationOutput(x), x, (x > 0).float(), 0, 3, cfg)
