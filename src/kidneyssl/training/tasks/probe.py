"""A cheap frozen-encoder probe of a pretraining run (issue 22): how much kidney a linear read-out
of the encoder's features can already find, after every pretraining epoch.

nnssl tracks only the self-supervised loss, which says little about what transfers. The probe
freezes the encoder and trains a linear head on its features for ``pretrain.probe_steps`` steps,
then measures kidney Dice. It is monitoring: the encoder's weights never change, and ``best.pt``
is chosen on the probe only when ``pretrain.select_by`` is ``probe_dice`` (then the probe cases'
labels count as read by ``best.pt``).

What it reads. Only the pretraining run's own held-out TRAINING cases (``proxy.val`` of
:func:`~kidneyssl.training.tasks.pretraining.proxy_split`: at a label budget, annotated cases of
that budget), never a validation or test case of the split; at most :data:`MAX_PROBE_CASES` of
them. Crops of ``pretrain.crop_size`` centred on each located kidney (as the side proxy's crops),
with the kidney mask (label > 0) in the crop as target. The cases are split in two (seeded): the
head is fitted on the first part and its Dice is measured on the other (``probe_dice``); with a
single case the Dice is on the crops it was fitted on, and ``probe_held_out`` says so (0).

The features. Every level of the encoder (``DenseEncoder`` returns the four dense blocks' outputs
at full, 1/2, 1/4, 1/8 resolution and the 1/16 bottleneck), not the full-resolution level alone:
that level is one dense block away from the image and mostly says "bright", while pretraining
shapes the deeper levels. The head is a 1x1x1 convolution on the hypercolumn (each level
upsampled trilinearly to full resolution and concatenated), computed without building it: a
1x1x1 conv per level to one channel at that level's resolution, upsampled and summed, which is
the same linear map because upsampling is linear and acts per channel. No decoder is involved.

Loss: BCE (positive weight ``sqrt(background / kidney)`` of the fitted crops) plus soft Dice,
Adam (lr :data:`PROBE_LR`), up to :data:`PROBE_BATCH` crops per step; seeded, and every global RNG
state is restored afterwards, so a run with the probe trains exactly as one without.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from kidneyssl.io.geometry import Side

__all__ = ["ProbeCrop", "LinearProbeHead", "kidney_probe_crops", "probe_encoder", "probe_cases_split",
           "MAX_PROBE_CASES", "PROBE_LR", "PROBE_BATCH"]

log = logging.getLogger(__name__)

#: The probe reads at most this many held-out training cases (two crops each): it must stay cheap.
MAX_PROBE_CASES = 8
#: Adam learning rate of the linear head (a linear model on normalised features converges fast).
PROBE_LR = 1e-2
#: Crops per probe step.
PROBE_BATCH = 4


@dataclass(frozen=True)
class ProbeCrop:
    """One kidney crop: ``image`` (Z, Y, X) float32 and ``target`` (Z, Y, X) bool (label > 0)."""

    case_id: str
    image: np.ndarray
    target: np.ndarray


def kidney_probe_crops(cache: Any, case_ids: Sequence[str], crop_size: Sequence[int]) -> list[ProbeCrop]:
    """A ``crop_size`` crop around every located kidney of ``case_ids`` (cache ``meta["kidneys"]``),
    image and kidney mask; cases without a label are skipped."""
    from kidneyssl.preprocessing.crops import crop_padded

    size = tuple(int(c) for c in crop_size)
    crops = []
    for cid in case_ids:
        case = cache.load(cid, mmap=True)
        if case.label is None:
            continue
        kidneys = case.meta.get("kidneys") or {}
        for side in (Side.RIGHT, Side.LEFT):
            if side.value not in kidneys:
                continue
            start = [int(c) - s // 2 for c, s in zip(kidneys[side.value]["center"], size)]
            image = crop_padded(case.image, start, size).astype(np.float32)
            target = crop_padded(case.label, start, size) > 0
            crops.append(ProbeCrop(cid, image, target))
    return crops


def probe_cases_split(case_ids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """``(fit, held out)``: at most :data:`MAX_PROBE_CASES` of ``case_ids`` (seeded), the held-out
    part the smaller half (empty for a single case)."""
    ids = sorted(case_ids)
    order = np.random.default_rng([int(seed), 7919]).permutation(len(ids))
    chosen = [ids[i] for i in order[:MAX_PROBE_CASES]]
    n_eval = len(chosen) // 2
    return sorted(chosen[n_eval:]), sorted(chosen[:n_eval])


class LinearProbeHead:
    """A 1x1x1 conv on the encoder's hypercolumn (see the module docstring), as one conv per level.

    Args:
        channels: channels of each encoder level, full resolution first.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        import torch

        self.convs = torch.nn.ModuleList(torch.nn.Conv3d(int(c), 1, 1) for c in channels)

    def parameters(self) -> Any:
        return self.convs.parameters()

    def to(self, device: Any) -> LinearProbeHead:
        self.convs.to(device)
        return self

    def __call__(self, features: Sequence[Any]) -> Any:
        """Logits (B, 1, *full resolution) from the per-level features (B, C_l, ...)."""
        import torch
        import torch.nn.functional as F

        size = tuple(features[0].shape[2:])
        out = None
        for conv, f in zip(self.convs, features):
            logit = conv(f if f.dtype == torch.float32 else f.float())
            if tuple(logit.shape[2:]) != size:
                logit = F.interpolate(logit, size=size, mode="trilinear", align_corners=False)
            out = logit if out is None else out + logit
        return out


