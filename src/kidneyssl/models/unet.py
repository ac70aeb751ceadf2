"""The segmentation network of the paper (section 3.1, Fig. 3): the dense encoder, a smaller
decoder of plain blocks with transpose-conv upsampling and U-Net skips, and a reconstruction
branch (decoder-like, no skips) that regularises training as an autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.blocks import Conv3d, NormActConv, UpBlock
from kidneyssl.models.cpu_forward import cpu_inference_forward
from kidneyssl.models.encoder import DenseEncoder, init_weights
from kidneyssl.models.registry import Architecture

__all__ = ["SegmentationOutput", "DenseUNet3D", "default_decoder_channels", "ARCHITECTURE"]


@dataclass(frozen=True)
class SegmentationOutput:
    """What :class:`DenseUNet3D` returns.

    Attributes:
        logits: (B, out_channels, Z, Y, X) segmentation logits (apply a sigmoid for probabilities).
        reconstruction: (B, in_channels, Z, Y, X) reconstructed image in the input's (z-scored)
            intensity units, or ``None`` in eval mode or when the branch is not built.
    """

    logits: Tensor
    reconstruction: Tensor | None = None


def default_decoder_channels(init_features: int, levels: int = 4) -> tuple[int, ...]:
    """Decoder widths at full, 1/2, 1/4, 1/8 (...) resolution: (f, f, 2f, 4f) for
    ``f = init_features`` and the paper's 4 levels (each further level doubles).

    The paper's decoder is "smaller" than the encoder; full resolution dominates the cost
    (a 128x256x128 half volume has 4.2 M voxels), so the two finest levels share the narrowest
    width. Paper config: (16, 16, 32, 64).
    """
    f = init_features
    return tuple([f] + [f * 2 ** i for i in range(levels - 1)])[:levels]


class _Decoder(nn.Module):
    """Up-path from the bottleneck to full resolution, with or without skips, and a 1x1x1 head."""

    def __init__(self, bottleneck_channels: int, skip_channels: Sequence[int], widths: Sequence[int],
                 out_channels: int, norm_groups: int, use_skips: bool) -> None:
        super().__init__()
        self.use_skips = use_skips
        ups = []
        channels = bottleneck_channels
        for level in reversed(range(len(widths))):
            skip = skip_channels[level] if use_skips else 0
            ups.append(UpBlock(channels, skip, widths[level], norm_groups))
            channels = widths[level]
        self.ups = nn.ModuleList(ups)
        self.head = NormActConv(channels, out_channels, 1, 1, norm_groups)
        # A head with a bias: logits/intensities need an offset.
        self.head[-1] = Conv3d(channels, out_channels, 1, bias=True)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits from the encoder's features (CPU inference frees them level by level in
        :mod:`~kidneyssl.models.cpu_forward` instead)."""
        skips = list(features)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop() if self.use_skips else None)
        return self.head(x)


