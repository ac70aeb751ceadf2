"""Networks of the paper: the dense encoder, the siamese proxy-task network, the dense U-Net with
a reconstruction branch, and encoder transfer between them."""

from __future__ import annotations

from torch import nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.encoder import DenseEncoder, check_spatial_size
from kidneyssl.models.siamese import SiameseNet
from kidneyssl.models.transfer import TransferReport, load_encoder
from kidneyssl.models.unet import DenseUNet3D, SegmentationOutput, default_decoder_channels

__all__ = [
    "DenseEncoder",
    "DenseUNet3D",
    "SegmentationOutput",
    "SiameseNet",
    "TransferReport",
    "build_segmentation_model",
    "build_siamese_model",
    "check_spatial_size",
    "count_parameters",
    "default_decoder_channels",
    "load_encoder",
]


def build_segmentation_model(cfg: ModelConfig, *, reconstruction: bool | None = None) -> DenseUNet3D:
    """The segmentation network for ``cfg``.

    Args:
        reconstruction: override ``cfg.reconstruction``; trainers pass
            ``cfg.model.reconstruction and cfg.train.recon_weight > 0`` so that a branch whose
            loss weight is 0 is never built (DDP rejects parameters without gradients).
    """
    return DenseUNet3D(cfg, reconstruction=reconstruction)


def build_siamese_model(cfg: ModelConfig) -> SiameseNet:
    """The siamese proxy-task network for ``cfg``."""
    return SiameseNet(cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