def _features(encoder: Any, crops: Sequence[ProbeCrop], device: Any) -> list[list[Any]]:
    """The frozen encoder's per-level features of each crop (batch 1; kept in half precision on
    CUDA, where memory is scarcer and the conversion per step is cheap)."""
    import torch

    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    out = []
    with torch.no_grad():  # not inference_mode: the head's backward saves these tensors
        for crop in crops:
            x = torch.from_numpy(np.ascontiguousarray(crop.image))[None, None].to(device)
            out.append([f.to(dtype) for f in encoder(x)])
    return out


def _dice(logits: Any, target: Any) -> float:
    pred = logits > 0
    inter = float((pred & target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def probe_encoder(encoder: Any, fit: Sequence[ProbeCrop], held_out: Sequence[ProbeCrop], steps: int, *,
                  seed: int | Sequence[int], device: Any = "cpu") -> dict[str, float]:
    """Fit the linear probe on ``fit`` for ``steps`` steps on the frozen ``encoder`` and measure it.

    Args:
        encoder: a module returning a list of feature maps, full resolution first (its
            weights are not changed; its training flag is restored).
        fit, held_out: crops to fit on and to measure on (empty ``held_out``: measured on ``fit``).
        steps: Adam steps.
        seed: seeds the head's initialisation and the crops of each step; every global RNG
            state is restored afterwards.
        device: where the features and the head live.

    Returns:
        ``{"probe_dice": mean Dice over the measured crops (logit > 0), "probe_loss": the last
        step's loss, "probe_held_out": 1.0 if measured on held-out crops else 0.0}``.

    Raises:
        ValueError: no crop to fit on.
    """
    import torch

    from kidneyssl.losses import BCEDiceLoss
    from kidneyssl.training.plan import preserved_rng

    if not fit:
        raise ValueError("the probe needs at least one crop to fit on")
    was_training = encoder.training
    encoder.eval()
    try:
        fit_features = _features(encoder, fit, device)
        eval_features = _features(encoder, held_out, device) if held_out else fit_features
    finally:
        encoder.train(was_training)
    fit_targets = [torch.from_numpy(c.target)[None, None].to(device) for c in fit]
    eval_targets = [torch.from_numpy(c.target)[None, None].to(device) for c in (held_out or fit)]
    fg = float(sum(t.sum() for t in fit_targets))
    total = float(sum(t.numel() for t in fit_targets))
    pos_weight = math.sqrt((total - fg) / fg) if 0 < fg < total else 1.0
    criterion = BCEDiceLoss(pos_weight=pos_weight).to(device)
    with preserved_rng():
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        head = LinearProbeHead([int(f.shape[1]) for f in fit_features[0]]).to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=PROBE_LR)
        rng = np.random.default_rng(seed)
        loss_value = math.nan
        for _ in range(int(steps)):
            chosen = rng.choice(len(fit), size=min(PROBE_BATCH, len(fit)), replace=False)
            optimizer.zero_grad(set_to_none=True)
            loss = None
            for i in chosen:
                bce, dice_loss = criterion.components(head(fit_features[i]), fit_targets[i].float())
                item = (bce + dice_loss) / len(chosen)
                loss = item if loss is None else loss + item
            assert loss is not None
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
        with torch.no_grad():
            dices = [_dice(head(f), t) for f, t in zip(eval_features, eval_targets)]
    return {"probe_dice": float(np.mean(dices)), "probe_loss": loss_value,
            "probe_held_out": 1.0 if held_out else 0.0}
