"""The dense encoder shared by the siamese network and the segmentation network (paper, 3.1).

Input conv, then 4 dense blocks of ``cfg.block_layers`` (paper: 2, 2, 4, 8) densely connected
layers, each followed by a :class:`~kidneyssl.models.blocks.Transition` (stride-2 conv + 1x1x1
conv that reduces the channels by ``compression``).

Channel counts for the paper config (init 16, growth 16, compression 0.5, rounded up to a
multiple of 8): skips at full, 1/2, 1/4, 1/8 resolution have 48, 56, 96, 176 channels, the 1/16
bottleneck 88.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.blocks import DenseBlock, NormActConv, Transition

__all__ = ["DenseEncoder", "check_spatial_size", "init_weights"]


def check_spatial_size(shape: Sequence[int], multiple: int, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``shape`` is (B, in_channels, Z, Y, X) with Z, Y, X multiples
    of ``multiple`` (the paper zero-pads every axis to a multiple of 16)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"expected a 5-D input (B, C, Z, Y, X), got shape {shape}")
    if shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} input channel(s), got shape {shape}")
    bad = [s for s in shape[2:] if s < multiple or s % multiple]
    if bad:
        raise ValueError(
            f"spatial size {shape[2:]} must be a positive multiple of {multiple} on every axis "
            f"(the encoder downsamples {int(math.log2(multiple))} times); zero-pad the input first"
        )


def _round_up(value: float, multiple: int = 8) -> int:
    return int(math.ceil(value / multiple) * multiple)


class DenseEncoder(nn.Module):
    """Dense encoder: (B, in_channels, Z, Y, X) -> list of 5 feature maps.

    ``forward(x)`` returns ``[skip_1, skip_1/2, skip_1/4, skip_1/8, bottleneck_1/16]``: the
    outputs of the 4 dense blocks (before their transitions) at full, 1/2, 1/4 and 1/8 resolution,
    and the last transition's output at 1/16 resolution. ``skip_channels`` and
    ``bottleneck_channels`` give their channel counts.

    Args:
        cfg: ``init_features`` (input conv channels), ``growth_rate``, ``block_layers``,
            ``norm_groups``, ``in_channels``, ``gradient_checkpointing`` are used.
        compression: fraction of channels a transition keeps (DenseNet-BC's 0.5), rounded up to
            a multiple of 8 (friendlier to oneDNN/cuDNN kernels).

    Raises:
        ValueError: in ``forward``, if the input is not 5-D with ``in_channels`` channels and
            sizes that are multiples of 16.
    """

    def __init__(self, cfg: ModelConfig, compression: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        self.in_channels = cfg.in_channels
        self.downsampling = 2 ** len(cfg.block_layers)
        # GroupNorm(1, C_in) before the input conv: "GroupNorm before every conv"; on the single CT
        # channel it is a per-sample standardisation with a learnt scale and shift, no ReLU.
        self.stem = NormActConv(cfg.in_channels, cfg.init_features, 3, 1, cfg.norm_groups, activation=False)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        skips: list[int] = []
        channels = cfg.init_features
        for num_layers in cfg.block_layers:
            block = DenseBlock(channels, num_layers, cfg.growth_rate, cfg.norm_groups,
                               cfg.gradient_checkpointing)
            skips.append(block.out_channels)
            reduced = _round_up(block.out_channels * compression)
            self.blocks.append(block)
            self.transitions.append(Transition(block.out_channels, reduced, cfg.norm_groups))
            channels = reduced
        self.skip_channels: tuple[int, ...] = tuple(skips)
        self.bottleneck_channels: int = channels
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_spatial_size(x.shape, self.downsampling, self.in_channels)
        features: list[Tensor] = []
        x = self.stem(x)
        for block, transition in zip(self.blocks, self.transitions):
            x = block(x)
            features.append(x)
            x = transition(x)
        features.append(x)
        return features


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convs, unit/zero GroupNorm, as DenseNet/timm do."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
