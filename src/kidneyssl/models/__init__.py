"""Networks: the paper's dense encoder and dense U-Net with a reconstruction branch, the siamese
proxy-task network, networks by name (:mod:`kidneyssl.models.registry`), and weight transfer."""

from __future__ import annotations

from torch import nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.encoder import DenseEncoder, check_spatial_size
from kidneyssl.models.registry import (
    ARCHITECTURES,
    NetworkSpec,
    SegmentationNetwork,
    build_network,
    network_spec,
    spec_from_checkpoint,
)
from kidneyssl.models.siamese import SiameseNet
from kidneyssl.models.transfer import TransferReport, load_encoder
from kidneyssl.models.unet import DenseUNet3D, SegmentationOutput, default_decoder_channels

__all__ = [
    "ARCHITECTURES",
    "NetworkSpec",
    "SegmentationNetwork",
    "build_network",
    "network_spec",
    "spec_from_checkpoint",
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


def build_segmentation_model(cfg: ModelConfig, *, reconstruction: bool | None = None) -> nn.Module:
    """The segmentation network of ``cfg`` (its registered ``architecture``).

    Args:
        reconstruction: build the reconstruction branch (default ``cfg.reconstruction``);
            trainers pass ``cfg.model.reconstruction and cfg.train.recon_weight > 0`` so that a
            branch whose loss weight is 0 is never built (DDP rejects parameters without
            gradients). Networks without such a branch ignore it.
    """
    return build_network(network_spec(cfg), reconstruction=cfg.reconstruction if reconstruction is None
                         else reconstruction)


def build_siamese_model(cfg: ModelConfig) -> SiameseNet:
    """The siamese proxy-task network for ``cfg``: its registered network's encoder plus the
    projection head."""
    return SiameseNet(cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