class DenseUNet3D(nn.Module):
    """Dense-encoder U-Net with a training-time reconstruction branch.

    ``forward(x)`` with x (B, in_channels, Z, Y, X), Z, Y, X multiples of 16, returns
    :class:`SegmentationOutput`; the reconstruction is computed only when ``self.training`` and the
    branch exists. ``encode(x)`` gives the encoder's feature list, ``decode(features)`` the logits,
    ``reconstruct(features)`` the image from the bottleneck alone.

    Args:
        cfg: the :class:`~kidneyssl.config.ModelConfig`; ``cfg.reconstruction`` decides whether the
            reconstruction branch is built (do not build it when its loss weight is 0: DDP
            rejects parameters that never get a gradient).
        decoder_channels: decoder widths at full, 1/2, 1/4, 1/8 resolution
            (default :func:`default_decoder_channels`); the reconstruction branch uses the same.
        reconstruction: override ``cfg.reconstruction`` (e.g. ``cfg.reconstruction and
            train.recon_weight > 0``).
    """

    def __init__(self, cfg: ModelConfig, decoder_channels: Sequence[int] | None = None,
                 reconstruction: bool | None = None) -> None:
        super().__init__()
        widths = tuple(decoder_channels or default_decoder_channels(cfg.init_features, len(cfg.block_layers)))
        if len(widths) != len(cfg.block_layers) or any(w < 1 for w in widths):
            raise ValueError(f"decoder_channels must be {len(cfg.block_layers)} positive ints, got {widths}")
        self.cfg = cfg
        self.decoder_channels = widths
        self.encoder = DenseEncoder(cfg)
        enc = self.encoder
        self.decoder = _Decoder(enc.bottleneck_channels, enc.skip_channels, widths, cfg.out_channels,
                                cfg.norm_groups, use_skips=True)
        build_recon = cfg.reconstruction if reconstruction is None else reconstruction
        self.reconstruction: _Decoder | None = None
        if build_recon:
            self.reconstruction = _Decoder(enc.bottleneck_channels, enc.skip_channels, widths,
                                           cfg.in_channels, cfg.norm_groups, use_skips=False)
        init_weights(self.decoder)
        if self.reconstruction is not None:
            init_weights(self.reconstruction)

    # -- the facts of the network interface (kidneyssl.models.registry.SegmentationNetwork) --
    @property
    def size_multiple(self) -> int:
        """Every spatial input size must be a multiple of this (2 ** number of dense blocks)."""
        return self.encoder.downsampling

    @property
    def bottleneck_channels(self) -> int:
        return self.encoder.bottleneck_channels

    #: The segmentation decoder without its output layer, and the output layer.
    decoder_prefixes = ("decoder.ups.",)
    output_prefixes = ("decoder.head.",)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features: 4 skips (full..1/8 resolution) and the 1/16 bottleneck."""
        return self.encoder(x)

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """(B, out_channels, Z, Y, X) segmentation logits from :meth:`encode`'s features."""
        return self.decoder(features)

    def reconstruct(self, features: Sequence[Tensor]) -> Tensor:
        """(B, in_channels, Z, Y, X) image reconstructed from the bottleneck (no skips)."""
        if self.reconstruction is None:
            raise RuntimeError("this model was built without a reconstruction branch")
        return self.reconstruction(features[-1:])

    def forward(self, x: Tensor) -> SegmentationOutput:
        """Logits (and, in training with the branch built, the reconstruction) through the
        modules: the one forward pass for training, export and any device. CPU inference calls
        :meth:`inference_forward` instead."""
        with_recon = self.training and self.reconstruction is not None
        features = self.encode(x)
        logits = self.decode(features)
        recon = self.reconstruct(features) if with_recon else None
        return SegmentationOutput(logits, recon)

    def inference_forward(self, x: Tensor) -> Tensor:
        """(B, out_channels, Z, Y, X) segmentation logits for inference (autograd off).

        On the CPU this is :func:`~kidneyssl.models.cpu_forward.cpu_inference_forward`: the same
        function as :meth:`forward`'s logits computed with fewer passes over memory (no
        concatenations, one GroupNorm+ReLU write per feature map). Elsewhere, or with autograd
        on, it is :meth:`forward`'s module path.
        """
        if _cpu_inference(x):
            return cpu_inference_forward(self, x)
        return self.decode(self.encode(x))


def _cpu_inference(x: Tensor) -> bool:
    """Autograd off (``no_grad``/``inference_mode``) and a 5-D input on the CPU."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 5


def _dense_unet_args(cfg: ModelConfig) -> dict[str, Any]:
    """The constructor arguments of the paper's network: the dense fields of ``ModelConfig``."""
    from kidneyssl.config import config_to_dict

    args = config_to_dict(cfg)
    args.pop("architecture", None)
    return args


def _build_dense_unet(args: Mapping[str, Any], *, out_channels: int | None = None,
                      reconstruction: bool = False) -> DenseUNet3D:
    from kidneyssl.config import config_from_dict

    fields = {**args, "architecture": "dense-unet"}
    if out_channels is not None:
        fields["out_channels"] = int(out_channels)
    cfg = config_from_dict(ModelConfig, fields)
    return DenseUNet3D(cfg, reconstruction=reconstruction and cfg.reconstruction)


#: The registry entry (``kidneyssl.models.registry``).
ARCHITECTURE = Architecture(
    name="dense-unet", resolve_args=_dense_unet_args, build=_build_dense_unet,
    description="the paper's dense-encoder U-Net (dense blocks 2-2-4-8, GroupNorm, reconstruction branch)")
