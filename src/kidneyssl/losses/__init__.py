"""Losses of the paper: contrastive (proxy task), weighted BCE + soft Dice with a linear weight
schedule, reconstruction MSE."""

from kidneyssl.losses.contrastive import ContrastiveLoss, pair_accuracy, pair_distance
from kidneyssl.losses.segmentation import BCEDiceLoss, SoftDiceLoss, bce_dice_weights, segmentation_loss

__all__ = [
    "BCEDiceLoss",
    "ContrastiveLoss",
    "SoftDiceLoss",
    "bce_dice_weights",
    "pair_accuracy",
    "pair_distance",
    "segmentation_loss",
]
