"""Segmentation losses of the paper (section 2 and 3.1): weighted BCE + soft Dice (Milletari et
al. 2016, V-Net) with a linear weight schedule, and the reconstruction MSE.

All losses take logits (the model never applies a sigmoid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kidneyssl.config import SegTrainConfig

if TYPE_CHECKING:
    from kidneyssl.models.unet import SegmentationOutput

__all__ = ["SoftDiceLoss", "BCEDiceLoss", "bce_dice_weights", "segmentation_loss"]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.dim() < 2:
        raise ValueError(f"expected (B, C, ...) tensors, got shape {tuple(pred.shape)}")


class SoftDiceLoss(nn.Module):
    """Milletari's soft Dice loss, per sample, averaged over the batch:

        1 - (2 * sum(p * g) + smooth) / (sum(p^2) + sum(g^2) + smooth)

    with sums over all channels and voxels of one sample.

    Args:
        smooth: added to numerator and denominator (an empty target and empty prediction give 0).
        sigmoid: apply a sigmoid to the input (pass logits); ``False`` to pass probabilities.

    Shapes: ``forward(pred (B, C, Z, Y, X), target same shape, values in [0, 1])`` -> scalar.
    (MONAI's ``DiceLoss(squared_pred=True)`` is the same up to where ``smooth`` goes; this one is
    a few lines and has no dependency on its reduction options.)
    """

    def __init__(self, smooth: float = 1.0, sigmoid: bool = True) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.sigmoid = sigmoid

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        p = torch.sigmoid(pred) if self.sigmoid else pred
        p = p.flatten(1)
        g = target.to(p.dtype).flatten(1)
        intersection = (p * g).sum(dim=1)
        denominator = p.pow(2).sum(dim=1) + g.pow(2).sum(dim=1)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        return (1.0 - dice).mean()


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE(pos_weight) + dice_weight * SoftDice`` on logits.

    Args:
        pos_weight: weight of the positive (kidney) class in the BCE (paper: "weighted BCE").
        smooth: soft-Dice smoothing.

    ``forward(logits, target, bce_weight, dice_weight)`` returns the weighted scalar;
    :meth:`components` returns the unweighted (bce, dice) pair for logging.
    """

    def __init__(self, pos_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        if pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}")
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)), persistent=False)
        self.dice = SoftDiceLoss(smooth=smooth, sigmoid=True)

    def components(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Unweighted (BCE mean over voxels, soft Dice loss)."""
        _check_pair(logits, target)
        target = target.to(logits.dtype)
        pos_weight = cast(Tensor, self.pos_weight)  # a registered buffer
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight.to(logits.dtype))
        return bce, self.dice(logits, target)

    def forward(self, logits: Tensor, target: Tensor, bce_weight: float, dice_weight: float) -> Tensor:
        bce, dice = self.components(logits, target)
        return bce_weight * bce + dice_weight * dice


def bce_dice_weights(epoch: int, num_epochs: int, cfg: SegTrainConfig) -> tuple[float, float]:
    """(w_bce, w_dice) for a 0-based ``epoch`` of ``num_epochs``.

    ``cfg.bce/dice_weight_start`` at epoch 0, ``cfg.bce/dice_weight_end`` at ``num_epochs - 1``,
    linear in between; w_dice moves by the amount opposite to w_bce, so the sum is constant.
    One epoch gives the start weights.

    Raises:
        ValueError: ``num_epochs < 1`` or ``epoch`` outside ``[0, num_epochs)``.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be in [0, {num_epochs}), got {epoch}")
    t = 0.0 if num_epochs == 1 else epoch / (num_epochs - 1)
    w_bce = cfg.bce_weight_start + t * (cfg.bce_weight_end - cfg.bce_weight_start)
    w_dice = cfg.dice_weight_start - (w_bce - cfg.bce_weight_start)
    return w_bce, w_dice


def segmentation_loss(output: SegmentationOutput, image: Tensor, target: Tensor, epoch: int, num_epochs: int,
                      cfg: SegTrainConfig, criterion: BCEDiceLoss | None = None) -> dict[str, Tensor]:
    """The paper's training loss for one batch.

    Args:
        output: the model's :class:`~kidneyssl.models.unet.SegmentationOutput`.
        image: (B, C, Z, Y, X) input image (the reconstruction target).
        target: (B, 1, Z, Y, X) binary kidney mask.
        epoch, num_epochs: for :func:`bce_dice_weights`.
        cfg: ``pos_weight``, the weight schedule and ``recon_weight``.
        criterion: a reusable :class:`BCEDiceLoss` (default: built from ``cfg.pos_weight``).

    Returns:
        dict of 0-dim tensors: ``total`` (to backpropagate), ``bce``, ``dice``, ``recon``
        (``recon`` is 0 when there is no reconstruction output, e.g. in eval mode).
    """
    if criterion is None:
        if isinstance(cfg.pos_weight, str):
            raise ValueError("pos_weight 'auto' must be resolved from the training data first "
                             "(kidneyssl.training.finetune.resolve_pos_weight); pass a criterion")
        criterion = BCEDiceLoss(cfg.pos_weight).to(output.logits.device)
    w_bce, w_dice = bce_dice_weights(epoch, num_epochs, cfg)
    bce, dice = criterion.components(output.logits, target)
    total = w_bce * bce + w_dice * dice
    if output.reconstruction is not None:
        if output.reconstruction.shape != image.shape:
            raise ValueError(f"reconstruction {tuple(output.reconstruction.shape)} and image "
                             f"{tuple(image.shape)} differ in shape")
        recon = F.mse_loss(output.reconstruction, image.to(output.reconstruction.dtype))
        total = total + cfg.recon_weight * recon
    else:
        recon = torch.zeros((), dtype=total.dtype, device=total.device)
    return {"total": total, "bce": bce.detach(), "dice": dice.detach(), "recon": recon.detach()}
