"""Masked image modelling for a CNN U-Net (``--method mae``), as Wald et al., "Revisiting MAE
pre-training for 3D medical image segmentation" (CVPR 2025) and nnssl's ``BaseMAETrainer``.

Each crop is cut into non-overlapping cubes of ``patch_size`` voxels (default 16^3: nnssl's
``block_size``, and exactly one bottleneck voxel of our network, whose size multiple is 16); a
seeded random ``mask_ratio`` of them (rounded to whole patches) is masked. Masked voxels are
replaced by **zero** (nnssl multiplies the input by the 0/1 mask): in our z-scored input, 0 is the
volume's mean windowed intensity, the value preprocessing also pads with, so a masked patch carries
no information about what it hides. The segmentation network (output channels = image channels)
reconstructs the whole crop and the loss is the **mean squared error over the masked voxels only**
(nnssl's ``MAEMSELoss``: unmasked voxels have weight 0, so what the network predicts there changes
neither the loss nor its gradient).

Target normalisation: the target is the crop itself, **as preprocessing z-scored it** (HU window
[-80, 300], then per-volume mean and standard deviation), with no per-patch normalisation (the
ViT MAE's ``norm_pix_loss``). nnssl's CNN MAE does the same (the target is its normalised input).
In CT the absolute intensity is the tissue (fat, soft tissue, contrast-filled vessels, bone);
normalising each patch would erase exactly what tells those apart, and the per-volume z-score
already puts every scan on one scale, the scale fine-tuning feeds the encoder.

Default ratio 0.75: nnssl's ``BaseMAETrainer.mask_percentage`` (the trainer Wald et al. benchmark
MAE with; nnssl's variants also run 0.30/0.45/0.60/0.90), the upper end of the 0.6-0.75 range the
issue names; ``methods.mae.mask_ratio=0.6`` is one override away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from kidneyssl.config import ConfigError
from kidneyssl.training.tasks.restoration import RestorationConfig, RestorationTask

__all__ = ["MAEConfig", "MAETask", "MaskCorruption", "patch_mask"]


@dataclass(frozen=True)
class MAEConfig(RestorationConfig):
    """``methods.mae``: :class:`~kidneyssl.training.tasks.restoration.RestorationConfig` plus

    Attributes:
        mask_ratio: fraction of the patches masked, in (0, 1).
        patch_size: (z, y, x) voxels of a masked patch; must divide ``crop_size``.
    """

    weight_decay: float = 3e-5
    mask_ratio: float = 0.75
    patch_size: tuple[int, int, int] = (16, 16, 16)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ConfigError(f"patch_size must be 3 positive sizes (z, y, x), got {self.patch_size!r}")
        if any(c % p for c, p in zip(self.crop_size, self.patch_size)):
            raise ConfigError(f"patch_size {list(self.patch_size)} must divide crop_size {list(self.crop_size)}")
        n = int(np.prod([c // p for c, p in zip(self.crop_size, self.patch_size)]))
        if not 1 <= masked_patches(n, self.mask_ratio) < n:
            raise ConfigError(f"mask_ratio {self.mask_ratio} of {n} patches masks none or all of them")


def masked_patches(n_patches: int, ratio: float) -> int:
    """How many of ``n_patches`` a ``ratio`` masks (rounded to the nearest whole patch)."""
    return int(round(ratio * n_patches))


def patch_mask(shape: Sequence[int], patch_size: Sequence[int], ratio: float,
               rng: np.random.Generator) -> np.ndarray:
    """A random patch mask: True on the voxels of ``round(ratio * n)`` of the ``n`` patches.

    Args:
        shape: (Z, Y, X), multiples of ``patch_size``.
        patch_size: (z, y, x) of one patch.
        ratio: fraction of the patches masked.
        rng: the generator (the mask is a pure function of its state).

    Returns:
        (Z, Y, X) bool array.
    """
    grid = tuple(int(s) // int(p) for s, p in zip(shape, patch_size))
    if any(int(s) % int(p) for s, p in zip(shape, patch_size)):
        raise ValueError(f"shape {tuple(shape)} is not a multiple of the patch size {tuple(patch_size)}")
    n = int(np.prod(grid))
    flat = np.zeros(n, dtype=bool)
    flat[rng.permutation(n)[:masked_patches(n, ratio)]] = True
    small = flat.reshape(grid)
    for axis, p in enumerate(patch_size):
        small = np.repeat(small, int(p), axis=axis)
    return small


@dataclass(frozen=True)
class MaskCorruption:
    """MAE's corruption: masked patches set to 0 in the input; target the crop; loss weight 1 on
    the masked voxels and 0 elsewhere."""

    patch_size: tuple[int, int, int]
    ratio: float

    def __call__(self, crop: np.ndarray, rng: np.random.Generator, intensity: Any) -> tuple[np.ndarray, ...]:
        mask = patch_mask(crop.shape, self.patch_size, self.ratio, rng)
        return np.where(mask, np.float32(0.0), crop).astype(np.float32), crop, mask.astype(np.float32)


class MAETask(RestorationTask):
    """Masked image modelling on the segmentation network (see the module docstring)."""

    name: ClassVar[str] = "mae"
    display_name: ClassVar[str] = "MAE"
    config_class: ClassVar[type[RestorationConfig]] = MAEConfig

    def corruption(self, settings: Any) -> MaskCorruption:
        return MaskCorruption(tuple(settings.patch_size), float(settings.mask_ratio))
